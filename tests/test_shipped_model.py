"""The shipped model (data/shapes_maskrcnn.npz) loads, predicts and scores as data/README.md says."""

import os

import numpy as np
import pytest

from npmaskrcnn import load_model
from npmaskrcnn.evaluate import evaluate_model
from npmaskrcnn.shapes import ShapesDataset

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                     "shapes_maskrcnn.npz")


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


def test_shipped_model_ap_on_50_held_out_images(model):
    """AP (0.50:0.95), not only AP50: a mask pasted half a pixel off keeps AP50 at ~99.9 but
    costs ~8 points of mask AP. Measured on these 50 images (seed 10000): mask AP 96.75 /
    AP50 99.95 / AP75 99.75, box AP 89.36 / AP50 99.75 / AP75 96.34; the bounds sit just below."""
    metrics = evaluate_model(model, ShapesDataset(50, seed=10_000))
    segm, bbox = metrics["segm"], metrics["bbox"]
    assert segm["AP"] >= 0.955 and segm["AP75"] >= 0.985 and segm["AP50"] >= 0.99, segm
    assert bbox["AP"] >= 0.88 and bbox["AP75"] >= 0.95 and bbox["AP50"] >= 0.99, bbox


def test_shipped_model_is_small_and_plain_npz(model):
    assert os.path.getsize(MODEL) <= 20 * 2 ** 20
    with np.load(MODEL, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    assert model.class_names == ("square", "circle", "triangle")

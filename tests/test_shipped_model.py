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


def test_shipped_model_mask_ap50_on_50_held_out_images(model):
    metrics = evaluate_model(model, ShapesDataset(50, seed=10_000))
    assert metrics["segm"]["AP50"] >= 0.95, metrics["segm"]
    assert metrics["bbox"]["AP50"] >= 0.9, metrics["bbox"]


def test_shipped_model_is_small_and_plain_npz(model):
    assert os.path.getsize(MODEL) <= 20 * 2 ** 20
    with np.load(MODEL, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    assert model.class_names == ("square", "circle", "triangle")

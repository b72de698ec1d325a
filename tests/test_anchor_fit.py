"""Tests of the anchors-vs-data analysis: hand cases, the nearest-centre shortcut against all
anchors, the factor search, the dataset readers and the figure."""

from matplotlib.figure import Figure
import numpy as np
import pytest

from npmaskrcnn.anchor_fit import (anchor_fit_figure, best_anchor_iou, dataset_samples,
                                   feature_shapes, fit_anchors)
from npmaskrcnn.anchors import AnchorGenerator
from npmaskrcnn.boxes import box_iou
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.transform import Transform

SIZES = (16, 32, 64, 128, 256)


def test_feature_shapes_of_a_padded_image():
    assert feature_shapes((128, 96)) == [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]   # P6 = ceil(3 / 2)


def test_hand_cases_exact_anchor_half_size_half_width():
    gen = AnchorGenerator(SIZES, (1.0,))
    # level 0 (stride 4): the anchor of cell (y=2, x=3) is centred at (14, 10), side 16
    anchor = [6, 2, 22, 18]
    quarter = [10, 6, 18, 14]        # half the side, same centre: IoU = 8*8 / 16*16
    half_width = [10, 2, 18, 18]     # half the width: 8*16 / 16*16
    iou = best_anchor_iou(np.array([anchor, quarter, half_width], np.float32), (64, 64), gen)
    np.testing.assert_allclose(iou, [1.0, 0.25, 0.5], rtol=0, atol=1e-12)
    # a 32-px box centred on a level-1 cell (stride 8, centres 4, 12, ...) is exactly that anchor
    np.testing.assert_allclose(best_anchor_iou(np.array([[-12.0, -12, 20, 20]]), (64, 64), gen), [1.0])
    assert best_anchor_iou(np.zeros((0, 4)), (64, 64), gen).shape == (0,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_centre_shortcut_equals_all_anchors(seed):
    rng = np.random.default_rng(seed)
    gen = AnchorGenerator((8, 16, 32, 64, 128), (0.5, 1.0, 2.0))
    padded = (96, 160)
    xy = rng.uniform(-10, 170, (200, 2))
    wh = np.exp(rng.uniform(np.log(2), np.log(200), (200, 2)))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    anchors = np.concatenate(gen.grid_anchors(feature_shapes(padded)))
    expected = box_iou(boxes.astype(np.float64), anchors.astype(np.float64)).max(axis=1)
    # float32 anchors differ by rounding from cell to cell, so a farther one can win by 1e-7
    np.testing.assert_allclose(best_anchor_iou(boxes, padded, gen), expected, rtol=0, atol=1e-6)


def test_factor_search_finds_smaller_anchors():
    # objects of side 12 centred on level-0 cells: IoU 144 / 256 = 0.5625 with the 16-px anchor;
    # x 0.75 makes the anchors 12 px, IoU 1
    boxes = np.array([[8.0, 4, 20, 16], [40, 36, 52, 48]])                 # centres (14, 10), (46, 42)
    fit = fit_anchors([((64, 64), boxes)], SIZES, (1.0,), scale_factors=(0.75, 1.0, 1.5), bins=4)
    np.testing.assert_allclose(fit.best_iou, [0.5625, 0.5625])
    assert (fit.share_07, fit.share_05) == (0.0, 1.0)
    np.testing.assert_array_equal(fit.share_07_by_scale, [1.0, 0.0, 0.0])
    assert fit.best_scale == 0.75 and fit.suggested_sizes == (12.0, 24.0, 48.0, 96.0, 192.0)
    np.testing.assert_array_equal(fit.histogram[0], [0, 0, 2, 0])
    np.testing.assert_allclose(fit.object_sizes, [12, 12])
    assert fit.size_quantiles[50] == 12 and fit.num_images == 1
    text = "\n".join(fit.describe())
    assert "2 objects in 1 images" in text and "suggested anchor sizes [12.0, 24.0" in text
    # already the best: no change suggested
    fit = fit_anchors([((64, 64), np.array([[6.0, 2, 22, 18]]))], SIZES, (1.0,))
    assert fit.best_scale == 1.0 and fit.share_07 == 1.0
    assert "the current ones" in fit.describe()[-1]


def test_no_objects_and_bad_boxes():
    fit = fit_anchors([((64, 64), np.zeros((0, 4)))], SIZES)
    assert len(fit.best_iou) == 0 and fit.share_07 == 0.0 and fit.best_scale == 1.0
    assert fit.describe()[-1] == "no objects: nothing to measure"
    with pytest.raises(ValueError, match="x2 > x1"):
        fit_anchors([((64, 64), np.array([[5.0, 5, 5, 9]]))], SIZES)
    with pytest.raises(ValueError, match="scale_factors"):
        fit_anchors([], SIZES, scale_factors=(0.0,))


def test_samples_of_shapes_and_of_coco_after_the_transform(tmp_path):
    from npmaskrcnn.coco import load_coco, save_coco
    ds = ShapesDataset(3, seed=4)
    samples = dataset_samples(ds)
    assert [s for s, _ in samples] == [(128, 128)] * 3
    np.testing.assert_array_equal(samples[1][1], ds[1][1]["boxes"])
    coco = load_coco(save_coco(ds, str(tmp_path)))
    resized = dataset_samples(coco, Transform(min_size=256, max_size=1000))
    assert [s for s, _ in resized] == [(256, 256)] * 3
    np.testing.assert_allclose(resized[1][1], 2 * ds[1][1]["boxes"], atol=1e-4)  # JSON bbox x 2
    fit = fit_anchors(samples, (8, 16, 32, 64, 128))
    assert 0 <= fit.share_07 <= fit.share_05 <= 1 and len(fit.best_iou) == sum(len(b) for _, b in samples)


def test_figure_is_built_without_pyplot(tmp_path):
    ds = ShapesDataset(4, seed=1)
    fit = fit_anchors(dataset_samples(ds), (8, 16, 32, 64, 128), scale_factors=(0.5, 1.0, 2.0))
    fig = anchor_fit_figure(fit)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    fig.savefig(tmp_path / "anchors.png")
    assert (tmp_path / "anchors.png").stat().st_size > 1000

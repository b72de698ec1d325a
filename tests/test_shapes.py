"""Tests of the synthetic shapes dataset: determinism, formats, occlusion, colours, sizes."""


import numpy as np
import pytest

from npmaskrcnn.shapes import CLASS_NAMES, MIN_BACKGROUND_DISTANCE, ShapesDataset, masks_to_boxes


@pytest.fixture(scope="module")
def samples():
    ds = ShapesDataset(300, seed=7)
    return ds, [ds[i] for i in range(len(ds))]


def assert_same_sample(a, b):
    (image_a, target_a), (image_b, target_b) = a, b
    np.testing.assert_array_equal(image_a, image_b)
    assert target_a.keys() == target_b.keys()
    for key in target_a:
        np.testing.assert_array_equal(target_a[key], target_b[key])


def test_same_seed_same_data_in_any_order():
    a, b = ShapesDataset(20, seed=3), ShapesDataset(20, seed=3)
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    for x, y in zip(forward, backward):
        assert_same_sample(x, y)
    assert_same_sample(a[5], a[5])
    assert_same_sample(a[-1], a[19])


def test_different_seeds_and_indices_differ():
    a, b = ShapesDataset(5, seed=0), ShapesDataset(5, seed=1)
    for i in range(5):
        assert not np.array_equal(a[i][0], b[i][0])
    assert not np.array_equal(a[0][0], a[1][0])


def test_data_do_not_depend_on_dataset_length():
    # image i depends on (seed, i) only, so a longer dataset extends a shorter one
    assert_same_sample(ShapesDataset(3, seed=4)[2], ShapesDataset(1000, seed=4)[2])


def test_index_out_of_range():
    ds = ShapesDataset(3, seed=0)
    with pytest.raises(IndexError):
        ds[3]
    assert len(list(ds)) == 3


def test_dtypes_and_shapes(samples):
    ds, data = samples
    assert ds.class_names == ("square", "circle", "triangle") == CLASS_NAMES
    assert ds.image_ids == list(range(1, 301)) and len(ds) == 300
    for image, target in data:
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        M = len(target["labels"])
        assert target["boxes"].shape == (M, 4) and target["boxes"].dtype == np.float32
        assert target["labels"].dtype == np.int64
        assert target["masks"].shape == (M, 128, 128) and target["masks"].dtype == bool
        assert M >= 1  # the top shape is never occluded
        assert set(target["labels"].tolist()) <= {1, 2, 3}


def test_image_size_parameter():
    image, target = ShapesDataset(1, seed=0, image_size=64, max_size=32)[0]
    assert image.shape == (64, 64, 3) and target["masks"].shape[1:] == (64, 64)


def test_boxes_are_visible_mask_extents(samples):
    _, data = samples
    for _, target in data:
        for box, mask in zip(target["boxes"], target["masks"]):
            rows, cols = np.nonzero(mask)
            np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def test_masks_to_boxes_by_hand():
    mask = np.zeros((1, 6, 8), dtype=bool)
    mask[0, 2:4, 1:6] = True  # rows 2..3, cols 1..5
    np.testing.assert_array_equal(masks_to_boxes(mask), [[1, 2, 6, 4]])


def test_masks_disjoint_and_large_enough(samples):
    ds, data = samples
    for _, target in data:
        masks = target["masks"]
        assert (masks.sum(axis=0) <= 1).all()
        assert (masks.sum(axis=(1, 2)) >= 10).all()
    # shapes do overlap, so the disjointness above is occlusion at work
    overlaps = 0
    for _, target in data:
        b = target["boxes"]
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                overlaps += min(b[i, 2], b[j, 2]) > max(b[i, 0], b[j, 0]) and \
                    min(b[i, 3], b[j, 3]) > max(b[i, 1], b[j, 1])
    assert overlaps > 10


def test_class_frequencies_roughly_balanced(samples):
    _, data = samples
    labels = np.concatenate([t["labels"] for _, t in data])
    freq = np.bincount(labels, minlength=4)[1:] / len(labels)
    assert len(labels) > 500
    assert (np.abs(freq - 1 / 3) < 0.06).all(), freq


def test_sizes_within_range(samples):
    _, data = samples
    largest = []
    for _, target in data:
        sides = np.maximum(target["boxes"][:, 2] - target["boxes"][:, 0],
                           target["boxes"][:, 3] - target["boxes"][:, 1])
        assert (sides <= 64 + 1).all()
        # the last instance is on top, never occluded: its box spans the full size (up to the
        # pixels a sharp vertex can miss between pixel centres)
        assert sides[-1] >= 16 - 3
        largest.append(sides[-1])
    assert max(largest) > 55 and min(largest) < 25


def test_pixels_have_their_shape_colour(samples):
    _, data = samples
    for image, target in data:
        background = image[~target["masks"].any(axis=0)]
        assert (background == background[0]).all()
        for mask in target["masks"]:
            inside = image[mask]
            assert (inside == inside[0]).all()
            distance = np.linalg.norm(inside[0].astype(float) - background[0].astype(float))
            assert distance >= MIN_BACKGROUND_DISTANCE - 1e-9


def test_shape_of_each_class():
    # one shape per image, never occluded: compare the mask area with the analytic area of a
    # shape whose box has longer side s
    ds = ShapesDataset(60, seed=11, max_shapes=1, min_size=40, max_size=60)
    for i in range(len(ds)):
        _, target = ds[i]
        (label,), (mask,), (box,) = target["labels"], target["masks"], target["boxes"]
        w, h = box[2] - box[0], box[3] - box[1]
        fill = mask.sum() / (w * h)
        if label == 2:
            assert abs(w - h) <= 1 and abs(fill - np.pi / 4) < 0.05
        if label == 1:
            assert 0.5 - 0.05 < fill <= 1.0  # a rotated square fills between half and all its box
        if label == 3:
            assert 0.4 < fill < 0.55  # an equilateral triangle fills about half its box


def test_extreme_parameters():
    # a shape as large as the image, and many tiny shapes on a tiny image
    image, target = ShapesDataset(20, seed=2, min_size=128, max_size=128, max_shapes=1)[19]
    assert len(target["labels"]) == 1 and target["masks"][0].sum() > 128 * 128 * 0.4
    ds = ShapesDataset(20, seed=2, image_size=32, min_size=8, max_size=8, min_shapes=4, max_shapes=4)
    for i in range(len(ds)):
        _, target = ds[i]
        assert 1 <= len(target["labels"]) <= 4
        assert (target["masks"].sum(axis=0) <= 1).all()
    with pytest.raises(ValueError):
        ShapesDataset(1, seed=0, max_size=200)

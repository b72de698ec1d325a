"""Tests of the synthetic shapes dataset: determinism, formats, occlusion, colours, sizes, and the
options of harder data (contrast, border cuts, visibility, overlap, axis-aligned shapes, backgrounds,
noise)."""

import hashlib

import numpy as np
import pytest

from npmaskrcnn.shapes import (CLASS_NAMES, GENTLE, HARD, MIN_BACKGROUND_DISTANCE, ShapesDataset,
                               generate_shapes_image, masks_to_boxes)
from npmaskrcnn.shapes_stats import instance_statistics, summarize_statistics


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



# ---------------------------------------------------------------------------------------------
# The default random stream: bit-identical to the original generator (the shipped model's data)

def digest(ds, indices):
    """sha256 of images, masks, boxes and labels, in a byte order fixed on every machine."""
    h = hashlib.sha256()
    for i in indices:
        image, target = ds[i]
        for a, dtype in ((image, "u1"), (target["masks"], "u1"), (target["boxes"], "<f4"),
                         (target["labels"], "<i8")):
            h.update(np.ascontiguousarray(a, dtype=dtype).tobytes())
    return h.hexdigest()


# computed with the generator before the options existed (commit ab559e0)
ORIGINAL_DIGESTS = [
    (dict(num_images=100, seed=0), range(100),
     "946df5089333aa7e2ac3c6adaa7c989d17d84525621cebf3cced9261c40e97a4"),
    (dict(num_images=10**6, seed=10_000), [0, 1, 2, 499, 123456],
     "7b87bbdd05bc17e774020d6a0148bcbbeab6d71be4922b8b0bda62a134aa36f9"),
    (dict(num_images=20, seed=3, image_size=32, min_size=8, max_size=20, max_shapes=3), range(20),
     "033719396639fe702b12232da5c51f4b6158a16fe3d867841876438914b32273"),
    (dict(num_images=20, seed=5, min_shapes=3, max_shapes=6, max_size=80, min_visible_fraction=0.2),
     range(20), "56fa9ae4d792ad5c90beff7477641c97f80b4b78eb627df10c8dadf9e381294a"),
]


@pytest.mark.parametrize("kwargs, indices, expected", ORIGINAL_DIGESTS)
def test_default_data_bit_identical_to_the_original_generator(kwargs, indices, expected):
    assert digest(ShapesDataset(**kwargs), indices) == expected
    # GENTLE spelled out is the default, and the options at their off values draw nothing
    gentle = dict(GENTLE)
    for key in ("min_shapes", "max_shapes", "min_size", "max_size", "min_visible_fraction"):
        gentle[key] = kwargs.get(key, gentle[key])
    args = {k: v for k, v in kwargs.items() if k not in gentle}
    assert digest(ShapesDataset(**args, **gentle), indices) == expected


# pinned when HARD was introduced: the data the next shipped model trains on
HARD_DIGEST = "d7ef3a3d40fa0df07b25b734618da00516d6c1146e5f7d0bf8e67398a9482653"


def test_hard_data_are_pinned():
    ds = ShapesDataset(10**6, seed=0, **ShapesDataset.hard_settings())
    assert digest(ds, [0, 1, 2, 3, 777, 54321]) == HARD_DIGEST


def test_settings_scale_with_the_image():
    assert ShapesDataset.gentle_settings() == GENTLE
    assert ShapesDataset.hard_settings() == HARD
    assert HARD["max_size"] == 80 and HARD["max_shapes"] == 6
    small = ShapesDataset.hard_settings(64)
    assert (small["min_size"], small["max_size"]) == (8, 40)
    assert ShapesDataset.gentle_settings(64)["max_size"] == 32
    image, target = ShapesDataset(3, seed=0, image_size=64, **small)[2]
    assert image.shape == (64, 64, 3) and target["masks"].shape[1:] == (64, 64)
    # large: the gentle rules with shapes of 32-80 px (16-40 at 64)
    assert ShapesDataset.named_settings("large") == dict(GENTLE, min_size=32, max_size=80)
    assert ShapesDataset.named_settings("large", 64) == dict(GENTLE, min_size=16, max_size=40)
    with pytest.raises(ValueError, match="shapes settings"):
        ShapesDataset.named_settings("huge")


def test_large_shapes_are_32_to_80_px_and_otherwise_gentle():
    """The longer box side of every unoccluded shape (its mask is its whole area) lies in the
    setting's size range, up to a pixel of rasterisation: 32-80 px for large, 16-64 for gentle."""
    for name, (lo, hi) in (("large", (32, 80)), ("gentle", (16, 64))):
        ds = ShapesDataset(60, seed=5, **ShapesDataset.named_settings(name))
        sides = []
        for i in range(len(ds)):
            _, target, info = ds.describe(i)
            whole = target["masks"].sum(axis=(1, 2)) == info["full_area"]
            b = target["boxes"][whole]
            sides += np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).tolist()
        assert len(sides) > 60
        assert lo - 1 <= min(sides) and max(sides) <= hi + 1
        assert max(sides) > hi - 8 and min(sides) < lo + 8          # the range is used, not a corner


# ---------------------------------------------------------------------------------------------
# Determinism of the harder data

def test_hard_data_pure_function_of_seed_and_index():
    kw = ShapesDataset.hard_settings()
    a, b = ShapesDataset(12, seed=3, **kw), ShapesDataset(500, seed=3, **kw)
    in_order = [a[i] for i in range(12)]
    for i in reversed(range(12)):
        assert_same_sample(b[i], in_order[i])
    assert_same_sample(a.describe(4)[:2], a[4])
    assert not np.array_equal(a[0][0], ShapesDataset(1, seed=4, **kw)[0][0])
    # the generator function on its own gives the same item as the dataset
    image, target = generate_shapes_image(np.random.default_rng([3, 7]), **kw)
    assert_same_sample((image, target), a[7])


def test_colour_options_change_pixels_not_masks():
    # layout options the same, colour options on or off: same masks, labels, boxes
    geometry = dict(max_shapes=6, max_size=80, min_visible_fraction=0.15, border_cut_prob=0.5,
                    axis_aligned_prob=0.5, min_background_contrast=15.0, min_shape_contrast=15.0)
    plain = ShapesDataset(30, seed=9, **geometry)
    colour = ShapesDataset(30, seed=9, **geometry, low_contrast_prob=0.5, strict_contrast=True,
                           background_gradient=40.0, background_texture=12.0, noise_std=3.0)
    changed = 0
    for i in range(30):
        (im_a, t_a), (im_b, t_b) = plain[i], colour[i]
        for key in ("masks", "labels", "boxes"):
            np.testing.assert_array_equal(t_a[key], t_b[key])
        changed += not np.array_equal(im_a, im_b)
    assert changed == 30


# ---------------------------------------------------------------------------------------------
# Each option does what its documentation says

def plain_colours_are_the_masks(image, target):
    """On a plain, noise-free image: the background colour is exactly the unmasked pixels, and
    each mask is exactly the pixels of its instance's colour."""
    union = target["masks"].any(axis=0)
    background = image[~union][0]
    assert (image[~union] == background).all()
    assert not (image[union] == background).all(axis=1).any()
    for mask in target["masks"]:
        colour = image[mask][0]
        np.testing.assert_array_equal((image == colour).all(axis=2), mask)


def test_border_cuts_keep_the_visible_part():
    ds = ShapesDataset(100, seed=1, border_cut_prob=1.0, min_visible_fraction=0.15)
    touching, partial = 0, 0
    for i in range(len(ds)):
        image, target, info = ds.describe(i)
        plain_colours_are_the_masks(image, target)
        for box, mask, full, inside in zip(target["boxes"], target["masks"], info["full_area"],
                                           info["inside_area"]):
            rows, cols = np.nonzero(mask)
            np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1,
                                                rows.max() + 1])
            on_border = rows.min() == 0 or cols.min() == 0 or rows.max() == 127 or cols.max() == 127
            touching += on_border
            if inside < full:
                partial += 1
                assert on_border or mask.sum() < inside  # reaches the border unless hidden there
            assert mask.sum() >= 0.15 * full  # the outside counts as hidden
    assert touching > 50 and partial > 50
    # without border cuts nothing is cut
    stats = instance_statistics(ShapesDataset(50, seed=1))
    assert not stats["border_cut"].any()


def test_low_contrast_reaches_the_floor_and_never_goes_below():
    ds = ShapesDataset(200, seed=2, max_shapes=6, min_background_contrast=15.0,
                       min_shape_contrast=15.0, low_contrast_prob=0.5, strict_contrast=True)
    stats = instance_statistics(ds)
    bg, sh = stats["background_contrast"], stats["shape_contrast"]
    assert 15.0 <= bg.min() < 17.0
    assert 15.0 <= np.nanmin(sh) < 20.0
    assert (bg < 45.0 + 1).mean() > 0.2  # low_contrast_prob of the shapes aim at [15, 45]
    # measured on the pixels too: plain background, no noise
    for i in range(40):
        image, target = ds[i]
        plain_colours_are_the_masks(image, target)
        colours = [image[m][0].astype(float) for m in target["masks"]]
        background = image[~target["masks"].any(axis=0)][0].astype(float)
        for k, c in enumerate(colours):
            assert np.linalg.norm(c - background) >= 15.0
            assert all(np.linalg.norm(c - d) >= 15.0 for d in colours[:k])
    # the gentle floors hold by default (as the original generator, the best of 32 if none)
    gentle = instance_statistics(ShapesDataset(100, seed=2))
    assert gentle["background_contrast"].min() >= 100.0 - 1e-9


def test_contrast_floors_hold_on_graded_backgrounds():
    ds = ShapesDataset(60, seed=4, min_background_contrast=15.0, min_shape_contrast=15.0,
                       low_contrast_prob=1.0, strict_contrast=True, background_gradient=60.0,
                       background_texture=20.0)
    stats = instance_statistics(ds)
    assert stats["background_contrast"].min() >= 15.0 and stats["background_contrast"].min() < 20.0


def test_strict_contrast_refuses_impossible_floors():
    with pytest.raises(ValueError, match="min_background_contrast"):
        ShapesDataset(1, seed=0, min_background_contrast=450.0, strict_contrast=True)[0]
    # without strict_contrast the original rule: the best candidate, below the floor
    image, target = ShapesDataset(1, seed=0, min_background_contrast=450.0)[0]
    assert len(target["labels"]) >= 1


def test_occlusion_down_to_the_visibility_floor():
    ds = ShapesDataset(200, seed=5, max_shapes=6, max_size=80, min_visible_fraction=0.15)
    vis = instance_statistics(ds)["visible_fraction"]
    assert vis.min() >= 0.15 and (vis < 0.3).sum() >= 10
    for i in range(40):
        plain_colours_are_the_masks(*ds[i])  # dropped shapes are not painted at all
    gentle = instance_statistics(ShapesDataset(100, seed=5, max_shapes=6))["visible_fraction"]
    assert gentle.min() >= 0.5
    # min_visible_pixels drops small remains
    for i in range(40):
        _, target = ShapesDataset(40, seed=5, max_shapes=6, min_visible_fraction=0.0,
                                  min_visible_pixels=200)[i]
        assert (target["masks"].sum(axis=(1, 2)) >= 200).all()


def test_overlap_places_shapes_on_earlier_ones():
    base = dict(min_shapes=3, max_shapes=5, min_visible_fraction=0.15)
    spread = instance_statistics(ShapesDataset(150, seed=5, **base))["visible_fraction"]
    near = instance_statistics(ShapesDataset(150, seed=5, overlap_prob=1.0, **base))
    assert near["visible_fraction"].min() >= 0.15
    assert np.mean(near["visible_fraction"] < 0.5) > np.mean(spread < 0.5) + 0.1
    assert not near["border_cut"].any()  # the shapes stay inside the image
    for i in range(20):
        plain_colours_are_the_masks(*ShapesDataset(20, seed=5, overlap_prob=1.0, **base)[i])


def test_repr_names_what_differs_from_gentle():
    assert repr(ShapesDataset(3, seed=1)) == "ShapesDataset(num_images=3, seed=1, image_size=128)"
    text = repr(ShapesDataset(3, seed=1, **ShapesDataset.hard_settings()))
    assert "max_shapes=6" in text and "border_cut_prob=0.5" in text and "min_shapes" not in text


def test_max_size_respected_and_reached():
    ds = ShapesDataset(200, seed=6, min_size=60, max_size=80)
    stats = instance_statistics(ds)
    assert stats["size"].max() <= 80 + 1 and stats["size"].max() > 77
    top = [ds[i][1]["boxes"][-1] for i in range(len(ds))]  # never occluded: its full size
    sides = [max(b[2] - b[0], b[3] - b[1]) for b in top]
    assert min(sides) >= 60 - 3


def test_axis_aligned_squares_and_upright_triangles():
    ds = ShapesDataset(60, seed=7, max_shapes=1, min_size=30, max_size=70, axis_aligned_prob=1.0)
    seen = set()
    for i in range(len(ds)):
        _, target = ds[i]
        (label,), (mask,), (box,) = target["labels"], target["masks"], target["boxes"]
        x1, y1, x2, y2 = box.astype(int)
        if label == 1:  # axis-aligned: the mask fills its box
            assert mask[y1:y2, x1:x2].all()
        if label == 3:  # upright: rows widen from the apex down to a full-width base row
            widths = mask[y1:y2].sum(axis=1)
            assert (np.diff(widths) >= 0).all() and widths[-1] >= (x2 - x1) - 1 and widths[0] <= 3
        seen.add(label)
    assert seen == {1, 2, 3}
    # by default squares are rotated: almost none fills its box
    ds = ShapesDataset(60, seed=7, max_shapes=1, min_size=30, max_size=70)
    fills = [t["masks"][0].sum() / np.prod(t["boxes"][0, 2:] - t["boxes"][0, :2])
             for t in (ds[i][1] for i in range(len(ds))) if t["labels"][0] == 1]
    assert np.mean(np.array(fills) > 0.99) < 0.2
    # and a probability in between gives some of each
    ds = ShapesDataset(200, seed=7, max_shapes=1, min_size=30, max_size=70, axis_aligned_prob=0.5)
    squares = [t for t in (ds[i][1] for i in range(len(ds))) if t["labels"][0] == 1]
    full = [t["masks"][0].sum() == np.prod(t["boxes"][0, 2:] - t["boxes"][0, :2]) for t in squares]
    assert 0.3 < np.mean(full) < 0.75


def test_backgrounds_and_noise_change_pixels_as_documented():
    base = dict(max_shapes=3)
    for option in (dict(background_gradient=40.0), dict(background_texture=12.0)):
        ds, plain = ShapesDataset(20, seed=8, **base, **option), ShapesDataset(20, seed=8, **base)
        varied = 0
        for i in range(20):
            (image, target, info), (_, target_plain) = ds.describe(i), plain[i]
            np.testing.assert_array_equal(target["masks"], target_plain["masks"])
            outside = ~target["masks"].any(axis=0)
            np.testing.assert_array_equal(image[outside], info["background"][outside])
            varied += len(np.unique(image[outside], axis=0)) > 1
            for mask, colour in zip(target["masks"], info["colors"]):
                assert (image[mask] == colour).all()  # shapes stay solid
        assert varied >= 15
    ds, plain = ShapesDataset(20, seed=8, **base, noise_std=3.0), ShapesDataset(20, seed=8, **base)
    deviation = []
    for i in range(20):
        (image, target, info), (clean, target_plain) = ds.describe(i), plain[i]
        np.testing.assert_array_equal(target["masks"], target_plain["masks"])
        diff = image.astype(float) - clean
        assert 0 <= info["noise_sigma"] <= 3.0
        deviation.append((diff.std(), info["noise_sigma"]))
    deviation = np.array(deviation)
    assert (deviation[:, 0] > 0).sum() >= 18
    np.testing.assert_allclose(deviation[:, 0], deviation[:, 1], atol=0.35)


def test_up_to_six_shapes():
    counts = instance_statistics(ShapesDataset(200, seed=9, max_shapes=6, min_visible_fraction=0.15,
                                               max_size=40))["instances_per_image"]
    assert counts.max() == 6 and counts.min() >= 1


def test_statistics_of_gentle_and_hard():
    gentle = summarize_statistics(instance_statistics(ShapesDataset(100, seed=10_000)))
    hard = summarize_statistics(instance_statistics(
        ShapesDataset(100, seed=10_000, **ShapesDataset.hard_settings())))
    assert gentle["min_background_contrast"] >= 100 and gentle["min_shape_contrast"] >= 60
    assert gentle["border_cut_share"] == 0 and gentle["min_visible_fraction"] >= 0.5
    assert gentle["max_size"] <= 65
    assert 15 <= hard["min_background_contrast"] < 20 and 15 <= hard["min_shape_contrast"] < 25
    assert 0.15 <= hard["min_visible_fraction"] < 0.3 and hard["border_cut_share"] > 0.15
    assert hard["instances_per_image"] > gentle["instances_per_image"] + 0.5
    assert hard["max_size"] > 70


def test_statistics_by_hand():
    # one image: the top instance fully visible, every array one entry per instance
    ds = ShapesDataset(5, seed=12, min_shapes=3, max_shapes=3)
    stats = instance_statistics(ds, indices=[0, 3])
    n = len(stats["label"])
    assert all(len(v) == n for k, v in stats.items() if k != "instances_per_image")
    assert stats["instances_per_image"].sum() == n
    _, target, info = ds.describe(0)
    m = len(target["labels"])
    assert stats["visible_fraction"][m - 1] == 1.0
    image = ds[0][0].astype(float)
    colour = image[target["masks"][0]][0]
    background = image[~target["masks"].any(axis=0)][0]
    assert stats["background_contrast"][0] == pytest.approx(np.linalg.norm(colour - background))


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_visible_pixels=0), "min_visible_pixels"),
    (dict(min_background_contrast=-1.0), "min_background_contrast"),
    (dict(min_shape_contrast=float("nan")), "min_shape_contrast"),
    (dict(low_contrast_prob=1.5), "low_contrast_prob"),
    (dict(strict_contrast=1), "strict_contrast"),
    (dict(border_cut_prob=-0.1), "border_cut_prob"),
    (dict(axis_aligned_prob="half"), "axis_aligned_prob"),
    (dict(background_gradient=-5), "background_gradient"),
    (dict(background_texture=float("inf")), "background_texture"),
    (dict(noise_std=-1.0), "noise_std"),
])
def test_options_refuse_bad_values_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(2, seed=0, **kwargs)

"""Tests of the input transform: torchvision's resize numbers, hand-computed bilinear values,
padding, targets resized with their image, detections mapped back, the shapes model unchanged."""

import numpy as np
import pytest

from npmaskrcnn import Config, MaskRCNN
from npmaskrcnn.transform import (ImageList, Transform, hflip, resize_bilinear, resize_boxes,
                                  resize_masks, resized_size)

# (h, w) -> torchvision 0.29.1's output size with min_size 800, max_size 1333, measured in a torch
# venv (reference/torchvision-maskrcnn.md section 1.1): the truncation of h * (800 / h) gives 799
TORCHVISION_SIZES = {
    (480, 640): (800, 1066), (600, 512): (937, 800), (578, 640): (799, 885),
    (385, 500): (799, 1038), (161, 200): (799, 993), (427, 640): (800, 1199),
    (500, 2000): (333, 1333), (1200, 1600): (800, 1066),
}

HAND = np.array([[0, 4, 8, 12], [16, 20, 24, 28]], np.uint8)           # a 2 x 4 image


@pytest.mark.parametrize("hw", sorted(TORCHVISION_SIZES))
def test_resized_size_matches_torchvision(hw):
    assert resized_size(*hw, 800, 1333) == TORCHVISION_SIZES[hw]


def test_short_side_799_is_the_truncation_of_a_double_product():
    assert 578 * (800 / 578) < 800 and int(578 * (800 / 578)) == 799
    assert resized_size(640, 578, 800, 1333) == (885, 799)                # portrait: same numbers
    assert resized_size(578, 640, 800) == (799, 885)                      # no max_size
    assert resized_size(100, 10000, 800, 1333) == (13, 1333)              # long side bound wins
    assert resized_size(1, 1000, 800, 1333) == (1, 1333)                  # at least 1 pixel


def test_bilinear_hand_case_upsampling():
    # doubling: src = dst / 2 - 1/4, so weights 3/4, 1/4 and the borders clamp to the edge pixel
    row0 = [0, 1, 3, 5, 7, 9, 11, 12]
    expected = np.array([row0, np.add(row0, 4), np.add(row0, 12), np.add(row0, 16)], np.float32)
    out = resize_bilinear(HAND[None].astype(np.float32), (4, 8))
    np.testing.assert_array_equal(out[0], expected)


def test_bilinear_shrinks_without_antialiasing():
    # step 2: each output pixel is the mean of the 2 x 2 pixels around its centre, nothing wider
    out = resize_bilinear(HAND[None].astype(np.float64), (1, 2))
    np.testing.assert_array_equal(out, [[[10.0, 18.0]]])                  # (0+4+16+20)/4, (8+12+24+28)/4
    line = np.arange(8, dtype=np.float32)[None, None] ** 2                # 0 1 4 9 16 25 36 49
    out = resize_bilinear(line, (1, 2))                                   # src 1.5 and 5.5
    np.testing.assert_array_equal(out, [[[2.5, 30.5]]])                   # x0, x3, x4, x7 unused


def test_bilinear_keeps_dtype_and_identity():
    x = np.random.default_rng(0).random((3, 5, 7))
    assert resize_bilinear(x, (9, 4)).dtype == np.float64
    assert resize_bilinear(x.astype(np.float32), (9, 4)).dtype == np.float32
    np.testing.assert_array_equal(resize_bilinear(x, (5, 7)), x)
    with pytest.raises(ValueError, match=r"x: expected a \(C, H, W\) float32"):
        resize_bilinear(x[0], (2, 2))


def test_transform_hand_case_end_to_end():
    image = np.repeat(HAND[:, :, None], 3, axis=2)
    t = Transform(min_size=4, pixel_mean=(0, 0, 0), pixel_std=(1, 1, 1))   # scale 4 / 2 = 2
    batch, _ = t([image])
    assert isinstance(batch, ImageList)
    assert batch.image_sizes == [(4, 8)] and batch.original_image_sizes == [(2, 4)]
    assert batch.tensors.shape == (1, 3, 32, 32) and batch.tensors.dtype == np.float32
    expected = resize_bilinear(HAND[None].astype(np.float32), (4, 8))[0]
    for c in range(3):
        np.testing.assert_array_equal(batch.tensors[0, c, :4, :8], expected)
    assert not batch.tensors[0, :, 4:].any() and not batch.tensors[0, :, :, 8:].any()


@pytest.mark.parametrize("hw, size", [((300, 401), (149, 200)), ((37, 23), (800, 497)), ((5, 9), (5, 4))])
def test_normalising_only_the_pixels_read_changes_nothing(hw, size):
    image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    for t in (Transform(), Transform.torchvision()):
        expected = resize_bilinear(t.normalize(image), size)
        np.testing.assert_array_equal(t.normalize_resize(image, size), expected)


def test_normalisation_in_both_units():
    image = np.full((2, 2, 3), 255, np.uint8)
    image[0, 0] = (0, 128, 51)
    shapes = Transform()                                                   # 0..255, 127.5 / 64
    x = shapes.normalize(image)
    assert x[1, 0, 0] == np.float32((128 - 127.5) / 64) and x[0, 1, 1] == np.float32(127.5 / 64)
    tv = Transform.torchvision()                                           # x / 255, ImageNet
    x = tv.normalize(image)
    expected = (np.float32(51) / np.float32(255) - np.float32(0.406)) / np.float32(0.225)
    assert x[2, 0, 0] == expected                                          # divides, as torchvision
    assert tv.min_size == (800,) and tv.max_size == 1333


def test_pad_to_multiple_of_32_of_the_largest_image():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(100, 50), (60, 130), (33, 33)]]
    t = Transform()
    batch, _ = t(images)
    assert batch.tensors.shape == (3, 3, 128, 160)
    assert batch.image_sizes == batch.original_image_sizes == [(100, 50), (60, 130), (33, 33)]
    for x, im in zip(batch.tensors, images):
        h, w = im.shape[:2]
        np.testing.assert_array_equal(x[:, :h, :w], t.normalize(im))
        assert not x[:, h:].any() and not x[:, :, w:].any()
    batch, _ = Transform(min_size=64, max_size=100)(images)               # resized, then padded
    assert batch.image_sizes == [(100, 50), (46, 100), (64, 64)]  # 60 * 100/130 = 46.2
    assert batch.tensors.shape == (3, 3, 128, 128)


def test_no_resize_mode_is_the_models_preprocess_bit_for_bit():
    cfg = Config.tiny(image_size=64)
    model = MaskRCNN(cfg)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    expected, size = model.preprocess(images)
    batch, _ = Transform(None, None, cfg.pixel_mean, cfg.pixel_std)(images)
    assert batch.tensors.dtype == expected.dtype
    np.testing.assert_array_equal(batch.tensors, expected)
    assert batch.image_sizes == [size, size]


def test_masks_resized_nearest_and_bool():
    mask = np.array([[[1, 0, 0, 1], [0, 1, 1, 0]]], bool)
    out = resize_masks(mask, (4, 8))
    assert out.dtype == bool
    np.testing.assert_array_equal(out[0], np.kron(mask[0], np.ones((2, 2), bool)))
    out = resize_masks(np.array([[[1, 0, 1]]], bool), (1, 2))             # step 1.5: src 0, 1
    np.testing.assert_array_equal(out, [[[True, False]]])


def test_resize_targets_with_the_image():
    image = np.zeros((578, 640, 3), np.uint8)
    masks = np.zeros((1, 578, 640), bool)
    masks[0, 100:200, 320:640] = True
    target = {"boxes": np.array([[320, 100, 640, 200]], np.float32), "labels": np.array([1]),
              "masks": masks}
    batch, (out,) = Transform(800, 1333)([image], [target])
    assert batch.image_sizes == [(799, 885)] and out["masks"].shape == (1, 799, 885)
    assert out["masks"].dtype == bool and out["labels"] is target["labels"]
    rw, rh = np.float32(885) / np.float32(640), np.float32(799) / np.float32(578)
    np.testing.assert_array_equal(out["boxes"], [[320 * rw, 100 * rh, 640 * rw, 200 * rh]])
    assert out["boxes"][0, 2] == 885.0                                     # 885 / 640 is exact
    ys, xs = np.nonzero(out["masks"][0])
    assert (xs.min(), xs.max() + 1) == (443, 885) and abs(ys.min() - 100 * rh) < 1
    with pytest.raises(ValueError, match=r"target\['masks'\]: expected \(M, 578, 640\)"):
        Transform(800, 1333)([image], [{"boxes": target["boxes"], "masks": masks[:, :10]}])


def test_boxes_map_back_round_trip():
    rng = np.random.default_rng(3)
    boxes = np.sort(rng.uniform(0, 578, (20, 4)).astype(np.float32), axis=1)
    resized = resize_boxes(boxes, (578, 640), (799, 885))
    back = Transform.postprocess([{"boxes": resized, "scores": np.ones(20)}], [(799, 885)], [(578, 640)])
    np.testing.assert_allclose(back[0]["boxes"], boxes, rtol=0, atol=1e-4)
    assert back[0]["boxes"].dtype == np.float32 and "scores" in back[0]
    # hand case: a box covering the whole resized image covers the whole original image
    back = Transform.postprocess([{"boxes": np.array([[0, 0, 885, 799]], np.float32)}],
                                 [(799, 885)], [(578, 640)])
    np.testing.assert_allclose(back[0]["boxes"], [[0, 0, 640, 578]], rtol=1e-6)


def test_multiscale_draws_one_size_per_image_from_the_rng():
    images = [np.zeros((50, 100, 3), np.uint8)] * 4
    t = Transform(min_size=(20, 30, 40), max_size=1000)
    batch, _ = t(images, training=True, rng=np.random.default_rng(7))
    draws = np.random.default_rng(7).integers(3, size=4)
    assert [s[0] for s in batch.image_sizes] == [(20, 30, 40)[k] for k in draws]
    batch, _ = t(images)                                                   # evaluation: the last
    assert batch.image_sizes == [(40, 80)] * 4
    rng = np.random.default_rng(7)
    Transform(min_size=(20,))(images, training=True, rng=rng)              # one size: no draw
    assert rng.integers(1 << 30) == np.random.default_rng(7).integers(1 << 30)
    with pytest.raises(ValueError, match="rng: training with several min_size"):
        t(images, training=True)


def test_hflip_image_boxes_masks():
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    masks = np.zeros((1, 2, 4), bool)
    masks[0, :, :1] = True
    flipped, target = hflip(image, {"boxes": np.array([[0.0, 0, 1, 2]]), "masks": masks})
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_array_equal(target["boxes"], [[3.0, 0, 4, 2]])
    np.testing.assert_array_equal(target["masks"][0], [[0, 0, 0, 1], [0, 0, 0, 1]])


def test_bad_arguments_are_named():
    for kwargs, match in [({"min_size": 0}, "min_size"), ({"min_size": (800, 1.5)}, "min_size"),
                          ({"max_size": -1}, "max_size"), ({"pixel_std": (1, 0, 1)}, "pixel_std"),
                          ({"input_divisor": 0}, "input_divisor"), ({"size_divisible": 0}, "size_divisible")]:
        with pytest.raises(ValueError, match=match):
            Transform(**kwargs)
    with pytest.raises(ValueError, match=r"images\[1\]: expected a non-empty \(H, W, 3\) uint8"):
        Transform()([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="targets: expected 1 dicts"):
        Transform()([np.zeros((4, 4, 3), np.uint8)], [])
    t = Transform.torchvision()
    assert Transform(**t.to_dict()).to_dict() == t.to_dict()


# ---- against PyTorch, where it is installed (the tests/test_vs_pytorch.py venv) ---------------
@pytest.mark.parametrize("hw", [(578, 640), (161, 200), (37, 23), (500, 2000), (5, 3)])
def test_against_torch_interpolate(hw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    masks = rng.random((2, *hw)) < 0.5
    t = Transform.torchvision()
    batch, (target,) = t([image], [{"boxes": np.array([[1.5, 2.5, 3, 4]], np.float32), "masks": masks}])
    # torchvision's _resize_image_and_masks, step by step
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(t.pixel_mean)[:, None, None]) / torch.tensor(t.pixel_std)[:, None, None]
    scale = min(800 / min(hw), 1333 / max(hw))
    ref = F.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                        align_corners=False)[0].numpy()
    ref_masks = F.interpolate(torch.from_numpy(masks)[:, None].float(), scale_factor=scale,
                              recompute_scale_factor=True)[:, 0].byte().numpy().astype(bool)
    h, w = batch.image_sizes[0]
    assert ref.shape[1:] == (h, w) and ref_masks.shape[1:] == (h, w)
    np.testing.assert_allclose(batch.tensors[0, :, :h, :w], ref, rtol=0, atol=5e-7)  # 2 ulp at |x| ~ 2.6
    np.testing.assert_array_equal(target["masks"], ref_masks)


@pytest.mark.parametrize("n, m", [(161, 799), (578, 799), (640, 885), (2000, 1333), (3, 7)])
def test_interpolation_weights_equal_torch_exactly(n, m):
    torch = pytest.importorskip("torch")
    from npmaskrcnn.transform import _linear_indices
    probes = np.eye(n, dtype=np.float32)[:, None, None, :]                 # one-hot rows (n, 1, 1, n)
    weights = torch.nn.functional.interpolate(torch.from_numpy(probes), size=(1, m), mode="bilinear",
                                              align_corners=False)[:, 0, 0].numpy().T   # (m, n)
    i0, i1, l0, l1 = _linear_indices(n, m, np.float32)
    mine = np.zeros((m, n), np.float32)
    np.add.at(mine, (np.arange(m), i0), l0)
    np.add.at(mine, (np.arange(m), i1), l1)
    np.testing.assert_array_equal(mine, weights)

"""Tests for the RoI ops: RoIPool, RoIAlign (avg and max; readable and separable kernels), RoIWarp,
FPN levels and the multi-level pooler (npmaskrcnn.roi_ops, roi_pool, roi_align, roi_align_fast)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import numerical_gradient_array, rel_error
from npmaskrcnn.config import POOLERS
from npmaskrcnn.roi_ops import (POOLER_KINDS, assign_fpn_levels, multilevel_roi_backward,
                                multilevel_roi_forward, roi_align_backward, roi_align_forward,
                                roi_pool_backward, roi_pool_forward, roi_warp_backward,
                                roi_warp_forward)
from reference_ops import roi_align_ref, roi_pool_ref, roi_warp_ref

IMPLS = ["separable", "readable"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_rois(rng, scale, n_img=2, h=7, w=9, n_random=4):
    """Hand-made edge cases plus random boxes, in image pixels for a map of h x w cells."""
    hand = np.array([
        [1, 0, 0, w, h],                       # the whole map
        [0, -2, -3, 3, 4],                     # partly outside (top-left)
        [1, w - 2, h - 1, w + 3, h + 4],       # partly outside (bottom-right)
        [1, w + 2, h + 2, w + 6, h + 5],       # wholly outside
        [0, -6, -5, -1.5, -1.2],               # wholly outside, above-left
        [0, 2, 2, 3, 3],                       # 1 x 1 cell
        [1, 3.3, 3.6, 3.3, 3.6],               # zero size
        [0, 4, 1, 2, 5],                       # malformed: x2 < x1
        [0, -1.4, -0.7, 0.6, 0.4],             # straddling the -1 and 0 borders
    ], dtype=np.float64)
    xy = rng.uniform(-0.3, 1.1, (n_random, 2)) * [w, h]
    wh = rng.uniform(0, 0.8, (n_random, 2)) * [w, h]
    rand = np.concatenate([rng.integers(0, n_img, (n_random, 1)), xy, xy + wh], axis=1)
    rois = np.concatenate([hand, rand])
    rois[:, 1:] /= scale                       # cells -> image pixels
    return rois


# ---------------------------------------------------------------------------------------------
# forward against the reference


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("output_size", [1, 2, 7, 14])
@pytest.mark.parametrize("scale", [1.0, 1 / 4, 1 / 16])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_forward_matches_reference(mode, scale, output_size, impl):
    rng = np.random.default_rng(int(1000 * scale) + output_size)
    x = rng.standard_normal((2, 2, 7, 9))
    rois = make_rois(rng, scale)
    for aligned in (False, True):
        for sampling_ratio in (-1, 1, 2, 4):
            out, _ = roi_align_forward(x, rois, output_size, scale, sampling_ratio, aligned, mode,
                                       impl)
            ref = roi_align_ref(x, rois, (output_size, output_size), scale, sampling_ratio, aligned,
                                mode)
            assert out.shape == (len(rois), 2, output_size, output_size) and out.dtype == np.float64
            np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12,
                                       err_msg=f"aligned={aligned} sampling_ratio={sampling_ratio}")


@pytest.mark.parametrize("output_size", [1, 2, 7, 14])
@pytest.mark.parametrize("scale", [1.0, 1 / 4, 1 / 16])
def test_roi_pool_forward_matches_reference(scale, output_size):
    rng = np.random.default_rng(int(1000 * scale) + output_size)
    x = rng.standard_normal((2, 2, 7, 9))
    rois = make_rois(rng, scale)
    out, _ = roi_pool_forward(x, rois, output_size, scale)
    np.testing.assert_array_equal(out, roi_pool_ref(x, rois, (output_size, output_size), scale))


def test_non_square_output_and_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9))
    rois = make_rois(rng, 0.5)
    for mode in ("avg", "max"):
        out, _ = roi_align_forward(x, rois, (3, 5), 0.5, 2, True, mode)
        np.testing.assert_allclose(out, roi_align_ref(x, rois, (3, 5), 0.5, 2, True, mode),
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(roi_pool_forward(x, rois, (3, 5), 0.5)[0],
                                  roi_pool_ref(x, rois, (3, 5), 0.5))
    # float32 in, float32 out (the training path; each dtype is one more compile, so only
    # RoIAlign's backward is checked in float32)
    x32 = x.astype(np.float32)
    out32, cache = roi_align_forward(x32, rois, 4, 0.5, 2, True)
    assert out32.dtype == np.float32
    assert roi_align_backward(np.ones_like(out32), cache).dtype == np.float32
    np.testing.assert_allclose(out32, roi_align_forward(x, rois, 4, 0.5, 2, True)[0], rtol=1e-4,
                               atol=1e-5)
    pool32 = roi_pool_forward(x32, rois, 4, 0.5)[0]
    assert pool32.dtype == np.float32
    np.testing.assert_array_equal(pool32, roi_pool_forward(x32.astype(np.float64), rois, 4, 0.5)[0])


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_separable_equals_readable(mode):
    """The optimisation (roi_align_fast.py) computes the readable kernels' numbers: forward and
    backward, to float64 rounding in float64 and to float32 rounding in float32."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 11, 13))
    rois = np.concatenate([make_rois(rng, 0.5, h=11, w=13, n_random=20),
                           make_rois(rng, 0.25, h=11, w=13, n_random=20)])
    for dtype, tol in ((np.float64, dict(rtol=1e-10, atol=1e-10)),
                       (np.float32, dict(rtol=1e-5, atol=1e-5))):
        xd = x.astype(dtype)
        dout = rng.standard_normal((len(rois), 3, 4, 5)).astype(dtype)
        for aligned in (False, True):
            for sampling_ratio in (-1, 1, 2, 3):
                args = (xd, rois, (4, 5), 0.5, sampling_ratio, aligned, mode)
                fast, fast_cache = roi_align_forward(*args, impl="separable")
                slow, slow_cache = roi_align_forward(*args, impl="readable")
                assert fast.dtype == slow.dtype == dtype
                msg = f"{dtype.__name__} aligned={aligned} sampling_ratio={sampling_ratio}"
                np.testing.assert_allclose(fast, slow, **tol, err_msg=msg)
                np.testing.assert_allclose(roi_align_backward(dout, fast_cache),
                                           roi_align_backward(dout, slow_cache), **tol, err_msg=msg)


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_sample_on_the_far_edge_reads_the_edge_cell(impl):
    """Box (7, 6, 12, 11) on a 7 x 9 map, aligned, one sample per bin: bin column 3's sample sits
    at x = 6.5 + 3.5 * 5/7 = 9 = W exactly, which reads the last column (only x > W reads 0).
    In float32 that holds only if the coordinate is computed in float32, as torchvision does
    (in float64 from float32's 5/7 it lands just past 9 and would read 0)."""
    x = np.random.default_rng(9).standard_normal((1, 1, 7, 9))
    rois = [[0, 7, 6, 12, 11]]
    ref = roi_align_ref(x, rois, (7, 7), 1.0, -1, True)
    assert np.all(ref[0, 0, :2, 3] != 0)                             # the edge column is read
    out32 = roi_align_forward(x.astype(np.float32), rois, 7, 1.0, -1, True, impl=impl)[0]
    np.testing.assert_allclose(out32, ref, rtol=1e-5, atol=1e-5)


def test_pooler_default_runs_the_separable_kernel():
    """The shipped model's bits: kind="roi_align" pools each level with impl="separable"."""
    features, rois, scales = multilevel_setup(4)
    features = [f.astype(np.float32) for f in features]
    out, _ = multilevel_roi_forward(features, rois, 3, scales, canonical_size=32)
    levels = assign_fpn_levels(rois[:, 1:], 2, 5, 32, 4)
    for lvl, (x, s) in enumerate(zip(features, scales)):
        idx = levels == lvl + 2
        per_level = roi_align_forward(x, rois[idx], 3, s, 2, True, impl="separable")[0]
        np.testing.assert_array_equal(out[idx], per_level)


def test_config_poolers_are_the_pooler_kinds():
    assert set(POOLERS) == set(POOLER_KINDS)


# ---------------------------------------------------------------------------------------------
# RoIWarp


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("scale", [1.0, 1 / 4, 1 / 16])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_warp_forward_matches_reference(mode, scale, impl):
    rng = np.random.default_rng(int(100 * scale) + 31)
    x = rng.standard_normal((2, 2, 7, 9))
    rois = make_rois(rng, scale, n_random=8)
    for output_size in (1, 3, 7):
        for aligned in (False, True):
            for sampling_ratio in (-1, 1, 2):
                out, _ = roi_warp_forward(x, rois, output_size, scale, sampling_ratio, aligned,
                                          mode, impl)
                ref = roi_warp_ref(x, rois, (output_size, output_size), scale, sampling_ratio,
                                   aligned, mode)
                assert out.shape == (len(rois), 2, output_size, output_size)
                np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12,
                                           err_msg=f"{output_size} {aligned} {sampling_ratio}")


def test_roi_warp_hand_computed():
    """Corners inside cells: RoIWarp is RoIAlign on the box rounded to whole cells."""
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)       # x[y, x] = 6 y + x
    # at scale 1/2 the box (2.6, 1.2, 8.6, 7.4) px is (1.3, 0.6, 4.3, 3.7) cells: every corner
    # inside a cell; rounded to (1, 1, 4, 4) cells = (2, 2, 8, 8) px
    box, rounded = [[0, 2.6, 1.2, 8.6, 7.4]], [[0, 2.0, 2.0, 8.0, 8.0]]
    for aligned in (False, True):
        for mode in ("avg", "max"):
            for sampling_ratio in (1, 2, -1):
                args = (3, 0.5, sampling_ratio, aligned, mode)
                warp, _ = roi_warp_forward(x, box, *args, impl="readable")
                np.testing.assert_array_equal(warp, roi_align_forward(x, rounded, *args,
                                                                      impl="readable")[0])
                assert not np.allclose(warp, roi_align_forward(x, box, *args)[0])
    # on paper, one sample per bin of 1 cell: aligned=True samples the cell centres 1, 2, 3
    # (index coordinates); aligned=False samples 1.5, 2.5, 3.5; bilinear of 6 y + x is exact
    warp, cache = roi_warp_forward(x, box, 3, 0.5, 1, aligned=True)
    centres = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(warp[0, 0], 6 * centres[:, None] + centres[None, :])
    warp, _ = roi_warp_forward(x, box, 3, 0.5, 1, aligned=False)
    np.testing.assert_allclose(warp[0, 0], 6 * (centres[:, None] + 0.5) + centres[None, :] + 0.5)
    # its gradient is RoIAlign's on the rounded box: one-hot at each sampled cell centre
    dx = roi_warp_backward(np.ones((1, 1, 3, 3)), cache)
    expected = np.zeros((6, 6))
    expected[1:4, 1:4] = 1
    np.testing.assert_allclose(dx[0, 0], expected)
    # halves round away from zero, as RoIPool's C round: -0.5 -> -1, 2.5 -> 3 (cells, scale 1)
    warp, _ = roi_warp_forward(x, [[0, -0.5, 0.4, 2.5, 2.6]], 1, 1.0, 1)
    np.testing.assert_array_equal(warp, roi_align_forward(x, [[0, -1, 0, 3, 3]], 1, 1.0, 1)[0])


def test_no_rois():
    x = np.ones((2, 3, 5, 6))
    rois = np.zeros((0, 5))
    for fwd, bwd, kw in ((roi_pool_forward, roi_pool_backward, {}),
                         (roi_align_forward, roi_align_backward, dict(aligned=True)),
                         (roi_align_forward, roi_align_backward, dict(mode="max")),
                         (roi_align_forward, roi_align_backward, dict(impl="readable")),
                         (roi_align_forward, roi_align_backward, dict(mode="max", impl="readable")),
                         (roi_warp_forward, roi_warp_backward, dict(aligned=True))):
        out, cache = fwd(x, rois, (7, 4), 0.5, **kw)
        assert out.shape == (0, 3, 7, 4)
        dx = bwd(out, cache)
        assert dx.shape == x.shape and not dx.any()
    out, cache = multilevel_roi_forward([x, x[:, :, :3, :3]], rois, 7, [1 / 4, 1 / 8])
    assert out.shape == (0, 3, 7, 7)
    assert [d.shape for d in multilevel_roi_backward(out, cache)] == [x.shape, (2, 3, 3, 3)]


def test_parallel_kernels_match_one_thread():
    """Enough work for the thread pool; RoIs overlap, so a racy backward would differ."""
    import numba
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 16, 12, 12))
    xy = rng.uniform(0, 30, (64, 2))
    rois = np.concatenate([rng.integers(0, 2, (64, 1)), xy, xy + rng.uniform(4, 20, (64, 2))], 1)
    dout = rng.standard_normal((64, 16, 7, 7))
    runs = []
    for threads in (numba.config.NUMBA_NUM_THREADS, 1):
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            res = []
            for fwd, bwd, kw in ((roi_pool_forward, roi_pool_backward, {}),
                                 (roi_align_forward, roi_align_backward, dict(aligned=True)),
                                 (roi_align_forward, roi_align_backward, dict(mode="max")),
                                 (roi_align_forward, roi_align_backward,
                                  dict(aligned=True, impl="readable")),
                                 (roi_align_forward, roi_align_backward,
                                  dict(mode="max", impl="readable"))):
                out, cache = fwd(x, rois, 7, 0.25, **kw)
                res += [out, bwd(dout, cache)]
            runs.append(res)
        finally:
            numba.set_num_threads(previous)
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_roi_warp_moves_in_whole_cells_as_the_box_slides():
    """RoIWarp keeps RoIPool's first rounding: on the ramp f(y, x) = x its mean output moves only
    when a rounded corner flips, by whole cells, while RoIAlign's follows the box exactly."""
    ramp = np.broadcast_to(np.arange(16.0), (1, 1, 16, 16)).copy()
    shifts = np.arange(0, 2.01, 1 / 8)
    rois = np.array([[0, 2.2 + s, 2.4, 8.2 + s, 8.4] for s in shifts])
    warp = roi_warp_forward(ramp, rois, 3, 1.0, 2, aligned=True)[0].mean(axis=(1, 2, 3))
    align = roi_align_forward(ramp, rois, 3, 1.0, 2, aligned=True)[0].mean(axis=(1, 2, 3))
    # the corners 2.2 + s and 8.2 + s round up one cell more at s = 0.3 and s = 1.3
    np.testing.assert_allclose(warp - warp[0], np.floor(shifts + 0.7), atol=1e-12)
    np.testing.assert_allclose(align - align[0], shifts, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# hand-computed cases


@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_hand_computed(impl):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)       # x[y, x] = 4 y + x
    # aligned: box (1, 1, 3, 3) becomes cells (0.5 .. 2.5); bins of 1 cell sampled at their centres
    # (1, 1), (1, 2), (2, 1), (2, 2), where bilinear interpolation of 4 y + x is exact
    out, cache = roi_align_forward(x, [[0, 1, 1, 3, 3]], 2, 1.0, 1, aligned=True, impl=impl)
    np.testing.assert_allclose(out[0, 0], [[5.0, 6.0], [9.0, 10.0]])
    # the gradient of out[0, 0, 0, 0] is the one-hot at its sample (1, 1)
    dx = roi_align_backward(np.array([[[[1.0, 0.0], [0.0, 0.0]]]]), cache)
    np.testing.assert_allclose(dx[0, 0], np.eye(4)[1][:, None] * np.eye(4)[1][None, :])
    # not aligned: one 2 x 2 bin sampled at 0.5 and 1.5: mean of 4 y + x there = 4 + 1
    out, _ = roi_align_forward(x, [[0, 0, 0, 2, 2]], 1, 1.0, 2, impl=impl)
    np.testing.assert_allclose(out[0, 0], [[5.0]])
    # samples beyond the map read 0 but still count: on a 2 x 2 map of ones, the box (0, 0, 4, 4)
    # samples 1 and 3 per axis; only (1, 1) lies inside, so the mean is 1/4
    out, _ = roi_align_forward(np.ones((1, 1, 2, 2)), [[0, 0, 0, 4, 4]], 1, 1.0, 2, impl=impl)
    np.testing.assert_allclose(out[0, 0], [[0.25]])
    # max mode: the largest of the 4 samples (1.5, 1.5) -> 4 * 1.5 + 1.5
    out, cache = roi_align_forward(x, [[0, 0, 0, 2, 2]], 1, 1.0, 2, mode="max", impl=impl)
    np.testing.assert_allclose(out[0, 0], [[7.5]])
    # ... and its gradient goes to the four taps of that sample, 1/4 each
    dx = roi_align_backward(np.ones((1, 1, 1, 1)), cache)
    np.testing.assert_allclose(dx[0, 0], np.pad(np.full((2, 2), 0.25), ((1, 1), (1, 1))))


def test_roi_pool_hand_computed():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    # round: x1 0.4 -> 0, y1 0.6 -> 1, x2 2.5 -> 3 (half away from zero), y2 3.49 -> 3; inclusive
    # end: 4 x 3 cells; bins of 2 x 1.5 cells -> rows {1, 2} and {2, 3}, columns {0, 1} and {2, 3}
    out, cache = roi_pool_forward(x, [[0, 0.4, 0.6, 2.5, 3.49]], 2, 1.0)
    np.testing.assert_array_equal(out[0, 0], [[9.0, 11.0], [13.0, 15.0]])
    dx = roi_pool_backward(np.ones((1, 1, 2, 2)), cache)
    expected = np.zeros(16)
    expected[[9, 11, 13, 15]] = 1
    np.testing.assert_array_equal(dx.reshape(-1), expected)


# ---------------------------------------------------------------------------------------------
# gradients


def check_grad(forward, backward, x, rois, **kwargs):
    out, cache = forward(x, rois, **kwargs)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dx = backward(dout, cache)
    num = numerical_gradient_array(lambda: forward(x, rois, **kwargs)[0], x, dout)
    assert dx.shape == x.shape
    assert rel_error(dx, num) < 1e-7, rel_error(dx, num)
    assert np.any(dx != 0)


@pytest.mark.parametrize("scale", [1.0, 1 / 4])
def test_roi_pool_gradient(scale):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 5, 6))                          # distinct values: no ties
    check_grad(roi_pool_forward, roi_pool_backward, x, make_rois(rng, scale, h=5, w=6, n_random=3),
               output_size=3, spatial_scale=scale)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2), (True, -1), (False, 3)])
def test_roi_align_gradient(mode, aligned, sampling_ratio, impl):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 5, 6))
    rois = make_rois(rng, 0.5, h=5, w=6, n_random=3)
    check_grad(roi_align_forward, roi_align_backward, x, rois, output_size=(3, 2), spatial_scale=0.5,
               sampling_ratio=sampling_ratio, aligned=aligned, mode=mode, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_roi_warp_gradient(mode, aligned, sampling_ratio, impl):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, 5, 6))
    rois = make_rois(rng, 0.5, h=5, w=6, n_random=3)
    check_grad(roi_warp_forward, roi_warp_backward, x, rois, output_size=(3, 2), spatial_scale=0.5,
               sampling_ratio=sampling_ratio, aligned=aligned, mode=mode, impl=impl)


# ---------------------------------------------------------------------------------------------
# FPN levels and the multi-level pooler


def test_assign_fpn_levels_hand_computed():
    side = np.array([224.0, 112.0, 111.0, 448.0, 10_000.0, 0.0, 56.0])
    boxes = np.stack([np.zeros_like(side), np.zeros_like(side), side, side], axis=1)
    np.testing.assert_array_equal(assign_fpn_levels(boxes, 2, 5), [4, 3, 2, 5, 5, 2, 2])
    np.testing.assert_array_equal(assign_fpn_levels(boxes, 2, 5, canonical_size=56,
                                                    canonical_level=3), [5, 4, 3, 5, 5, 2, 3])


@settings(max_examples=50, deadline=None)
@given(st.floats(1.0, 2000.0), st.floats(0.25, 4.0))
def test_assign_fpn_levels_properties(side, aspect):
    box = np.array([[3.0, 5.0, 3.0 + side * aspect ** 0.5, 5.0 + side / aspect ** 0.5]])
    k = assign_fpn_levels(box, 2, 5)[0]
    assert 2 <= k <= 5
    unclamped = np.floor(4 + np.log2(side / 224) + 1e-6)
    assert k == np.clip(unclamped, 2, 5)
    double = box.copy()
    double[:, 2:] = box[:, :2] + 2 * (box[:, 2:] - box[:, :2])    # twice the side: one level up
    assert assign_fpn_levels(double, 2, 5)[0] == np.clip(unclamped + 1, 2, 5)


def multilevel_setup(seed):
    rng = np.random.default_rng(seed)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    features = [rng.standard_normal((2, 2, 8 // 2 ** i, 8 // 2 ** i)) / (i + 1) for i in range(4)]
    side = np.array([3.0, 6.0, 12.0, 12.0, 24.0, 50.0, 100.0, 20.0])
    xy = rng.uniform(-10, 30, (len(side), 2))                      # a 32 x 32 image
    rois = np.concatenate([rng.integers(0, 2, (len(side), 1)), xy, xy + side[:, None]], axis=1)
    return features, rois, scales


@pytest.mark.parametrize("kind", ["roi_align", "roi_align_unaligned", "roi_align_max", "roi_pool",
                                  "roi_warp", "roi_warp_max"])
def test_multilevel_matches_per_level_and_gradient(kind):
    features, rois, scales = multilevel_setup(4)
    kw = dict(output_size=2, scales=scales, sampling_ratio=2, kind=kind, canonical_size=32,
              canonical_level=4)
    out, cache = multilevel_roi_forward(features, rois, **kw)
    levels = assign_fpn_levels(rois[:, 1:], 2, 5, 32, 4)
    assert set(levels) == {2, 3, 4, 5}                               # every level is used
    for lvl, (x, s) in enumerate(zip(features, scales)):
        idx = levels == lvl + 2
        if kind == "roi_pool":
            ref = roi_pool_ref(x, rois[idx], (2, 2), s)
        else:
            aligned = kind != "roi_align_unaligned"
            ref_op = roi_warp_ref if kind.startswith("roi_warp") else roi_align_ref
            ref = ref_op(x, rois[idx], (2, 2), s, 2, aligned, "max" if "max" in kind else "avg")
        np.testing.assert_allclose(out[idx], ref, rtol=1e-10, atol=1e-12)
    dout = np.random.default_rng(5).standard_normal(out.shape)
    dfeatures = multilevel_roi_backward(dout, cache)
    for x, dx in zip(features, dfeatures):
        num = numerical_gradient_array(lambda: multilevel_roi_forward(features, rois, **kw)[0], x, dout)
        assert dx.shape == x.shape
        assert rel_error(dx, num) < 1e-7


def test_multilevel_level_without_rois_gets_zeros():
    features, rois, scales = multilevel_setup(6)
    small = rois[:2].copy()
    small[:, 3:] = small[:, 1:3] + 4                                 # all on the finest level
    out, cache = multilevel_roi_forward(features, small, 3, scales, canonical_size=32)
    dfeatures = multilevel_roi_backward(np.ones_like(out), cache)
    assert dfeatures[0].any() and not any(d.any() for d in dfeatures[1:])
    assert [d.shape for d in dfeatures] == [f.shape for f in features]


# ---------------------------------------------------------------------------------------------
# validation and the no-JIT path


def test_inputs_are_validated():
    x = np.zeros((2, 1, 4, 4))
    good = np.array([[1, 0, 0, 2, 2.0]])
    with pytest.raises(ValueError, match="features"):
        roi_align_forward(x[0], good, 2)
    with pytest.raises(TypeError, match="features"):
        roi_pool_forward(x.astype(np.int32), good, 2, 1.0)
    with pytest.raises(ValueError, match="rois"):
        roi_align_forward(x, good[:, 1:], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool_forward(x, good, 0, 1.0)
    with pytest.raises(ValueError, match="batch"):
        roi_align_forward(x, [[2, 0, 0, 2, 2]], 2)
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_pool_forward(x, good, 2, -1.0)
    with pytest.raises(ValueError, match="mode"):
        roi_align_forward(x, good, 2, mode="mean")
    with pytest.raises(ValueError, match="impl"):
        roi_align_forward(x, good, 2, impl="fast")
    with pytest.raises(ValueError, match="mode"):
        roi_warp_forward(x, good, 2, mode="mean")
    with pytest.raises(ValueError, match="batch"):
        roi_warp_forward(x, [[2, 0, 0, 2, 2]], 2)
    with pytest.raises(ValueError, match="kind"):
        multilevel_roi_forward([x], good, 2, [1.0], kind="align")
    with pytest.raises(ValueError, match="scales"):
        multilevel_roi_forward([x, x], good, 2, [1 / 4, 1 / 6])


NO_JIT_CASES = (("pool", roi_pool_forward, roi_pool_backward, {}),
                ("avg", roi_align_forward, roi_align_backward, dict(sampling_ratio=2)),
                ("max", roi_align_forward, roi_align_backward, dict(mode="max")),
                ("readable_avg", roi_align_forward, roi_align_backward,
                 dict(sampling_ratio=2, impl="readable")),
                ("readable_max", roi_align_forward, roi_align_backward,
                 dict(mode="max", aligned=True, impl="readable")),
                ("warp", roi_warp_forward, roi_warp_backward, dict(aligned=True)))

NO_JIT_SCRIPT = """
import sys
import numpy as np
from npmaskrcnn.boxes import nms
from npmaskrcnn.roi_ops import (roi_align_backward, roi_align_forward, roi_pool_backward,
                                roi_pool_forward, roi_warp_backward, roi_warp_forward)
from test_roi_ops import NO_JIT_CASES
d = np.load(sys.argv[1])
x, rois, dout = d["x"], d["rois"], d["dout"]
res = {}
for name, fwd, bwd, kw in NO_JIT_CASES:
    out, cache = fwd(x, rois, 3, 0.5, **kw)
    res[name + "_out"], res[name + "_dx"] = out, bwd(dout, cache)
res["nms"] = nms(d["boxes"], d["scores"], 0.5)
np.savez(sys.argv[2], **res)
"""


def test_disable_jit_gives_the_same_results(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 6))
    rois = make_rois(rng, 0.5, h=5, w=6, n_random=3)
    dout = rng.standard_normal((len(rois), 2, 3, 3))
    boxes = rng.uniform(0, 20, (30, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 10, (30, 2))], axis=1)
    scores = rng.uniform(0, 1, 30)
    np.savez(tmp_path / "in.npz", x=x, rois=rois, dout=dout, boxes=boxes, scores=scores)
    env = dict(os.environ, NUMBA_DISABLE_JIT="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    subprocess.run([sys.executable, "-c", NO_JIT_SCRIPT, str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], check=True, env=env, cwd=ROOT)
    res = np.load(tmp_path / "out.npz")
    from npmaskrcnn.boxes import nms
    np.testing.assert_array_equal(res["nms"], nms(boxes, scores, 0.5))
    for name, fwd, bwd, kw in NO_JIT_CASES:
        out, cache = fwd(x, rois, 3, 0.5, **kw)
        np.testing.assert_allclose(res[name + "_out"], out, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res[name + "_dx"], bwd(dout, cache), rtol=1e-12, atol=1e-14)


def test_matches_torchvision_if_installed():
    """Optional cross-check against torchvision's own kernels (skipped when it is not installed)."""
    tvops = pytest.importorskip("torchvision.ops")     # first: it fails fast, torch imports slowly
    import torch
    from npmaskrcnn.boxes import nms
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 7, 9))
    for scale in (1.0, 1 / 4):
        rois = make_rois(rng, scale)
        tx, tr = torch.from_numpy(x), torch.from_numpy(rois)
        inverted = (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])
        for output_size in (1, 3, 7):
            np.testing.assert_array_equal(roi_pool_forward(x, rois, output_size, scale)[0],
                                          tvops.roi_pool(tx, tr, output_size, scale).numpy())
            for aligned in (False, True):
                for sampling_ratio in (-1, 2):
                    sel = np.ones(len(rois), bool)
                    if aligned and sampling_ratio <= 0:
                        # torchvision sizes an adaptive grid from the unclamped (negative) width
                        # of an inverted box and, for some sizes, raises ("cannot create
                        # std::vector larger than max_size()"); compare the other boxes
                        sel = ~inverted
                    theirs = tvops.roi_align(tx, tr[torch.from_numpy(sel)], output_size, scale,
                                             sampling_ratio, aligned)
                    for impl in IMPLS:
                        ours = roi_align_forward(x, rois[sel], output_size, scale, sampling_ratio,
                                                 aligned, impl=impl)[0]
                        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)
    boxes = rng.uniform(0, 20, (200, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 10, (200, 2))], axis=1)
    scores = rng.integers(0, 20, 200) / 20.0                         # many ties
    np.testing.assert_array_equal(nms(boxes, scores, 0.5),
                                  tvops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy())

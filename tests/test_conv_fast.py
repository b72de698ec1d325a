"""Tests for npmaskrcnn.conv_fast, the Winograd F(2x2, 3x3) optimisation of conv2d: equal to the
readable im2col path (float64 to 1e-10, float32 to float32 rounding), float64 numerical
gradients of the fast path itself and of conv2d when it dispatches there, the dispatch rule, and
the kernels run as plain Python (what NUMBA_DISABLE_JIT=1 does)."""

import numpy as np
import pytest
from gradcheck import check_layer_gradients, rel_error
from reference import conv2d_ref

from npmaskrcnn import conv_fast as CF
from npmaskrcnn import layers as L


def _python(kernel):
    return getattr(kernel, "py_func", kernel)


def _im2col_conv(x, w, b, pad, monkeypatch):
    """The readable path's output and gradients, with the fast path switched off."""
    monkeypatch.setattr(CF, "USE_WINOGRAD", False)
    out, cache = L.conv2d_forward(x, w, b, stride=1, pad=pad)
    assert not isinstance(cache, CF.WinogradCache)
    return out, cache


# (N, C, H, W, F, pad, bias, seed): even and odd outputs (the last tile half outside), every pad
WG_CASES = [
    (2, 3, 6, 6, 4, 1, True, 0),
    (1, 2, 5, 7, 3, 1, False, 1),  # odd output sizes, non-square
    (2, 2, 6, 5, 2, 0, True, 2),  # no padding
    (1, 3, 4, 4, 2, 2, True, 3),  # padding 2: output larger than the input
    (1, 1, 3, 3, 1, 0, True, 4),  # a single 1x1 output: one tile, three quarters dropped
    (1, 2, 1, 2, 2, 1, True, 5),  # a 1-pixel-high input
]


def _arrays(case, dtype=np.float64):
    n, c, h, w, f, pad, bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    return rng, x, wt, b, pad


@pytest.mark.parametrize("case", WG_CASES)
def test_winograd_equals_im2col_in_float64(case, monkeypatch):
    rng, x, w, b, pad = _arrays(case)
    out, cache = CF.winograd_conv2d_forward(x, w, b, pad)
    ref_out, ref_cache = _im2col_conv(x, w, b, pad, monkeypatch)
    assert out.shape == ref_out.shape and out.dtype == np.float64
    assert rel_error(out, ref_out) < 1e-10
    assert rel_error(out, conv2d_ref(x, w, b, 1, pad)) < 1e-10
    dout = rng.standard_normal(out.shape)
    for need_dx in (True, False):
        grads = CF.winograd_conv2d_backward(dout, cache, need_dx)
        ref = L.conv2d_backward(dout, ref_cache, need_dx)
        for g, r in zip(grads, ref):
            if r is None:
                assert g is None
            else:
                assert g.shape == r.shape and rel_error(g, r) < 1e-10


@pytest.mark.parametrize("case", WG_CASES)
def test_winograd_gradients(case):
    rng, x, w, b, pad = _arrays(case)
    check_layer_gradients(lambda x_, w_, b_, pad: CF.winograd_conv2d_forward(x_, w_, b_, pad),
                          CF.winograd_conv2d_backward, [x, w, b], rng, pad=pad)


def test_conv2d_dispatches_by_shape_and_its_gradients_hold(monkeypatch):
    assert CF.winograd_pays((16, 64, 14, 14), (64, 64, 3, 3), 1, 1)  # the mask head
    assert not CF.winograd_pays((16, 64, 14, 14), (64, 64, 3, 3), 2, 1)  # stride 2
    assert not CF.winograd_pays((1, 3, 16, 16), (4, 3, 3, 3), 1, 1)  # 3 channels: im2col wins
    assert not CF.winograd_pays((2, 64, 32, 32), (64, 64, 1, 1), 1, 0)  # 1x1
    assert not CF.winograd_pays((2, 256, 4, 4), (256, 256, 3, 3), 1, 1)  # 8 tiles
    monkeypatch.setattr(CF, "USE_WINOGRAD", False)
    assert not CF.winograd_pays((16, 64, 14, 14), (64, 64, 3, 3), 1, 1)
    monkeypatch.setattr(CF, "USE_WINOGRAD", True)
    # shrink the thresholds so that a small float64 case goes through conv2d's fast path
    monkeypatch.setattr(CF, "MIN_CHANNELS", 1)
    monkeypatch.setattr(CF, "MIN_TILES", 1)
    rng, x, w, b, pad = _arrays(WG_CASES[1])
    out, cache = L.conv2d_forward(x, w, b, stride=1, pad=pad)
    assert isinstance(cache, CF.WinogradCache)
    assert rel_error(out, conv2d_ref(x, w, b, 1, pad)) < 1e-10
    check_layer_gradients(L.conv2d_forward, L.conv2d_backward, [x, w, b], rng, stride=1, pad=pad)


@pytest.mark.parametrize("shape", [(16, 64, 14, 14, 64), (2, 32, 32, 32, 32), (3, 16, 11, 9, 24)])
def test_winograd_float32_matches_im2col(shape, monkeypatch):
    n, c, h, wd, f = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
    w = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    out, cache = L.conv2d_forward(x, w, b, stride=1, pad=1)
    assert isinstance(cache, CF.WinogradCache)
    ref_out, ref_cache = _im2col_conv(x, w, b, 1, monkeypatch)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    grads, ref = L.conv2d_backward(dout, cache), L.conv2d_backward(dout, ref_cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert rel_error(out, ref_out) < 1e-5
    for g, r in zip(grads, ref):
        assert rel_error(g, r) < 1e-5


def test_winograd_backward_is_repeatable_and_leaves_cache_alone():
    rng, x, w, b, pad = _arrays(WG_CASES[0])
    out, cache = CF.winograd_conv2d_forward(x, w, b, pad)
    saved = [a.copy() if isinstance(a, np.ndarray) else a for a in cache]
    dout = rng.standard_normal(out.shape)
    first = CF.winograd_conv2d_backward(dout, cache)
    second = CF.winograd_conv2d_backward(dout, cache)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    for a, c in zip(saved, cache):
        np.testing.assert_array_equal(a, c)


def test_winograd_hand_case():
    # an all-ones 3x3 kernel with padding 1 sums each pixel's 3x3 neighbourhood
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    out, cache = CF.winograd_conv2d_forward(x, np.ones((1, 1, 3, 3)), None, 1)
    assert out[0, 0, 0, 0] == 0 + 1 + 4 + 5
    assert out[0, 0, 1, 1] == sum(range(0, 3)) + sum(range(4, 7)) + sum(range(8, 11))
    dx, dw, db = CF.winograd_conv2d_backward(np.ones_like(out), cache)
    assert db is None
    # each pixel is read by as many windows as it has neighbours (itself included) in the image
    np.testing.assert_allclose(dx[0, 0], [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], atol=1e-12)


def test_kernels_run_as_plain_python():
    rng = np.random.default_rng(9)
    th, tw = 3, 3  # outputs 5 x 6 from a 5 x 6 input with padding 1
    xp = rng.standard_normal((2, 2 * th + 2, 2 * tw + 2, 3))
    v = CF._winograd_input_kernel(xp, th, tw)
    np.testing.assert_array_equal(_python(CF._winograd_input_kernel)(xp, th, tw), v)
    m = rng.standard_normal((16, v.shape[1], 4))
    bias = rng.standard_normal(4)
    np.testing.assert_array_equal(_python(CF._winograd_output_kernel)(m, bias, 2, th, tw),
                                  CF._winograd_output_kernel(m, bias, 2, th, tw))
    dy = rng.standard_normal((2, 2 * th, 2 * tw, 4))
    np.testing.assert_array_equal(_python(CF._winograd_output_adjoint_kernel)(dy),
                                  CF._winograd_output_adjoint_kernel(dy))
    np.testing.assert_allclose(_python(CF._winograd_input_adjoint_kernel)(v, 2, th, tw),
                               CF._winograd_input_adjoint_kernel(v, 2, th, tw), rtol=1e-14, atol=1e-14)

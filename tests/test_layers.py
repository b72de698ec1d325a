"""Tests for npmaskrcnn.layers: forward against the loop references, float64 numerical gradients,
one case per op small enough to check on paper, edge cases, dtypes, and the numba kernels run as
plain Python (what NUMBA_DISABLE_JIT=1 does)."""

import numpy as np
import pytest
from gradcheck import check_layer_gradients, rel_error
from reference import (
    conv2d_ref,
    conv_transpose2d_ref,
    group_norm_ref,
    linear_ref,
    max_pool2d_ref,
    upsample_nearest_ref,
)

from npmaskrcnn import layers as L


def _python(kernel):
    """The plain-Python function behind a numba kernel (itself when NUMBA_DISABLE_JIT=1)."""
    return getattr(kernel, "py_func", kernel)


# (N, C, H, W, F, KH, KW, stride, pad, bias, seed)
CONV_CASES = [
    (2, 3, 5, 5, 4, 3, 3, 1, 1, True, 0),
    (1, 2, 6, 5, 3, 2, 3, 2, 0, True, 1),  # non-square map and kernel
    (2, 3, 4, 4, 3, 1, 1, 1, 0, False, 2),  # 1x1 fast path, no bias
    (1, 2, 5, 5, 2, 1, 1, 2, 0, True, 3),  # 1x1 with stride: a strided slice, then the product
    (1, 2, 6, 6, 3, 1, 1, 2, 0, True, 9),  # ... where the last row and column are never read
    (1, 1, 3, 3, 2, 3, 3, 1, 4, True, 4),  # padding larger than the kernel
    (1, 2, 3, 4, 2, 3, 4, 1, 0, True, 5),  # kernel equal to the input: 1x1 output
    (1, 2, 1, 1, 3, 1, 1, 1, 0, True, 6),  # 1x1 input
    (1, 2, 7, 7, 2, 2, 2, 3, 1, True, 7),  # stride larger than the kernel
    (1, 1, 9, 9, 2, 7, 7, 2, 3, True, 8),  # the stem's 7x7/2
]


def _conv_arrays(case, dtype=np.float64):
    n, c, h, w, f, kh, kw, stride, pad, bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    return rng, x, wt, b, stride, pad


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_reference(case):
    _, x, w, b, stride, pad = _conv_arrays(case)
    out, _ = L.conv2d_forward(x, w, b, stride=stride, pad=pad)
    assert rel_error(out, conv2d_ref(x, w, b, stride, pad)) < 1e-12


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case):
    rng, x, w, b, stride, pad = _conv_arrays(case)
    check_layer_gradients(L.conv2d_forward, L.conv2d_backward, [x, w, b], rng, stride=stride, pad=pad)


def test_conv2d_need_dx_false_skips_only_dx():
    _, x, w, b, stride, pad = _conv_arrays(CONV_CASES[0])
    out, cache = L.conv2d_forward(x, w, b, stride=stride, pad=pad)
    dout = np.random.default_rng(9).standard_normal(out.shape)
    dx, dw, db = L.conv2d_backward(dout, cache)
    dx2, dw2, db2 = L.conv2d_backward(dout, cache, need_dx=False)
    assert dx2 is None and dx is not None
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, db2)


def test_conv2d_hand_case():
    # 3x3 image 1..9, 2x2 kernel of ones, bias 1: each output is 1 + the sum of its window
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    out, cache = L.conv2d_forward(x, w, np.array([1.0]))
    np.testing.assert_array_equal(out[0, 0], [[13.0, 17.0], [25.0, 29.0]])
    dx, dw, db = L.conv2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])  # windows per pixel
    np.testing.assert_array_equal(dw[0, 0], [[12, 16], [24, 28]])  # sum of x under each tap
    np.testing.assert_array_equal(db, [4.0])


def test_conv2d_backward_is_repeatable_and_leaves_cache_alone():
    _, x, w, b, stride, pad = _conv_arrays(CONV_CASES[0])
    out, cache = L.conv2d_forward(x, w, b, stride=stride, pad=pad)
    before = [np.copy(a) if isinstance(a, np.ndarray) else a for a in cache]
    dout = np.ones_like(out)
    first = L.conv2d_backward(dout, cache)
    second = L.conv2d_backward(dout, cache)
    for a, b2 in zip(first, second):
        np.testing.assert_array_equal(a, b2)
    for a, b2 in zip(cache, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b2)


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[8]])
def test_conv2d_float32(case):
    _, x, w, b, stride, pad = _conv_arrays(case, np.float32)
    out, cache = L.conv2d_forward(x, w, b, stride=stride, pad=pad)
    assert out.dtype == np.float32
    grads = L.conv2d_backward(np.ones_like(out), cache)
    assert all(g.dtype == np.float32 for g in grads if g is not None)
    ref = conv2d_ref(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64), stride, pad)
    assert rel_error(out, ref) < 1e-6


def test_kernels_run_as_plain_python():
    # NUMBA_DISABLE_JIT=1 runs exactly these Python functions
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 5, 4))
    args = (3, 2, 2, 1, 3, 3)  # kh, kw, stride, pad, oh, ow
    cols = L._im2col_kernel(x, *args, 0.0)
    np.testing.assert_array_equal(_python(L._im2col_kernel)(x, *args, 0.0), cols)
    np.testing.assert_array_equal(
        _python(L._col2im_kernel)(cols, 3, 5, 4, *args), L._col2im_kernel(cols, 3, 5, 4, *args)
    )


# (N, C, H, W, F, K, stride, pad, bias, seed)
CONVT_CASES = [
    (2, 3, 3, 3, 2, 2, 2, 0, True, 0),  # the mask head's 2x2/2
    (1, 2, 3, 4, 3, 3, 2, 1, True, 1),
    (1, 2, 2, 2, 2, 3, 1, 0, False, 2),
    (1, 2, 1, 1, 2, 2, 2, 0, True, 3),  # 1x1 input
    (1, 1, 3, 3, 2, 4, 3, 1, True, 4),
]


def _convt_arrays(case, dtype=np.float64):
    n, c, h, w, f, k, stride, pad, bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((c, f, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    return rng, x, wt, b, stride, pad


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose2d_forward_matches_reference(case):
    _, x, w, b, stride, pad = _convt_arrays(case)
    out, _ = L.conv_transpose2d_forward(x, w, b, stride=stride, pad=pad)
    assert rel_error(out, conv_transpose2d_ref(x, w, b, stride, pad)) < 1e-12


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose2d_gradients(case):
    rng, x, w, b, stride, pad = _convt_arrays(case)
    check_layer_gradients(
        L.conv_transpose2d_forward, L.conv_transpose2d_backward, [x, w, b], rng, stride=stride, pad=pad
    )


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    # <conv2d(y, w), x> = <y, conv_transpose2d(x, w)> for y with C channels, x with F channels
    rng = np.random.default_rng(11)
    w = rng.standard_normal((3, 2, 3, 3))  # conv2d: 2 -> 3 channels
    y = rng.standard_normal((2, 2, 7, 7))
    conv_y, _ = L.conv2d_forward(y, w, stride=2, pad=1)  # (2, 3, 4, 4)
    x = rng.standard_normal(conv_y.shape)
    convt_x, _ = L.conv_transpose2d_forward(x, w, stride=2, pad=1)  # (2, 2, 7, 7)
    assert convt_x.shape == y.shape
    assert abs(np.sum(conv_y * x) - np.sum(y * convt_x)) < 1e-10


def test_conv_transpose2d_hand_case():
    # 2x2/2 with no overlap: each input pixel stamps its own 2x2 block x * w
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    w = np.array([[1.0, 10.0], [100.0, 1000.0]]).reshape(1, 1, 2, 2)
    out, cache = L.conv_transpose2d_forward(x, w, np.array([0.5]), stride=2)
    expected = np.array([[1, 10, 2, 20], [100, 1000, 200, 2000], [3, 30, 4, 40], [300, 3000, 400, 4000]]) + 0.5
    np.testing.assert_array_equal(out[0, 0], expected)
    dx, dw, db = L.conv_transpose2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], np.full((2, 2), 1111.0))  # sum of w
    np.testing.assert_array_equal(dw[0, 0], np.full((2, 2), 10.0))  # sum of x
    np.testing.assert_array_equal(db, [16.0])


def test_conv_transpose2d_float32():
    _, x, w, b, stride, pad = _convt_arrays(CONVT_CASES[1], np.float32)
    out, cache = L.conv_transpose2d_forward(x, w, b, stride=stride, pad=pad)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in L.conv_transpose2d_backward(np.ones_like(out), cache))


# (N, C, H, W, kernel, stride, pad, seed)
POOL_CASES = [
    (2, 3, 6, 6, 2, 2, 0, 0),
    (1, 2, 7, 7, 3, 2, 1, 1),  # the stem's 3x3/2, pad 1
    (1, 2, 5, 4, 3, 1, 1, 2),  # overlapping windows
    (1, 1, 1, 1, 1, 1, 0, 3),  # 1x1 input
    (1, 2, 3, 3, 3, 3, 1, 4),  # pad = kernel // 2, windows mostly padding
    (1, 1, 4, 4, 4, 4, 0, 5),  # kernel equal to the input
    (1, 2, 5, 5, 2, 2, 1, 6),  # floor output size, last row dropped
]


def _pool_from_argmax(dout, argmax, x_shape):
    dx = np.zeros(x_shape)
    for idx in np.ndindex(dout.shape):
        dx[idx[0], idx[1]].flat[argmax[idx]] += dout[idx]
    return dx


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_forward_and_backward_match_reference(case):
    n, c, h, w, k, stride, pad, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    out, cache = L.max_pool2d_forward(x, kernel_size=k, stride=stride, pad=pad)
    ref, argmax = max_pool2d_ref(x, k, stride, pad)
    np.testing.assert_array_equal(out, ref)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(L.max_pool2d_backward(dout, cache), _pool_from_argmax(dout, argmax, x.shape), atol=1e-14)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_gradients(case):
    n, c, h, w, k, stride, pad, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    check_layer_gradients(
        L.max_pool2d_forward, L.max_pool2d_backward, [x], rng, kernel_size=k, stride=stride, pad=pad
    )


def test_max_pool2d_hand_case_and_ties():
    x = np.array([[1.0, 5.0, 2.0, 2.0], [3.0, 2.0, 2.0, 2.0], [0.0, 0.0, -1.0, -3.0], [0.0, 0.0, -2.0, -4.0]])
    out, cache = L.max_pool2d_forward(x.reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(out[0, 0], [[5.0, 2.0], [0.0, -1.0]])
    dx = L.max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)[0, 0]
    # ties (the 2s, the 0s) send the gradient to the first maximum in row-major order
    np.testing.assert_array_equal(dx, [[0, 1, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]])


def test_max_pool2d_padding_never_wins_and_limits():
    x = -np.ones((1, 1, 2, 2))  # all negative: zero padding would win, -inf padding does not
    out, _ = L.max_pool2d_forward(x, kernel_size=3, stride=1, pad=1)
    np.testing.assert_array_equal(out, x)
    with pytest.raises(ValueError):
        L.max_pool2d_forward(x, kernel_size=2, stride=2, pad=2)


def test_max_pool2d_float32_and_plain_python():
    x = np.random.default_rng(12).standard_normal((2, 2, 5, 5)).astype(np.float32)
    out, cache = L.max_pool2d_forward(x, kernel_size=3, stride=2, pad=1)
    assert out.dtype == np.float32 and L.max_pool2d_backward(out, cache).dtype == np.float32
    planes = x.reshape(4, 1, 5, 5)
    np.testing.assert_array_equal(
        _python(L._im2col_kernel)(planes, 3, 3, 2, 1, 3, 3, -np.inf), L._im2col_kernel(planes, 3, 3, 2, 1, 3, 3, -np.inf)
    )


@pytest.mark.parametrize("shape,scale", [((2, 3, 2, 3), 2), ((1, 2, 1, 1), 3), ((1, 1, 3, 2), 1)])
def test_upsample_nearest(shape, scale):
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape)
    out, _ = L.upsample_nearest_forward(x, scale=scale)
    np.testing.assert_array_equal(out, upsample_nearest_ref(x, scale))
    check_layer_gradients(L.upsample_nearest_forward, L.upsample_nearest_backward, [x], rng, scale=scale)


def test_upsample_nearest_hand_case_and_float32():
    x = np.array([[[[1.0, 2.0]]]], dtype=np.float32)
    out, cache = L.upsample_nearest_forward(x)
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2]])
    dx = L.upsample_nearest_backward(np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7]])
    assert out.dtype == np.float32 and dx.dtype == np.float32


# (N, C, H, W, G, eps, seed)
GN_CASES = [
    (2, 4, 3, 3, 2, 1e-5, 0),
    (1, 6, 2, 3, 3, 1e-5, 1),
    (2, 3, 2, 2, 3, 1e-5, 2),  # a single channel per group
    (1, 2, 1, 1, 1, 1.0, 3),  # 1x1 maps: a group of two values (xhat = +-1 saturates unless eps is large)
    (2, 4, 1, 1, 4, 1e-5, 4),  # one value per group: variance 0, output beta, gradient 0
    (1, 4, 3, 2, 1, 1e-5, 5),  # one group: LayerNorm over (C, H, W)
]


@pytest.mark.parametrize("case", GN_CASES)
def test_group_norm_forward_and_gradients(case):
    n, c, h, w, g, eps, seed = case
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal((n, c, h, w)) + 0.5
    gamma = rng.standard_normal(c)
    beta = rng.standard_normal(c)
    out, _ = L.group_norm_forward(x, gamma, beta, g, eps=eps)
    assert rel_error(out, group_norm_ref(x, gamma, beta, g, eps)) < 1e-12
    check_layer_gradients(
        L.group_norm_forward, L.group_norm_backward, [x, gamma, beta], rng, num_groups=g, eps=eps
    )


def test_group_norm_hand_case():
    # one group of 1, 2, 3, 4: mean 2.5, biased variance 1.25
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    out, cache = L.group_norm_forward(x, np.array([2.0]), np.array([1.0]), 1, eps=0.0)
    np.testing.assert_allclose(out.ravel(), 2.0 * np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25) + 1.0, rtol=1e-15)
    dx, dgamma, dbeta = L.group_norm_backward(np.ones_like(out), cache)
    np.testing.assert_allclose(dx, 0.0, atol=1e-15)  # a uniform shift of the output is normalised away
    np.testing.assert_allclose(dgamma, [0.0], atol=1e-15)
    np.testing.assert_array_equal(dbeta, [4.0])


def test_group_norm_float32_with_a_large_mean():
    rng = np.random.default_rng(14)
    x = (1000.0 + rng.standard_normal((2, 8, 4, 4))).astype(np.float32)
    out, cache = L.group_norm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32), 4)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in L.group_norm_backward(out, cache))
    ref = group_norm_ref(x.astype(np.float64), np.ones(8), np.zeros(8), 4, 1e-5)
    assert np.max(np.abs(out - ref)) < 1e-3


@pytest.mark.parametrize("x_shape,out_features,bias", [((3, 4), 5, True), ((2, 3, 2, 2), 4, True), ((1, 1), 1, False)])
def test_linear(x_shape, out_features, bias):
    rng = np.random.default_rng(15)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((out_features, int(np.prod(x_shape[1:]))))
    b = rng.standard_normal(out_features) if bias else None
    out, _ = L.linear_forward(x, w, b)
    assert rel_error(out, linear_ref(x, w, b)) < 1e-12
    check_layer_gradients(L.linear_forward, L.linear_backward, [x, w, b], rng)


def test_linear_hand_case_and_float32():
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    w = np.array([[3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    out, cache = L.linear_forward(x, w, np.array([1.0, -1.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [[12.0, 16.0]])
    dx, dw, db = L.linear_backward(np.array([[1.0, 2.0]], dtype=np.float32), cache)
    np.testing.assert_array_equal(dx, [[13.0, 16.0]])
    np.testing.assert_array_equal(dw, [[1.0, 2.0], [2.0, 4.0]])
    np.testing.assert_array_equal(db, [1.0, 2.0])
    assert out.dtype == dx.dtype == dw.dtype == db.dtype == np.float32


def test_relu():
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 3, 4))
    x[np.abs(x) < 0.01] = 0.5  # keep central differences away from the kink
    check_layer_gradients(L.relu_forward, L.relu_backward, [x], rng)
    out, cache = L.relu_forward(np.array([-1.0, 0.0, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [0.0, 0.0, 2.0])
    dx = L.relu_backward(np.array([5.0, 5.0, 5.0], dtype=np.float32), cache)
    np.testing.assert_array_equal(dx, [0.0, 0.0, 5.0])
    assert out.dtype == dx.dtype == np.float32


def test_max_pool2d_nan_wins_and_inf_windows_as_im2col_argmax():
    """The direct kernel gives what im2col's columns and np.argmax gave: NaN wins its window
    (the first NaN), a window of -inf takes its first position, ties go to the first maximum."""
    x = np.array([[[[1.0, np.nan, 2.0, np.nan], [3.0, 2.0, 7.0, 7.0],
                    [-np.inf, -np.inf, 5.0, 5.0], [-np.inf, -np.inf, 5.0, 5.0]]]])
    out, (argmax, *_) = L.max_pool2d_forward(x, kernel_size=2, stride=2, pad=0)
    assert np.isnan(out[0, 0, 0, 0]) and np.isnan(out[0, 0, 0, 1])
    assert out[0, 0, 1].tolist() == [-np.inf, 5.0]
    assert argmax.tolist() == [[1, 1, 0, 0]]
    for k, s, p in ((3, 2, 1), (2, 2, 0), (3, 1, 1)):
        x = np.random.default_rng(k + s + p).standard_normal((2, 3, 7, 6)).round(0)  # many ties
        out, (argmax, *_) = L.max_pool2d_forward(x, kernel_size=k, stride=s, pad=p)
        oh, ow = out.shape[2:]
        cols = L._im2col_kernel(x.reshape(6, 1, 7, 6), k, k, s, p, oh, ow, -np.inf)
        np.testing.assert_array_equal(argmax, cols.argmax(axis=0))
        np.testing.assert_array_equal(out.reshape(6, -1), cols.max(axis=0))

"""The float32 paths training runs, compared by value with the float64 result of the same inputs.

Training runs in float32 (nn.DTYPE); the gradient checks run in float64. A float32-only fault
(a kernel specialised for float32 that indexes, accumulates or casts differently, a float16
temporary, a lost cast) keeps the dtype right and the float64 gradient checks green, so here every
forward and backward of the training path runs twice on the same numbers (float64 inputs, and
the same inputs rounded to float32) and the float32 outputs must equal the float64 ones to a
stated tolerance:

    err(a32, a64) = max |a32 - a64| / max |a64|       (one relative error per array)

float32 carries a unit roundoff of 6e-8; sums of K terms lose about sqrt(K) of it. TOL = 2e-5
(measured errors are 1e-7 .. 3e-6) is far above roundoff and far below any real fault (a wrong
index or a dropped term is an O(1) error; float16 accumulation ~1e-3).
"""

import numpy as np
import pytest

from npmaskrcnn import layers as L
from npmaskrcnn.backbone import Backbone
from npmaskrcnn.config import Config
from npmaskrcnn.losses import sigmoid_binary_cross_entropy, smooth_l1, softmax_cross_entropy
from npmaskrcnn.roi_ops import (multilevel_roi_backward, multilevel_roi_forward, roi_align_backward,
                                roi_align_forward, roi_pool_backward, roi_pool_forward)

TOL = 2e-5


def err(a32, a64):
    a32, a64 = np.asarray(a32), np.asarray(a64)
    assert a32.shape == a64.shape
    assert a32.dtype == np.float32 and a64.dtype == np.float64
    return float(np.abs(a32.astype(np.float64) - a64).max() / max(np.abs(a64).max(), 1e-30))


def both(fn, *arrays):
    """fn(*arrays) in float64 and fn(*float32 copies); the arrays go in as float64."""
    out64 = fn(*arrays)
    out32 = fn(*[a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float64
                 else a for a in arrays])
    return out32, out64


def assert_close(outs32, outs64, tol=TOL, names=None):
    for i, (a, b) in enumerate(zip(outs32, outs64)):
        if b is None:
            assert a is None
            continue
        e = err(a, b)
        assert e <= tol, f"{names[i] if names else i}: float32 vs float64 relative error {e:.2e}"


def rand(rng, *shape, scale=1.0, loc=0.0):
    return loc + scale * rng.standard_normal(shape)


# ---- layers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,wshape,stride,pad,bias", [
    ((2, 3, 16, 16), (8, 3, 7, 7), 2, 3, False),      # the stem
    ((2, 8, 9, 9), (8, 8, 3, 3), 1, 1, False),        # a block conv (no bias, GN follows)
    ((2, 8, 9, 9), (16, 8, 3, 3), 2, 1, False),       # a strided block conv
    ((2, 16, 5, 5), (8, 16, 1, 1), 1, 0, True),       # an FPN lateral / RPN 1x1
    ((1, 8, 6, 7), (8, 8, 3, 3), 1, 1, True),         # FPN output / RPN conv, odd width
])
def test_conv2d(shape, wshape, stride, pad, bias):
    rng = np.random.default_rng(0)
    x, w = rand(rng, *shape), rand(rng, *wshape, scale=0.2)
    b = rand(rng, wshape[0]) if bias else None
    oh = (shape[2] + 2 * pad - wshape[2]) // stride + 1
    ow = (shape[3] + 2 * pad - wshape[3]) // stride + 1
    dout = rand(rng, shape[0], wshape[0], oh, ow)

    def run(x, w, b, dout):
        out, cache = L.conv2d_forward(x, w, b, stride, pad)
        return (out,) + tuple(L.conv2d_backward(dout, cache))
    assert_close(*both(run, x, w, b, dout), names=("out", "dx", "dw", "db"))


def test_conv_transpose2d():
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 2, 8, 7, 7), rand(rng, 8, 4, 2, 2, scale=0.3), rand(rng, 4)
    dout = rand(rng, 2, 4, 14, 14)

    def run(x, w, b, dout):
        out, cache = L.conv_transpose2d_forward(x, w, b, 2, 0)
        return (out,) + tuple(L.conv_transpose2d_backward(dout, cache))
    assert_close(*both(run, x, w, b, dout), names=("out", "dx", "dw", "db"))


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (50.0, 0.5)])
def test_group_norm(loc, scale):
    """Including inputs with a large mean (the variance is computed around the mean)."""
    rng = np.random.default_rng(2)
    x = rand(rng, 2, 8, 6, 6, scale=scale, loc=loc)
    gamma, beta = 1 + 0.2 * rand(rng, 8), rand(rng, 8)
    dout = rand(rng, 2, 8, 6, 6)

    def run(x, gamma, beta, dout):
        out, cache = L.group_norm_forward(x, gamma, beta, 4)
        return (out,) + tuple(L.group_norm_backward(dout, cache))
    assert_close(*both(run, x, gamma, beta, dout), names=("out", "dx", "dgamma", "dbeta"))


def test_linear():
    rng = np.random.default_rng(3)
    x, w, b = rand(rng, 6, 4, 3, 3), rand(rng, 10, 36, scale=0.2), rand(rng, 10)
    dout = rand(rng, 6, 10)

    def run(x, w, b, dout):
        out, cache = L.linear_forward(x, w, b)
        return (out,) + tuple(L.linear_backward(dout, cache))
    assert_close(*both(run, x, w, b, dout), names=("out", "dx", "dw", "db"))


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (1, 2, 0), (2, 2, 0)])
def test_max_pool2d(k, s, p):
    """The stem's 3/2/1 pool and P6's 1x1 stride-2 subsampling."""
    rng = np.random.default_rng(4)
    x = rand(rng, 2, 3, 9, 8)

    def run(x):
        out, cache = L.max_pool2d_forward(x, k, s, p)
        dout = np.cos(np.arange(out.size)).reshape(out.shape).astype(x.dtype)
        return out, L.max_pool2d_backward(dout, cache)
    assert_close(*both(run, x), names=("out", "dx"))


def test_upsample_nearest_and_relu():
    rng = np.random.default_rng(5)
    x, dout = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 8, 10)

    def run(x, dout):
        up, cache = L.upsample_nearest_forward(x, 2)
        r, rcache = L.relu_forward(up)
        return up, L.upsample_nearest_backward(L.relu_backward(dout, rcache), cache), r
    assert_close(*both(run, x, dout), names=("up", "dx", "relu"))


# ---- RoI ops ---------------------------------------------------------------------------------

def make_rois(rng, n, n_img, size):
    xy = rng.uniform(-4, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([rng.integers(0, n_img, (n, 1)), xy, xy + wh], axis=1)


@pytest.mark.parametrize("kw", [dict(sampling_ratio=2, aligned=True),              # the default
                                dict(sampling_ratio=2, aligned=False),
                                dict(sampling_ratio=-1, aligned=True),
                                dict(sampling_ratio=2, aligned=True, mode="max")])
@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_align(kw, output_size):
    rng = np.random.default_rng(6)
    x, rois = rand(rng, 2, 4, 12, 13), make_rois(rng, 12, 2, 52)
    dout = rand(rng, 12, 4, output_size, output_size)

    def run(x, rois, dout):
        out, cache = roi_align_forward(x, rois, output_size, 0.25, **kw)
        return out, roi_align_backward(dout, cache)
    assert_close(*both(run, x, rois, dout), names=("out", "dx"))


def test_roi_pool():
    rng = np.random.default_rng(7)
    x, rois = rand(rng, 2, 4, 12, 13), make_rois(rng, 12, 2, 52)
    dout = rand(rng, 12, 4, 7, 7)

    def run(x, rois, dout):
        out, cache = roi_pool_forward(x, rois, 7, 0.25)
        return out, roi_pool_backward(dout, cache)
    assert_close(*both(run, x, rois, dout), names=("out", "dx"))


@pytest.mark.parametrize("kind", ["roi_align", "roi_align_unaligned", "roi_align_max", "roi_pool"])
def test_multilevel_pooler(kind):
    rng = np.random.default_rng(8)
    feats = [rand(rng, 2, 4, 32 >> k, 32 >> k) for k in range(4)]
    rois = make_rois(rng, 20, 2, 128)
    dout = rand(rng, 20, 4, 7, 7)

    def run(f0, f1, f2, f3, rois, dout):
        out, cache = multilevel_roi_forward([f0, f1, f2, f3], rois, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32],
                                            2, kind, canonical_size=56.0)
        return [out] + multilevel_roi_backward(dout, cache)
    assert_close(*both(run, *feats, rois, dout))


# ---- losses ----------------------------------------------------------------------------------

def test_softmax_cross_entropy():
    rng = np.random.default_rng(9)
    logits = rand(rng, 64, 4, scale=3)
    labels = rng.integers(-1, 4, 64)
    (l32, d32), (l64, d64) = both(lambda z: softmax_cross_entropy(z, labels), logits)
    assert abs(l32 - l64) <= TOL * abs(l64)
    assert_close([d32], [d64])


def test_sigmoid_binary_cross_entropy_weighted_and_mask_shaped():
    rng = np.random.default_rng(10)
    logits = rand(rng, 6, 28, 28, scale=4)
    targets = (rng.uniform(size=logits.shape) > 0.5).astype(np.float64)
    weights = (rng.uniform(size=logits.shape) > 0.3).astype(np.float64)
    for w in (None, weights):
        (l32, d32), (l64, d64) = both(lambda z: sigmoid_binary_cross_entropy(z, targets, w), logits)
        assert abs(l32 - l64) <= TOL * abs(l64)
        assert_close([d32], [d64])


@pytest.mark.parametrize("beta,normalizer", [(1 / 9, 256), (1.0, 17), (0.0, None)])
def test_smooth_l1(beta, normalizer):
    rng = np.random.default_rng(11)
    pred, target = rand(rng, 40, 4), rand(rng, 40, 4, scale=0.5)
    (l32, d32), (l64, d64) = both(lambda p: smooth_l1(p, target, beta, normalizer), pred)
    assert abs(l32 - l64) <= TOL * abs(l64)
    assert_close([d32], [d64])


# ---- a whole backbone ------------------------------------------------------------------------

def test_backbone_forward_and_backward():
    """ResNet + FPN of the tiny preset, same weights and input in both precisions: P2..P6 and
    every parameter gradient (conv, GroupNorm, max-pool, upsample, shortcuts) agree."""
    cfg = Config.tiny()
    rng = np.random.default_rng(12)
    nets = {}
    for dtype in (np.float64, np.float32):
        net = Backbone(cfg, np.random.default_rng(0)).astype(np.float64)
        for _, p in net.named_params():                         # GN gammas away from 0 and 1
            p += 0.1 * np.random.default_rng(p.size).standard_normal(p.shape)
        nets[dtype] = net.astype(dtype)
    x = rand(rng, 2, 3, 32, 32)
    douts = None
    results = {}
    for dtype, net in nets.items():
        ps = net(x.astype(dtype))
        if douts is None:
            douts = [rand(rng, *p.shape) for p in ps]
        net.zero_grad()
        net.backward([d.astype(dtype) for d in douts])
        results[dtype] = (ps, dict(net.named_grads()))
    (ps32, g32), (ps64, g64) = results[np.float32], results[np.float64]
    assert_close(ps32, ps64, names=[f"P{k + 2}" for k in range(5)])
    for name in g64:
        assert_close([g32[name]], [g64[name]], names=[name])

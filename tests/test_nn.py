"""Modules: shared weights sum their gradients, state dicts check names and shapes, eval keeps no cache."""

import numpy as np
import pytest

from gradcheck import numerical_gradient, numerical_gradient_array, rel_error
from npmaskrcnn.nn import Conv2d, GroupNorm, Linear, ReLU, Sequential, conv_gn_relu


def test_shared_module_gets_sum_of_gradients():
    rng = np.random.default_rng(0)
    conv = Conv2d(3, 3, 3, 1, 1, rng=rng).astype(np.float64)
    x1 = rng.normal(size=(2, 3, 5, 5))
    x2 = rng.normal(size=(2, 3, 4, 4))
    d1 = rng.normal(size=(2, 3, 5, 5))
    d2 = rng.normal(size=(2, 3, 4, 4))
    conv.forward(x1)
    conv.forward(x2)
    dx2 = conv.backward(d2)                                  # LIFO: the last use first
    dx1 = conv.backward(d1)
    w = conv.params["weight"]

    def f():
        conv.eval()
        out = float(np.sum(conv.forward(x1) * d1) + np.sum(conv.forward(x2) * d2))
        conv.train()
        return out

    dw_num = numerical_gradient(f, w)
    assert rel_error(conv.grads["weight"], dw_num) < 1e-7
    conv.eval()
    dx1_num = numerical_gradient_array(lambda: conv.forward(x1), x1, d1)
    conv.train()
    assert rel_error(dx1, dx1_num) < 1e-7
    assert dx2.shape == x2.shape


def test_sequential_gradcheck_all_params():
    rng = np.random.default_rng(1)
    net = Sequential(conv_gn_relu(2, 4, 3, 1, 2, rng), Conv2d(4, 2, 1, rng=rng)).astype(np.float64)
    x = rng.normal(size=(2, 2, 4, 4))
    dout = rng.normal(size=(2, 2, 4, 4))
    net.zero_grad()
    net.forward(x)
    net.backward(dout)
    net.eval()
    for name, p in net.named_params():
        grad = dict(net.named_grads())[name]
        num = numerical_gradient_array(lambda: net.forward(x), p, dout)
        assert rel_error(grad, num) < 1e-7, name
        assert np.any(grad != 0), name


def test_eval_keeps_no_cache_and_backward_without_forward_fails():
    net = Sequential(Linear(4, 3), ReLU())
    net.eval()
    net.forward(np.ones((2, 4), np.float32))
    assert all(not m._caches for m in net.modules())
    net.train()
    with pytest.raises(RuntimeError, match="without a matching forward"):
        net.backward(np.ones((2, 3), np.float32))


def test_state_dict_round_trip_and_errors():
    a = Sequential(Linear(4, 3, rng=np.random.default_rng(0)), GroupNorm(1, 3))
    b = Sequential(Linear(4, 3, rng=np.random.default_rng(1)), GroupNorm(1, 3))
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.named_params(), b.named_params()):
        assert ka == kb and np.array_equal(va, vb)
    assert list(a.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    bad = dict(a.state_dict())
    bad.pop("0.bias")
    with pytest.raises(KeyError, match="missing keys \\['0.bias'\\]"):
        b.load_state_dict(bad)
    bad = dict(a.state_dict(), extra=np.zeros(1))
    with pytest.raises(KeyError, match="unexpected keys \\['extra'\\]"):
        b.load_state_dict(bad)
    bad = dict(a.state_dict())
    bad["0.weight"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="0.weight.*\\(3, 4\\).*\\(3, 5\\)"):
        b.load_state_dict(bad)


def test_float32_params_and_outputs():
    conv = Conv2d(3, 4, 3, 1, 1)
    out = conv.forward(np.ones((1, 3, 4, 4), np.float32))
    assert conv.params["weight"].dtype == np.float32 and out.dtype == np.float32


def test_kaiming_init_scale():
    conv = Conv2d(64, 128, 3, rng=np.random.default_rng(0))
    std = conv.params["weight"].std()
    assert abs(std - np.sqrt(2.0 / (128 * 9))) / np.sqrt(2.0 / (128 * 9)) < 0.05

"""Optimizers on a known quadratic; weight decay skips norms and biases; schedule; clipping."""

import math

import numpy as np
import pytest

from npmaskrcnn.backbone import Backbone
from npmaskrcnn.config import Config
from npmaskrcnn.nn import Conv2d, ConvTranspose2d, GroupNorm, Linear, Module, Sequential, conv_gn_relu
from npmaskrcnn.optim import SGD, AdamW, clip_grad_norm, lr_at


class Quadratic(Module):
    """f(w, b) = 0.5 * |w - 3|^2 + 0.5 * |b + 1|^2, with w 2-D (decayed) and b 1-D (not)."""

    def __init__(self):
        super().__init__()
        self.add_param("weight", np.zeros((2, 2)))
        self.add_param("bias", np.zeros(2))

    def compute_grads(self):
        self.zero_grad()
        self.grads["weight"] += self.params["weight"] - 3
        self.grads["bias"] += self.params["bias"] + 1


def test_sgd_one_step_by_hand():
    m = Quadratic().astype(np.float64)
    opt = SGD(m, lr=0.1, momentum=0.9, weight_decay=0.5)
    m.compute_grads()
    opt.step()
    # w: g = -3 + 0.5 * 0 = -3 -> w = 0.3 ; b: g = 1 (no decay) -> b = -0.1
    assert np.allclose(m.params["weight"], 0.3) and np.allclose(m.params["bias"], -0.1)
    m.compute_grads()
    opt.step()
    # w: g = (0.3 - 3) + 0.5 * 0.3 = -2.55; v = 0.9 * -3 - 2.55 = -5.25 -> w = 0.3 + 0.525
    assert np.allclose(m.params["weight"], 0.825)


@pytest.mark.parametrize("opt_cls,kw", [(SGD, dict(lr=0.1, momentum=0.9)), (AdamW, dict(lr=0.1))])
def test_converges_to_minimum_without_decay(opt_cls, kw):
    m = Quadratic().astype(np.float64)
    opt = opt_cls(m, weight_decay=0.0, **kw)
    for _ in range(500):
        m.compute_grads()
        opt.step()
    assert np.allclose(m.params["weight"], 3, atol=1e-3) and np.allclose(m.params["bias"], -1, atol=1e-3)


def test_weight_decay_skips_biases_of_the_quadratic():
    m = Quadratic().astype(np.float64)
    opt = AdamW(m, lr=0.05, weight_decay=0.5)
    for _ in range(2000):
        m.compute_grads()
        opt.step()
    # decayed weight settles below 3 (AdamW fixed point: g/sqrt(v) = -wd*w), bias exactly at -1
    assert np.all(m.params["weight"] < 2.9)
    assert np.allclose(m.params["bias"], -1, atol=1e-3)


class RealNet(Module):
    """A small real network: the tiny Backbone (convs without bias, GroupNorms, FPN convs with
    bias) plus a conv_gn_relu unit, a transposed conv and a Linear layer."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.add("backbone", Backbone(Config.tiny(), rng))
        self.add("unit", conv_gn_relu(8, 8, 3, 1, 2, rng))
        self.add("head", Sequential(ConvTranspose2d(8, 4, rng=rng), Linear(16, 3, rng=rng)))


def decay_roles(module):
    """(dotted name -> 'decay' | 'norm' | 'bias') from the module types, not from the names."""
    roles = {}

    def walk(m, prefix):
        for k in m.params:
            if isinstance(m, GroupNorm):
                roles[prefix + k] = "norm"              # gamma ('weight') and beta ('bias')
            elif k == "bias":
                roles[prefix + k] = "bias"
            else:
                assert isinstance(m, (Conv2d, ConvTranspose2d, Linear)), prefix + k
                roles[prefix + k] = "decay"
        for name, child in m.children.items():
            walk(child, prefix + name + ".")
    walk(module, "")
    return roles


@pytest.mark.parametrize("opt_cls,kw", [(SGD, dict(momentum=0.9)), (SGD, dict(momentum=0.0)),
                                        (AdamW, dict())])
def test_weight_decay_on_a_real_module_skips_groupnorm_and_biases(opt_cls, kw):
    """With zero gradients one step is pure weight decay: conv, transposed-conv and linear
    weights shrink by lr * wd (SGD: p - lr * wd * p; AdamW: p * (1 - lr * wd)); every GroupNorm
    gamma and beta and every bias stays exactly as it was."""
    m = RealNet()
    m.astype(np.float64)
    rng = np.random.default_rng(1)
    for _, p in m.named_params():                        # non-trivial values everywhere
        p[...] = rng.uniform(0.5, 1.5, p.shape)
    roles = decay_roles(m)
    assert set(roles.values()) == {"decay", "norm", "bias"}
    assert sum(r == "norm" for r in roles.values()) >= 10
    before = {k: v.copy() for k, v in m.named_params()}
    lr, wd = 0.1, 0.5
    opt = opt_cls(m, lr=lr, weight_decay=wd, **kw)
    m.zero_grad()
    opt.step()
    for name, p in m.named_params():
        if roles[name] == "decay":
            np.testing.assert_allclose(p, before[name] * (1 - lr * wd), rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(p, before[name], err_msg=f"{name} ({roles[name]}) decayed")


def test_adamw_first_step_is_lr_times_sign():
    m = Quadratic().astype(np.float64)
    opt = AdamW(m, lr=0.01, weight_decay=0.0)
    m.compute_grads()
    opt.step()
    assert np.allclose(m.params["weight"], 0.01, atol=1e-6) and np.allclose(m.params["bias"], -0.01, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_adamw_kernel_follows_the_formula_over_many_steps(dtype, rtol):
    """The fused kernel against AdamW written out in numpy (float64), random gradients, 30 steps,
    weight decay on the weight only; in float32 the kernel runs in float32 arithmetic."""
    rng = np.random.default_rng(3)
    m = Quadratic().astype(dtype)
    m.params["weight"][...] = rng.standard_normal((2, 2))
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    opt = AdamW(m, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ref = {k: v.astype(np.float64) for k, v in m.params.items()}
    mom = {k: np.zeros_like(v) for k, v in ref.items()}
    var = {k: np.zeros_like(v) for k, v in ref.items()}
    for t in range(1, 31):
        grads = {k: rng.standard_normal(v.shape) for k, v in ref.items()}
        m.zero_grad()
        for k in ref:
            m.grads[k] += grads[k].astype(dtype)
        opt.step()
        for k in ref:
            g = grads[k].astype(dtype).astype(np.float64)
            mom[k] = b1 * mom[k] + (1 - b1) * g
            var[k] = b2 * var[k] + (1 - b2) * g * g
            m_hat, v_hat = mom[k] / (1 - b1 ** t), var[k] / (1 - b2 ** t)
            decay = wd if k == "weight" else 0.0
            ref[k] = ref[k] - lr * (m_hat / (np.sqrt(v_hat) + eps) + decay * ref[k])
    for k in ref:
        assert m.params[k].dtype == dtype
        np.testing.assert_allclose(m.params[k], ref[k], rtol=rtol, atol=rtol)


def test_lr_schedule():
    assert lr_at(0, 1.0, 100, 10) == pytest.approx(0.001)
    assert lr_at(5, 1.0, 100, 10) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_at(10, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 100, 10) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(70, 1.0, 100, 0, "step", milestones=(50, 60)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(70, 1.0, 100, 0, "linear")


def test_clip_grad_norm():
    m = Quadratic().astype(np.float64)
    m.grads["weight"][:] = 3.0
    m.grads["bias"][:] = 4.0
    norm = clip_grad_norm(m, 1.0)
    assert norm == pytest.approx(math.sqrt(4 * 9 + 2 * 16))
    total = math.sqrt(sum(float((g ** 2).sum()) for _, g in m.named_grads()))
    assert total == pytest.approx(1.0, rel=1e-5)

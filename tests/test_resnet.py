"""Tests for the ResNet-50 pieces: FrozenBatchNorm2d (batch_norm.py), the Bottleneck block
(resnet.py) and the bottleneck ResNet body (backbone.ResNet with Config.block "bottleneck"):
forward against loops written from the definitions, float64 gradients, a hand case, edge cases."""

import numpy as np
import pytest
from gradcheck import check_layer_gradients, numerical_gradient_array, rel_error
from reference import conv2d_ref

from npmaskrcnn.backbone import ResNet
from npmaskrcnn.batch_norm import (FrozenBatchNorm2d, frozen_batch_norm_backward,
                                   frozen_batch_norm_forward)
from npmaskrcnn.config import Config
from npmaskrcnn.resnet import Bottleneck, make_norm


def frozen_bn_ref(x, w, b, mean, var, eps):
    """(x - mean) / sqrt(var + eps) * w + b, channel by channel, pixel by pixel."""
    out = np.empty_like(x)
    n, c, h, wd = x.shape
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for z in range(wd):
                    out[i, k, y, z] = (x[i, k, y, z] - mean[k]) / np.sqrt(var[k] + eps) * w[k] + b[k]
    return out


def bn_arrays(rng, c, dtype=np.float64):
    return (rng.uniform(0.5, 1.5, c).astype(dtype), rng.normal(0, 0.1, c).astype(dtype),
            rng.normal(0, 1, c).astype(dtype), rng.uniform(0.2, 2, c).astype(dtype))


@pytest.mark.parametrize("shape,eps", [((2, 3, 4, 5), 1e-5), ((1, 4, 1, 1), 0.0), ((0, 2, 3, 3), 1e-5)])
def test_frozen_bn_forward_matches_the_definition(shape, eps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    arrays = bn_arrays(rng, shape[1])
    out, _ = frozen_batch_norm_forward(x, *arrays, eps=eps)
    assert out.shape == shape
    if x.size:                                                     # no images: an empty batch out
        assert rel_error(out, frozen_bn_ref(x, *arrays, eps)) < 1e-14


def test_frozen_bn_gradient_of_the_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4))
    arrays = bn_arrays(rng, 3)
    check_layer_gradients(lambda x: frozen_batch_norm_forward(x, *arrays, eps=1e-5),
                          frozen_batch_norm_backward, [x], rng)


def test_frozen_bn_hand_case_and_eps_as_stored():
    # one channel: weight 2, bias 1, mean 3, var 4: y = (x - 3) / 2 * 2 + 1 = x - 2 with eps 0
    x = np.array([[[[3.0, 5.0]]]])
    p = [np.array([v]) for v in (2.0, 1.0, 3.0, 4.0)]
    np.testing.assert_array_equal(frozen_batch_norm_forward(x, *p, eps=0.0)[0], [[[[1.0, 3.0]]]])
    # eps 1e-5 changes the scale: 2 / sqrt(4 + 1e-5)
    y = frozen_batch_norm_forward(x, *p, eps=1e-5)[0]
    np.testing.assert_allclose(y[0, 0, 0, 1], 2 * 2 / np.sqrt(4 + 1e-5) + 1, rtol=1e-15)


def test_frozen_bn_module_keeps_dtype_trains_nothing_and_starts_as_identity():
    bn = FrozenBatchNorm2d(3, eps=0.0)
    x = np.random.default_rng(2).standard_normal((2, 3, 2, 2)).astype(np.float32)
    y = bn(x)
    assert y.dtype == np.float32 and np.array_equal(y, x)
    bn.backward(np.ones_like(y))
    assert all(not g.any() for g in bn.grads.values())           # frozen: no gradient
    assert list(bn.params) == ["weight", "bias", "running_mean", "running_var"]
    with pytest.raises(ValueError, match="eps"):
        FrozenBatchNorm2d(3, eps=-1.0)
    with pytest.raises(ValueError, match="norm"):
        make_norm("batch", 3)


def bottleneck_ref(block, x):
    """The block from the definition: loops for the convs and the norm, numpy for the rest."""
    p = dict(block.named_params())
    n1, n2, n3 = block.norm_names

    def norm(name, a):
        q = [p[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        return frozen_bn_ref(a, *q, block.children[name].eps)

    stride = block.conv2.stride
    out = np.maximum(norm(n1, conv2d_ref(x, p["conv1.weight"], None, 1, 0)), 0)
    out = np.maximum(norm(n2, conv2d_ref(out, p["conv2.weight"], None, stride, 1)), 0)
    out = norm(n3, conv2d_ref(out, p["conv3.weight"], None, 1, 0))
    if block.has_shortcut:
        q = [p[f"downsample.1.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        short = frozen_bn_ref(conv2d_ref(x, p["downsample.0.weight"], None, stride, 0), *q,
                              block.downsample.children["1"].eps)
    else:
        short = x
    return np.maximum(out + short, 0)


def randomise(module, rng):
    for k, v in module.named_params():
        if v.ndim == 1:
            v[...] = rng.uniform(0.5, 1.5, v.shape) if k.endswith(("weight", "running_var")) \
                else rng.normal(0, 0.2, v.shape)


@pytest.mark.parametrize("in_ch,planes,stride,hw", [(4, 1, 1, (5, 5)), (4, 2, 2, (5, 6)),
                                                     (8, 2, 1, (3, 3)), (3, 2, 2, (1, 1))])
def test_bottleneck_forward_matches_the_definition(in_ch, planes, stride, hw):
    rng = np.random.default_rng(3)
    block = Bottleneck(in_ch, planes, stride, "frozen_bn", rng, eps=1e-5).astype(np.float64).eval()
    randomise(block, rng)
    x = rng.standard_normal((2, in_ch) + hw)
    out = block(x)
    # torchvision's layout: stride on the 3x3, a projection shortcut when the shape changes
    assert out.shape == (2, 4 * planes, -(-hw[0] // stride), -(-hw[1] // stride))
    assert block.has_shortcut == (stride != 1 or in_ch != 4 * planes)
    assert block.conv1.stride == 1 and block.conv2.stride == stride
    assert rel_error(out, bottleneck_ref(block, x)) < 1e-12


@pytest.mark.parametrize("norm", ["frozen_bn", "group"])
def test_bottleneck_gradients_float64(norm):
    rng = np.random.default_rng(4)
    block = Bottleneck(4, 2, 2, norm, rng, groups=2).astype(np.float64)
    randomise(block, rng)
    x = rng.standard_normal((2, 4, 5, 4))
    dout = rng.standard_normal(block(x).shape)
    block.clear_caches()
    block.zero_grad()
    block(x)
    dx = block.backward(dout)
    block.eval()
    assert rel_error(dx, numerical_gradient_array(lambda: block(x), x, dout)) < 1e-7
    grads = dict(block.named_grads())
    for name, p in block.named_params():
        if norm == "frozen_bn" and name.startswith(("bn", "downsample.1.")):
            assert not grads[name].any(), name                     # frozen statistics
            continue
        num = numerical_gradient_array(lambda: block(x), p, dout)
        assert rel_error(grads[name], num) < 1e-7, name


def test_bottleneck_with_groupnorm_starts_as_its_shortcut():
    rng = np.random.default_rng(5)
    block = Bottleneck(8, 2, 1, "group", rng, groups=2)
    x = np.abs(rng.standard_normal((1, 8, 4, 4))).astype(np.float32)
    np.testing.assert_array_equal(block(x), x)                     # gn3 gamma 0, identity shortcut


def test_bottleneck_resnet_body_shapes_and_names():
    cfg = Config.tiny(block="bottleneck", norm="frozen_bn", stem_channels=4,
                      stage_channels=(8, 8, 16, 16), stage_blocks=(2, 1, 1, 1))
    body = ResNet(cfg, np.random.default_rng(0)).eval()
    feats = body(np.zeros((1, 3, 64, 96), np.float32))
    assert [f.shape for f in feats] == [(1, 8, 16, 24), (1, 8, 8, 12), (1, 16, 4, 6), (1, 16, 2, 3)]
    names = [k for k, _ in body.named_params()]
    # torchvision's names: every stage's block 0 has a projection, layer1's too (4 -> 8)
    for k in ("stem.1.running_var", "layer1.0.downsample.0.weight", "layer1.0.bn3.running_mean",
              "layer1.1.conv2.weight", "layer4.0.downsample.1.bias"):
        assert k in names, k
    assert "layer1.1.downsample.0.weight" not in names


def test_config_refuses_mixed_norms_and_bad_widths():
    with pytest.raises(ValueError, match="Config.norm"):
        Config.tiny(norm="frozen_bn")                              # BasicBlocks have GroupNorm
    with pytest.raises(ValueError, match="Config.stage_channels"):
        Config.tiny(block="bottleneck", stage_channels=(4, 4, 8, 6))
    with pytest.raises(ValueError, match="Config.bn_eps"):
        Config.tiny(bn_eps=-1)

"""Modules: parameters, gradients and a cache stack around the functional layers.

A `Module` owns `params` and `grads`, two dicts with the same keys, and a stack of caches.
`forward` computes, and in training mode pushes the cache its backward needs; `backward(dout)`
pops the most recent cache, *adds* into `grads` and returns the gradient of the input. Because
caches form a stack and gradients accumulate, a module applied several times in one forward pass
(the RPN head runs once per FPN level) backprops correctly when the passes are undone in reverse
order: its gradient is the sum over all uses. In eval mode no cache is kept.

Composite modules register children with `add`; parameters are addressed by dotted names
(`backbone.layer1.0.conv1.weight`), the same names the checkpoint uses. Names follow PyTorch
(`weight`, `bias`) so weights can be copied into a PyTorch twin for cross-checks.

Shape shorthand:
    N images, C input channels, F output channels, H x W spatial size, D features.

Naming:
    params[k] / grads[k]   a parameter and the gradient accumulated into it
    dout / dx              gradient of the output / of the input
"""

import math
from collections import OrderedDict

import numpy as np

from . import layers

DTYPE = np.float32


class Module:
    """Base class: parameters, gradients, children and the cache stack."""

    def __init__(self):
        self.params = OrderedDict()
        self.grads = OrderedDict()
        self.children = OrderedDict()
        self.training = True
        self._caches = []

    # ---- structure -------------------------------------------------------------------------
    def add(self, name, module):
        """Register `module` as a child called `name` (also reachable as an attribute)."""
        self.children[name] = module
        setattr(self, name, module)
        return module

    def add_param(self, name, value):
        self.params[name] = np.ascontiguousarray(value, dtype=DTYPE)
        self.grads[name] = np.zeros_like(self.params[name])

    def modules(self):
        """This module and all its descendants, depth first."""
        yield self
        for child in self.children.values():
            yield from child.modules()

    def named_params(self, prefix=""):
        """Yield (dotted_name, array) for every parameter of this module and its children."""
        for k, v in self.params.items():
            yield prefix + k, v
        for name, child in self.children.items():
            yield from child.named_params(prefix + name + ".")

    def named_grads(self, prefix=""):
        """Yield (dotted_name, gradient array), in the same order as `named_params`."""
        for k, v in self.grads.items():
            yield prefix + k, v
        for name, child in self.children.items():
            yield from child.named_grads(prefix + name + ".")

    def num_params(self):
        return int(sum(v.size for _, v in self.named_params()))

    # ---- modes and state -------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
            m._caches.clear()
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for m in self.modules():
            for g in m.grads.values():
                g.fill(0)

    def clear_caches(self):
        for m in self.modules():
            m._caches.clear()

    def astype(self, dtype):
        """Cast every parameter (and gradient) to `dtype` in place; returns self."""
        for m in self.modules():
            for k in m.params:
                m.params[k] = m.params[k].astype(dtype)
                m.grads[k] = np.zeros_like(m.params[k])
        return self

    def state_dict(self):
        """OrderedDict of dotted name -> parameter array (not copies)."""
        return OrderedDict(self.named_params())

    def load_state_dict(self, state):
        """Copy arrays from `state` into the parameters, checking names and shapes.

        Raises KeyError naming missing or unexpected keys, ValueError naming a mis-shaped one.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise KeyError(f"state dict does not match the model: missing keys {missing[:10]}"
                           f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                           f"{' ...' if len(unexpected) > 10 else ''}")
        for k, v in own.items():
            new = np.asarray(state[k])
            if new.shape != v.shape:
                raise ValueError(f"parameter {k!r}: expected shape {v.shape}, got {new.shape}")
            v[...] = new

    # ---- cache stack -----------------------------------------------------------------------
    def _push(self, cache):
        if self.training:
            self._caches.append(cache)

    def _pop(self):
        if not self._caches:
            raise RuntimeError(f"{type(self).__name__}.backward called without a matching "
                               "forward in training mode")
        return self._caches.pop()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def kaiming_normal(shape, fan, rng, gain=math.sqrt(2.0)):
    """He et al. 2015 initialisation: N(0, gain^2 / fan)."""
    return rng.normal(0.0, gain / math.sqrt(fan), size=shape)


class Conv2d(Module):
    """2-D convolution. weight (F, C, k, k), bias (F,) unless bias=False.

    `init` is "kaiming_out" (He, fan_out, for convs followed by ReLU), "kaiming_uniform"
    (PyTorch's default-style uniform with a=1, used by FPN), or a float: normal with that std.
    `need_input_grad=False` skips the col2im of backward (for the first layer, whose input is
    the image).
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True, rng=None,
                 init="kaiming_out", need_input_grad=True):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        k = kernel_size
        shape = (out_ch, in_ch, k, k)
        if init == "kaiming_out":
            w = kaiming_normal(shape, out_ch * k * k, rng)
        elif init == "kaiming_uniform":
            bound = math.sqrt(3.0 / (in_ch * k * k))
            w = rng.uniform(-bound, bound, size=shape)
        else:
            w = rng.normal(0.0, float(init), size=shape)
        self.add_param("weight", w)
        if bias:
            self.add_param("bias", np.zeros(out_ch))
        self.stride, self.padding = stride, padding
        self.need_input_grad = need_input_grad

    def forward(self, x):
        out, cache = layers.conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                                           stride=self.stride, pad=self.padding)
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dw, db = layers.conv2d_backward(dout, self._pop(), need_dx=self.need_input_grad)
        self.grads["weight"] += dw
        if db is not None:
            self.grads["bias"] += db
        return dx


class ConvTranspose2d(Module):
    """Transposed convolution (the mask head's 2x upsampler). weight (C_in, C_out, k, k)."""

    def __init__(self, in_ch, out_ch, kernel_size=2, stride=2, padding=0, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        k = kernel_size
        self.add_param("weight", kaiming_normal((in_ch, out_ch, k, k), out_ch * k * k, rng))
        self.add_param("bias", np.zeros(out_ch))
        self.stride, self.padding = stride, padding

    def forward(self, x):
        out, cache = layers.conv_transpose2d_forward(x, self.params["weight"], self.params["bias"],
                                                     stride=self.stride, pad=self.padding)
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dw, db = layers.conv_transpose2d_backward(dout, self._pop())
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx


class GroupNorm(Module):
    """Group normalisation (Wu & He 2018), affine. weight = gamma (C,), bias = beta (C,)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, zero_init=False):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by "
                             f"num_groups={num_groups}")
        self.num_groups, self.eps = num_groups, eps
        self.add_param("weight", np.zeros(num_channels) if zero_init else np.ones(num_channels))
        self.add_param("bias", np.zeros(num_channels))

    def forward(self, x):
        out, cache = layers.group_norm_forward(x, self.params["weight"], self.params["bias"],
                                               self.num_groups, eps=self.eps)
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = layers.group_norm_backward(dout, self._pop())
        self.grads["weight"] += dgamma
        self.grads["bias"] += dbeta
        return dx


class Linear(Module):
    """Fully connected layer. weight (out, in) as in PyTorch; the input is flattened to (N, D)."""

    def __init__(self, in_features, out_features, rng=None, init="kaiming_uniform"):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        shape = (out_features, in_features)
        if init == "kaiming_uniform":
            bound = math.sqrt(3.0 / in_features)
            w = rng.uniform(-bound, bound, size=shape)
        elif init == "kaiming_out":
            w = kaiming_normal(shape, in_features, rng)
        else:
            w = rng.normal(0.0, float(init), size=shape)
        self.add_param("weight", w)
        self.add_param("bias", np.zeros(out_features))

    def forward(self, x):
        out, cache = layers.linear_forward(x, self.params["weight"], self.params["bias"])
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dw, db = layers.linear_backward(dout, self._pop())
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx


class ReLU(Module):
    def forward(self, x):
        if not self.training:                 # inference: no mask for a backward that never comes
            return np.maximum(x, 0)
        out, cache = layers.relu_forward(x)
        self._push(cache)
        return out

    def backward(self, dout):
        return layers.relu_backward(dout, self._pop())


class MaxPool2d(Module):
    def __init__(self, kernel_size=2, stride=2, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        out, cache = layers.max_pool2d_forward(x, kernel_size=self.kernel_size,
                                               stride=self.stride, pad=self.padding)
        self._push(cache)
        return out

    def backward(self, dout):
        return layers.max_pool2d_backward(dout, self._pop())


class Sequential(Module):
    """Children applied in order; backward undoes them in reverse. Children are named 0, 1, ..."""

    def __init__(self, *mods):
        super().__init__()
        for i, m in enumerate(mods):
            self.add(str(i), m)

    def forward(self, x):
        for m in self.children.values():
            x = m.forward(x)
        return x

    def backward(self, dout):
        for m in reversed(self.children.values()):
            dout = m.backward(dout)
        return dout


def conv_gn_relu(in_ch, out_ch, kernel_size, stride, num_groups, rng, relu=True, zero_init=False):
    """conv (no bias) -> GroupNorm -> ReLU, the unit the backbone and heads are built from."""
    mods = [Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False, rng=rng),
            GroupNorm(min(num_groups, out_ch), out_ch, zero_init=zero_init)]
    if relu:
        mods.append(ReLU())
    return Sequential(*mods)

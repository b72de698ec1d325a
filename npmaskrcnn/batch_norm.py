"""Frozen batch normalisation: BatchNorm (Ioffe & Szegedy 2015) at inference, from stored statistics.

A network trained with BatchNorm keeps per-channel running statistics; at inference every channel
is one affine map, y = (x - mean) / sqrt(var + eps) * gamma + beta. A backbone pre-trained that way
(ResNet-50 on ImageNet, then Mask R-CNN on COCO) keeps these four arrays fixed while detection
trains with a few images per GPU, whose batch statistics would be too noisy: torchvision's
`FrozenBatchNorm2d`, which this file reproduces. `eps` is the model's, as stored: torchvision's COCO
Mask R-CNN sets it to 0 (`overwrite_eps`), an ImageNet backbone keeps 1e-5.

The four arrays live in `params` so that checkpoints, `astype` and `load_state_dict` treat them
as any other weight, but they are not trained: backward gives them no gradient (their `grads` stay
zero, and the optimizers leave 1-D arrays with zero gradient unchanged: no weight decay on them).

Shape shorthand:
    N images, C channels, H, W spatial size

Naming:
    weight, bias                gamma and beta (C,)
    running_mean, running_var   the stored statistics (C,)
    scale, shift                the per-channel affine: y = x * scale + shift
"""

import numpy as np

from .nn import Module


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, eps=1e-5):
    """Forward pass of frozen batch normalisation (torchvision's FrozenBatchNorm2d).

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale,
    out = x * scale + shift, per channel, in x's dtype.

    Inputs:
    - x: (N, C, H, W)
    - weight, bias, running_mean, running_var: (C,)
    - eps: added to the variance (0 for torchvision's COCO Mask R-CNN)

    Returns a tuple of:
    - out: (N, C, H, W)
    - cache: for frozen_batch_norm_backward
    """
    dt = x.dtype.type
    scale = weight.astype(dt) / np.sqrt(running_var.astype(dt) + dt(eps))
    shift = bias.astype(dt) - running_mean.astype(dt) * scale
    out = x * scale[:, None, None]
    out += shift[:, None, None]                 # in place: the same two roundings, one array less
    return out, scale


def frozen_batch_norm_backward(dout, cache):
    """Backward pass of frozen_batch_norm_forward: out = x * scale + shift, so dx = dout * scale.

    The statistics and the affine are constants (frozen): no gradient for them.

    Inputs:
    - dout: (N, C, H, W)
    - cache: from frozen_batch_norm_forward (the per-channel scale)

    Returns:
    - dx: (N, C, H, W)
    """
    return dout * cache[:, None, None]


class FrozenBatchNorm2d(Module):
    """BatchNorm with fixed statistics and affine (torchvision's FrozenBatchNorm2d).

    Starts as the identity (weight 1, bias 0, mean 0, var 1); an imported model overwrites all four.
    """

    STATS = ("weight", "bias", "running_mean", "running_var")

    def __init__(self, num_channels, eps=1e-5):
        super().__init__()
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.add_param("weight", np.ones(num_channels))
        self.add_param("bias", np.zeros(num_channels))
        self.add_param("running_mean", np.zeros(num_channels))
        self.add_param("running_var", np.ones(num_channels))

    def forward(self, x):
        out, cache = frozen_batch_norm_forward(x, *(self.params[k] for k in self.STATS), eps=self.eps)
        self._push(cache)
        return out

    def backward(self, dout):
        return frozen_batch_norm_backward(dout, self._pop())

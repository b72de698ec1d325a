"""Group Normalization (Wu & He 2018): the normalisation of every conv of the backbone and heads.

The channels of each image are split into G groups; each group is normalised by its own mean and
variance over (C/G, H, W), then scaled and shifted per channel (gamma, beta). Unlike BatchNorm it
does not depend on the batch, which is why a model trained from scratch with a handful of images
per step uses it (He, Girshick, Dollar 2019). Forward and backward are numba loops over
(image, group); the backward formula is the one of layer normalisation, applied per group.

Shape shorthand:
    N images, C channels, G groups, H, W spatial size

Naming:
    xhat, inv_std   the normalised input and 1/sqrt(var + eps), (N, G)
"""

import numpy as np
from numba import njit


def group_norm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """Forward pass of Group Normalization (Wu & He 2018).

    The channels are split into G groups of C/G; each (image, group) is normalised over its
    channels and pixels with the biased variance, then each channel is scaled and shifted.

    Inputs:
    - x: (N, C, H, W), C divisible by num_groups
    - gamma, beta: (C,)
    - num_groups: G
    - eps: added to the variance

    Returns a tuple of:
    - out: (N, C, H, W)
    - cache: for group_norm_backward
    """
    if x.shape[1] % num_groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {num_groups} groups")
    x = np.ascontiguousarray(x)
    out, xhat, inv_std = _group_norm_forward_kernel(x, gamma.astype(x.dtype), beta.astype(x.dtype), num_groups, eps)
    cache = (xhat, inv_std, gamma, num_groups)
    return out, cache


# fastmath "reassoc" (with "nsz") lets the compiler reorder the float64 sums of the
# GroupNorm kernels into vector lanes; nothing assumes finite values, so NaN and inf still
# propagate. An optimisation: 4-8x faster than the strictly sequential sums, measured at
# (2, 64, 32, 32) and (16, 64, 14, 14), with the same results up to float32 rounding.
_SUMS = {"reassoc", "nsz"}


@njit(cache=True, fastmath=_SUMS)
def _group_norm_forward_kernel(x, gamma, beta, num_groups, eps):
    """Per (image, group): mean, then variance about it (two passes: no cancellation in float32,
    sums in float64), then xhat and out in one sweep. Measured 2-3x faster than the vectorised
    numpy version at (4, 64, 32, 32), which makes six passes over memory."""
    n_img, c_in, h, wd = x.shape
    per_group = c_in // num_groups
    hw = h * wd
    count = per_group * hw
    out = np.empty_like(x)
    xhat = np.empty_like(x)
    x3, out3, xhat3 = x.reshape(n_img, c_in, hw), out.reshape(n_img, c_in, hw), xhat.reshape(n_img, c_in, hw)
    inv_std = np.empty((n_img, num_groups), dtype=x.dtype)
    for n in range(n_img):
        for g in range(num_groups):
            c0, c1 = g * per_group, (g + 1) * per_group
            total = 0.0
            for c in range(c0, c1):
                for k in range(hw):
                    total += x3[n, c, k]
            mean = total / count
            sq = 0.0
            for c in range(c0, c1):
                for k in range(hw):
                    d = x3[n, c, k] - mean
                    sq += d * d
            r = 1.0 / np.sqrt(sq / count + eps)
            inv_std[n, g] = r
            for c in range(c0, c1):
                gc, bc = gamma[c], beta[c]
                for k in range(hw):
                    v = (x3[n, c, k] - mean) * r
                    xhat3[n, c, k] = v
                    out3[n, c, k] = v * gc + bc
    return out, xhat, inv_std


def group_norm_backward(dout, cache):
    """Backward pass of group_norm_forward.

    Inputs:
    - dout: (N, C, H, W)
    - cache: from group_norm_forward

    Returns a tuple of:
    - dx: (N, C, H, W)
    - dgamma, dbeta: (C,)
    """
    xhat, inv_std, gamma, num_groups = cache
    dx, dgamma, dbeta = _group_norm_backward_kernel(
        np.ascontiguousarray(dout, dtype=xhat.dtype), xhat, inv_std, gamma.astype(xhat.dtype), num_groups
    )
    return dx, dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)


@njit(cache=True, fastmath=_SUMS)
def _group_norm_backward_kernel(dout, xhat, inv_std, gamma, num_groups):
    """dx, dgamma, dbeta of GroupNorm, one (image, group) at a time (sums in float64).

    out = gamma*xhat + beta  =>  dgamma = sum dout*xhat, dbeta = sum dout (over N, H, W).
    Within a group of M values, xhat = (x - mean) * inv_std. Differentiating through mean and
    var (d mean/dx = 1/M, d var/dx = 2(x - mean)/M) gives the BatchNorm formula per group:
        dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dout * gamma
    The sums over a group are taken channel by channel (gamma is constant within a channel).
    """
    n_img, c_in, h, wd = dout.shape
    per_group = c_in // num_groups
    hw = h * wd
    count = per_group * hw
    dx = np.empty_like(dout)
    dout3, xhat3, dx3 = dout.reshape(n_img, c_in, hw), xhat.reshape(n_img, c_in, hw), dx.reshape(n_img, c_in, hw)
    dgamma = np.zeros(c_in)
    dbeta = np.zeros(c_in)
    for n in range(n_img):
        for g in range(num_groups):
            c0, c1 = g * per_group, (g + 1) * per_group
            sum_dxhat = 0.0
            sum_dxhat_xhat = 0.0
            for c in range(c0, c1):
                sum_d = 0.0
                sum_d_xhat = 0.0
                for k in range(hw):
                    d = dout3[n, c, k]
                    sum_d += d
                    sum_d_xhat += d * xhat3[n, c, k]
                dgamma[c] += sum_d_xhat
                dbeta[c] += sum_d
                sum_dxhat += sum_d * gamma[c]
                sum_dxhat_xhat += sum_d_xhat * gamma[c]
            mean_dxhat = sum_dxhat / count
            mean_dxhat_xhat = sum_dxhat_xhat / count
            r = inv_std[n, g]
            for c in range(c0, c1):
                gc = gamma[c]
                for k in range(hw):
                    dx3[n, c, k] = r * (dout3[n, c, k] * gc - mean_dxhat - xhat3[n, c, k] * mean_dxhat_xhat)
    return dx, dgamma, dbeta

"""Slow, obviously-correct references for the layers, written from the definitions with loops.

Each follows its formula term by term, in float64-friendly plain Python and numpy, with no
im2col and no cleverness: the fast layers in npmaskrcnn.layers are tested against these.
"""

import numpy as np


def conv2d_ref(x, w, b, stride, pad):
    """out[n, f, oy, ox] = b[f] + sum_{c,i,j} w[f,c,i,j] x[n, c, oy*s - p + i, ox*s - p + j] (zero padding)."""
    n_img, c_in, h, wd = x.shape
    n_filt, _, kh, kw = w.shape
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n_img, n_filt, oh, ow), dtype=x.dtype)
    for n in range(n_img):
        for f in range(n_filt):
            for oy in range(oh):
                for ox in range(ow):
                    total = 0.0 if b is None else b[f]
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                iy, ix = oy * stride - pad + i, ox * stride - pad + j
                                if 0 <= iy < h and 0 <= ix < wd:
                                    total += w[f, c, i, j] * x[n, c, iy, ix]
                    out[n, f, oy, ox] = total
    return out


def conv_transpose2d_ref(x, w, b, stride, pad):
    """Scatter: out[n, f, iy*s - p + i, ix*s - p + j] += x[n, c, iy, ix] w[c, f, i, j], then + b[f]."""
    n_img, c_in, h, wd = x.shape
    _, n_filt, kh, kw = w.shape
    oh = (h - 1) * stride - 2 * pad + kh
    ow = (wd - 1) * stride - 2 * pad + kw
    out = np.zeros((n_img, n_filt, oh, ow), dtype=x.dtype)
    for n in range(n_img):
        for c in range(c_in):
            for iy in range(h):
                for ix in range(wd):
                    for f in range(n_filt):
                        for i in range(kh):
                            for j in range(kw):
                                oy, ox = iy * stride - pad + i, ix * stride - pad + j
                                if 0 <= oy < oh and 0 <= ox < ow:
                                    out[n, f, oy, ox] += x[n, c, iy, ix] * w[c, f, i, j]
    if b is not None:
        out += b[None, :, None, None]
    return out


def max_pool2d_ref(x, kernel_size, stride, pad):
    """Max over each window, padding never counted; returns (out, argmax as flat index into H*W)."""
    n_img, c_in, h, wd = x.shape
    k = kernel_size
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n_img, c_in, oh, ow), dtype=x.dtype)
    argmax = np.zeros((n_img, c_in, oh, ow), dtype=np.int64)
    for n in range(n_img):
        for c in range(c_in):
            for oy in range(oh):
                for ox in range(ow):
                    best, best_idx = -np.inf, -1
                    for i in range(k):
                        for j in range(k):
                            iy, ix = oy * stride - pad + i, ox * stride - pad + j
                            if 0 <= iy < h and 0 <= ix < wd and x[n, c, iy, ix] > best:
                                best, best_idx = x[n, c, iy, ix], iy * wd + ix
                    out[n, c, oy, ox] = best
                    argmax[n, c, oy, ox] = best_idx
    return out, argmax


def upsample_nearest_ref(x, scale):
    """out[n, c, y, x] = x[n, c, y // scale, x // scale]."""
    n_img, c_in, h, wd = x.shape
    out = np.zeros((n_img, c_in, h * scale, wd * scale), dtype=x.dtype)
    for y in range(h * scale):
        for xx in range(wd * scale):
            out[:, :, y, xx] = x[:, :, y // scale, xx // scale]
    return out


def group_norm_ref(x, gamma, beta, num_groups, eps):
    """Each (image, group of C/G channels) normalised by its mean and biased variance, then gamma, beta."""
    n_img, c_in = x.shape[:2]
    per_group = c_in // num_groups
    out = np.zeros_like(x)
    for n in range(n_img):
        for g in range(num_groups):
            chans = slice(g * per_group, (g + 1) * per_group)
            values = x[n, chans]
            mean = values.sum() / values.size
            var = ((values - mean) ** 2).sum() / values.size
            out[n, chans] = (values - mean) / np.sqrt(var + eps)
    return out * gamma[None, :, None, None] + beta[None, :, None, None]


def linear_ref(x, w, b):
    """out[n, o] = b[o] + sum_d w[o, d] x_flat[n, d]."""
    x_flat = x.reshape(x.shape[0], -1)
    out = np.zeros((x.shape[0], w.shape[0]), dtype=x.dtype)
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            out[n, o] = (0.0 if b is None else b[o]) + sum(w[o, d] * x_flat[n, d] for d in range(w.shape[1]))
    return out

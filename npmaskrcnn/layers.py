"""Layers: the building blocks of the ResNet-FPN backbone and of every head.

Each op is a functional forward/backward pair in the style of the CS231n `layers.py`:
`out, cache = op_forward(x, ...)` and `grads = op_backward(dout, cache)`. Gradients come back in
the order of forward's array arguments; the cache holds only what backward needs and is never
mutated; every function keeps its input dtype (float32 to train, float64 for gradient checks).

Convolution goes through im2col: every receptive field of the input is copied into one column,
so the convolution of the whole batch becomes one matrix product, done by BLAS (`np.matmul`).
col2im is the adjoint of im2col (it scatter-adds columns back into an image), so it serves the
backward pass of conv2d, the forward pass of the transposed convolution (the mask head's 2x
upsampling, Mask R-CNN §3 "Network Architecture"), and the backward pass of max pooling.
GroupNorm (Wu & He 2018) replaces BatchNorm because the model trains from scratch with a handful
of images per step; it has a file of its own, `group_norm.py`, and is re-exported here.

Shape shorthand:
    N   images in the batch             C   input channels      F   output channels (filters)
    H, W    input height / width        OH, OW  output height / width     L = OH*OW
    KH, KW  kernel height / width       G   GroupNorm groups    D   flattened features

Naming:
    x, w, b         input, weight, bias (PyTorch layouts: conv (F, C, KH, KW), conv-transpose
                    (C, F, KH, KW), linear (out_features, in_features))
    cols            im2col matrix, (C*KH*KW, N, L): row (c, i, j), then image, then (oy, ox).
                    Images sit inside the columns so that one product covers the batch: measured
                    faster than N per-image products, most of all on small deep maps (4x4, 256
                    channels), at the price of transposing out and dout, which are the small arrays
    dout, dx, dw, db    upstream gradient and the gradients of x, w, b
"""

import numpy as np
from numba import njit, prange

from . import conv_fast
from .group_norm import group_norm_backward, group_norm_forward  # noqa: F401  (part of this API)


def _conv_out_size(size, kernel, stride, pad):
    """Output length of a sliding window (floor), as PyTorch computes it."""
    return (size + 2 * pad - kernel) // stride + 1


def _fl_to_nchw(out_fl, b, n_img, oh, ow):
    """(F, N*L) product -> (N, F, OH, OW) contiguous, adding the bias in the same pass."""
    n_filt = out_fl.shape[0]
    out = np.empty((n_img, n_filt, oh * ow), dtype=out_fl.dtype)
    src = out_fl.reshape(n_filt, n_img, oh * ow).transpose(1, 0, 2)
    if b is None:
        out[...] = src
    else:
        np.add(src, b[:, None], out=out)
    return out.reshape(n_img, n_filt, oh, ow)


def _nchw_to_cl(a):
    """(N, C, H, W) -> (C, N*H*W) contiguous: the layout of cols for a 1x1 kernel."""
    n_img, c_in, h, wd = a.shape
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).reshape(c_in, n_img * h * wd)


def conv2d_forward(x, w, b=None, stride=1, pad=0):
    """Forward pass of a 2-D convolution (cross-correlation, as in every deep-learning library).

    out[n, f, oy, ox] = b[f] + sum_{c,i,j} w[f, c, i, j] * x[n, c, oy*stride - pad + i, ox*stride - pad + j]
    with zero padding outside the image.

    Inputs:
    - x: (N, C, H, W)
    - w: (F, C, KH, KW)
    - b: (F,) or None
    - stride, pad: ints, the same along both axes

    Returns a tuple of:
    - out: (N, F, OH, OW), OH = (H + 2*pad - KH) // stride + 1
    - cache: for conv2d_backward
    """
    if conv_fast.winograd_pays(x.shape, w.shape, stride, pad):
        # optimisation: the same convolution in 2.25x fewer multiplications (conv_fast.py)
        return conv_fast.winograd_conv2d_forward(x, w, b, pad)
    n_img, c_in, h, wd = x.shape
    n_filt, _, kh, kw = w.shape
    oh, ow = _conv_out_size(h, kh, stride, pad), _conv_out_size(wd, kw, stride, pad)
    if kh == 1 and kw == 1 and pad == 0:
        # a 1x1 conv needs no im2col, only the images moved inside (every stride-th pixel)
        cols = _nchw_to_cl(x[:, :, ::stride, ::stride])
    else:
        cols = _im2col_kernel(np.ascontiguousarray(x), kh, kw, stride, pad, oh, ow, 0.0)
        cols = cols.reshape(c_in * kh * kw, n_img * oh * ow)
    out_fl = w.reshape(n_filt, -1) @ cols  # (F, C*KH*KW) @ (C*KH*KW, N*L) -> (F, N*L)
    cache = (x.shape, w, b is not None, stride, pad, cols)
    return _fl_to_nchw(out_fl, b, n_img, oh, ow), cache


@njit(cache=True)
def _im2col_kernel(x, kh, kw, stride, pad, oh, ow, pad_value):
    """cols[(c*KH + i)*KW + j, n, oy*OW + ox] = x[n, c, oy*stride - pad + i, ox*stride - pad + j].

    Positions outside the image read `pad_value` (0 for convolution, -inf for max pooling).
    The loop over (image, channel) writes disjoint blocks, so prange could split it; it stays
    serial because numba's worker threads and OpenBLAS's threads then spin against each other on
    2 cores (measured 8 ms instead of 1 ms per conv), and a serial kernel compiles twice as fast.
    """
    n_img, c_in, h, wd = x.shape
    cols = np.empty((c_in * kh * kw, n_img, oh * ow), dtype=x.dtype)
    for nc in prange(n_img * c_in):
        n = nc // c_in
        c = nc % c_in
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oy in range(oh):
                    iy = oy * stride - pad + i
                    for ox in range(ow):
                        ix = ox * stride - pad + j
                        if 0 <= iy < h and 0 <= ix < wd:
                            cols[row, n, oy * ow + ox] = x[n, c, iy, ix]
                        else:
                            cols[row, n, oy * ow + ox] = pad_value
    return cols


def conv2d_backward(dout, cache, need_dx=True):
    """Backward pass of conv2d_forward.

    Inputs:
    - dout: (N, F, OH, OW)
    - cache: from conv2d_forward
    - need_dx: False skips the col2im for the first layer, whose input gradient nobody needs

    Returns a tuple of:
    - dx: (N, C, H, W), or None if need_dx is False
    - dw: (F, C, KH, KW)
    - db: (F,), or None if forward had no bias
    """
    if isinstance(cache, conv_fast.WinogradCache):
        return conv_fast.winograd_conv2d_backward(dout, cache, need_dx)
    x_shape, w, has_bias, stride, pad, cols = cache
    n_img, c_in, h, wd = x_shape
    n_filt, _, kh, kw = w.shape
    oh, ow = dout.shape[2], dout.shape[3]
    dout_fl = _nchw_to_cl(dout)  # (F, N*L)
    # out = W cols + b  =>  dW = dout cols^T,  db = dout summed over images and positions
    dw = (dout_fl @ cols.T).reshape(w.shape)
    db = dout_fl.sum(axis=1) if has_bias else None
    if not need_dx:
        return None, dw, db
    # dcols = W^T dout; each entry of cols was copied from one pixel of x, so col2im adds it back
    dcols = w.reshape(n_filt, -1).T @ dout_fl  # (C*KH*KW, N*L)
    if kh == 1 and kw == 1 and pad == 0:
        dx_sub = dcols.reshape(c_in, n_img, oh, ow).transpose(1, 0, 2, 3)
        if stride == 1:
            return np.ascontiguousarray(dx_sub), dw, db
        dx = np.zeros(x_shape, dtype=dcols.dtype)  # pixels no window reads get no gradient
        dx[:, :, : oh * stride : stride, : ow * stride : stride] = dx_sub
        return dx, dw, db
    dcols = dcols.reshape(c_in * kh * kw, n_img, oh * ow)
    dx = _col2im_kernel(dcols, c_in, h, wd, kh, kw, stride, pad, oh, ow)
    return dx, dw, db


@njit(cache=True)
def _col2im_kernel(cols, c_in, h, wd, kh, kw, stride, pad, oh, ow):
    """Adjoint of _im2col_kernel: x[n, c, iy, ix] += cols[(c*KH + i)*KW + j, n, oy*OW + ox].

    Columns that fall in the padding are dropped. Overlapping windows only ever add into the same
    (image, channel) plane, so a prange over (image, channel) would not race (serial: see im2col).
    """
    n_img = cols.shape[1]
    x = np.zeros((n_img, c_in, h, wd), dtype=cols.dtype)
    for nc in prange(n_img * c_in):
        n = nc // c_in
        c = nc % c_in
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oy in range(oh):
                    iy = oy * stride - pad + i
                    if iy < 0 or iy >= h:
                        continue
                    for ox in range(ow):
                        ix = ox * stride - pad + j
                        if 0 <= ix < wd:
                            x[n, c, iy, ix] += cols[row, n, oy * ow + ox]
    return x


def conv_transpose2d_forward(x, w, b=None, stride=2, pad=0):
    """Forward pass of a transposed convolution (the adjoint of conv2d with the same w).

    Every input pixel scatters a weighted copy of the kernel into the output:
    out[n, f, iy*stride - pad + i, ix*stride - pad + j] += x[n, c, iy, ix] * w[c, f, i, j], plus b[f].

    Inputs:
    - x: (N, C, H, W)
    - w: (C, F, KH, KW), PyTorch's ConvTranspose2d layout
    - b: (F,) or None
    - stride, pad: ints (no output_padding)

    Returns a tuple of:
    - out: (N, F, OH, OW), OH = (H - 1)*stride - 2*pad + KH
    - cache: for conv_transpose2d_backward
    """
    n_img, c_in, h, wd = x.shape
    _, n_filt, kh, kw = w.shape
    oh, ow = (h - 1) * stride - 2 * pad + kh, (wd - 1) * stride - 2 * pad + kw
    x_cl = _nchw_to_cl(x)  # (C, N*H*W)
    # cols = W^T x is exactly conv2d's dcols, and col2im scatters it into the output
    cols = w.reshape(c_in, -1).T @ x_cl  # (F*KH*KW, C) @ (C, N*H*W)
    out = _col2im_kernel(cols.reshape(-1, n_img, h * wd), n_filt, oh, ow, kh, kw, stride, pad, h, wd)
    if b is not None:
        out += b[:, None, None]
    cache = (x_cl, x.shape, w, b is not None, stride, pad)
    return out, cache


def conv_transpose2d_backward(dout, cache):
    """Backward pass of conv_transpose2d_forward.

    Inputs:
    - dout: (N, F, OH, OW)
    - cache: from conv_transpose2d_forward

    Returns a tuple of:
    - dx: (N, C, H, W)
    - dw: (C, F, KH, KW)
    - db: (F,), or None if forward had no bias
    """
    x_cl, x_shape, w, has_bias, stride, pad = cache
    n_img, c_in, h, wd = x_shape
    _, n_filt, kh, kw = w.shape
    # out = col2im(W^T x)  =>  dcols = im2col(dout) (the adjoint of col2im), then
    # dx = W dcols (a plain conv2d of dout with w) and dW = x dcols^T
    dcols = _im2col_kernel(np.ascontiguousarray(dout), kh, kw, stride, pad, h, wd, 0.0)
    dcols = dcols.reshape(n_filt * kh * kw, n_img * h * wd)
    dx_cl = w.reshape(c_in, -1) @ dcols  # (C, N*H*W)
    dx = np.ascontiguousarray(dx_cl.reshape(c_in, n_img, h, wd).transpose(1, 0, 2, 3))
    dw = (x_cl @ dcols.T).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


def max_pool2d_forward(x, kernel_size=2, stride=2, pad=0):
    """Forward pass of max pooling, PyTorch semantics.

    Padding acts as -inf (it never wins), the output size is floored, and ties go to the first
    maximum in row-major window order. As in PyTorch, pad may be at most kernel_size // 2, so every
    window holds at least one real pixel.

    Inputs:
    - x: (N, C, H, W)
    - kernel_size, stride, pad: ints, the same along both axes

    Returns a tuple of:
    - out: (N, C, OH, OW), OH = (H + 2*pad - kernel_size) // stride + 1
    - cache: for max_pool2d_backward
    """
    if pad > kernel_size // 2:
        raise ValueError(f"pad={pad} must be at most kernel_size // 2 = {kernel_size // 2}")
    n_img, c_in, h, wd = x.shape
    k = kernel_size
    oh, ow = _conv_out_size(h, k, stride, pad), _conv_out_size(wd, k, stride, pad)
    # each channel pooled as its own one-channel image; argmax (N*C, L) numbers a window's
    # positions as the rows of im2col's columns do, so backward scatters through col2im
    out, argmax = _max_pool_kernel(np.ascontiguousarray(x).reshape(n_img * c_in, h, wd),
                                   k, stride, pad, oh, ow)
    cache = (argmax, x.shape, k, stride, pad)
    return out.reshape(n_img, c_in, oh, ow), cache


@njit(cache=True)
def _max_pool_kernel(planes, k, stride, pad, oh, ow):
    """out[p, oy*OW + ox] = max of the k x k window of plane p at (oy, ox), padding -inf;
    argmax[p, l] = i*k + j of its first maximum in row-major window order (NaN wins, as in
    np.argmax and PyTorch)."""
    n_planes, h, wd = planes.shape
    out = np.empty((n_planes, oh * ow), dtype=planes.dtype)
    argmax = np.empty((n_planes, oh * ow), dtype=np.int64)
    for p in range(n_planes):
        for oy in range(oh):
            y0 = oy * stride - pad                  # the window's rows inside the image only
            for ox in range(ow):
                x0 = ox * stride - pad
                best, where = -np.inf, 0
                for i in range(max(0, -y0), min(k, h - y0)):
                    for j in range(max(0, -x0), min(k, wd - x0)):
                        v = planes[p, y0 + i, x0 + j]
                        if v > best or (v != v and best == best):
                            best, where = v, i * k + j
                out[p, oy * ow + ox] = best
                argmax[p, oy * ow + ox] = where
    return out, argmax


def max_pool2d_backward(dout, cache):
    """Backward pass of max_pool2d_forward: each window's gradient goes to its first argmax.

    Inputs:
    - dout: (N, C, OH, OW)
    - cache: from max_pool2d_forward

    Returns:
    - dx: (N, C, H, W)
    """
    argmax, x_shape, k, stride, pad = cache
    n_img, c_in, h, wd = x_shape
    oh, ow = dout.shape[2], dout.shape[3]
    # out = cols[argmax]: dcols is dout in the argmax row and 0 elsewhere, and col2im adds up
    # the windows that overlap on one pixel
    dcols = np.zeros((k * k, n_img * c_in, oh * ow), dtype=dout.dtype)
    np.put_along_axis(dcols, argmax[None], dout.reshape(1, n_img * c_in, oh * ow), axis=0)
    dx = _col2im_kernel(dcols, 1, h, wd, k, k, stride, pad, oh, ow)
    return dx.reshape(x_shape)


def upsample_nearest_forward(x, scale=2):
    """Nearest-neighbour upsampling by an integer factor (FPN's top-down pathway).

    out[n, c, y, x] = x[n, c, y // scale, x // scale]

    Inputs:
    - x: (N, C, H, W)
    - scale: int

    Returns a tuple of:
    - out: (N, C, H*scale, W*scale)
    - cache: for upsample_nearest_backward
    """
    n_img, c_in, h, wd = x.shape
    s = scale
    out = np.broadcast_to(x[:, :, :, None, :, None], (n_img, c_in, h, s, wd, s))
    return out.reshape(n_img, c_in, h * s, wd * s), (x.shape, s)


def upsample_nearest_backward(dout, cache):
    """Backward pass of upsample_nearest_forward: each input pixel sums its scale x scale copies.

    Inputs:
    - dout: (N, C, H*scale, W*scale)
    - cache: from upsample_nearest_forward

    Returns:
    - dx: (N, C, H, W)
    """
    (n_img, c_in, h, wd), s = cache
    return dout.reshape(n_img, c_in, h, s, wd, s).sum(axis=(3, 5))


def linear_forward(x, w, b):
    """Forward pass of a fully-connected layer: out = x w^T + b.

    Inputs:
    - x: (N, ...), flattened to (N, D)
    - w: (out_features, D), PyTorch layout
    - b: (out_features,) or None

    Returns a tuple of:
    - out: (N, out_features)
    - cache: for linear_backward
    """
    x2 = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # (N, D); explicit D so N = 0 works
    out = x2 @ w.T
    if b is not None:
        out += b
    return out, (x2, x.shape, w, b is not None)


def linear_backward(dout, cache):
    """Backward pass of linear_forward.

    Inputs:
    - dout: (N, out_features)
    - cache: from linear_forward

    Returns a tuple of:
    - dx: in x's original shape (N, ...)
    - dw: (out_features, D)
    - db: (out_features,), or None if forward had no bias
    """
    x2, x_shape, w, has_bias = cache
    # out = x2 W^T + b  =>  dx2 = dout W,  dW = dout^T x2,  db = sum over rows of dout
    dx = (dout @ w).reshape(x_shape)
    dw = dout.T @ x2
    db = dout.sum(axis=0) if has_bias else None
    return dx, dw, db


def relu_forward(x):
    """Forward pass of the rectified linear unit, out = max(x, 0).

    Inputs:
    - x: any shape

    Returns a tuple of:
    - out: same shape as x
    - cache: for relu_backward
    """
    mask = x > 0
    return np.maximum(x, 0), mask


def relu_backward(dout, cache):
    """Backward pass of relu_forward: the gradient passes where the input was positive.

    Inputs:
    - dout: same shape as the input
    - cache: from relu_forward (the mask x > 0)

    Returns:
    - dx: same shape as the input
    """
    return dout * cache

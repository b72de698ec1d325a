"""RoIAlign, separable: an optimisation of the readable kernels in roi_align.py, tested equal to them.

What it computes is RoIAlign (Mask R-CNN §3), exactly as `roi_align.py` defines it; only the
order of the arithmetic differs (so float32 results differ from the readable kernels' in the
last bits). It is the default (`impl="separable"`) because it is faster
(`python benchmarks/bench_ops.py` times both side by side) and because the shipped model was
trained with it: its float32 bits are the model's.

The optimisation: a sample's bilinear weight is a y-weight times an x-weight, and the sample
grid is the outer product of G rows and G columns. So the sample positions and their two taps
are computed once per axis (`_bilinear_samples`), not once per sample and channel. For
mode="avg" one more step: the average of products of y- and x-weights is the product of their
averages, so each output row ph reads a short window of feature rows with fixed weights `ay`,
each output column a window of columns with weights `ax`, and
    out[r, c, ph, pw] = sum_i sum_j ay[r, ph, i] ax[r, pw, j] x[b, c, y0[r, ph] + i, x0[r, pw] + j].
The windows are computed once per call in NumPy; the kernels only multiply and add, reading the
features channels-last (N, H, W, C) so the innermost loop runs over contiguous channels (SIMD).
mode="max" cannot merge samples (a max of products is no product of maxes): its kernel visits
every sample, with the per-axis tables.

Forward passes are parallel over RoIs; backward passes over channels (blocks of channels for
avg), because RoIs overlap and two threads scatter-adding into the same cell would race.

Shape shorthand:
    N images    C channels    H, W feature-map size    R RoIs    OH, OW output size
    G   samples per bin along one axis (sampling_ratio, or adaptive: ceil(roi size / OH))
    T   length of the longest interpolation window

Naming:
    ys_idx, ys_w    (R, OH, G, 2) rows (low, high) and bilinear weights of every sample point;
                    likewise xs_idx, xs_w along the columns; grid_h, grid_w (R,) samples per bin
    y0, ny, ay  (R, OH), (R, OH), (R, OH, T): the row window of each output row (start, length,
                weights); likewise x0, nx, ax along the columns
    argmax      (R, C, OH, OW) int32: the winning sample iy * grid_w + ix (mode="max"); -1 for a
                bin with no sample
"""

import numpy as np
from numba import njit, prange

from .roi_pool import _store_channels_first

_CHANNEL_BLOCK = 32      # channels per thread in the avg backward: 8 float32 AVX2 vectors, x4


def separable_forward(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned,
                      mode):
    """RoIAlign forward on checked inputs (roi_align.roi_align_forward checks them).

    Inputs:
    - features: (N, C, H, W) C-contiguous; rois: (R, 5) in the features' dtype; batch: (R,) int64
    - output_size: (OH, OW); spatial_scale: float
    - sampling_ratio, aligned, mode: as in roi_align_forward
    Returns a tuple of:
    - out: (R, C, OH, OW)
    - cache: for separable_backward
    """
    oh, ow = output_size
    _, _, h, w = features.shape
    scale = features.dtype.type(spatial_scale)
    ys_idx, ys_w, grid_h = _bilinear_samples(rois[:, 2] * scale, rois[:, 4] * scale, oh, h,
                                             int(sampling_ratio), aligned)
    xs_idx, xs_w, grid_w = _bilinear_samples(rois[:, 1] * scale, rois[:, 3] * scale, ow, w,
                                             int(sampling_ratio), aligned)
    if mode == "max":
        out, argmax = _roi_align_max_forward_kernel(features, batch, ys_idx, ys_w, grid_h,
                                                    xs_idx, xs_w, grid_w)
        tables = (ys_idx, ys_w, grid_h, xs_idx, xs_w, grid_w)
        return out, ("max", features.shape, features.dtype, batch, tables, argmax)
    # avg: 1/(G_h G_w) = (1/G_h)(1/G_w) goes into the per-axis weights
    inv_gh = 1 / np.maximum(grid_h, 1).astype(features.dtype)[:, None, None, None]
    inv_gw = 1 / np.maximum(grid_w, 1).astype(features.dtype)[:, None, None, None]
    y0, ny, ay = _interpolation_windows(ys_idx, ys_w * inv_gh)
    x0, nx, ax = _interpolation_windows(xs_idx, xs_w * inv_gw)
    features_nhwc = np.ascontiguousarray(features.transpose(0, 2, 3, 1))
    out = _roi_align_avg_forward_kernel(features_nhwc, batch, y0, ny, ay, x0, nx, ax)
    return out, ("avg", features.shape, features.dtype, batch, (y0, ny, ay, x0, nx, ax), None)


def separable_backward(dout, cache):
    """RoIAlign backward: dout (R, C, OH, OW), checked against the cache -> dfeatures (N, C, H, W).

    The output is linear in the features with the bilinear weights as coefficients, so each
    upstream gradient is scattered back with the same weights: the windows for mode="avg", the
    winning sample's four taps for mode="max".
    """
    mode, shape, dtype, batch, tables, argmax = cache
    if mode == "max":
        return _roi_align_max_backward_kernel(dout, batch, *tables, argmax, shape[0], shape[2],
                                              shape[3])
    dfeatures_nhwc = _roi_align_avg_backward_kernel(dout, batch, *tables, shape[0], shape[2],
                                                    shape[3])
    return np.ascontiguousarray(dfeatures_nhwc.transpose(0, 3, 1, 2))


def separable_out_shape(cache):
    """(R, C, OH, OW) of the forward output this cache belongs to."""
    mode, shape, _, batch, tables, argmax = cache
    if mode == "max":
        return argmax.shape
    return (batch.shape[0], shape[1], tables[0].shape[1], tables[3].shape[1])


def _bilinear_samples(start, end, out_len, size, sampling_ratio, aligned):
    """Sample points of RoIAlign along one axis and their two bilinear taps each.

    Inputs:
    - start, end: (R,) scaled box edges; out_len: bins on this axis; size: map length (H or W)
    - sampling_ratio, aligned: as in roi_align_forward
    Returns:
    - idx: (R, out_len, G, 2) int64 low and high cell of each sample (0 where unused)
    - weight: (R, out_len, G, 2) their weights 1 - frac and frac; 0 for a point off the map
      (it reads 0) and for the padding g >= grid[r]
    - grid: (R,) int64 samples per bin of each RoI (<= 0: none, the bin reads 0)
    """
    dtype = start.dtype
    offset = dtype.type(0.5 if aligned else 0.0)
    start, end = start - offset, end - offset
    length = end - start
    if not aligned:
        length = np.maximum(length, dtype.type(1))        # malformed boxes become 1 cell
    bin_size = length / dtype.type(out_len)
    if sampling_ratio > 0:
        grid = np.full(start.shape, sampling_ratio, np.int64)
    else:
        grid = np.ceil(length / dtype.type(out_len)).astype(np.int64)
    g = max(int(grid.max(initial=1)), 1)
    p = np.arange(out_len, dtype=dtype)[None, :, None]
    s = np.arange(g, dtype=dtype)[None, None, :]
    b = bin_size[:, None, None]
    # the same operation order as torchvision, so float32 lands on the same points
    pos = (start[:, None, None] + p * b) + (s + dtype.type(0.5)) * b / np.maximum(grid, 1).astype(
        dtype)[:, None, None]                                                # (R, out_len, G)
    used = (pos >= -1) & (pos <= size) & (np.arange(g)[None, None, :] < grid[:, None, None])
    pos = np.maximum(pos, dtype.type(0))                       # points in [-1, 0] read cell 0
    low = np.floor(pos).astype(np.int64)
    at_edge = low >= size - 1                                  # the last cell: no high neighbour
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    frac = np.where(at_edge, dtype.type(0), pos - low.astype(dtype))
    idx = np.where(used[..., None], np.stack([low, high], axis=-1), 0)
    weight = np.where(used[..., None], np.stack([1 - frac, frac], axis=-1), dtype.type(0))
    return idx, weight.astype(dtype, copy=False), grid


def _interpolation_windows(idx, weight):
    """Merge the taps of each bin's samples into one window of consecutive cells.

    Row ph of the (OH, H) matrix that maps feature rows to output rows is nonzero only on the
    rows its samples touch; store that stretch as (start, length, weights).

    Inputs:
    - idx, weight: (R, O, G, 2) from _bilinear_samples (weights already divided by G)
    Returns:
    - start: (R, O) int64; length: (R, O) int64 (0 for a bin that reads nothing)
    - window: (R, O, T) weights of cells start .. start + length - 1
    """
    n_rois, out_len, g, _ = idx.shape
    idx = idx.reshape(n_rois, out_len, 2 * g)                 # taps in sample order: low, high, ...
    weight = weight.reshape(n_rois, out_len, 2 * g)
    live = weight != 0
    start = np.where(live, idx, np.iinfo(np.int64).max).min(axis=2, initial=np.iinfo(np.int64).max)
    stop = np.where(live, idx, -1).max(axis=2, initial=-1)
    length = np.maximum(stop - start + 1, 0)
    start = np.where(length > 0, start, 0)
    t = max(int(length.max(initial=1)), 1)
    flat = (np.arange(n_rois * out_len).reshape(n_rois, out_len, 1) * t + idx - start[..., None])
    window = np.bincount(flat[live], weight[live], minlength=n_rois * out_len * t)
    return start, length, window.reshape(n_rois, out_len, t).astype(weight.dtype)


@njit(cache=True, parallel=True)
def _roi_align_avg_forward_kernel(features_nhwc, batch, y0, ny, ay, x0, nx, ax):
    """out[r, :, ph, pw] = sum_ij ay[r, ph, i] ax[r, pw, j] x[b, y0 + i, x0 + j, :].

    Parallel over RoIs; channels-last input, so the innermost loop runs over contiguous channels.
    """
    n_rois = batch.shape[0]
    n_ch = features_nhwc.shape[3]
    oh, ow = y0.shape[1], x0.shape[1]
    out = np.empty((n_rois, n_ch, oh * ow), features_nhwc.dtype)
    for r in prange(n_rois):
        fmap = features_nhwc[batch[r]]                                # (H, W, C)
        acc = np.zeros((oh * ow, n_ch), features_nhwc.dtype)
        for ph in range(oh):
            for pw in range(ow):
                bin_acc = acc[ph * ow + pw]
                for i in range(ny[r, ph]):
                    row = fmap[y0[r, ph] + i]                         # (W, C)
                    for j in range(nx[r, pw]):
                        weight = ay[r, ph, i] * ax[r, pw, j]
                        pix = row[x0[r, pw] + j]
                        for c in range(n_ch):
                            bin_acc[c] += weight * pix[c]
        _store_channels_first(acc, out[r])
    return out.reshape(n_rois, n_ch, oh, ow)


@njit(cache=True, parallel=True)
def _roi_align_max_forward_kernel(features, batch, ys_idx, ys_w, grid_h, xs_idx, xs_w, grid_w):
    """out[r, c, ph, pw] = the bin's largest bilinear sample (the first on ties).

    Parallel over RoIs; channels-first input, as this mode is not the hot path. Each sample is
    y-weight times (x-weighted row values), its taps and weights read from the per-axis tables.
    """
    n_rois = batch.shape[0]
    n_ch = features.shape[1]
    oh, ow = ys_idx.shape[1], xs_idx.shape[1]
    out = np.zeros((n_rois, n_ch, oh, ow), features.dtype)
    argmax = np.full((n_rois, n_ch, oh, ow), -1, np.int32)
    for r in prange(n_rois):
        for c in range(n_ch):
            plane = features[batch[r], c]
            for ph in range(oh):
                for pw in range(ow):
                    best = -np.inf
                    for iy in range(grid_h[r]):
                        ylo, yhi = ys_idx[r, ph, iy, 0], ys_idx[r, ph, iy, 1]
                        for ix in range(grid_w[r]):
                            xlo, xhi = xs_idx[r, pw, ix, 0], xs_idx[r, pw, ix, 1]
                            v = (ys_w[r, ph, iy, 0] * (xs_w[r, pw, ix, 0] * plane[ylo, xlo]
                                                       + xs_w[r, pw, ix, 1] * plane[ylo, xhi])
                                 + ys_w[r, ph, iy, 1] * (xs_w[r, pw, ix, 0] * plane[yhi, xlo]
                                                         + xs_w[r, pw, ix, 1] * plane[yhi, xhi]))
                            if v > best:
                                best = v
                                argmax[r, c, ph, pw] = iy * grid_w[r] + ix
                    if argmax[r, c, ph, pw] >= 0:
                        out[r, c, ph, pw] = best
    return out, argmax


@njit(cache=True, parallel=True)
def _roi_align_avg_backward_kernel(dout, batch, y0, ny, ay, x0, nx, ax, n_img, h, w):
    """dx[b, y0 + i, x0 + j, :] += ay ax dout[r, :, ph, pw], channels-last.

    RoIs overlap, so two RoIs may add into the same cell: the work is split over blocks of
    channels instead, each block's slice of the gradient written by one thread only.
    """
    n_rois, n_ch, oh, ow = dout.shape
    dfeatures_nhwc = np.zeros((n_img, h, w, n_ch), dout.dtype)
    n_blocks = (n_ch + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
    for blk in prange(n_blocks):
        c0 = blk * _CHANNEL_BLOCK
        nc = min(_CHANNEL_BLOCK, n_ch - c0)
        g = np.empty(nc, dout.dtype)
        for r in range(n_rois):
            dmap = dfeatures_nhwc[batch[r]]                           # (H, W, C)
            for ph in range(oh):
                for pw in range(ow):
                    for c in range(nc):
                        g[c] = dout[r, c0 + c, ph, pw]
                    for i in range(ny[r, ph]):
                        row = dmap[y0[r, ph] + i]
                        for j in range(nx[r, pw]):
                            weight = ay[r, ph, i] * ax[r, pw, j]
                            pix = row[x0[r, pw] + j, c0:c0 + nc]
                            for c in range(nc):
                                pix[c] += weight * g[c]
    return dfeatures_nhwc


@njit(cache=True, parallel=True)
def _roi_align_max_backward_kernel(dout, batch, ys_idx, ys_w, grid_h, xs_idx, xs_w, grid_w, argmax,
                                   n_img, h, w):
    """Scatter dout through the four taps of each bin's winning sample; parallel over channels."""
    n_rois, n_ch, oh, ow = dout.shape
    dfeatures = np.zeros((n_img, n_ch, h, w), dout.dtype)
    for c in prange(n_ch):
        for r in range(n_rois):
            plane = dfeatures[batch[r], c]
            for ph in range(oh):
                for pw in range(ow):
                    s = argmax[r, c, ph, pw]
                    if s < 0:
                        continue
                    iy, ix = s // grid_w[r], s % grid_w[r]
                    for a in range(2):
                        gy = ys_w[r, ph, iy, a] * dout[r, c, ph, pw]
                        for b in range(2):
                            y, x = ys_idx[r, ph, iy, a], xs_idx[r, pw, ix, b]
                            plane[y, x] += gy * xs_w[r, pw, ix, b]
    return dfeatures


"""RoIPool (Fast R-CNN, Girshick 2015, §2.1): max over integer bins of the box rounded to the grid.

Every RoI, whatever its size, becomes a fixed OH x OW feature map. RoIPool gets there with two
quantizations: it rounds the scaled box to whole feature cells (half away from zero, the end
cell included), then cuts it into bins of whole cells (floor of the start, ceil of the end) and
takes the max of each bin. Both roundings misalign the pooled features with the box; RoIAlign
(roi_align.py) removes them. Semantics are torchvision's CPU kernel (`torchvision.ops.roi_pool`),
see DESIGN.md §4.

The kernels read the features channels-last (N, H, W, C), so their innermost loop runs over
contiguous channels (SIMD). The forward pass is parallel over RoIs; the backward pass over
channels, because RoIs overlap and two threads scatter-adding into the same cell would race.

This file also holds, at its end, what every RoI op shares: the argument checks (the kernels do
no bounds checks, so everything they index with is checked first) and the rule that runs small
calls on one thread.

Shape shorthand:
    N images    C channels    H, W feature-map size    R RoIs    OH, OW output size

Naming:
    features    (N, C, H, W) float32 or float64
    rois        (R, 5) [batch_index, x1, y1, x2, y2] in input-image pixels
    batch       (R,) int64 image index of each RoI
    spatial_scale   feature-map cells per image pixel (1/stride)
    hstart, hend    (R, OH) int64: the rows [hstart, hend) of each bin; likewise wstart, wend
    argmax      (R, C, OH, OW) int32: the cell y * W + x that won the bin's max; -1 for an empty bin
"""

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

_FLT_MAX = float(np.finfo(np.float32).max)   # torchvision's initial max for a non-empty bin
_PARALLEL_MIN_WORK = 1 << 15   # output cells (R*C*OH*OW) below which one thread is faster
_MAX_CELL = 2.0 ** 31     # |box coordinate * spatial_scale| must fit the kernels' int32 cell maths


def roi_pool_forward(features, rois, output_size, spatial_scale):
    """Forward pass of RoIPool (Fast R-CNN): max over integer bins of the rounded box.

    The box is scaled and rounded (half away from zero) to cells [x1, x2] inclusive, its size is
    clamped to >= 1 cell, bin (ph, pw) covers rows floor(ph * h / OH) .. ceil((ph + 1) * h / OH)
    (exclusive) from the box's first row, clipped to the map; an empty bin gives 0. An inverted
    box (x2 < x1 or y2 < y1) is accepted, as in torchvision: its size clamps to 1 cell at x1, y1.

    Inputs:
    - features: (N, C, H, W)
    - rois: (R, 5) [batch_index, x1, y1, x2, y2] in image pixels
    - output_size: int or (OH, OW)
    - spatial_scale: float, feature cells per image pixel
    Returns a tuple of:
    - out: (R, C, OH, OW)
    - cache: for roi_pool_backward
    """
    features, rois, batch, (oh, ow) = _check_roi_inputs(features, rois, output_size, spatial_scale)
    _, _, h, w = features.shape
    scale = features.dtype.type(spatial_scale)
    hstart, hend = _pool_bins(rois[:, 2] * scale, rois[:, 4] * scale, oh, h)     # (R, OH) each
    wstart, wend = _pool_bins(rois[:, 1] * scale, rois[:, 3] * scale, ow, w)     # (R, OW) each
    features_nhwc = np.ascontiguousarray(features.transpose(0, 2, 3, 1))
    with _threads_for(rois.shape[0] * features.shape[1] * oh * ow):
        out, argmax = _roi_pool_forward_kernel(features_nhwc, batch, hstart, hend, wstart, wend)
    return out, (features.shape, features.dtype, batch, argmax)


def _round_half_away(x):
    """C's round(): halves go away from zero (np.round goes to even)."""
    a = np.abs(x)
    f = np.floor(a)
    return np.sign(x) * (f + (a - f >= 0.5))     # a - f is exact, unlike floor(a + 0.5)


def _pool_bins(start, end, out_len, size):
    """Bin boundaries of RoIPool along one axis, in cells, clipped to [0, size].

    Inputs:
    - start, end: (R,) scaled box edges; out_len: number of bins; size: length of the map axis
    Returns:
    - bin_start, bin_end: (R, out_len) int64, bin = [bin_start, bin_end)
    """
    dtype = start.dtype
    start = _round_half_away(start).astype(np.int64)
    end = _round_half_away(end).astype(np.int64)
    length = np.maximum(end - start + 1, 1)                           # inclusive end, >= 1 cell
    bin_size = (length.astype(dtype) / dtype.type(out_len))[:, None]  # (R, 1)
    p = np.arange(out_len + 1, dtype=dtype)[None, :]
    edges_lo = np.floor(p[:, :-1] * bin_size).astype(np.int64) + start[:, None]
    edges_hi = np.ceil(p[:, 1:] * bin_size).astype(np.int64) + start[:, None]
    return np.clip(edges_lo, 0, size), np.clip(edges_hi, 0, size)


@njit(cache=True, parallel=True)
def _roi_pool_forward_kernel(features_nhwc, batch, hstart, hend, wstart, wend):
    """out[r, c, ph, pw] = max of features[batch[r], c] over the bin; parallel over RoIs.

    Channels-last input, so the innermost loop runs over contiguous channels (SIMD).
    """
    n_rois = batch.shape[0]
    w, n_ch = features_nhwc.shape[2], features_nhwc.shape[3]
    oh, ow = hstart.shape[1], wstart.shape[1]
    out = np.empty((n_rois, n_ch, oh * ow), features_nhwc.dtype)
    argmax = np.empty((n_rois, n_ch, oh * ow), np.int32)
    for r in prange(n_rois):
        fmap = features_nhwc[batch[r]]                                # (H, W, C)
        best = np.full((oh * ow, n_ch), -_FLT_MAX, features_nhwc.dtype)
        best_idx = np.full((oh * ow, n_ch), -1, np.int32)
        for ph in range(oh):
            for pw in range(ow):
                bin_best, bin_idx = best[ph * ow + pw], best_idx[ph * ow + pw]
                if hend[r, ph] <= hstart[r, ph] or wend[r, pw] <= wstart[r, pw]:
                    bin_best[:] = 0                                   # empty bin: 0, no gradient
                for y in range(hstart[r, ph], hend[r, ph]):
                    for x in range(wstart[r, pw], wend[r, pw]):
                        pix = fmap[y, x]
                        for c in range(n_ch):
                            # branch-free select, so the channel loop vectorizes
                            better = pix[c] > bin_best[c]
                            bin_best[c] = pix[c] if better else bin_best[c]
                            bin_idx[c] = y * w + x if better else bin_idx[c]
        _store_channels_first(best, out[r])
        _store_channels_first(best_idx, argmax[r])
    return out.reshape(n_rois, n_ch, oh, ow), argmax.reshape(n_rois, n_ch, oh, ow)


@njit(cache=True)
def _store_channels_first(src, dst):
    """dst[c, p] = src[p, c], 16 channels at a time so reads and writes both stream."""
    n_pos, n_ch = src.shape
    for c0 in range(0, n_ch, 16):
        for p in range(n_pos):
            for c in range(c0, min(c0 + 16, n_ch)):
                dst[c, p] = src[p, c]


def roi_pool_backward(dout, cache):
    """Backward pass of RoIPool: each output's gradient goes to the cell that won its max.

    Inputs:
    - dout: (R, C, OH, OW)
    - cache: from roi_pool_forward
    Returns:
    - dfeatures: (N, C, H, W)
    """
    shape, dtype, batch, argmax = cache
    dout = _check_dout(dout, argmax.shape, dtype)
    with _threads_for(dout.size):
        return _roi_pool_backward_kernel(dout, batch, argmax, shape[0], shape[2], shape[3])


@njit(cache=True, parallel=True)
def _roi_pool_backward_kernel(dout, batch, argmax, n_img, h, w):
    """dfeatures[batch[r], c, argmax] += dout[r, c]; parallel over channels, so no write races."""
    n_rois, n_ch, oh, ow = dout.shape
    dfeatures = np.zeros((n_img, n_ch, h * w), dout.dtype)
    for c in prange(n_ch):
        for r in range(n_rois):
            plane = dfeatures[batch[r], c]
            for ph in range(oh):
                for pw in range(ow):
                    if argmax[r, c, ph, pw] >= 0:
                        plane[argmax[r, c, ph, pw]] += dout[r, c, ph, pw]
    return dfeatures.reshape(n_img, n_ch, h, w)


# ---------------------------------------------------------------------------------------------
# what every RoI op shares: argument checks and the one-thread rule for small calls


@contextmanager
def _threads_for(work):
    """Run the kernels of this block on one thread when the work is small.

    Waking the thread pool costs tens of microseconds on an idle machine and milliseconds on a
    busy one, more than a few thousand output cells take to compute.
    """
    if work >= _PARALLEL_MIN_WORK:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _is_real_dtype(dtype):
    """True for integer and floating dtypes (not bool, complex, str or object)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _check_roi_inputs(features, rois, output_size, spatial_scale):
    """Validate the arguments shared by the RoI ops; return them in kernel-ready form.

    Everything a kernel indexes with is checked here, before any kernel runs: the kernels do no
    bounds checks, so a bad batch index would read outside the feature array. Inverted boxes
    (x2 < x1) are accepted and follow torchvision (see each op's docstring); NaN or inf box
    coordinates are refused. Features may hold NaN or inf (a diverging network makes them; the
    training loop reports the loss): averages propagate them, a max never picks a NaN.

    Returns features (C-contiguous), rois (R, 5) in the features' dtype, batch (R,) int64 and
    (OH, OW).
    """
    if not isinstance(features, np.ndarray) or features.ndim != 4:
        raise ValueError(f"features must be a 4-D (N, C, H, W) array, got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    if features.dtype not in (np.float32, np.float64):
        raise TypeError(f"features must be float32 or float64, got {features.dtype}")
    if min(features.shape[2:]) < 1:
        raise ValueError(f"features must have H, W >= 1, got shape {features.shape}")
    rois = np.asarray(rois)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (R, 5) [batch_index, x1, y1, x2, y2], "
                         f"got {rois.shape}")
    if not _is_real_dtype(rois.dtype):
        raise TypeError(f"rois must hold real numbers (int or float), got dtype {rois.dtype}")
    if isinstance(output_size, (int, np.integer)):
        output_size = (output_size, output_size)
    if (not isinstance(output_size, (tuple, list)) or len(output_size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_))
                       for s in output_size) or min(output_size) < 1):
        raise ValueError(f"output_size must be a positive int or (h, w) pair, got {output_size!r}")
    if (isinstance(spatial_scale, (bool, np.bool_))
            or not isinstance(spatial_scale, (int, float, np.integer, np.floating))
            or not (np.isfinite(spatial_scale) and spatial_scale > 0)):
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale!r}")
    batch = rois[:, 0]
    if rois.shape[0] and (not np.all(np.isfinite(batch)) or np.any(batch != np.floor(batch))
                          or batch.min() < 0 or batch.max() >= features.shape[0]):
        raise ValueError(f"rois[:, 0] must hold integer batch indices in [0, {features.shape[0]}), "
                         f"got values in [{batch.min()}, {batch.max()}]")
    coords = rois[:, 1:].astype(np.float64)
    if not np.all(np.isfinite(coords)):
        raise ValueError("rois[:, 1:] must hold finite box coordinates, got NaN or inf")
    if coords.size and np.abs(coords).max() * float(spatial_scale) >= _MAX_CELL:
        raise ValueError(f"rois[:, 1:] times spatial_scale must stay below 2**31 in magnitude, "
                         f"got {np.abs(coords).max() * float(spatial_scale):.3g}")
    rois = np.ascontiguousarray(rois, dtype=features.dtype)
    return (np.ascontiguousarray(features), rois, batch.astype(np.int64),
            (int(output_size[0]), int(output_size[1])))


def _check_dout(dout, expected, dtype):
    """Return dout as a C-contiguous array of `dtype`, or raise: the backward kernels index it
    with the cache's RoI, channel and bin counts, so any other shape would read out of bounds."""
    dout = np.asarray(dout)
    if dout.shape != tuple(expected):
        raise ValueError(f"dout must have the forward output's shape {tuple(expected)}, "
                         f"got {dout.shape}")
    if not _is_real_dtype(dout.dtype):
        raise TypeError(f"dout must hold real numbers, got dtype {dout.dtype}")
    return np.ascontiguousarray(dout, dtype=dtype)


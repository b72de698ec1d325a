"""RoI feature extraction: RoIPool, RoIAlign and the multi-level (FPN) pooler.

Every RoI, whatever its size, becomes a fixed OH x OW feature map for the box and mask heads.
RoIPool (Fast R-CNN, Girshick 2015, §2.1) rounds the box to the feature grid and takes a max over
integer bins: two quantizations that misalign the pooled features with the box. RoIAlign (Mask
R-CNN, He et al. 2017, §3 "RoIAlign") removes both: each bin is sampled at a regular grid of
points by bilinear interpolation and the samples are averaged (or, as the paper first describes
it, maxed). With FPN (Lin et al. 2017, eq. 1) an RoI is pooled from the pyramid level that
matches its size. Semantics are torchvision's CPU kernels (`torchvision.ops.roi_pool`,
`roi_align`, `MultiScaleRoIAlign`), see DESIGN.md §4.

RoIAlign avg is separable: a sample's bilinear weight is a y-weight times an x-weight, and the
average over a grid of samples of such products is (average of the y-weights) times (average of
the x-weights). So each output row ph reads a short window of feature rows with fixed weights
`ay`, each output column a window of columns with weights `ax`, and
    out[r, c, ph, pw] = sum_i sum_j ay[r, ph, i] ax[r, pw, j] x[b, c, y0[r, ph] + i, x0[r, pw] + j].
The windows are computed once per call in NumPy; the kernels only multiply and add.

The numba kernels read the features channels-last (N, H, W, C), so their innermost loop runs over
contiguous channels (SIMD). Forward passes are parallel over RoIs; backward passes over channels,
because RoIs overlap and two RoIs scatter-adding into the same cell from two threads would race.

Shape shorthand:
    N images    C channels    H, W feature-map size    R RoIs    OH, OW output size
    G   samples per bin along one axis (sampling_ratio, or adaptive: ceil(roi size / OH))
    T   length of the longest interpolation window

Naming:
    features    (N, C, H, W) float32 or float64
    rois        (R, 5) [batch_index, x1, y1, x2, y2] in input-image pixels
    batch       (R,) int64 image index of each RoI
    spatial_scale   feature-map cells per image pixel (1/stride)
    aligned     shift the box by -0.5 cell so sample points sit on pixel centres (detectron2's
                half-pixel fix); aligned=False is the original, with RoIs clamped to >= 1 cell
    ys_idx, ys_w    (R, OH, G, 2) rows (low, high) and bilinear weights of every sample point
    y0, ny, ay  (R, OH), (R, OH), (R, OH, T): the row window of each output row (start, length,
                weights); likewise x0, nx, ax along the columns
    argmax      (R, C, OH, OW) int32: the winning cell (roi_pool) or sample (roi_align max);
                -1 for a bin with nothing to pool
"""

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

_FLT_MAX = float(np.finfo(np.float32).max)   # torchvision's initial max for a non-empty bin
_CHANNEL_BLOCK = 32      # channels per thread in the RoIAlign backward: 8 float32 AVX2 vectors, x4
_PARALLEL_MIN_WORK = 1 << 15   # output cells (R*C*OH*OW) below which one thread is faster


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


_MAX_CELL = 2.0 ** 31     # |box coordinate * spatial_scale| must fit the kernels' int32 cell maths
_MAX_SAMPLES = 1 << 22   # R * O * G sample points per axis of one roi_align call (memory guard)


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


# ---------------------------------------------------------------------------------------------
# roi_pool


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
# roi_align


def roi_align_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False, mode="avg"):
    """Forward pass of RoIAlign (Mask R-CNN §3): bilinear samples on a regular grid per bin.

    Bin (ph, pw) of a box of size (h, w) cells is sampled at G_h x G_w points
    y = y1 + ph * h/OH + (iy + 0.5) * h/(OH * G_h) (and likewise x), G = sampling_ratio, or
    ceil(h / OH) when sampling_ratio <= 0. A point with y < -1 or y > H (or x likewise) reads 0;
    otherwise it is clamped into the map and bilinearly interpolated (torchvision's
    `bilinear_interpolate`). mode="avg" averages the G_h * G_w samples (zeros included);
    mode="max" takes the largest sample.

    Inverted boxes (x2 < x1 or y2 < y1) are accepted with torchvision's semantics: with
    aligned=False their size clamps to 1 cell; with aligned=True the size is negative, so the
    adaptive grid has no samples and the output is 0 (a positive sampling_ratio samples the
    mirrored bins, as torchvision does). Box coordinates must be finite (ValueError otherwise);
    NaN in the features propagates through "avg" and is never picked by "max".

    Inputs:
    - features: (N, C, H, W)
    - rois: (R, 5) [batch_index, x1, y1, x2, y2] in image pixels
    - output_size: int or (OH, OW)
    - spatial_scale: float, feature cells per image pixel
    - sampling_ratio: int, samples per bin along each axis; <= 0 for adaptive
    - aligned: bool, half-pixel shift (see module docstring)
    - mode: "avg" or "max"
    Returns a tuple of:
    - out: (R, C, OH, OW)
    - cache: for roi_align_backward
    """
    features, rois, batch, (oh, ow) = _check_roi_inputs(features, rois, output_size, spatial_scale)
    if mode not in ("avg", "max"):
        raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
    if isinstance(sampling_ratio, (bool, np.bool_)) or not isinstance(sampling_ratio,
                                                                     (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int (<= 0 for adaptive), got "
                        f"{sampling_ratio!r}")
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be a bool, got {aligned!r}")
    _check_sample_count(rois, spatial_scale, (oh, ow), int(sampling_ratio), aligned, mode,
                        features.shape[1])
    _, _, h, w = features.shape
    scale = features.dtype.type(spatial_scale)
    ys_idx, ys_w, grid_h = _bilinear_samples(rois[:, 2] * scale, rois[:, 4] * scale, oh, h,
                                             int(sampling_ratio), aligned)
    xs_idx, xs_w, grid_w = _bilinear_samples(rois[:, 1] * scale, rois[:, 3] * scale, ow, w,
                                             int(sampling_ratio), aligned)
    if mode == "max":
        with _threads_for(rois.shape[0] * features.shape[1] * oh * ow):
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
    with _threads_for(rois.shape[0] * features.shape[1] * oh * ow):
        out = _roi_align_avg_forward_kernel(features_nhwc, batch, y0, ny, ay, x0, nx, ax)
    return out, ("avg", features.shape, features.dtype, batch, (y0, ny, ay, x0, nx, ax), None)


def _check_sample_count(rois, spatial_scale, output_size, sampling_ratio, aligned, mode, n_ch):
    """Refuse a call whose sample tables would not fit in memory, or whose max would not end.

    The tables hold R * O * G points per axis, G the largest samples-per-bin of any RoI; with
    adaptive sampling G grows with the box, so one absurdly large box (1e7 pixels) would ask for
    gigabytes. The limit is far above any real image (1000 RoIs of 1333 px at stride 4 need 3e5).
    mode="max" also visits every one of the G_h * G_w points of every bin (avg reads windows
    clipped to the map), so there the kernel's work R * C * OH * G_h * OW * G_w is bounded too.
    """
    if rois.shape[0] == 0 or sampling_ratio > 0:
        g_h = g_w = max(sampling_ratio, 1)
    else:
        scaled = rois[:, 1:].astype(np.float64) * float(spatial_scale)
        extent = np.maximum(scaled[:, 2:] - scaled[:, :2], 0.0 if aligned else 1.0)   # (R, 2)
        g_w = int(np.ceil(extent[:, 0].max() / output_size[1]))
        g_h = int(np.ceil(extent[:, 1].max() / output_size[0]))
    per_axis = rois.shape[0] * max(output_size[0] * max(g_h, 1), output_size[1] * max(g_w, 1))
    if per_axis > _MAX_SAMPLES:
        raise ValueError(f"rois: boxes too large for sampling_ratio={sampling_ratio}: the sample "
                         f"tables would hold {per_axis} points per axis (limit {_MAX_SAMPLES}); "
                         f"pass a positive sampling_ratio or smaller boxes")
    work = n_ch * rois.shape[0] * output_size[0] * max(g_h, 1) * output_size[1] * max(g_w, 1)
    if mode == "max" and work > _MAX_SAMPLES << 7:
        raise ValueError(f"rois: boxes too large for mode='max' with sampling_ratio="
                         f"{sampling_ratio}: {work} samples to visit (limit {_MAX_SAMPLES << 7}); "
                         f"pass a smaller sampling_ratio or smaller boxes")


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

    Parallel over RoIs; channels-first input, as this mode is not the hot path.
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


def roi_align_backward(dout, cache):
    """Backward pass of RoIAlign.

    The output is linear in the features with the bilinear weights as coefficients, so each
    upstream gradient is scattered back with the same weights: all samples of the bin for
    mode="avg", the winning sample's four taps for mode="max".

    Inputs:
    - dout: (R, C, OH, OW)
    - cache: from roi_align_forward
    Returns:
    - dfeatures: (N, C, H, W)
    """
    mode, shape, dtype, batch, tables, argmax = cache
    if mode == "max":
        expected = argmax.shape
    else:
        expected = (batch.shape[0], shape[1], tables[0].shape[1], tables[3].shape[1])
    dout = _check_dout(dout, expected, dtype)
    with _threads_for(dout.size):
        if mode == "max":
            return _roi_align_max_backward_kernel(dout, batch, *tables, argmax, shape[0], shape[2],
                                                  shape[3])
        dfeatures_nhwc = _roi_align_avg_backward_kernel(dout, batch, *tables, shape[0], shape[2],
                                                        shape[3])
    return np.ascontiguousarray(dfeatures_nhwc.transpose(0, 3, 1, 2))


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


# ---------------------------------------------------------------------------------------------
# FPN level assignment and the multi-level pooler


def assign_fpn_levels(boxes, k_min, k_max, canonical_size=224, canonical_level=4, eps=1e-6):
    """FPN level of each box: k = floor(k0 + log2(sqrt(w h) / s0) + eps), clamped to [k_min, k_max].

    FPN eq. 1 with torchvision's `LevelMapper` (eps added after the log, so a box of exactly
    s0 * 2**j is not pushed one level down by rounding). An empty box goes to k_min.

    Inputs:
    - boxes: (R, 4) x1, y1, x2, y2 in image pixels
    - k_min, k_max: the finest and coarsest level that exist (e.g. 2 and 5)
    - canonical_size, canonical_level: s0 and k0 (224 and 4 for ImageNet-sized RoIs)
    Returns:
    - levels: (R,) int64 in [k_min, k_max] (the level k itself, not an index into a list)
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (R, 4), got {boxes.shape}")
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0.0)
    with np.errstate(divide="ignore"):                           # log2(0) = -inf -> k_min
        k = np.floor(canonical_level + np.log2(np.sqrt(area) / canonical_size) + eps)
    return np.clip(k, k_min, k_max).astype(np.int64)


_KINDS = {"roi_align": (True, "avg"), "roi_align_unaligned": (False, "avg"),
          "roi_align_max": (True, "max"), "roi_pool": None}


def multilevel_roi_forward(features_per_level, rois, output_size, scales, sampling_ratio=2,
                           kind="roi_align", canonical_size=224, canonical_level=4):
    """Pool every RoI from the FPN level its size selects (torchvision `MultiScaleRoIAlign`).

    Inputs:
    - features_per_level: list of L (N, C, H_l, W_l), finest first
    - rois: (R, 5) [batch_index, x1, y1, x2, y2] in image pixels
    - output_size: int or (OH, OW)
    - scales: list of L spatial scales, e.g. [1/4, 1/8, 1/16, 1/32]; level k = -log2(scale), so
      they must be consecutive powers of 1/2
    - sampling_ratio: samples per bin for the RoIAlign kinds
    - kind: "roi_align" (aligned, avg), "roi_align_unaligned", "roi_align_max" (aligned, max)
      or "roi_pool"
    - canonical_size, canonical_level: see assign_fpn_levels
    Returns a tuple of:
    - out: (R, C, OH, OW)
    - cache: for multilevel_roi_backward
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if len(features_per_level) != len(scales) or not scales:
        raise ValueError(f"need one scale per feature level, got {len(scales)} scales for "
                         f"{len(features_per_level)} levels")
    ks = -np.log2(np.asarray(scales, dtype=np.float64))
    if np.any(np.abs(ks - np.round(ks)) > 1e-6) or np.any(np.diff(np.round(ks)) != 1):
        raise ValueError(f"scales must be consecutive powers of 1/2, finest first, "
                         f"got {list(scales)}")
    k_min, k_max = int(round(ks[0])), int(round(ks[-1]))
    rois = np.asarray(rois)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (R, 5) [batch_index, x1, y1, x2, y2], "
                         f"got {rois.shape}")
    if not _is_real_dtype(rois.dtype):
        raise TypeError(f"rois must hold real numbers (int or float), got dtype {rois.dtype}")
    if not np.all(np.isfinite(rois)):
        raise ValueError("rois must hold finite values, got NaN or inf")   # else no level gets it
    levels = assign_fpn_levels(rois[:, 1:], k_min, k_max, canonical_size, canonical_level)
    out, level_caches = None, []
    for lvl, (features, scale) in enumerate(zip(features_per_level, scales)):
        idx = np.nonzero(levels == k_min + lvl)[0]
        if kind == "roi_pool":
            level_out, level_cache = roi_pool_forward(features, rois[idx], output_size, scale)
        else:
            aligned, mode = _KINDS[kind]
            level_out, level_cache = roi_align_forward(features, rois[idx], output_size, scale,
                                                       sampling_ratio, aligned, mode)
        if out is None:
            out = np.zeros((rois.shape[0],) + level_out.shape[1:], level_out.dtype)
        out[idx] = level_out
        level_caches.append((idx, level_cache))
    return out, (kind, level_caches)


def multilevel_roi_backward(dout, cache):
    """Backward pass of the multi-level pooler: each RoI's gradient goes to its own level.

    Inputs:
    - dout: (R, C, OH, OW)
    - cache: from multilevel_roi_forward
    Returns:
    - dfeatures_per_level: list of L (N, C, H_l, W_l), zeros where no RoI was pooled
    """
    kind, level_caches = cache
    backward = roi_pool_backward if kind == "roi_pool" else roi_align_backward
    return [backward(dout[idx], level_cache) for idx, level_cache in level_caches]

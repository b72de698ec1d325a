"""RoIAlign (Mask R-CNN, He et al. 2017, §3) and RoIWarp (the paper's Table 2c).

RoIPool (roi_pool.py) rounds twice: the box onto the feature grid, then its bins onto whole
cells. RoIAlign keeps the floats. Each of the OH x OW bins of the box is read at a regular grid
of G x G points by bilinear interpolation of the four cells around each point, and the samples
are averaged (mode="avg", the released Detectron and torchvision) or maxed (mode="max", as the
paper first describes it). The kernels below do exactly that, one RoI, channel, bin and sample
point at a time; semantics are torchvision's CPU kernel (`torchvision.ops.roi_align`), see
DESIGN.md §4.

RoIWarp (Dai et al. 2016, "Instance-aware Semantic Segmentation via Multi-task Network Cascades",
the row of Table 2c that separates the two roundings) rounds the box as RoIPool does, then
samples it as RoIAlign does: RoIAlign on the rounded box (roi_warp_forward says which box).

`impl` picks the arithmetic: "readable" runs the kernels in this file; "separable" (the default)
runs roi_align_fast.py, an optimisation that computes the same numbers faster and that the
shipped model was trained with (its float32 bits are the model's). The tests hold the two equal.

Shape shorthand:
    N images    C channels    H, W feature-map size    R RoIs    OH, OW output size
    G   samples per bin along one axis: sampling_ratio, or adaptive ceil(roi size / OH)

Naming:
    features    (N, C, H, W) float32 or float64
    rois        (R, 5) [batch_index, x1, y1, x2, y2] in input-image pixels
    batch       (R,) int64 image index of each RoI
    spatial_scale   feature-map cells per image pixel (1/stride)
    aligned     shift the box by -0.5 cell so sample points sit on pixel centres (detectron2's
                half-pixel fix); aligned=False is the original, with RoIs clamped to >= 1 cell
    ys, grid_h  (R, OH, G) row coordinate (in cells) of sample iy of bin row ph, and (R,) the
                number of samples per bin along y of each RoI; likewise xs, grid_w along x
    argmax      (R, C, OH, OW) int32 (mode="max"): the winning sample iy * grid_w + ix, -1 for a
                bin without samples
"""

import numpy as np
from numba import njit, prange

from .roi_align_fast import separable_backward, separable_forward, separable_out_shape
from .roi_pool import _check_dout, _check_roi_inputs, _round_half_away, _threads_for

_MAX_SAMPLES = 1 << 22   # R * O * G sample points per axis of one roi_align call (memory guard)
IMPLS = ("separable", "readable")


def roi_align_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False, mode="avg", impl="separable"):
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
    - impl: "separable" (roi_align_fast.py, the default) or "readable" (the kernels below);
      equal to float64 rounding, so float32 results differ in the last bits
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
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    sampling_ratio, aligned = int(sampling_ratio), bool(aligned)
    _check_sample_count(rois, spatial_scale, (oh, ow), sampling_ratio, aligned,
                        mode == "max" or impl == "readable", features.shape[1])
    work = rois.shape[0] * features.shape[1] * oh * ow
    if impl == "separable":
        with _threads_for(work):
            out, cache = separable_forward(features, rois, batch, (oh, ow), spatial_scale,
                                           sampling_ratio, aligned, mode)
        return out, ("separable", cache)
    # 1) where the samples are along each axis (the grid is regular: G rows x G columns per bin)
    scale = features.dtype.type(spatial_scale)
    ys, grid_h = _sample_coordinates(rois[:, 2] * scale, rois[:, 4] * scale, oh, sampling_ratio,
                                     aligned)
    xs, grid_w = _sample_coordinates(rois[:, 1] * scale, rois[:, 3] * scale, ow, sampling_ratio,
                                     aligned)
    # 2) every RoI, channel, bin and sample point, one at a time
    with _threads_for(work):
        out, argmax = _roi_align_forward_kernel(features, batch, ys, grid_h, xs, grid_w,
                                                mode == "max")
    return out, ("readable", mode, features.shape, features.dtype, batch,
                 (ys, grid_h, xs, grid_w), argmax, out.shape)


def _sample_coordinates(start, end, out_len, sampling_ratio, aligned):
    """Coordinates of RoIAlign's sample points along one axis, in feature cells.

    Bin p of a box of length h (cells) starts at start + p * h / out_len; its G samples sit at
    the centres of G equal steps: start + p * h/out_len + (i + 1/2) * h/(out_len * G). The
    arithmetic is in the features' dtype and in torchvision's order, so that a float32 sample
    lands on the same point as in torchvision (a point exactly on the map's far edge still reads
    the edge cell; one rounding up would read 0).

    Inputs:
    - start, end: (R,) scaled box edges (cells); out_len: bins on this axis
    - sampling_ratio, aligned: as in roi_align_forward
    Returns:
    - coords: (R, out_len, G) sample coordinates, G the largest grid of any RoI (padding beyond
      grid[r] is never read)
    - grid: (R,) int64 samples per bin along this axis (<= 0: none, the bin reads 0)
    """
    dtype = start.dtype
    offset = dtype.type(0.5 if aligned else 0.0)
    start, end = start - offset, end - offset                 # the half-pixel shift
    length = end - start
    if not aligned:
        length = np.maximum(length, dtype.type(1))            # malformed boxes become 1 cell
    bin_size = (length / dtype.type(out_len))[:, None, None]
    if sampling_ratio > 0:
        grid = np.full(start.shape, sampling_ratio, np.int64)
    else:
        grid = np.ceil(length / dtype.type(out_len)).astype(np.int64)
    p = np.arange(out_len, dtype=dtype)[None, :, None]
    i = np.arange(max(int(grid.max(initial=1)), 1), dtype=dtype)[None, None, :]
    steps = np.maximum(grid, 1).astype(dtype)[:, None, None]
    coords = (start[:, None, None] + p * bin_size) + (i + dtype.type(0.5)) * bin_size / steps
    return coords, grid


@njit(cache=True)
def _off_map(height, width, y, x):
    """A sample this far outside the map reads 0 (it still counts in the average)."""
    return y < -1 or y > height or x < -1 or x > width


@njit(cache=True)
def _bilinear_taps(height, width, y, x):
    """The four cells around (y, x) and their bilinear weights (torchvision's bilinear_interpolate).

    A point in [-1, 0) reads cell 0; one at or past the last cell reads the last cell.
    Returns y_low, y_high, x_low, x_high and the weights of (low, low), (low, high), (high, low),
    (high, high), which sum to 1.
    """
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return y_low, y_high, x_low, x_high, hy * hx, hy * lx, ly * hx, ly * lx


@njit(cache=True, parallel=True)
def _roi_align_forward_kernel(features, batch, ys, grid_h, xs, grid_w, use_max):
    """out[r, c, ph, pw] = average (or max) of the bin's bilinear samples; parallel over RoIs."""
    n_rois, oh, ow = batch.shape[0], ys.shape[1], xs.shape[1]
    _, n_ch, height, width = features.shape
    out = np.zeros((n_rois, n_ch, oh, ow), features.dtype)
    argmax = np.full((n_rois, n_ch, oh, ow) if use_max else (0, 0, 0, 0), -1, np.int32)
    for r in prange(n_rois):
        count = max(grid_h[r] * grid_w[r], 1)
        for c in range(n_ch):
            plane = features[batch[r], c]                             # (H, W)
            for ph in range(oh):
                for pw in range(ow):
                    total, best = 0.0, -np.inf
                    for iy in range(grid_h[r]):
                        y = ys[r, ph, iy]
                        for ix in range(grid_w[r]):
                            x = xs[r, pw, ix]
                            value = 0.0
                            if not _off_map(height, width, y, x):
                                y0, y1, x0, x1, w00, w01, w10, w11 = _bilinear_taps(height, width,
                                                                                    y, x)
                                value = (w00 * plane[y0, x0] + w01 * plane[y0, x1]
                                         + w10 * plane[y1, x0] + w11 * plane[y1, x1])
                            total += value
                            if use_max and value > best:              # a NaN never wins
                                best = value
                                argmax[r, c, ph, pw] = iy * grid_w[r] + ix
                    if not use_max:
                        out[r, c, ph, pw] = total / count
                    elif argmax[r, c, ph, pw] >= 0:
                        out[r, c, ph, pw] = best
    return out, argmax


def roi_align_backward(dout, cache):
    """Backward pass of RoIAlign.

    The output is linear in the features with the bilinear weights as coefficients, so each
    upstream gradient is scattered back with the same weights: to the four taps of every sample
    of the bin, divided by their number, for mode="avg"; to the winning sample's four taps for
    mode="max".

    Inputs:
    - dout: (R, C, OH, OW)
    - cache: from roi_align_forward (either impl)
    Returns:
    - dfeatures: (N, C, H, W)
    """
    if cache[0] == "separable":
        dout = _check_dout(dout, separable_out_shape(cache[1]), cache[1][2])
        with _threads_for(dout.size):
            return separable_backward(dout, cache[1])
    _, mode, shape, dtype, batch, grids, argmax, out_shape = cache
    dout = _check_dout(dout, out_shape, dtype)
    with _threads_for(dout.size):
        return _roi_align_backward_kernel(dout, batch, *grids, argmax, mode == "max", shape[0],
                                          shape[2], shape[3])


@njit(cache=True, parallel=True)
def _roi_align_backward_kernel(dout, batch, ys, grid_h, xs, grid_w, argmax, use_max, n_img,
                               height, width):
    """dfeatures[b, c, taps] += weight * dout[r, c, ph, pw] for the samples each bin used.

    RoIs overlap, so two RoIs may add into the same cell: the work is split over channels
    instead, channel c of every image written by one thread only.
    """
    n_rois, n_ch, oh, ow = dout.shape
    dfeatures = np.zeros((n_img, n_ch, height, width), dout.dtype)
    for c in prange(n_ch):
        for r in range(n_rois):
            plane = dfeatures[batch[r], c]                            # (H, W)
            count = max(grid_h[r] * grid_w[r], 1)
            for ph in range(oh):
                for pw in range(ow):
                    for iy in range(grid_h[r]):
                        y = ys[r, ph, iy]
                        for ix in range(grid_w[r]):
                            if use_max and argmax[r, c, ph, pw] != iy * grid_w[r] + ix:
                                continue                              # only the winner learns
                            x = xs[r, pw, ix]
                            if _off_map(height, width, y, x):
                                continue
                            g = dout[r, c, ph, pw] if use_max else dout[r, c, ph, pw] / count
                            y0, y1, x0, x1, w00, w01, w10, w11 = _bilinear_taps(height, width,
                                                                                y, x)
                            plane[y0, x0] += w00 * g
                            plane[y0, x1] += w01 * g
                            plane[y1, x0] += w10 * g
                            plane[y1, x1] += w11 * g
    return dfeatures


def _check_sample_count(rois, spatial_scale, output_size, sampling_ratio, aligned, every_sample,
                        n_ch):
    """Refuse a call whose sample tables would not fit in memory, or whose kernel would not end.

    The separable tables hold R * O * G points per axis, G the largest samples-per-bin of any
    RoI; with adaptive sampling G grows with the box, so one absurdly large box (1e7 pixels)
    would ask for gigabytes. The limit is far above any real image (1000 RoIs of 1333 px at
    stride 4 need 3e5). A kernel that visits every one of the G_h * G_w points of every bin
    (`every_sample`: mode="max", or the readable kernels; the separable avg reads windows clipped
    to the map) has its work R * C * OH * G_h * OW * G_w bounded too.
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
    if every_sample and work > _MAX_SAMPLES << 7:
        raise ValueError(f"rois: boxes too large for sampling_ratio={sampling_ratio}: {work} "
                         f"samples to visit (limit {_MAX_SAMPLES << 7}); pass a smaller "
                         f"sampling_ratio or smaller boxes")


# ---------------------------------------------------------------------------------------------
# roi_warp


def roi_warp_forward(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=False, mode="avg", impl="separable"):
    """Forward pass of RoIWarp: RoIAlign on the box rounded to the feature grid as RoIPool rounds it.

    Mask R-CNN's Table 2c separates RoIPool's two roundings: RoIWarp (from MNC) keeps the first,
    the box onto the grid, and drops the second, bins of whole cells, by sampling bilinearly.
    "Rounded as RoIPool rounds it" means here: each scaled corner x1 * spatial_scale, ...,
    y2 * spatial_scale goes to the nearest integer, halves away from zero (RoIPool's C round);
    the rounded corners are then a continuous box, sampled exactly as roi_align_forward samples
    a box (same aligned, sampling_ratio and mode). RoIPool's "+1" is not applied: it counts the
    inclusive end cell of an integer range, and RoIAlign measures boxes from edge to edge (MNC's
    warping layer also takes end - start). With aligned=False the rounded box's samples cover,
    and are centred on, the cells RoIPool's bins pool, one cell shorter (half a cell each side);
    with aligned=True they fall inside the rounded box's cells. The multi-level pooler's
    "roi_warp" kinds use aligned=True, like its "roi_align" kinds, so that the two differ only
    in the rounding.

    Inputs and outputs as roi_align_forward (mode "avg" or "max", impl "separable" or "readable").
    """
    features, rois, _, _ = _check_roi_inputs(features, rois, output_size, spatial_scale)
    scale = features.dtype.type(spatial_scale)
    rounded = rois.copy()
    rounded[:, 1:] = _round_half_away(rois[:, 1:] * scale)           # (R, 4) in feature cells
    return roi_align_forward(features, rounded, output_size, 1.0, sampling_ratio, aligned, mode,
                             impl)


def roi_warp_backward(dout, cache):
    """Backward pass of RoIWarp: RoIAlign's on the rounded box (the rounding has no gradient).

    Inputs:
    - dout: (R, C, OH, OW)
    - cache: from roi_warp_forward
    Returns:
    - dfeatures: (N, C, H, W)
    """
    return roi_align_backward(dout, cache)

"""Slow, obviously-correct references for the box and RoI ops, written from the definitions.

Plain loops over RoIs, bins and sample points, following torchvision's CPU kernels line by line
(`roi_pool_kernel.cpp`, `roi_align_kernel.cpp`, `nms_kernel.cpp`), on Python floats. float64.
"""

import math

import numpy as np


def iou_ref(a, b):
    """IoU of two boxes (x1, y1, x2, y2); 0 when the union is empty."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou_ref(boxes1, boxes2):
    return np.array([[iou_ref(a, b) for b in boxes2] for a in boxes1]).reshape(len(boxes1), len(boxes2))


def nms_ref(boxes, scores, iou_threshold, labels=None):
    """Greedy NMS: visit by decreasing score (ties by index), drop boxes overlapping a kept one."""
    n = len(boxes)
    labels = np.zeros(n, int) if labels is None else labels
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(labels[k] != labels[i] or not iou_ref(boxes[k], boxes[i]) > iou_threshold
               for k in keep):
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def c_round(x):
    """C's round(): half away from zero."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def roi_pool_ref(features, rois, output_size, spatial_scale):
    """RoIPool: round the box, inclusive end, floor/ceil bins clipped to the map, max, empty -> 0."""
    n, c, height, width = features.shape
    oh, ow = output_size
    out = np.zeros((len(rois), c, oh, ow))
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sw, sh = c_round(x1 * spatial_scale), c_round(y1 * spatial_scale)
        ew, eh = c_round(x2 * spatial_scale), c_round(y2 * spatial_scale)
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = rh / oh, rw / ow
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(ph * bh) + sh, 0), height)
                he = min(max(math.ceil((ph + 1) * bh) + sh, 0), height)
                ws = min(max(math.floor(pw * bw) + sw, 0), width)
                we = min(max(math.ceil((pw + 1) * bw) + sw, 0), width)
                if he > hs and we > ws:
                    out[r, :, ph, pw] = features[int(b), :, hs:he, ws:we].max(axis=(1, 2))
    return out


def bilinear_ref(plane, height, width, y, x):
    """torchvision's bilinear_interpolate on one channel (a list of rows) at one point."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * plane[y_low][x_low] + hy * lx * plane[y_low][x_high]
            + ly * hx * plane[y_high][x_low] + ly * lx * plane[y_high][x_high])


def roi_align_ref(features, rois, output_size, spatial_scale, sampling_ratio, aligned, mode="avg"):
    """RoIAlign: average (or max) of bilinear samples on a regular grid in every bin."""
    n, c, height, width = features.shape
    planes = features.tolist()                 # Python floats: much faster than tiny arrays
    oh, ow = output_size
    out = np.zeros((len(rois), c, oh, ow))
    offset = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sw, sh = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        rw, rh = x2 * spatial_scale - offset - sw, y2 * spatial_scale - offset - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        for ch in range(c):
            plane = planes[int(b)][ch]
            for ph in range(oh):
                for pw in range(ow):
                    samples = [bilinear_ref(plane, height, width,
                                            sh + ph * bh + (iy + 0.5) * bh / gh,
                                            sw + pw * bw + (ix + 0.5) * bw / gw)
                               for iy in range(gh) for ix in range(gw)]
                    if not samples:
                        continue
                    out[r, ch, ph, pw] = (sum(samples) / (gh * gw) if mode == "avg"
                                          else max(samples))
    return out


def roi_warp_ref(features, rois, output_size, spatial_scale, sampling_ratio, aligned, mode="avg"):
    """RoIWarp: each scaled corner rounded to the nearest cell (C round, as RoIPool does, no +1),
    then RoIAlign on that box, in cells."""
    rounded = np.array([[b] + [c_round(v * spatial_scale) for v in (x1, y1, x2, y2)]
                        for b, x1, y1, x2, y2 in rois], dtype=np.float64).reshape(-1, 5)
    return roi_align_ref(features, rounded, output_size, 1.0, sampling_ratio, aligned, mode)

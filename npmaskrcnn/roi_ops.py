"""RoI feature extraction: the FPN level of every RoI and the multi-level pooler that uses it.

The box and mask heads need every RoI, whatever its size, as a fixed OH x OW feature map. With
a feature pyramid (FPN, Lin et al. 2017, eq. 1) an RoI is pooled from the level that matches its
size: k = floor(k0 + log2(sqrt(w h) / s0)), so a large box reads a coarse level and a small box
a fine one. Semantics are torchvision's `MultiScaleRoIAlign` and `LevelMapper`, see DESIGN.md §4.

The single-level ops, re-exported here so that the rest of the package imports every RoI op
from this one module:
    roi_pool.py        RoIPool (Fast R-CNN §2.1): max over integer bins of the rounded box
    roi_align.py       RoIAlign (Mask R-CNN §3): bilinear samples on a regular grid per bin,
                       averaged or maxed, as readable kernels; RoIWarp (Table 2c): RoIAlign on
                       the box rounded as RoIPool rounds it
    roi_align_fast.py  the optimisation the model runs by default: the same RoIAlign, separable

Shape shorthand:
    N images    C channels    H_l, W_l size of pyramid level l    L levels
    R RoIs      OH, OW output size

Naming:
    features_per_level  list of L (N, C, H_l, W_l), finest first
    scales      list of L spatial scales (1/4, 1/8, ...): level k has scale 2**-k
    k_min, k_max    the finest and coarsest level (2 and 5 for P2-P5)
    levels      (R,) int64 FPN level k of each RoI
    kind        which op pools: a key of POOLER_KINDS
"""

import numpy as np

from .roi_align import (roi_align_backward, roi_align_forward, roi_warp_backward,
                        roi_warp_forward)
from .roi_pool import _is_real_dtype, roi_pool_backward, roi_pool_forward

__all__ = ["assign_fpn_levels", "multilevel_roi_backward", "multilevel_roi_forward",
           "roi_align_backward", "roi_align_forward", "roi_pool_backward", "roi_pool_forward",
           "roi_warp_backward", "roi_warp_forward", "POOLER_KINDS"]


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


# kind -> (forward, backward, aligned, mode); RoIPool takes neither
POOLER_KINDS = {
    "roi_align": (roi_align_forward, roi_align_backward, True, "avg"),
    "roi_align_unaligned": (roi_align_forward, roi_align_backward, False, "avg"),
    "roi_align_max": (roi_align_forward, roi_align_backward, True, "max"),
    "roi_pool": (roi_pool_forward, roi_pool_backward, None, None),
    "roi_warp": (roi_warp_forward, roi_warp_backward, True, "avg"),
    "roi_warp_max": (roi_warp_forward, roi_warp_backward, True, "max"),
}


def multilevel_roi_forward(features_per_level, rois, output_size, scales, sampling_ratio=2,
                           kind="roi_align", canonical_size=224, canonical_level=4):
    """Pool every RoI from the FPN level its size selects (torchvision `MultiScaleRoIAlign`).

    Inputs:
    - features_per_level: list of L (N, C, H_l, W_l), finest first
    - rois: (R, 5) [batch_index, x1, y1, x2, y2] in image pixels
    - output_size: int or (OH, OW)
    - scales: list of L spatial scales, e.g. [1/4, 1/8, 1/16, 1/32]; level k = -log2(scale), so
      they must be consecutive powers of 1/2
    - sampling_ratio: samples per bin for the RoIAlign and RoIWarp kinds
    - kind: "roi_align" (aligned, avg), "roi_align_unaligned", "roi_align_max" (aligned, max),
      "roi_pool", "roi_warp" (aligned, avg) or "roi_warp_max" (aligned, max); see POOLER_KINDS
    - canonical_size, canonical_level: see assign_fpn_levels
    Returns a tuple of:
    - out: (R, C, OH, OW)
    - cache: for multilevel_roi_backward
    """
    if kind not in POOLER_KINDS:
        raise ValueError(f"kind must be one of {sorted(POOLER_KINDS)}, got {kind!r}")
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
    forward, _, aligned, mode = POOLER_KINDS[kind]
    out, level_caches = None, []
    for lvl, (features, scale) in enumerate(zip(features_per_level, scales)):
        idx = np.nonzero(levels == k_min + lvl)[0]
        if kind == "roi_pool":
            level_out, level_cache = forward(features, rois[idx], output_size, scale)
        else:
            level_out, level_cache = forward(features, rois[idx], output_size, scale,
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
    backward = POOLER_KINDS[kind][1]
    return [backward(dout[idx], level_cache) for idx, level_cache in level_caches]

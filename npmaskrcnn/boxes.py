"""Boxes: IoU, the box coder, NMS, the matcher and the balanced sampler.

The bookkeeping shared by the RPN and the box head of Faster R-CNN (Ren et al. 2015, §3.1.2-3.1.3)
and therefore Mask R-CNN (He et al. 2017, §3 "Implementation Details"): anchors and proposals are
matched to ground-truth boxes by IoU, a fixed-size minibatch of positives and negatives is sampled,
regression targets are encoded as (dx, dy, dw, dh) relative to the anchor or proposal, and
predictions are decoded back and pruned by non-maximum suppression. Nothing here carries a
gradient: boxes, matches and samples are constants of the loss, as in the paper and in torchvision,
whose semantics every function reproduces (`torchvision.ops.boxes`, `models/detection/_utils.py`).

Shape shorthand:
    N, M    numbers of boxes (N proposals or anchors, M ground-truth boxes)
    K       classes, for class-specific deltas (N, 4*K)

Naming:
    boxes           (N, 4) float (x1, y1, x2, y2) in input-image pixels; width = x2 - x1 (no +1)
    deltas          (N, 4) (dx, dy, dw, dh): centre shift in units of the box size, log size ratio
    reference_boxes the boxes the deltas should move the proposals onto (the matched ground truth)
    match_quality_matrix    (M, N) IoU of every ground-truth box with every prediction
    matched_idxs    (N,) int64: index of the matched ground-truth box, or a negative sentinel
    keep            int64 indices into the input boxes
"""

import math

import numpy as np
from numba import njit

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def _is_real_dtype(dtype):
    """True for integer and floating dtypes (not bool, complex, str or object)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _check_boxes(boxes, name, finite=False):
    """Return `boxes` as a float (N, 4) array, or raise naming the argument.

    finite=True also refuses NaN and inf. The functions a diverged network's outputs flow
    through (box_area, clip_boxes, remove_small_boxes) leave it off: there NaN propagates and
    remove_small_boxes drops it, so the training loop can report the divergence itself.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {boxes.shape}")
    if not _is_real_dtype(boxes.dtype):
        raise TypeError(f"{name} must hold real numbers (int or float), got dtype {boxes.dtype}")
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    if finite and not np.all(np.isfinite(boxes)):
        raise ValueError(f"{name} must hold finite coordinates, got NaN or inf")
    return boxes


def _check_real(value, name):
    """Return `value` as a finite float, or raise naming the argument."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating))
            or not np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def box_area(boxes):
    """Area (x2 - x1) * (y2 - y1) of each box, no +1 (torchvision `box_area`).

    Inputs:
    - boxes: (N, 4) x1, y1, x2, y2
    Returns:
    - area: (N,) in the dtype of boxes
    """
    boxes = _check_boxes(boxes, "boxes")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Intersection over union of every pair of boxes.

    iou = inter / (area1 + area2 - inter). A pair whose union is 0 (two empty boxes) gets IoU 0
    rather than torchvision's NaN, so the matcher never sees a NaN. Inverted boxes (x2 < x1) are
    accepted: they intersect nothing, so their IoU with anything is 0. NaN or inf coordinates
    raise ValueError.

    Inputs:
    - boxes1: (N, 4); boxes2: (M, 4)
    Returns:
    - iou: (N, M) in the dtype of boxes1
    """
    boxes1 = _check_boxes(boxes1, "boxes1", finite=True)
    boxes2 = _check_boxes(boxes2, "boxes2", finite=True).astype(boxes1.dtype, copy=False)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])          # (N, M, 2)
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])          # (N, M, 2)
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]                                      # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def clip_boxes(boxes, image_size):
    """Clamp x to [0, w] and y to [0, h] (torchvision `clip_boxes_to_image`).

    Inputs:
    - boxes: (N, 4); image_size: (h, w)
    Returns:
    - clipped: (N, 4), a new array of the same dtype
    """
    boxes = _check_boxes(boxes, "boxes")
    h, w = image_size
    out = boxes.copy()
    np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
    return out


def remove_small_boxes(boxes, min_size):
    """Indices of the boxes with width >= min_size and height >= min_size.

    Inputs:
    - boxes: (N, 4); min_size: float
    Returns:
    - keep: (K,) int64, increasing
    """
    boxes = _check_boxes(boxes, "boxes")
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.nonzero((ws >= min_size) & (hs >= min_size))[0].astype(np.int64)


class BoxCoder:
    """Encode boxes as deltas relative to proposals and decode them back (torchvision `BoxCoder`).

    dx = wx (gx - px) / pw, dy = wy (gy - py) / ph, dw = ww log(gw / pw), dh = wh log(gh / ph)
    with (px, py, pw, ph) the proposal centre and size and (gx, gy, gw, gh) the reference box's
    (Faster R-CNN eq. 2). Decoding clamps dw, dh at `bbox_xform_clip` so exp() cannot overflow.
    Encoding needs boxes of positive width and height (log and division by the size); decoding
    accepts any finite boxes, and NaN/inf deltas (a diverged network) propagate to the output.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(1000.0 / 16)):
        if (not isinstance(weights, (tuple, list, np.ndarray)) or len(weights) != 4
                or not all(isinstance(v, (int, float, np.integer, np.floating))
                           and not isinstance(v, (bool, np.bool_)) and np.isfinite(v) and v > 0
                           for v in weights)):
            raise ValueError(f"weights must be 4 positive finite numbers (wx, wy, ww, wh), "
                             f"got {weights!r}")
        self.weights = tuple(float(v) for v in weights)
        self.bbox_xform_clip = _check_real(bbox_xform_clip, "bbox_xform_clip")

    def encode(self, reference_boxes, proposals):
        """Regression targets that move each proposal onto its reference box.

        Inputs:
        - reference_boxes: (N, 4) the targets (matched ground truth)
        - proposals: (N, 4) the boxes the deltas are relative to (anchors or proposals)
        Returns:
        - deltas: (N, 4) in the dtype of proposals
        """
        proposals = _check_boxes(proposals, "proposals", finite=True)
        reference_boxes = _check_boxes(reference_boxes, "reference_boxes",
                                       finite=True).astype(proposals.dtype, copy=False)
        if reference_boxes.shape[0] != proposals.shape[0]:
            raise ValueError(f"reference_boxes and proposals must have the same length, got "
                             f"{reference_boxes.shape[0]} and {proposals.shape[0]}")
        for name, b in (("proposals", proposals), ("reference_boxes", reference_boxes)):
            if np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
                raise ValueError(f"{name} must have x2 > x1 and y2 > y1 (positive width and "
                                 f"height) to be encoded, got an empty or inverted box")
        wx, wy, ww, wh = (proposals.dtype.type(v) for v in self.weights)
        half = proposals.dtype.type(0.5)
        ex_w = proposals[:, 2] - proposals[:, 0]
        ex_h = proposals[:, 3] - proposals[:, 1]
        ex_x = proposals[:, 0] + half * ex_w
        ex_y = proposals[:, 1] + half * ex_h
        gt_w = reference_boxes[:, 2] - reference_boxes[:, 0]
        gt_h = reference_boxes[:, 3] - reference_boxes[:, 1]
        gt_x = reference_boxes[:, 0] + half * gt_w
        gt_y = reference_boxes[:, 1] + half * gt_h
        return np.stack([wx * (gt_x - ex_x) / ex_w, wy * (gt_y - ex_y) / ex_h,
                         ww * np.log(gt_w / ex_w), wh * np.log(gt_h / ex_h)], axis=1)

    def decode(self, deltas, boxes):
        """Apply (class-specific) deltas to boxes.

        Inputs:
        - deltas: (N, 4*K) (dx, dy, dw, dh) per class
        - boxes: (N, 4) the proposals the deltas are relative to
        Returns:
        - pred_boxes: (N, 4*K) x1, y1, x2, y2 per class, in the dtype of deltas
        """
        deltas = np.asarray(deltas)
        if deltas.ndim != 2 or deltas.shape[1] % 4 != 0 or deltas.shape[1] == 0:
            raise ValueError(f"deltas must have shape (N, 4*K), K >= 1, got {deltas.shape}")
        if not _is_real_dtype(deltas.dtype):
            raise TypeError(f"deltas must hold real numbers, got dtype {deltas.dtype}")
        if not np.issubdtype(deltas.dtype, np.floating):
            deltas = deltas.astype(np.float64)
        boxes = _check_boxes(boxes, "boxes", finite=True).astype(deltas.dtype, copy=False)
        if boxes.shape[0] != deltas.shape[0]:
            raise ValueError(f"deltas and boxes must have the same length, got {deltas.shape[0]} "
                             f"and {boxes.shape[0]}")
        wx, wy, ww, wh = (deltas.dtype.type(v) for v in self.weights)
        half = deltas.dtype.type(0.5)
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]                    # (N, 1)
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        ctr_x = boxes[:, 0:1] + half * widths
        ctr_y = boxes[:, 1:2] + half * heights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy              # (N, K)
        dw = np.minimum(deltas[:, 2::4] / ww, self.bbox_xform_clip)
        dh = np.minimum(deltas[:, 3::4] / wh, self.bbox_xform_clip)
        pred_x, pred_y = dx * widths + ctr_x, dy * heights + ctr_y
        half_w, half_h = half * np.exp(dw) * widths, half * np.exp(dh) * heights
        out = np.stack([pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h], axis=2)
        return out.reshape(deltas.shape).astype(deltas.dtype, copy=False)


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression (torchvision `nms`).

    Visit boxes by decreasing score (ties: lower index first); keep a box unless a kept box
    overlaps it with IoU > iou_threshold. Inverted boxes (x2 < x1) are accepted and overlap
    nothing; NaN or inf coordinates and NaN scores raise ValueError (a NaN score has no place
    in the order); +-inf scores sort first / last.

    Inputs:
    - boxes: (N, 4); scores: (N,); iou_threshold: float
    Returns:
    - keep: (K,) int64 indices, by decreasing score
    """
    boxes = _check_boxes(boxes, "boxes", finite=True)
    return batched_nms(boxes, scores, np.zeros(boxes.shape[0], np.int64), iou_threshold)


def batched_nms(boxes, scores, labels, iou_threshold):
    """Non-maximum suppression within each label: boxes of different labels never suppress.

    One greedy pass over all boxes in score order, where a pair only counts when the labels
    agree; this is exactly NMS run per label and merged by score (torchvision `batched_nms`).

    Inputs:
    - boxes: (N, 4); scores: (N,) real, no NaN; labels: (N,) ints (class or FPN level);
      iou_threshold: float
    Returns:
    - keep: (K,) int64 indices, by decreasing score (ties: lower index first)
    """
    boxes = _check_boxes(boxes, "boxes", finite=True)
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != (boxes.shape[0],) or labels.shape != (boxes.shape[0],):
        raise ValueError(f"scores and labels must have shape ({boxes.shape[0]},), got "
                         f"{scores.shape} and {labels.shape}")
    if scores.size and not _is_real_dtype(scores.dtype):
        raise TypeError(f"scores must hold real numbers, got dtype {scores.dtype}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError(f"scores must not hold NaN, got {int(np.isnan(scores).sum())} NaN of "
                         f"{scores.size} (a diverged network?)")
    if labels.size and not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(f"labels must hold integers, got dtype {labels.dtype}")
    iou_threshold = _check_real(iou_threshold, "iou_threshold")
    order = np.argsort(-scores, kind="stable")                # torchvision sorts stably, descending
    # (4, N) rows x1, y1, x2, y2 in visit order; float64 so one compiled kernel serves every dtype
    b = np.ascontiguousarray(boxes[order].T, dtype=np.float64)
    keep = _nms_kernel(b, labels[order].astype(np.int64), float(iou_threshold))
    return order[keep].astype(np.int64)


@njit(cache=True, error_model="numpy")     # numpy float semantics: x / 0 gives inf or NaN, no raise
def _nms_kernel(b, labels, iou_threshold):
    """Positions (into the score order) of the kept boxes; b is (4, N) already sorted by score."""
    n = b.shape[1]
    x1, y1, x2, y2 = b[0], b[1], b[2], b[3]
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, np.bool_)
    keep = np.empty(n, np.int64)
    n_keep = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[n_keep] = i
        n_keep += 1
        for j in range(i + 1, n):
            if suppressed[j] or labels[j] != labels[i]:
                continue
            w = max(0.0, min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(0.0, min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = w * h
            # a division, not inter > t * union: for a zero union 0/0 is NaN, NaN > t is False
            # and the box survives, as in torchvision
            if inter / (areas[i] + areas[j] - inter) > iou_threshold:
                suppressed[j] = True
    return keep[:n_keep]


class Matcher:
    """Assign each prediction the ground-truth box it overlaps most (torchvision `Matcher`).

    A prediction whose best IoU is < low_threshold gets BELOW_LOW_THRESHOLD (-1, background),
    one in [low, high) gets BETWEEN_THRESHOLDS (-2, ignored). With allow_low_quality_matches,
    every prediction that ties for the highest IoU with some ground-truth box keeps its match
    whatever its IoU, so each ground-truth box has at least one match (Faster R-CNN §3.1.2).
    """

    BELOW_LOW_THRESHOLD = BELOW_LOW_THRESHOLD
    BETWEEN_THRESHOLDS = BETWEEN_THRESHOLDS

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold must be <= high_threshold, got {low_threshold} > "
                             f"{high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        """Match predictions to ground truth.

        Inputs:
        - match_quality_matrix: (M, N) IoU of ground-truth box m with prediction n
        Returns:
        - matched_idxs: (N,) int64 in [0, M) or one of the two sentinels; all
          BELOW_LOW_THRESHOLD when M == 0 (an image without instances is all background)
        """
        mqm = np.asarray(match_quality_matrix)
        if mqm.ndim != 2:
            raise ValueError(f"match_quality_matrix must be 2-D (M_gt, N_pred), got {mqm.shape}")
        if mqm.shape[0] == 0:
            return np.full(mqm.shape[1], BELOW_LOW_THRESHOLD, np.int64)
        if mqm.shape[1] == 0:
            return np.zeros(0, np.int64)
        matches = mqm.argmax(axis=0).astype(np.int64)           # first maximum, as torch.max
        matched_vals = mqm[matches, np.arange(mqm.shape[1])]
        all_matches = matches.copy()
        matches[matched_vals < self.low_threshold] = BELOW_LOW_THRESHOLD
        matches[(matched_vals >= self.low_threshold)
                & (matched_vals < self.high_threshold)] = BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            # every prediction tying for a gt's best IoU keeps its own best match (torchvision)
            highest_per_gt = mqm.max(axis=1)                    # (M,)
            preds = np.nonzero(mqm == highest_per_gt[:, None])[1]
            matches[preds] = all_matches[preds]
        return matches


class BalancedPositiveNegativeSampler:
    """Sample a fixed-size minibatch with at most a given fraction of positives per image.

    Take up to int(batch_size_per_image * positive_fraction) positives at random, then fill the
    rest of the budget with random negatives (torchvision `BalancedPositiveNegativeSampler`).
    `sample_negatives` is the one step a subclass may change (how negatives are chosen).
    """

    def __init__(self, batch_size_per_image, positive_fraction):
        if batch_size_per_image < 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"need batch_size_per_image >= 0 and 0 <= positive_fraction <= 1, "
                             f"got {batch_size_per_image} and {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def sample_negatives(self, negative, ious, num_neg, rng):
        """Indices of num_neg of the `negative` candidates, drawn at random.

        Inputs: negative (N_neg,) candidate indices; ious (N,) max IoU of every candidate with
        any gt box, or None (unused here); num_neg int; rng np.random.Generator
        """
        return rng.permutation(negative)[:num_neg]

    def __call__(self, labels_per_image, rng, ious_per_image=None):
        """Sample positives and negatives for each image.

        Inputs:
        - labels_per_image: list of (N_i,) int arrays: >= 1 positive, 0 negative, -1 ignored
        - rng: np.random.Generator
        - ious_per_image: list of (N_i,) max IoU of each candidate with any gt box, handed to
          `sample_negatives` (None when the caller has none, as the RPN)
        Returns a tuple of:
        - pos_masks: list of (N_i,) bool
        - neg_masks: list of (N_i,) bool
        """
        pos_masks, neg_masks = [], []
        for i, labels in enumerate(labels_per_image):
            labels = np.asarray(labels)
            positive = np.nonzero(labels >= 1)[0]
            negative = np.nonzero(labels == 0)[0]
            num_pos = min(positive.size, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.size, self.batch_size_per_image - num_pos)
            pos = np.zeros(labels.shape, bool)
            neg = np.zeros(labels.shape, bool)
            pos[rng.permutation(positive)[:num_pos]] = True
            ious = None if ious_per_image is None else np.asarray(ious_per_image[i])
            neg[self.sample_negatives(negative, ious, num_neg, rng)] = True
            pos_masks.append(pos)
            neg_masks.append(neg)
        return pos_masks, neg_masks


def boxes_to_rois(boxes_per_image, dtype=None):
    """Stack per-image boxes into RoIs with the image index first (torchvision's convention).

    Inputs: boxes_per_image list of N (B_i, 4) arrays; dtype of the result (default: the first's)
    Returns: rois (sum B_i, 5) [image index, x1, y1, x2, y2]
    """
    if dtype is None:
        dtype = boxes_per_image[0].dtype if len(boxes_per_image) else np.float32
    parts = [np.concatenate([np.full((len(b), 1), i, dtype), np.asarray(b, dtype).reshape(-1, 4)], 1)
             for i, b in enumerate(boxes_per_image)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 5), dtype)

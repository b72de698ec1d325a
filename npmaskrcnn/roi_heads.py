"""RoI heads: the box branch of Fast R-CNN and the mask branch of Mask R-CNN (paper section 3).

Training: the ground-truth boxes join the proposals, each proposal is matched to a ground-truth
box (IoU >= 0.5 foreground, else background), a balanced sample of RoIs is drawn per image
(25% foreground; the shapes preset adds jittered copies of the ground truth and draws the
background IoU-balanced), and their features are pooled from the FPN level their size selects
(7x7).
The box head (two FC layers) and predictor give K+1 class logits and class-specific deltas:
`loss_classifier` (softmax CE) and `loss_box_reg` (smooth L1 on the foreground's own class).
The foreground RoIs are pooled again (14x14) for the mask head (4 x conv3x3+GN+ReLU, a 2x2
stride-2 transposed conv, a 1x1 conv to K masks of 28x28). Each positive's target is its
ground-truth mask resampled into the RoI (RoIAlign on the mask), and `loss_mask` is the per-pixel
sigmoid BCE on the ground-truth class's channel only: masks do not compete across classes.

Inference: per-class decoding, score threshold, per-class NMS, top 100, then the mask head on the
detections and the 28x28 probabilities pasted into the image and thresholded at 0.5. Not in the
paper, each optional: a second look of the box head at its detections (`box_refine`, box and
class probability averaged), the same in the mirrored image (`test_flip`), and the score times
the mask's confidence (`mask_rescore`).

Shape shorthand:
    N images, R sampled RoIs (all images), P positive RoIs, K classes, Kc mask channels
    (K, or 1 class-agnostic; +1 background channel with the softmax loss), S pool size,
    M = 2 * mask_pool_size mask side, D detections.

Naming:
    rois            (R, 5) [image index, x1, y1, x2, y2]
    class_logits    (R, K+1); box_deltas (R, 4(K+1)); mask_logits (P, Kc, M, M)
    matched_idxs    index of the matched ground-truth box per proposal (or a Matcher sentinel)
"""

import numpy as np

from .boxes import (BalancedPositiveNegativeSampler, BoxCoder, Matcher, batched_nms, box_iou,
                    clip_boxes, remove_small_boxes)
from .losses import sigmoid_binary_cross_entropy, smooth_l1, softmax_cross_entropy
from .nn import Conv2d, ConvTranspose2d, Linear, Module, ReLU, Sequential, conv_gn_relu
from .roi_ops import multilevel_roi_backward, multilevel_roi_forward, roi_align_forward


class BoxHead(Module):
    """Flatten, FC + ReLU, FC + ReLU (torchvision's TwoMLPHead). (R, F, S, S) -> (R, D)."""

    def __init__(self, in_features, dim, rng):
        super().__init__()
        self.add("fc6", Linear(in_features, dim, rng=rng))
        self.add("relu6", ReLU())
        self.add("fc7", Linear(dim, dim, rng=rng))
        self.add("relu7", ReLU())

    def forward(self, x):
        return self.relu7(self.fc7(self.relu6(self.fc6(x))))

    def backward(self, dout):
        return self.fc6.backward(self.relu6.backward(self.fc7.backward(self.relu7.backward(dout))))


class ConvFCBoxHead(Module):
    """n x (3x3 conv + GN + ReLU), flatten, FC + ReLU (the GroupNorm paper's "4conv1fc" head).
    (R, F, S, S) -> (R, D)."""

    def __init__(self, in_ch, num_convs, pool_size, dim, groups, rng):
        super().__init__()
        self.add("convs", Sequential(*[conv_gn_relu(in_ch, in_ch, 3, 1, groups, rng) for _ in range(num_convs)]))
        self.add("fc6", Linear(in_ch * pool_size ** 2, dim, rng=rng))
        self.add("relu6", ReLU())

    def forward(self, x):
        return self.relu6(self.fc6(self.convs(x)))

    def backward(self, dout):
        return self.convs.backward(self.fc6.backward(self.relu6.backward(dout)))


class BoxPredictor(Module):
    """Class logits (K+1) and class-specific box deltas (4(K+1)) from the box head's features."""

    def __init__(self, dim, num_classes, rng):
        super().__init__()
        self.add("cls_score", Linear(dim, num_classes + 1, rng=rng, init=0.01))
        self.add("bbox_pred", Linear(dim, 4 * (num_classes + 1), rng=rng, init=0.001))

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)

    def backward(self, dlogits, ddeltas):
        return self.cls_score.backward(dlogits) + self.bbox_pred.backward(ddeltas)


class MaskHead(Module):
    """n x (3x3 conv + GN + ReLU), 2x2 stride-2 transposed conv + ReLU, 1x1 conv to Kc masks.

    (P, F, S, S) -> (P, Kc, 2S, 2S) logits. The last 1x1 conv is the "predictor".
    """

    def __init__(self, in_ch, ch, num_convs, out_ch, groups, rng):
        super().__init__()
        convs = [conv_gn_relu(in_ch if i == 0 else ch, ch, 3, 1, groups, rng) for i in range(num_convs)]
        self.add("convs", Sequential(*convs))
        self.add("deconv", ConvTranspose2d(ch, ch, 2, 2, rng=rng))
        self.add("relu", ReLU())
        self.add("predictor", Conv2d(ch, out_ch, 1, rng=rng, init=0.001))

    def forward(self, x):
        return self.predictor(self.relu(self.deconv(self.convs(x))))

    def backward(self, dout):
        return self.convs.backward(self.deconv.backward(self.relu.backward(self.predictor.backward(dout))))


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, size):
    """Resample each RoI's ground-truth mask into the RoI at size x size (RoIAlign on the mask).

    Inputs: gt_masks (M, H, W) bool, boxes (P, 4), matched_idxs (P,) into gt_masks, size int
    Returns: (P, size, size) float targets in {0, 1} (bilinear average >= 0.5).
    """
    dtype = boxes.dtype
    rois = np.concatenate([matched_idxs[:, None].astype(dtype), boxes], axis=1)
    sampled, _ = roi_align_forward(gt_masks[:, None].astype(dtype), rois, size, spatial_scale=1.0,
                                   sampling_ratio=2, aligned=True)
    return (sampled[:, 0] >= 0.5).astype(dtype)


def paste_masks(mask_probs, boxes, image_size, threshold=0.5):
    """Paste M x M mask probabilities into the image inside their boxes and threshold them.

    Mask cell (i, j) is centred at (x1 + (j + 0.5) w / M, y1 + (i + 0.5) h / M), the same points
    `project_masks_on_boxes` sampled; every image pixel centre inside the box is bilinearly
    interpolated from them (edge cells extend to the box edge), pixels outside the box are 0.

    Inputs: mask_probs (D, M, M), boxes (D, 4), image_size (h, w)
    Returns: (D, h, w) bool
    """
    h, w = image_size
    d, m = mask_probs.shape[0], mask_probs.shape[-1]
    out = np.zeros((d, h, w), dtype=bool)
    for i in range(d):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        xs = np.arange(c0, c1) + 0.5                           # pixel centres
        ys = np.arange(r0, r1) + 0.5
        u = np.clip((xs - x1) * m / max(x2 - x1, 1e-6) - 0.5, 0, m - 1)
        v = np.clip((ys - y1) * m / max(y2 - y1, 1e-6) - 0.5, 0, m - 1)
        u0 = np.minimum(u.astype(np.int64), m - 2) if m > 1 else np.zeros_like(u, np.int64)
        v0 = np.minimum(v.astype(np.int64), m - 2) if m > 1 else np.zeros_like(v, np.int64)
        fu, fv = u - u0, v - v0
        u1, v1 = np.minimum(u0 + 1, m - 1), np.minimum(v0 + 1, m - 1)
        p = mask_probs[i]
        rows = p[v0] * (1 - fv)[:, None] + p[v1] * fv[:, None]          # (hh, M)
        vals = rows[:, u0] * (1 - fu)[None, :] + rows[:, u1] * fu[None, :]
        inside = ((xs >= x1) & (xs <= x2))[None, :] & ((ys >= y1) & (ys <= y2))[:, None]
        out[i, r0:r1, c0:c1] = (vals >= threshold) & inside
    return out


def mirror_boxes(boxes, width):
    """Boxes (D, 4), or rois (D, 5), in the horizontally flipped image: x -> width - x."""
    out = np.array(boxes, copy=True)
    out[:, -4], out[:, -2] = width - boxes[:, -2], width - boxes[:, -4]
    return out


def mask_confidence(mask_probs, threshold=0.5):
    """Mean probability over each mask's own cells (those >= threshold); 0 for an empty mask.

    A detection whose mask the head is unsure of (probabilities near 0.5: a fragment, a shape it
    cannot outline) gets a lower score. A simple stand-in for Mask Scoring R-CNN's learned mask
    IoU (Huang et al. 2019), which multiplies the class score the same way.
    (D, M, M) -> (D,)
    """
    on = mask_probs >= threshold
    return (mask_probs * on).sum(axis=(1, 2)) / np.maximum(on.sum(axis=(1, 2)), 1)


def jitter_boxes(boxes, copies, amount, rng):
    """`copies` randomly moved and rescaled copies of each box (M, 4) -> (M*copies, 4).

    Centre shifted by U(-amount, amount) of the box's width / height, each side length scaled by
    exp(U(-amount, amount)). With amount 0.1 the copies overlap their box at IoU 0.65-0.95 (median
    0.8): extra positive RoIs for the box and mask heads, in training only.
    """
    b = np.repeat(boxes, copies, axis=0)
    wh = b[:, 2:] - b[:, :2]
    centre = 0.5 * (b[:, :2] + b[:, 2:]) + rng.uniform(-amount, amount, wh.shape) * wh
    half = 0.5 * wh * np.exp(rng.uniform(-amount, amount, wh.shape))
    return np.concatenate([centre - half, centre + half], axis=1).astype(boxes.dtype)


def mask_extents(masks, boxes):
    """Tight boxes (x1, y1, x2 + 1, y2 + 1 in pixel edges) of binary masks; `boxes` where a mask
    is empty. (D, H, W) bool, (D, 4) -> (D, 4) float32."""
    out = boxes.astype(np.float32).copy()
    for i, m in enumerate(masks):
        cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
        if cols.size:
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class RoIHeads(Module):
    """Proposal sampling, the box branch, the mask branch, their losses and post-processing."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.cfg = cfg
        f, k = cfg.fpn_channels, cfg.num_classes
        if cfg.box_head_convs:
            self.add("box_head", ConvFCBoxHead(f, cfg.box_head_convs, cfg.box_pool_size, cfg.box_fc_dim,
                                               cfg.gn_groups, rng))
        else:
            self.add("box_head", BoxHead(f * cfg.box_pool_size ** 2, cfg.box_fc_dim, rng))
        self.add("box_predictor", BoxPredictor(cfg.box_fc_dim, k, rng))
        mask_out = 1 if cfg.class_agnostic_masks else k
        if cfg.mask_loss == "softmax":
            mask_out += 1                                      # channel 0: background
        self.add("mask_head", MaskHead(f, cfg.mask_channels, cfg.mask_num_convs, mask_out,
                                       cfg.gn_groups, rng))
        self.box_coder = BoxCoder(cfg.bbox_reg_weights)
        self.matcher = Matcher(cfg.box_fg_iou, cfg.box_bg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(cfg.box_batch_size_per_image,
                                                       cfg.box_positive_fraction,
                                                       cfg.box_neg_iou_bins, cfg.box_bg_iou)
        self.levels = tuple(cfg.pooler_levels)
        self.scales = [1.0 / 2 ** lv for lv in self.levels]

    # ---- pooling --------------------------------------------------------------------------
    def pool(self, features, rois, size):
        """Multi-level RoI pooling from the configured FPN levels. -> (R, F, size, size), cache."""
        cfg = self.cfg
        feats = [features[lv - 2] for lv in self.levels]
        return multilevel_roi_forward(feats, rois, size, self.scales, sampling_ratio=cfg.pooler_sampling_ratio,
                                      kind=cfg.pooler, canonical_size=cfg.canonical_size,
                                      canonical_level=cfg.canonical_level)

    def unpool(self, dout, cache, dfeatures):
        """Scatter pooled-feature gradients back into dfeatures (a list over P2..P5), in place."""
        for lv, d in zip(self.levels, multilevel_roi_backward(dout, cache)):
            dfeatures[lv - 2] = d if dfeatures[lv - 2] is None else dfeatures[lv - 2] + d

    # ---- training targets -----------------------------------------------------------------
    def sample_proposals(self, proposals, targets, rng):
        """Add the ground truth to the proposals, match them, and draw a balanced sample.

        Returns: rois (R, 5), labels (R,), regression targets (R, 4), matched gt index (R,),
        image index (R,) — positives of each image first.
        """
        dtype = proposals[0].dtype if proposals else np.float32
        per_image = []
        for i, (props, tgt) in enumerate(zip(proposals, targets)):
            gt = tgt["boxes"].astype(dtype)
            extra = [gt]
            if self.cfg.box_jitter_per_gt and gt.shape[0]:
                extra.append(jitter_boxes(gt, self.cfg.box_jitter_per_gt, self.cfg.box_jitter, rng))
            props = np.concatenate([props, *extra], axis=0)
            if gt.shape[0] == 0:
                matched = np.full(props.shape[0], Matcher.BELOW_LOW_THRESHOLD, np.int64)
                max_iou = np.zeros(props.shape[0])
            else:
                iou = box_iou(gt, props)
                matched = self.matcher(iou)
                max_iou = iou.max(axis=0)
            labels = np.zeros(props.shape[0], np.int64)
            fg = matched >= 0
            labels[fg] = tgt["labels"][matched[fg]]
            labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
            per_image.append((props, labels, matched, gt, max_iou))
        pos, neg = self.sampler([p[1] for p in per_image], rng, [p[4] for p in per_image])
        rois, labels, targets_out, matched_out, image_idx = [], [], [], [], []
        for i, ((props, lab, matched, gt, _), ps, ns) in enumerate(zip(per_image, pos, neg)):
            keep = np.concatenate([np.flatnonzero(ps), np.flatnonzero(ns)])
            boxes, m = props[keep], np.maximum(matched[keep], 0)
            lab = np.where(ps[keep], lab[keep], 0)
            reg = self.box_coder.encode(gt[m], boxes) if gt.shape[0] else np.zeros_like(boxes)
            rois.append(np.concatenate([np.full((keep.size, 1), i, dtype), boxes], axis=1))
            labels.append(lab)
            targets_out.append(reg.astype(dtype))
            matched_out.append(m)
            image_idx.append(np.full(keep.size, i))
        cat = np.concatenate
        return cat(rois), cat(labels), cat(targets_out), cat(matched_out), cat(image_idx)

    def select_mask_rois(self, labels, image_idx, rng):
        """Indices of the positive RoIs that train the mask head (at most N_max per image)."""
        chosen = []
        for i in np.unique(image_idx):
            idx = np.flatnonzero((image_idx == i) & (labels > 0))
            if idx.size > self.cfg.max_mask_rois_per_image:
                idx = np.sort(rng.choice(idx, self.cfg.max_mask_rois_per_image, replace=False))
            chosen.append(idx)
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)

    # ---- forward / backward ----------------------------------------------------------------
    def forward(self, features, proposals, image_size, targets=None, rng=None):
        """Training (targets given): losses. Inference: detections.

        Inputs:
        - features: [p2, p3, p4, p5, ...] (N, F, H_l, W_l)
        - proposals: list of N (P_i, 4)
        - targets: list of N dicts with "boxes", "labels", "masks", or None
        Returns: (detections: list of N dicts or None, losses: dict)
        """
        if targets is None:
            return self.predict(features, proposals, image_size), {}
        cfg = self.cfg
        # 1) sample RoIs, 2) box branch
        rois, labels, reg_targets, matched, image_idx = self.sample_proposals(proposals, targets, rng)
        box_feats, box_pool_cache = self.pool(features, rois, cfg.box_pool_size)   # (R, F, 7, 7)
        class_logits, box_deltas = self.box_predictor(self.box_head(box_feats))
        # 3) box losses: CE over all RoIs; smooth L1 on the ground-truth class of positives
        r = rois.shape[0]
        loss_cls, dclass_logits = softmax_cross_entropy(class_logits, labels)
        pos = np.flatnonzero(labels > 0)
        deltas = box_deltas.reshape(r, cfg.num_classes + 1, 4)
        loss_box, dpos = smooth_l1(deltas[pos, labels[pos]], reg_targets[pos], beta=1.0 / 9,
                                   normalizer=max(r, 1))
        if cfg.box_reg_loss_weight != 1.0:
            loss_box, dpos = loss_box * cfg.box_reg_loss_weight, dpos * cfg.box_reg_loss_weight
        dbox_deltas = np.zeros_like(deltas)
        dbox_deltas[pos, labels[pos]] = dpos
        # 4) mask branch on (a subset of) the positives
        mask_idx = self.select_mask_rois(labels, image_idx, rng)
        mask_state = None
        loss_mask = 0.0
        if mask_idx.size:
            mask_rois = rois[mask_idx]
            mask_feats, mask_pool_cache = self.pool(features, mask_rois, cfg.mask_pool_size)
            mask_logits = self.mask_head(mask_feats)                            # (P, Kc, M, M)
            mask_targets = self.mask_targets(targets, mask_rois, matched[mask_idx], image_idx[mask_idx],
                                             mask_logits.shape[-1])
            loss_mask, dmask_logits = self.mask_loss(mask_logits, mask_targets, labels[mask_idx])
            mask_state = (mask_pool_cache, dmask_logits)
        self._push((box_pool_cache, dclass_logits, dbox_deltas.reshape(r, 4 * (cfg.num_classes + 1)), mask_state,
                    len(features)))
        return None, {"loss_classifier": float(loss_cls), "loss_box_reg": float(loss_box),
                      "loss_mask": float(loss_mask)}

    def backward(self):
        """Gradient of loss_classifier + loss_box_reg + loss_mask w.r.t. the features."""
        box_pool_cache, dclass_logits, dbox_deltas, mask_state, n_levels = self._pop()
        dfeatures = [None] * n_levels
        if mask_state is not None:
            mask_pool_cache, dmask_logits = mask_state
            dmask_feats = self.mask_head.backward(dmask_logits)
            self.unpool(dmask_feats, mask_pool_cache, dfeatures)
        dbox_feats = self.box_head.backward(self.box_predictor.backward(dclass_logits, dbox_deltas))
        self.unpool(dbox_feats, box_pool_cache, dfeatures)
        return dfeatures

    def mask_targets(self, targets, rois, matched, image_idx, size):
        """(P, M, M) targets: each RoI's matched ground-truth mask, resampled into the RoI."""
        out = np.zeros((rois.shape[0], size, size), rois.dtype)
        for i in np.unique(image_idx):
            sel = np.flatnonzero(image_idx == i)
            out[sel] = project_masks_on_boxes(targets[i]["masks"], rois[sel, 1:], matched[sel], size)
        return out

    def mask_loss(self, mask_logits, mask_targets, labels):
        """loss_mask and its gradient.

        sigmoid (paper): BCE on the ground-truth class's channel only, mean over P*M*M pixels.
        softmax (ablation): per-pixel CE across [background, classes...], target class inside the
        mask and background outside, mean over pixels.
        """
        p, kc, m, _ = mask_logits.shape
        dlogits = np.zeros_like(mask_logits)
        agnostic = self.cfg.class_agnostic_masks
        if self.cfg.mask_loss == "sigmoid":
            ch = np.zeros(p, np.int64) if agnostic else labels - 1
            loss, d = sigmoid_binary_cross_entropy(mask_logits[np.arange(p), ch], mask_targets)
            dlogits[np.arange(p), ch] = d
            return float(loss), dlogits
        cls = np.ones(p, np.int64) if agnostic else labels
        pix_labels = (mask_targets > 0.5) * cls[:, None, None]                  # (P, M, M)
        flat = mask_logits.transpose(0, 2, 3, 1).reshape(-1, kc)
        loss, d = softmax_cross_entropy(flat, pix_labels.reshape(-1))
        dlogits[...] = d.reshape(p, m, m, kc).transpose(0, 3, 1, 2)
        return float(loss), dlogits

    def mask_probs(self, mask_logits, labels):
        """Probability map of each detection's own class: (D, Kc, M, M) -> (D, M, M)."""
        d = mask_logits.shape[0]
        agnostic = self.cfg.class_agnostic_masks
        if self.cfg.mask_loss == "sigmoid":
            ch = np.zeros(d, np.int64) if agnostic else labels - 1
            x = mask_logits[np.arange(d), ch]
            return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))
        # softmax: a pixel belongs to the mask when its own class wins the per-pixel argmax, so
        # return p_k / (p_k + max_{j != k} p_j), which is > 0.5 exactly then (with 4 channels p_k
        # itself can win while staying below 0.5)
        ch = np.ones(d, np.int64) if agnostic else labels
        p = _softmax(mask_logits, axis=1)
        own = p[np.arange(d), ch]
        p[np.arange(d), ch] = -1.0
        return own / (own + p.max(axis=1))

    # ---- inference ------------------------------------------------------------------------
    def second_look(self, features, rois, labels, image_size, mirrored=False):
        """The box head on given boxes: its decode of each box and its probability of `labels`.

        Inputs:
        - features: [p2..p5] of the images (of the mirrored images when `mirrored`)
        - rois: (D, 5) detections in image coordinates; labels: (D,) their classes 1..K
        - mirrored: pool the mirrored box (x -> W - x) and mirror the decoded box back
        Returns:
        - boxes: (D, 4) in image coordinates; probs: (D,)
        """
        w = image_size[1]
        if mirrored:
            rois = mirror_boxes(rois, w)
        feats, _ = self.pool(features, rois, self.cfg.box_pool_size)
        logits, deltas = self.box_predictor(self.box_head(feats))
        rows = np.arange(len(rois))
        deltas = deltas.reshape(len(rois), -1, 4)[rows, labels]
        boxes = clip_boxes(self.box_coder.decode(deltas, rois[:, 1:]).reshape(-1, 4), image_size)
        probs = _softmax(logits, axis=1)[rows, labels]
        return (mirror_boxes(boxes, w) if mirrored else boxes), probs

    def predict(self, features, proposals, image_size, mirrored_features=None):
        """Detections per image: boxes, labels, scores, masks (pasted and thresholded).

        `mirrored_features` ([p2..p5] of the horizontally flipped images) turns on test-time
        flip: each detection is looked at again in the mirror image (box, class probability and
        mask probabilities averaged over the views).
        """
        cfg = self.cfg
        dtype = features[0].dtype
        n = len(proposals)
        rois = np.concatenate([np.concatenate([np.full((p.shape[0], 1), i, dtype), p.astype(dtype)], 1)
                               for i, p in enumerate(proposals)], axis=0)
        box_feats, _ = self.pool(features, rois, cfg.box_pool_size)
        class_logits, box_deltas = self.box_predictor(self.box_head(box_feats))
        # 1) per-class scores and boxes
        probs = _softmax(class_logits, axis=1)                                  # (R, K+1)
        boxes = self.box_coder.decode(box_deltas, rois[:, 1:]).reshape(rois.shape[0], cfg.num_classes + 1, 4)
        boxes = clip_boxes(boxes.reshape(-1, 4), image_size).reshape(boxes.shape)
        dets = []                                                 # (boxes, labels, scores) per image
        for i in range(n):
            sel = rois[:, 0] == i
            b = boxes[sel][:, 1:].reshape(-1, 4)                                # drop background
            s = probs[sel][:, 1:].reshape(-1)
            lab = np.tile(np.arange(1, cfg.num_classes + 1), int(sel.sum()))
            # 2) score threshold, 3) drop empty boxes, 4) per-class NMS, 5) top-k
            keep = np.flatnonzero(s > cfg.box_score_thresh)
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = remove_small_boxes(b, 1e-2)
            b, s, lab = b[keep], s[keep], lab[keep]
            keep = batched_nms(b, s, lab, cfg.box_nms_thresh)[:cfg.detections_per_img]
            dets.append((b[keep], lab[keep], s[keep]))
        det_rois = np.concatenate([np.concatenate([np.full((len(b), 1), i, dtype), b.astype(dtype)], 1)
                                   for i, (b, _, _) in enumerate(dets)], axis=0)
        labels = np.concatenate([lab for _, lab, _ in dets])
        scores = np.concatenate([s for _, _, s in dets]).astype(np.float64)
        d = len(det_rois)
        # 6) second looks (not in the paper): the box head looks again at its own detections, in
        # the image (box_refine; closer to the objects than the proposals were) and in the mirror
        # image (test-time flip); every look votes equally for the box and the class probability
        views = [features] if cfg.box_refine else []
        if mirrored_features is not None:
            views.append(mirrored_features)
        if views and d:
            box_sum, score_sum = det_rois[:, 1:].astype(np.float64), scores.copy()
            for feats in views:
                b, p = self.second_look(feats, det_rois, labels, image_size, feats is mirrored_features)
                box_sum += b
                score_sum += p
            det_rois[:, 1:] = box_sum / (1 + len(views))
            scores = score_sum / (1 + len(views))
        # 7) masks of the detections (averaged with the mirror view's, mirrored back)
        w = image_size[1]
        m = 2 * cfg.mask_pool_size
        mask_probs = np.zeros((0, m, m), dtype)
        if d:
            mask_feats, _ = self.pool(features, det_rois, cfg.mask_pool_size)
            mask_probs = self.mask_probs(self.mask_head(mask_feats), labels)          # (D, M, M)
            if mirrored_features is not None:
                mask_feats, _ = self.pool(mirrored_features, mirror_boxes(det_rois, w), cfg.mask_pool_size)
                mirrored = self.mask_probs(self.mask_head(mask_feats), labels)[:, :, ::-1]
                mask_probs = 0.5 * (mask_probs + mirrored)
            if cfg.mask_rescore:
                scores = scores * mask_confidence(mask_probs, cfg.mask_threshold)
        detections, start = [], 0
        for b, _, _ in dets:
            sl = slice(start, start + len(b))
            start += len(b)
            order = np.argsort(-scores[sl], kind="stable")
            box = det_rois[sl, 1:][order].astype(np.float32)
            det = {"boxes": box, "labels": labels[sl][order].astype(np.int64),
                   "scores": scores[sl][order].astype(np.float32),
                   "masks": paste_masks(mask_probs[sl][order], box, image_size, cfg.mask_threshold)}
            if cfg.box_from_mask:
                det["boxes"] = mask_extents(det["masks"], det["boxes"])
            detections.append(det)
        return detections

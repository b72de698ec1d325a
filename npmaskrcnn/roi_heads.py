"""RoI heads: which RoIs each branch sees, and the order of the two branches (paper section 3).

Training: the ground-truth boxes join the proposals, each candidate is matched to a ground-truth
box (IoU >= 0.5 foreground, else background) and a balanced sample is drawn per image (512 RoIs
at 25 % foreground in the paper). Their features are pooled (7 x 7) from the FPN level their size
selects, and the box branch (`box_head.py`) gives `loss_classifier` and `loss_box_reg`. The
positive RoIs are pooled again (14 x 14) for the mask branch (`mask_head.py`), whose target is
the matched ground-truth mask and whose loss is `loss_mask`. The branches run in parallel on the
same RoIs in training, as the paper says; at test time the mask branch runs on the box branch's
detections ("this speeds up inference and improves accuracy").

Two seams let a recipe change the training RoIs without touching this file: `sampler` (an object
with the `boxes.BalancedPositiveNegativeSampler` interface; it is handed every candidate's best
IoU) and `extra_training_rois` (a function (gt_boxes, rng) -> more candidate boxes, in training).

Shape shorthand:
    N images, R sampled RoIs (all images), P positive RoIs sent to the mask head, K classes,
    S pool size, M mask side, D detections

Naming:
    rois            (R, 5) [image index, x1, y1, x2, y2]
    matched_idxs    index of the matched ground-truth box per RoI (0 for background RoIs)
    labels          (R,) 0 background, 1..K; regression_targets (R, 4)
"""

import numpy as np

from .box_head import BoxPredictor, build_box_head, fastrcnn_loss, postprocess_detections
from .boxes import BalancedPositiveNegativeSampler, BoxCoder, Matcher, box_iou, boxes_to_rois
from .mask_head import build_mask_branch, mask_probs, mask_targets, maskrcnn_loss, paste_masks
from .nn import Module
from .roi_ops import multilevel_roi_backward, multilevel_roi_forward
from .transform import resize_boxes, size_list


class RoIHeads(Module):
    """Proposal sampling, the box branch, then the mask branch; their losses or detections."""

    def __init__(self, cfg, rng, sampler=None, extra_training_rois=None):
        super().__init__()
        self.cfg = cfg
        self.add("box_head", build_box_head(cfg, rng))
        self.add("box_predictor", BoxPredictor(cfg.box_fc_dim, cfg.num_classes, rng))
        mask_head, mask_predictor = build_mask_branch(cfg, rng)
        self.add("mask_head", mask_head)
        self.add("mask_predictor", mask_predictor)
        self.box_coder = BoxCoder(cfg.bbox_reg_weights)
        self.matcher = Matcher(cfg.box_fg_iou, cfg.box_bg_iou, allow_low_quality_matches=False)
        self.sampler = sampler or BalancedPositiveNegativeSampler(cfg.box_batch_size_per_image,
                                                                  cfg.box_positive_fraction)
        self.extra_training_rois = extra_training_rois
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

        Returns: rois (R, 5), labels (R,), regression targets (R, 4), matched gt index (R,) —
        positives of each image first.
        """
        dtype = proposals[0].dtype if proposals else np.float32
        per_image = []
        for props, tgt in zip(proposals, targets):
            gt = tgt["boxes"].astype(dtype)
            extra = [gt]                                   # every gt box is a candidate (torchvision)
            if self.extra_training_rois is not None:
                extra.append(self.extra_training_rois(gt, rng))
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
        boxes_out, labels_out, targets_out, matched_out = [], [], [], []
        for (props, lab, matched, gt, _), ps, ns in zip(per_image, pos, neg):
            keep = np.concatenate([np.flatnonzero(ps), np.flatnonzero(ns)])
            boxes, m = props[keep], np.maximum(matched[keep], 0)
            reg = self.box_coder.encode(gt[m], boxes) if gt.shape[0] else np.zeros_like(boxes)
            boxes_out.append(boxes)
            labels_out.append(np.where(ps[keep], lab[keep], 0))
            targets_out.append(reg.astype(dtype))
            matched_out.append(m)
        cat = np.concatenate
        return boxes_to_rois(boxes_out, dtype), cat(labels_out), cat(targets_out), cat(matched_out)

    def select_mask_rois(self, rois, labels, rng):
        """Indices of the positive RoIs that train the mask head (at most N_max per image)."""
        image_idx = rois[:, 0].astype(np.int64)
        chosen = []
        for i in np.unique(image_idx):
            idx = np.flatnonzero((image_idx == i) & (labels > 0))
            if idx.size > self.cfg.max_mask_rois_per_image:
                idx = np.sort(rng.choice(idx, self.cfg.max_mask_rois_per_image, replace=False))
            chosen.append(idx)
        return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)

    # ---- forward / backward ----------------------------------------------------------------
    def forward(self, features, proposals, image_sizes, targets=None, rng=None):
        """Training (targets given): losses. Inference: detections.

        Inputs:
        - features: [p2, p3, p4, p5] (N, F, H_l, W_l)
        - proposals: list of N (P_i, 4)
        - image_sizes: each image's own (h, w) (a list), or one (h, w) for all
        - targets: list of N dicts with "boxes", "labels", "masks", or None
        Returns: (detections: list of N dicts or None, losses: dict)
        """
        if targets is None:
            return self.predict(features, proposals, image_sizes), {}
        cfg = self.cfg
        # 1) sample RoIs
        rois, labels, reg_targets, matched = self.sample_proposals(proposals, targets, rng)
        # 2) box branch and its losses
        box_feats, box_pool_cache = self.pool(features, rois, cfg.box_pool_size)      # (R, F, 7, 7)
        class_logits, box_deltas = self.box_predictor(self.box_head(box_feats))
        loss_cls, loss_box, dclass_logits, dbox_deltas = fastrcnn_loss(
            class_logits, box_deltas, labels, reg_targets, cfg.box_reg_loss_weight)
        # 3) mask branch on (a subset of) the positives
        mask_idx = self.select_mask_rois(rois, labels, rng)
        mask_state, loss_mask = None, 0.0
        if mask_idx.size:
            mask_rois = rois[mask_idx]
            mask_feats, mask_pool_cache = self.pool(features, mask_rois, cfg.mask_pool_size)
            mask_logits = self.mask_predictor(self.mask_head(mask_feats))                 # (P, Kc, M, M)
            targets_m = mask_targets([t["masks"] for t in targets], mask_rois, matched[mask_idx],
                                     mask_logits.shape[-1])
            loss_mask, dmask_logits = maskrcnn_loss(mask_logits, targets_m, labels[mask_idx],
                                                    cfg.mask_loss, cfg.class_agnostic_masks)
            mask_state = (mask_pool_cache, dmask_logits)
        self._push((box_pool_cache, dclass_logits, dbox_deltas, mask_state, len(features)))
        return None, {"loss_classifier": loss_cls, "loss_box_reg": loss_box,
                      "loss_mask": float(loss_mask)}

    def backward(self):
        """Gradient of loss_classifier + loss_box_reg + loss_mask w.r.t. the features."""
        box_pool_cache, dclass_logits, dbox_deltas, mask_state, n_levels = self._pop()
        dfeatures = [None] * n_levels
        if mask_state is not None:
            mask_pool_cache, dmask_logits = mask_state
            dmask_feats = self.mask_head.backward(self.mask_predictor.backward(dmask_logits))
            self.unpool(dmask_feats, mask_pool_cache, dfeatures)
        dbox_feats = self.box_head.backward(self.box_predictor.backward(dclass_logits, dbox_deltas))
        self.unpool(dbox_feats, box_pool_cache, dfeatures)
        return dfeatures

    # ---- inference, in three steps a wrapper can reuse -------------------------------------
    def detect(self, features, proposals, image_sizes):
        """The box branch on the proposals: per image (boxes, labels, scores) after per-class NMS,
        boxes clipped to the image's own (h, w) (image_sizes: a list, or one (h, w) for all)."""
        cfg = self.cfg
        rois = boxes_to_rois(proposals, features[0].dtype)
        box_feats, _ = self.pool(features, rois, cfg.box_pool_size)
        class_logits, box_deltas = self.box_predictor(self.box_head(box_feats))
        return postprocess_detections(class_logits, box_deltas, rois, len(proposals), image_sizes,
                                      self.box_coder, cfg.box_score_thresh, cfg.box_nms_thresh,
                                      cfg.detections_per_img)

    def predict_mask_probs(self, features, det_rois, labels):
        """The mask branch on detections (D, 5) of classes labels (D,): (D, M, M) probabilities."""
        cfg = self.cfg
        feats, _ = self.pool(features, det_rois, cfg.mask_pool_size)
        logits = self.mask_predictor(self.mask_head(feats))
        return mask_probs(logits, labels, cfg.mask_loss, cfg.class_agnostic_masks)

    def assemble_image(self, det_rois, labels, scores, probs, image_size, i, original_size=None):
        """The detection dict of image i: sorted by decreasing score, masks pasted and thresholded.

        image_size: image i's (h, w) as the network saw it (after resize); original_size: its
        (h, w) as given (None: the same). As torchvision: the boxes are mapped back to the
        original image first (`transform.resize_boxes`), the masks pasted there from them.
        """
        sel = np.flatnonzero(det_rois[:, 0] == i)
        order = sel[np.argsort(-scores[sel], kind="stable")]
        boxes = det_rois[order, 1:].astype(np.float32)
        size = tuple(image_size) if original_size is None else tuple(original_size)
        if size != tuple(image_size):
            boxes = resize_boxes(boxes, image_size, size)
        return {"boxes": boxes, "labels": labels[order].astype(np.int64),
                "scores": scores[order].astype(np.float32),
                "masks": paste_masks(probs[order], boxes, size, self.cfg.mask_threshold,
                                     self.cfg.mask_paste)}

    def predict(self, features, proposals, image_sizes, original_image_sizes=None):
        """Detections per image: dicts of boxes, labels, scores, masks (pasted, thresholded),
        in each image's original pixels (original_image_sizes; None: as image_sizes)."""
        n = len(proposals)
        sizes = size_list(image_sizes, n)
        originals = sizes if original_image_sizes is None else size_list(original_image_sizes, n)
        dets = self.detect(features, proposals, sizes)
        det_rois = boxes_to_rois([b for b, _, _ in dets], features[0].dtype)
        labels = np.concatenate([lab for _, lab, _ in dets])
        scores = np.concatenate([s for _, _, s in dets]).astype(np.float64)
        m = 2 * self.cfg.mask_pool_size
        probs = (self.predict_mask_probs(features, det_rois, labels) if len(det_rois)
                 else np.zeros((0, m, m), features[0].dtype))
        return [self.assemble_image(det_rois, labels, scores, probs, sizes[i], i, originals[i])
                for i in range(n)]

"""Region Proposal Network (Faster R-CNN, Ren et al. 2015, section 3.1; FPN paper section 4.1).

One small head slides over every FPN level (P2..P6) with shared weights: a 3x3 conv and ReLU,
then two sibling 1x1 convs giving, for each of the A anchors at every location, an objectness
logit and 4 box deltas. Training labels anchors by IoU with the ground truth (>= 0.7 positive,
< 0.3 negative, plus each ground-truth box's best anchors), samples a balanced minibatch per
image, and applies a sigmoid BCE objectness loss and a smooth-L1 box loss on the positives.
Proposals are the decoded top-scoring anchors after NMS; they carry no gradient.

Shape shorthand:
    N images, F FPN channels, A anchors per location, H_l x W_l size of level l,
    T = sum_l H_l * W_l * A anchors per image, P proposals per image, M ground-truth boxes.

Naming:
    objectness      (N, T) logits, anchor order (level, y, x, a), matching `anchors.grid_anchors`
    rpn_deltas      (N, T, 4) predicted (dx, dy, dw, dh) relative to the anchors
    *_per_level     a list over P2..P6 of the same quantity
"""

import numpy as np

from .anchors import AnchorGenerator
from .boxes import (BalancedPositiveNegativeSampler, BoxCoder, Matcher, batched_nms, box_iou,
                    clip_boxes, remove_small_boxes)
from .losses import sigmoid_binary_cross_entropy, smooth_l1
from .nn import Conv2d, Module, ReLU
from .transform import size_list

STRIDES = (4, 8, 16, 32, 64)


class RPNHead(Module):
    """3x3 conv + ReLU, then 1x1 objectness (A) and 1x1 deltas (4A); shared by all levels.

    forward(p (N, F, H, W)) -> (logits (N, A, H, W), deltas (N, 4A, H, W));
    backward(dlogits, ddeltas) -> dp. Called once per level; backward in reverse level order.
    """

    def __init__(self, channels, num_anchors, rng):
        super().__init__()
        self.add("conv", Conv2d(channels, channels, 3, 1, 1, rng=rng, init=0.01))
        self.add("relu", ReLU())
        self.add("cls_logits", Conv2d(channels, num_anchors, 1, rng=rng, init=0.01))
        self.add("bbox_pred", Conv2d(channels, 4 * num_anchors, 1, rng=rng, init=0.01))

    def forward(self, p):
        t = self.relu(self.conv(p))
        return self.cls_logits(t), self.bbox_pred(t)

    def backward(self, dlogits, ddeltas):
        dt = self.cls_logits.backward(dlogits) + self.bbox_pred.backward(ddeltas)
        return self.conv.backward(self.relu.backward(dt))


def flatten_head_outputs(logits, deltas):
    """(N, A, H, W), (N, 4A, H, W) -> (N, H*W*A), (N, H*W*A, 4) in anchor order (y, x, a)."""
    n, a, h, w = logits.shape
    flat_logits = logits.transpose(0, 2, 3, 1).reshape(n, h * w * a)
    flat_deltas = deltas.reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, 4)
    return flat_logits, flat_deltas


def unflatten_head_grads(dlogits, ddeltas, shape):
    """Inverse of `flatten_head_outputs` for the gradients; shape = (N, A, H, W)."""
    n, a, h, w = shape
    dl = dlogits.reshape(n, h, w, a).transpose(0, 3, 1, 2)
    dd = ddeltas.reshape(n, h, w, a, 4).transpose(0, 3, 4, 1, 2).reshape(n, 4 * a, h, w)
    return np.ascontiguousarray(dl), np.ascontiguousarray(dd)


class RPN(Module):
    """The RPN: head on every level, anchor targets and losses, proposals."""

    def __init__(self, cfg, rng):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(cfg.anchor_sizes, cfg.anchor_ratios, STRIDES,
                                                cfg.anchor_convention)
        self.add("head", RPNHead(cfg.fpn_channels, len(cfg.anchor_ratios), rng))
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(cfg.rpn_fg_iou, cfg.rpn_bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(cfg.rpn_batch_size_per_image,
                                                       cfg.rpn_positive_fraction)
        self._anchor_cache = {}

    def anchors(self, feature_shapes):
        """Anchors per level for these feature map sizes (cached). list of (H*W*A, 4).

        The padded batch is STRIDES[0] times the finest level exactly (the transform pads to a
        multiple of 32, so every level up to P5 halves exactly); torchvision's convention needs it.
        """
        key = tuple(tuple(s) for s in feature_shapes)
        if key not in self._anchor_cache:
            image_shape = (STRIDES[0] * key[0][0], STRIDES[0] * key[0][1])
            self._anchor_cache[key] = self.anchor_generator.grid_anchors(list(key), image_shape)
        return self._anchor_cache[key]

    def forward(self, features, image_sizes, gt_boxes=None, rng=None):
        """Run the head, make proposals and (with gt_boxes) the losses.

        Inputs:
        - features: [p2, ..., p6], each (N, F, H_l, W_l)
        - image_sizes: each image's own (h, w) before padding (a list), or one (h, w) for all;
          the anchors cover the padded batch, each image's proposals are clipped to its size
        - gt_boxes: list of N (M_i, 4) arrays in training, None at inference
        - rng: np.random.Generator for anchor sampling
        Returns: (proposals: list of N (P_i, 4) arrays, losses: dict, empty at inference)
        """
        # 1) the shared head on every level
        shapes, logits_per_level, deltas_per_level = [], [], []
        for p in features:
            logits, deltas = self.head(p)                       # (N, A, H, W), (N, 4A, H, W)
            shapes.append(logits.shape)
            fl, fd = flatten_head_outputs(logits, deltas)
            logits_per_level.append(fl)
            deltas_per_level.append(fd)
        objectness = np.concatenate(logits_per_level, axis=1)  # (N, T)
        rpn_deltas = np.concatenate(deltas_per_level, axis=1)  # (N, T, 4)
        anchors_per_level = self.anchors([s[2:] for s in shapes])
        anchors = np.concatenate(anchors_per_level, axis=0)    # (T, 4)

        # 2) proposals: constants, no gradient flows through them
        counts = [a.shape[0] for a in anchors_per_level]
        sizes = size_list(image_sizes, objectness.shape[0])
        proposals = [self.propose(objectness[i], rpn_deltas[i], anchors, counts, sizes[i])
                     for i in range(objectness.shape[0])]
        if gt_boxes is None:
            return proposals, {}

        # 3) anchor targets and losses
        losses, dobjectness, ddeltas = self.losses(objectness, rpn_deltas, anchors, gt_boxes, rng)
        self._push((shapes, counts, dobjectness, ddeltas))
        return proposals, losses

    def backward(self):
        """Gradients of loss_objectness + loss_rpn_box_reg w.r.t. [p2, ..., p6]."""
        shapes, counts, dobjectness, ddeltas = self._pop()
        splits = np.cumsum(counts)[:-1]
        dl_per_level = np.split(dobjectness, splits, axis=1)
        dd_per_level = np.split(ddeltas, splits, axis=1)
        dfeatures = [None] * len(shapes)
        for k in reversed(range(len(shapes))):                 # LIFO: undo the last level first
            dl, dd = unflatten_head_grads(dl_per_level[k], dd_per_level[k], shapes[k])
            dfeatures[k] = self.head.backward(dl, dd)
        return dfeatures

    def assign_targets(self, anchors, gt):
        """Label anchors 1 / 0 / -1 (ignore) and their regression targets for one image.

        Returns: labels (T,) int, regression targets (T, 4).
        """
        if gt.shape[0] == 0:
            return np.zeros(anchors.shape[0], np.int64), np.zeros_like(anchors)
        matched_idxs = self.matcher(box_iou(gt, anchors))      # (T,)
        labels = (matched_idxs >= 0).astype(np.int64)
        labels[matched_idxs == Matcher.BETWEEN_THRESHOLDS] = -1
        targets = self.box_coder.encode(gt[np.maximum(matched_idxs, 0)], anchors)
        return labels, targets

    def losses(self, objectness, rpn_deltas, anchors, gt_boxes, rng):
        """loss_objectness (BCE, mean over sampled anchors) and loss_rpn_box_reg (smooth L1 summed
        over sampled positives, divided by the number of sampled anchors), with their gradients."""
        labels, targets = zip(*[self.assign_targets(anchors, g.astype(anchors.dtype)) for g in gt_boxes])
        pos, neg = self.sampler(list(labels), rng)
        pos, neg = np.stack(pos), np.stack(neg)                # (N, T) bool
        sampled = pos | neg
        num_sampled = max(int(sampled.sum()), 1)
        labels, targets = np.stack(labels), np.stack(targets)  # (N, T), (N, T, 4)
        dtype = objectness.dtype
        loss_obj, dobjectness = sigmoid_binary_cross_entropy(
            objectness, (labels == 1).astype(dtype), weights=sampled.astype(dtype))
        loss_box, dpos = smooth_l1(rpn_deltas[pos], targets[pos].astype(dtype), beta=1.0 / 9,
                                   normalizer=num_sampled)
        ddeltas = np.zeros_like(rpn_deltas)
        ddeltas[pos] = dpos
        losses = {"loss_objectness": float(loss_obj), "loss_rpn_box_reg": float(loss_box)}
        return losses, dobjectness, ddeltas

    def propose(self, objectness, rpn_deltas, anchors, counts, image_size):
        """Proposals for one image: top-k per level, decode, clip, drop tiny, NMS per level, top-k.

        Inputs: objectness (T,), rpn_deltas (T, 4), anchors (T, 4), counts per level, image (h, w)
        Returns: (P, 4) boxes sorted by decreasing objectness.
        """
        cfg = self.cfg
        pre_n = cfg.rpn_pre_nms_top_n_train if self.training else cfg.rpn_pre_nms_top_n_test
        post_n = cfg.rpn_post_nms_top_n_train if self.training else cfg.rpn_post_nms_top_n_test
        # 1) top-k anchors of each level by objectness
        idx, level, start = [], [], 0
        for k, c in enumerate(counts):
            scores = objectness[start:start + c]
            n = min(pre_n, c)
            top = np.argpartition(-scores, n - 1)[:n] if n < c else np.arange(c)
            idx.append(top + start)
            level.append(np.full(top.shape[0], k))
            start += c
        idx, level = np.concatenate(idx), np.concatenate(level)
        # 2) decode and clip
        boxes = self.box_coder.decode(rpn_deltas[idx], anchors[idx])
        boxes = clip_boxes(boxes, image_size)
        scores = objectness[idx]
        # 3) drop tiny boxes (and NaN ones: a diverged network; NaN scores too, which NMS
        # refuses, so the training loop reports the non-finite loss), 4) NMS within each
        # level, 5) keep the best post_n
        keep = remove_small_boxes(boxes, cfg.rpn_min_size)
        keep = keep[~np.isnan(scores[keep])]
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        keep = batched_nms(boxes, scores, level, cfg.rpn_nms_thresh)[:post_n]
        return boxes[keep]

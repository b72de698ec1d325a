"""The box branch of Fast R-CNN (Girshick 2015), as Mask R-CNN uses it (paper section 3).

Each sampled RoI's pooled features (F x 7 x 7) go through the box head — two fully connected
layers of 1024 in the paper (torchvision's TwoMLPHead) — and the box predictor, one linear layer
for the K+1 class logits and one for 4(K+1) class-specific box deltas.

Training (`fastrcnn_loss`): softmax cross-entropy over all sampled RoIs (`loss_classifier`) and
smooth L1 between the deltas of each positive RoI's own class and its regression target
(`loss_box_reg`), summed and divided by the number of sampled RoIs, as torchvision does.

Inference (`postprocess_detections`): softmax probabilities, each class's deltas decoded on its
RoI and clipped to the image; per image the background column is dropped, every (RoI, class)
pair is a candidate, scores below `score_thresh` and empty boxes are removed, NMS runs per class
and the top `detections_per_img` remain, sorted by decreasing score.

Shape shorthand:
    R RoIs (all images), K classes, F channels, S pool size, D detections of one image

Naming:
    rois            (R, 5) [image index, x1, y1, x2, y2]
    class_logits    (R, K+1); box_deltas (R, 4(K+1)) as (dx, dy, dw, dh) per class
    labels          (R,) 0 background, 1..K; regression_targets (R, 4)
"""

import numpy as np

from .boxes import batched_nms, clip_boxes, remove_small_boxes
from .losses import smooth_l1, softmax_cross_entropy
from .nn import Linear, Module, ReLU, Sequential, conv_gn_relu
from .transform import size_list


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
    """n x (3x3 conv + GN + ReLU), flatten, FC + ReLU (the GroupNorm paper's "4conv1fc" head,
    Wu & He 2018, section 6.1). (R, F, S, S) -> (R, D)."""

    def __init__(self, in_ch, num_convs, pool_size, dim, groups, rng):
        super().__init__()
        self.add("convs", Sequential(*[conv_gn_relu(in_ch, in_ch, 3, 1, groups, rng) for _ in range(num_convs)]))
        self.add("fc6", Linear(in_ch * pool_size ** 2, dim, rng=rng))
        self.add("relu6", ReLU())

    def forward(self, x):
        return self.relu6(self.fc6(self.convs(x)))

    def backward(self, dout):
        return self.convs.backward(self.fc6.backward(self.relu6.backward(dout)))


def build_box_head(cfg, rng):
    """The box head the config names: two FC layers (box_head_convs = 0) or convs + one FC."""
    if cfg.box_head_convs:
        return ConvFCBoxHead(cfg.fpn_channels, cfg.box_head_convs, cfg.box_pool_size, cfg.box_fc_dim,
                             cfg.gn_groups, rng)
    return BoxHead(cfg.fpn_channels * cfg.box_pool_size ** 2, cfg.box_fc_dim, rng)


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


def fastrcnn_loss(class_logits, box_deltas, labels, regression_targets, reg_weight=1.0):
    """The box branch's two losses and their gradients (torchvision's `fastrcnn_loss`).

    loss_classifier = mean softmax CE over the R RoIs;
    loss_box_reg = sum over positives of smooth L1 (beta 1/9) on their own class's deltas, / R.

    Inputs:
    - class_logits: (R, K+1); box_deltas: (R, 4(K+1))
    - labels: (R,) int, 0 background; regression_targets: (R, 4)
    - reg_weight: multiplies loss_box_reg (1 in the paper)
    Returns: loss_classifier, loss_box_reg (floats), dclass_logits (R, K+1), dbox_deltas (R, 4(K+1))
    """
    r = class_logits.shape[0]
    loss_cls, dclass_logits = softmax_cross_entropy(class_logits, labels)
    pos = np.flatnonzero(labels > 0)
    deltas = box_deltas.reshape(r, box_deltas.shape[1] // 4, 4)             # (R, K+1, 4)
    loss_box, dpos = smooth_l1(deltas[pos, labels[pos]], regression_targets[pos], beta=1.0 / 9,
                               normalizer=max(r, 1))
    if reg_weight != 1.0:
        loss_box, dpos = loss_box * reg_weight, dpos * reg_weight
    dbox_deltas = np.zeros_like(deltas)
    dbox_deltas[pos, labels[pos]] = dpos                   # only the own class's deltas get a gradient
    return float(loss_cls), float(loss_box), dclass_logits, dbox_deltas.reshape(box_deltas.shape)


def softmax(x, axis=-1):
    """Numerically stable softmax along `axis`."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def postprocess_detections(class_logits, box_deltas, rois, num_images, image_sizes, box_coder,
                           score_thresh, nms_thresh, detections_per_img):
    """Per-image detections from the box branch's outputs (torchvision's `postprocess_detections`).

    Inputs:
    - class_logits (R, K+1), box_deltas (R, 4(K+1)), rois (R, 5) of num_images images
    - image_sizes: each image's (h, w) (a list), or one (h, w) for all: boxes are clipped to
      their own image's; box_coder: boxes.BoxCoder
    - score_thresh, nms_thresh, detections_per_img: as Config's box_* fields
    Returns: list of num_images tuples (boxes (D, 4), labels (D,) in 1..K, scores (D,)), each
    sorted by decreasing score
    """
    r, k1 = class_logits.shape
    probs = softmax(class_logits, axis=1)                                     # (R, K+1)
    boxes = box_coder.decode(box_deltas, rois[:, 1:]).reshape(r, k1, 4)
    sizes = size_list(image_sizes, num_images)
    out = []
    for i in range(num_images):
        sel = rois[:, 0] == i
        b = clip_boxes(boxes[sel][:, 1:].reshape(-1, 4), sizes[i])            # drop background
        s = probs[sel][:, 1:].reshape(-1)
        lab = np.tile(np.arange(1, k1), int(sel.sum()))
        # 1) score threshold, 2) drop empty boxes, 3) NMS per class, 4) top-k
        keep = np.flatnonzero(s > score_thresh)
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = remove_small_boxes(b, 1e-2)
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = batched_nms(b, s, lab, nms_thresh)[:detections_per_img]
        out.append((b[keep], lab[keep], s[keep]))
    return out

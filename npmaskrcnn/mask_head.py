"""The mask branch of Mask R-CNN (paper section 3, "Mask Representation", and figure 4).

Each positive RoI is pooled again, at 14 x 14, and the mask head — four 3x3 convs (each with
GroupNorm and ReLU when training from scratch) and a 2x2 stride-2 transposed conv + ReLU —
turns it into a 28 x 28 feature map; the mask predictor, a 1x1 conv, gives one 28 x 28 mask
logit map per class.

Training: the target of an RoI is its ground-truth mask resampled into the RoI's box at 28 x 28
(`project_masks_on_boxes`, RoIAlign on the mask then >= 0.5), and `maskrcnn_loss` is the mean
per-pixel sigmoid BCE on the ground-truth class's channel only: masks of different classes do not
compete (the paper's decoupling of mask and class; softmax across classes is the ablation).

Inference: the mask branch runs on the detections; each detection's own-class probabilities are
pasted into the image inside its box (`paste_masks`) and thresholded at 0.5. An imported
torchvision model pastes as torchvision does (`paste_masks_torchvision`, Config.mask_paste) and
has no norm in its head (Config.mask_head_norm "none": convs with bias).

Shape shorthand:
    P RoIs with a mask, Kc mask channels (K; 1 when class-agnostic; +1 background channel with
    the softmax loss), S pool size (14), M = 2S mask side (28), H x W image size

Naming:
    mask_logits     (P, Kc, M, M); mask_targets (P, M, M) in {0, 1}; mask_probs (P, M, M)
    matched_idxs    (P,) index of each RoI's ground-truth instance in its image
"""

import numpy as np
from numba import njit

from .losses import sigmoid_binary_cross_entropy, softmax_cross_entropy
from .nn import Conv2d, ConvTranspose2d, Linear, Module, ReLU, Sequential, conv_gn_relu
from .roi_ops import roi_align_forward
from .transform import resize_bilinear


class MaskHead(Module):
    """n x (3x3 conv + GN + ReLU), 2x2 stride-2 transposed conv + ReLU. (P, F, S, S) -> (P, C, 2S, 2S).

    norm "none": each conv has a bias and no GN (torchvision's MaskRCNNHeads).
    """

    def __init__(self, in_ch, ch, num_convs, groups, rng, norm="group"):
        super().__init__()
        if norm == "none":
            convs = [Sequential(Conv2d(in_ch if i == 0 else ch, ch, 3, 1, 1, rng=rng), ReLU())
                     for i in range(num_convs)]
        else:
            convs = [conv_gn_relu(in_ch if i == 0 else ch, ch, 3, 1, groups, rng) for i in range(num_convs)]
        self.add("convs", Sequential(*convs))
        self.add("deconv", ConvTranspose2d(ch, ch, 2, 2, rng=rng))
        self.add("relu", ReLU())

    def forward(self, x):
        return self.relu(self.deconv(self.convs(x)))

    def backward(self, dout):
        return self.convs.backward(self.deconv.backward(self.relu.backward(dout)))


class MaskPredictor(Module):
    """A 1x1 conv to one mask logit map per class: (P, C, M, M) -> (P, Kc, M, M)."""

    def __init__(self, ch, out_ch, rng):
        super().__init__()
        self.add("mask_fcn_logits", Conv2d(ch, out_ch, 1, rng=rng, init=0.001))

    def forward(self, x):
        return self.mask_fcn_logits(x)

    def backward(self, dout):
        return self.mask_fcn_logits.backward(dout)


class MLPMaskHead(Module):
    """The paper's MLP ablation (Table 2e): flatten, FC + ReLU, FC + ReLU. (P, F, S, S) -> (P, D).

    Fully connected layers collapse the RoI into a vector, so the mask must be re-created from
    it: the paper finds this 2.1 AP worse than the FCN, which keeps the pixel-to-pixel layout.
    """

    def __init__(self, in_features, dim, rng):
        super().__init__()
        self.add("fc1", Linear(in_features, dim, rng=rng))
        self.add("relu1", ReLU())
        self.add("fc2", Linear(dim, dim, rng=rng))
        self.add("relu2", ReLU())

    def forward(self, x):
        return self.relu2(self.fc2(self.relu1(self.fc1(x))))

    def backward(self, dout):
        return self.fc1.backward(self.relu1.backward(self.fc2.backward(self.relu2.backward(dout))))


class MLPMaskPredictor(Module):
    """An FC layer to Kc x M x M mask logits: (P, D) -> (P, Kc, M, M)."""

    def __init__(self, dim, out_ch, size, rng):
        super().__init__()
        self.out_ch, self.size = out_ch, size
        self.add("mask_fc_logits", Linear(dim, out_ch * size * size, rng=rng, init=0.001))

    def forward(self, x):
        return self.mask_fc_logits(x).reshape(x.shape[0], self.out_ch, self.size, self.size)

    def backward(self, dout):
        return self.mask_fc_logits.backward(dout.reshape(dout.shape[0], -1))


def build_mask_branch(cfg, rng):
    """(head, predictor) the config names: the FCN of figure 4 (mask_head "fcn") or the MLP."""
    if cfg.mask_head == "mlp":
        head = MLPMaskHead(cfg.fpn_channels * cfg.mask_pool_size ** 2, cfg.mask_fc_dim, rng)
        return head, MLPMaskPredictor(cfg.mask_fc_dim, mask_channels(cfg), 2 * cfg.mask_pool_size, rng)
    head = MaskHead(cfg.fpn_channels, cfg.mask_channels, cfg.mask_num_convs, cfg.gn_groups, rng,
                    cfg.mask_head_norm)
    return head, MaskPredictor(cfg.mask_channels, mask_channels(cfg), rng)


def mask_channels(cfg):
    """Kc, the predictor's output channels: K (or 1 class-agnostic), +1 background with softmax."""
    out = 1 if cfg.class_agnostic_masks else cfg.num_classes
    return out + 1 if cfg.mask_loss == "softmax" else out


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, size):
    """Resample each RoI's ground-truth mask into the RoI at size x size (RoIAlign on the mask).

    Inputs: gt_masks (G, H, W) bool, boxes (P, 4), matched_idxs (P,) into gt_masks, size int
    Returns: (P, size, size) float targets in {0, 1} (bilinear average >= 0.5).
    """
    dtype = boxes.dtype
    rois = np.concatenate([matched_idxs[:, None].astype(dtype), boxes], axis=1)
    sampled, _ = roi_align_forward(gt_masks[:, None].astype(dtype), rois, size, spatial_scale=1.0,
                                   sampling_ratio=2, aligned=True)
    return (sampled[:, 0] >= 0.5).astype(dtype)


def mask_targets(gt_masks_per_image, rois, matched_idxs, size):
    """(P, M, M) targets: each RoI's matched ground-truth mask, resampled into the RoI.

    Inputs: gt_masks_per_image list of N (G_i, H, W) bool; rois (P, 5); matched_idxs (P,)
    """
    out = np.zeros((rois.shape[0], size, size), rois.dtype)
    image_idx = rois[:, 0].astype(np.int64)
    for i in np.unique(image_idx):
        sel = np.flatnonzero(image_idx == i)
        out[sel] = project_masks_on_boxes(gt_masks_per_image[i], rois[sel, 1:], matched_idxs[sel], size)
    return out


def maskrcnn_loss(mask_logits, mask_targets, labels, kind="sigmoid", class_agnostic=False):
    """loss_mask and its gradient (torchvision's `maskrcnn_loss`).

    sigmoid (paper): BCE on the ground-truth class's channel only, mean over P*M*M pixels.
    softmax (the paper's ablation, Table 2b): per-pixel CE across [background, classes...], the
    RoI's class inside the mask and background outside, mean over pixels.

    Inputs: mask_logits (P, Kc, M, M), mask_targets (P, M, M), labels (P,) in 1..K
    Returns: loss (float), dmask_logits (P, Kc, M, M)
    """
    p, kc, m, _ = mask_logits.shape
    dlogits = np.zeros_like(mask_logits)
    if kind == "sigmoid":
        ch = np.zeros(p, np.int64) if class_agnostic else labels - 1
        loss, d = sigmoid_binary_cross_entropy(mask_logits[np.arange(p), ch], mask_targets)
        dlogits[np.arange(p), ch] = d                      # the other classes' channels get none
        return float(loss), dlogits
    cls = np.ones(p, np.int64) if class_agnostic else labels
    pix_labels = (mask_targets > 0.5) * cls[:, None, None]                     # (P, M, M)
    flat = mask_logits.transpose(0, 2, 3, 1).reshape(-1, kc)
    loss, d = softmax_cross_entropy(flat, pix_labels.reshape(-1))
    dlogits[...] = d.reshape(p, m, m, kc).transpose(0, 3, 1, 2)
    return float(loss), dlogits


def mask_probs(mask_logits, labels, kind="sigmoid", class_agnostic=False):
    """Probability map of each detection's own class: (D, Kc, M, M) -> (D, M, M)."""
    d = mask_logits.shape[0]
    if kind == "sigmoid":
        ch = np.zeros(d, np.int64) if class_agnostic else labels - 1
        x = mask_logits[np.arange(d), ch]
        return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))
    # softmax: a pixel belongs to the mask when its own class wins the per-pixel argmax, so
    # return p_k / (p_k + max_{j != k} p_j), which is > 0.5 exactly then (with 4 channels p_k
    # itself can win while staying below 0.5)
    ch = np.ones(d, np.int64) if class_agnostic else labels
    e = np.exp(mask_logits - mask_logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    own = p[np.arange(d), ch]
    p[np.arange(d), ch] = -1.0
    return own / (own + p.max(axis=1))


def paste_masks(mask_probs, boxes, image_size, threshold=0.5, mode="subpixel"):
    """Paste M x M mask probabilities into the image inside their boxes and threshold them.

    mode "torchvision": `paste_masks_torchvision` thresholded (>= threshold); "subpixel" below.

    Mask cell (i, j) is centred at (x1 + (j + 0.5) w / M, y1 + (i + 0.5) h / M), the same points
    `project_masks_on_boxes` sampled; every image pixel centre inside the box is bilinearly
    interpolated from them (edge cells extend to the box edge), pixels outside the box are 0.
    `paste_masks_reference` is that in numpy, box by box; this function computes the same
    booleans, bit for bit, with a compiled loop (an optimisation: 100 masks in about 1 ms instead
    of 10-17 ms, most of it Python overhead per box).

    Inputs: mask_probs (D, M, M), boxes (D, 4) finite (within +-1e9), image_size (h, w)
    Returns: (D, h, w) bool
    """
    if mode == "torchvision":
        return paste_masks_torchvision(mask_probs, boxes, image_size) >= threshold
    if mode != "subpixel":
        raise ValueError(f"mode: expected 'subpixel' or 'torchvision', got {mode!r}")
    probs, boxes, (h, w) = _check_paste_inputs(mask_probs, boxes, image_size)
    if probs.dtype not in (np.float32, np.float64):
        probs = probs.astype(np.float64)
    return _paste_subpixel_kernel(np.ascontiguousarray(probs), np.ascontiguousarray(boxes, np.float64),
                                  h, w, float(threshold))


def _check_paste_inputs(mask_probs, boxes, image_size):
    """(mask_probs, boxes, (h, w)) as arrays and ints; ValueError naming the argument whose shape
    or values do not fit (the compiled loop must not read outside its arrays)."""
    probs, boxes = np.asarray(mask_probs), np.asarray(boxes)
    if probs.ndim != 3 or probs.shape[1] != probs.shape[2] or probs.shape[1] < 1:
        raise ValueError(f"mask_probs: expected (D, M, M) with M >= 1, got shape {probs.shape}")
    if boxes.shape != (len(probs), 4):
        raise ValueError(f"boxes: expected ({len(probs)}, 4) to match mask_probs, got shape {boxes.shape}")
    if not (np.isfinite(boxes).all() and (np.abs(boxes) <= 1e9).all()):
        raise ValueError("boxes: expected finite coordinates within +-1e9 pixels, got "
                         f"{boxes[~(np.isfinite(boxes) & (np.abs(boxes) <= 1e9)).all(axis=1)][:3].tolist()}")
    h, w = (int(v) for v in image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size: expected (h, w) >= 1, got {tuple(image_size)}")
    return probs, boxes, (h, w)


def paste_masks_reference(mask_probs, boxes, image_size, threshold=0.5):
    """`paste_masks` (mode "subpixel") written out in numpy, one box at a time: the readable
    formulation, which the compiled loop is tested equal to."""
    mask_probs, boxes, (h, w) = _check_paste_inputs(mask_probs, boxes, image_size)
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


@njit(cache=True)
def _paste_subpixel_kernel(mask_probs, boxes, h, w, threshold):
    """paste_masks_reference as one compiled loop over boxes, rows and columns, with the same
    float64 operations in the same order (hence the same booleans); each column's interpolation
    (u0, u1, fu, inside) is computed once per box."""
    d, m = mask_probs.shape[0], mask_probs.shape[2]
    out = np.zeros((d, h, w), dtype=np.bool_)
    cu0, cu1 = np.empty(w, np.int64), np.empty(w, np.int64)
    cfu, cin = np.empty(w), np.empty(w, np.bool_)
    for i in range(d):
        x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        sx, sy = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        for c in range(c0, c1):
            xc = c + 0.5
            u = min(max((xc - x1) * m / sx - 0.5, 0.0), m - 1.0)
            u0 = min(int(u), m - 2) if m > 1 else 0
            cu0[c], cu1[c], cfu[c] = u0, min(u0 + 1, m - 1), u - u0
            cin[c] = xc >= x1 and xc <= x2
        for r in range(r0, r1):
            yc = r + 0.5
            if yc < y1 or yc > y2:
                continue
            v = min(max((yc - y1) * m / sy - 0.5, 0.0), m - 1.0)
            v0 = min(int(v), m - 2) if m > 1 else 0
            fv = v - v0
            v1 = min(v0 + 1, m - 1)
            for c in range(c0, c1):
                if not cin[c]:
                    continue
                u0, u1, fu = cu0[c], cu1[c], cfu[c]
                a = mask_probs[i, v0, u0] * (1 - fv) + mask_probs[i, v1, u0] * fv
                b = mask_probs[i, v0, u1] * (1 - fv) + mask_probs[i, v1, u1] * fv
                out[i, r, c] = a * (1 - fu) + b * fu >= threshold
    return out


def paste_masks_torchvision(mask_probs, boxes, image_size, padding=1):
    """Paste M x M mask probabilities as torchvision's `paste_masks_in_image` does; soft output.

    1) pad the mask with `padding` zeros per side and grow the box about its centre by the same
       factor (M + 2 padding) / M, in float32; 2) truncate the corners to integers (toward zero,
       as .to(int64)); 3) resize the padded mask bilinearly (align_corners=False) to the inclusive
       box, w = max(x2 - x1 + 1, 1) by h = max(y2 - y1 + 1, 1); 4) copy the part inside the image.

    Inputs: mask_probs (D, M, M), boxes (D, 4) in the image's pixels, image_size (h, w)
    Returns: (D, h, w) probabilities in mask_probs' dtype, 0 outside each box
    """
    h, w = image_size
    d, m = mask_probs.shape[0], mask_probs.shape[-1]
    dtype = mask_probs.dtype if mask_probs.dtype in (np.float32, np.float64) else np.float32
    out = np.zeros((d, h, w), dtype)
    if d == 0:
        return out
    # 1) expand_masks and expand_boxes (scale = (M + 2 pad) / M in float32, as torchvision)
    padded = np.pad(np.asarray(mask_probs, dtype), ((0, 0), (padding, padding), (padding, padding)))
    scale = np.float32(m + 2 * padding) / np.float32(m)
    b = np.asarray(boxes, np.float32)
    half = np.float32(0.5)
    w_half, h_half = (b[:, 2] - b[:, 0]) * half * scale, (b[:, 3] - b[:, 1]) * half * scale
    x_c, y_c = (b[:, 2] + b[:, 0]) * half, (b[:, 3] + b[:, 1]) * half
    # 2) integer corners, truncated toward zero
    grown = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1).astype(np.int64)
    for i in range(d):
        x1, y1, x2, y2 = (int(v) for v in grown[i])
        bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        # 3) the padded mask at the box's size, 4) the part that lies in the image
        resized = resize_bilinear(padded[i][None], (bh, bw))[0]
        c0, c1, r0, r1 = max(x1, 0), min(x2 + 1, w), max(y1, 0), min(y2 + 1, h)
        if c1 > c0 and r1 > r0:
            out[i, r0:r1, c0:c1] = resized[r0 - y1:r1 - y1, c0 - x1:c1 - x1]
    return out

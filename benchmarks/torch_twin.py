"""A PyTorch twin of npmaskrcnn's differentiable network, for cross-checks and speed comparisons.

Same architecture and the same parameter names as `npmaskrcnn.model.MaskRCNN`, so
`twin.load_state_dict(torch_state(model))` copies the NumPy model's weights in by name. RoIAlign is
written here in PyTorch (torchvision is not installed) with torchvision's `roi_align` semantics,
and the FPN level of each RoI comes from `npmaskrcnn.roi_ops.assign_fpn_levels`. Everything
without a gradient — anchors, matching, sampling, proposals, NMS, mask targets — reuses the
project's NumPy code through the NumPy model's own RPN / RoIHeads objects, so that only the
differentiable network differs between the two sides.

Shape shorthand:
    N images, F FPN channels, A anchors per location, R RoIs, P mask RoIs, K classes, S pool size.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from npmaskrcnn.mask_head import mask_targets
from npmaskrcnn.roi_ops import assign_fpn_levels
from npmaskrcnn.rpn import flatten_head_outputs  # noqa: F401  (the order the twin reproduces)


def gn(groups, ch):
    return nn.GroupNorm(min(groups, ch), ch, eps=1e-5)


class BasicBlock(nn.Module):
    def __init__(self, in_ch, out_ch, stride, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.gn1 = gn(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.gn2 = gn(groups, out_ch)
        self.has_shortcut = stride != 1 or in_ch != out_ch
        if self.has_shortcut:
            self.down_conv = nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)
            self.down_gn = gn(groups, out_ch)

    def forward(self, x):
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        short = self.down_gn(self.down_conv(x)) if self.has_shortcut else x
        return F.relu(out + short)


class ResNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.stem_channels, 7, 2, 3, bias=False),
                                  gn(cfg.gn_groups, cfg.stem_channels), nn.ReLU())
        in_ch = cfg.stem_channels
        for i, (ch, n) in enumerate(zip(cfg.stage_channels, cfg.stage_blocks)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_ch if j == 0 else ch, ch, stride if j == 0 else 1, cfg.gn_groups)
                      for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = ch

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats


class FPN(nn.Module):
    def __init__(self, in_channels, out_ch):
        super().__init__()
        for k, c in zip(range(2, 6), in_channels):
            setattr(self, f"inner{k}", nn.Conv2d(c, out_ch, 1))
            setattr(self, f"layer{k}", nn.Conv2d(out_ch, out_ch, 3, 1, 1))

    def forward(self, feats):
        last = self.inner5(feats[3])
        outs = [self.layer5(last)]
        for k in (4, 3, 2):
            last = getattr(self, f"inner{k}")(feats[k - 2]) + F.interpolate(last, scale_factor=2, mode="nearest")
            outs.insert(0, getattr(self, f"layer{k}")(last))
        outs.append(F.max_pool2d(outs[-1], 1, 2, 0))
        return outs


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.body = ResNet(cfg)
        self.fpn = FPN(cfg.stage_channels, cfg.fpn_channels)

    def forward(self, x):
        return self.fpn(self.body(x))


class RPNHead(nn.Module):
    def __init__(self, ch, a):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)
        self.cls_logits = nn.Conv2d(ch, a, 1)
        self.bbox_pred = nn.Conv2d(ch, 4 * a, 1)

    def forward(self, p):
        t = F.relu(self.conv(p))
        return self.cls_logits(t), self.bbox_pred(t)


class RPN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.head = RPNHead(cfg.fpn_channels, len(cfg.anchor_ratios))


class BoxHead(nn.Module):
    def __init__(self, d_in, d):
        super().__init__()
        self.fc6 = nn.Linear(d_in, d)
        self.fc7 = nn.Linear(d, d)

    def forward(self, x):
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class BoxPredictor(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.cls_score = nn.Linear(d, k + 1)
        self.bbox_pred = nn.Linear(d, 4 * (k + 1))

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    def __init__(self, in_ch, ch, num_convs, groups):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Sequential(nn.Conv2d(in_ch if i == 0 else ch, ch, 3, 1, 1, bias=False),
                                                   gn(groups, ch), nn.ReLU()) for i in range(num_convs)])
        self.deconv = nn.ConvTranspose2d(ch, ch, 2, 2)

    def forward(self, x):
        return F.relu(self.deconv(self.convs(x)))


class MaskPredictor(nn.Module):
    def __init__(self, ch, out_ch):
        super().__init__()
        self.mask_fcn_logits = nn.Conv2d(ch, out_ch, 1)

    def forward(self, x):
        return self.mask_fcn_logits(x)


class RoIHeads(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        k = cfg.num_classes
        self.box_head = BoxHead(cfg.fpn_channels * cfg.box_pool_size ** 2, cfg.box_fc_dim)
        self.box_predictor = BoxPredictor(cfg.box_fc_dim, k)
        out = (1 if cfg.class_agnostic_masks else k) + (1 if cfg.mask_loss == "softmax" else 0)
        self.mask_head = MaskHead(cfg.fpn_channels, cfg.mask_channels, cfg.mask_num_convs, cfg.gn_groups)
        self.mask_predictor = MaskPredictor(cfg.mask_channels, out)


class TwinMaskRCNN(nn.Module):
    """backbone / rpn.head / roi_heads.{box_head, box_predictor, mask_head, mask_predictor}, named
    as in npmaskrcnn."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.pooler != "roi_align":
            raise ValueError("the twin implements the default pooler (aligned RoIAlign, avg) only")
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.rpn = RPN(cfg)
        self.roi_heads = RoIHeads(cfg)

    def pool(self, features, rois, size):
        """Multi-level RoIAlign of rois (R, 5) numpy from features [p2..p5] (torch)."""
        cfg = self.cfg
        levels = list(cfg.pooler_levels)
        lv = assign_fpn_levels(rois[:, 1:], levels[0], levels[-1], cfg.canonical_size, cfg.canonical_level)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        rois_t = torch.from_numpy(np.ascontiguousarray(rois, dtype=np.float32))
        for k in levels:
            idx = np.flatnonzero(lv == k)
            if idx.size == 0:
                continue
            it = torch.from_numpy(idx)
            out = out.index_copy(0, it, roi_align(features[k - 2], rois_t[it], size, 1.0 / 2 ** k,
                                                  cfg.pooler_sampling_ratio, aligned=True))
        return out


def roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True):
    """torchvision.ops.roi_align (avg) in plain PyTorch: differentiable w.r.t. features.

    features (N, C, H, W), rois (R, 5) float tensor [b, x1, y1, x2, y2] -> (R, C, S, S).
    Sample points and their bilinear taps follow torchvision's CPU kernel; samples outside
    [-1, H] x [-1, W] read 0 and still count in the average. Requires sampling_ratio > 0.
    """
    if sampling_ratio <= 0:
        raise ValueError("this twin supports a fixed sampling_ratio > 0 only")
    n, c, h, w = features.shape
    r = rois.shape[0]
    s, g = output_size, sampling_ratio
    if r == 0:
        return features.new_zeros((0, c, s, s))
    dtype = features.dtype
    rois = rois.to(dtype)
    off = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=dtype)
    x1, y1 = rois[:, 1] * scale - off, rois[:, 2] * scale - off
    x2, y2 = rois[:, 3] * scale - off, rois[:, 4] * scale - off
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bw, bh = rw / s, rh / s
    p = torch.arange(s, dtype=dtype)[None, :, None]
    i = torch.arange(g, dtype=dtype)[None, None, :]
    # same operation order as torchvision: start + p * bin + (i + .5) * bin / grid
    ys = ((y1[:, None, None] + p * bh[:, None, None]) + (i + 0.5) * bh[:, None, None] / g).reshape(r, s * g)
    xs = ((x1[:, None, None] + p * bw[:, None, None]) + (i + 0.5) * bw[:, None, None] / g).reshape(r, s * g)

    def taps(v, size):
        valid = (v >= -1.0) & (v <= size)
        v = v.clamp(min=0.0)
        low = v.floor().long()
        edge = low >= size - 1
        low = torch.where(edge, torch.full_like(low, size - 1), low)
        high = torch.where(edge, low, low + 1)
        frac = torch.where(edge, torch.zeros_like(v), v - low.to(dtype))
        valid = valid.to(dtype)
        return low, high, (1 - frac) * valid, frac * valid

    yl, yh, wyl, wyh = taps(ys, h)                       # (R, S*G)
    xl, xh, wxl, wxh = taps(xs, w)
    # gather rows of the (N*H*W, C) map with index_select: its backward is an index_add,
    # much faster on CPU than the accumulate-index_put of advanced indexing
    b = rois[:, 0].long()
    f = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    out = 0
    for yy, wy in ((yl, wyl), (yh, wyh)):
        row = (b[:, None] * h + yy) * w                  # (R, S*G)
        for xx, wx in ((xl, wxl), (xh, wxh)):
            idx = (row[:, :, None] + xx[:, None, :]).reshape(-1)
            v = f.index_select(0, idx).reshape(r, s * g, s * g, c)
            out = out + v * (wy[:, :, None] * wx[:, None, :])[..., None]
    out = out.reshape(r, s, g, s, g, c).sum(dim=(2, 4)) / (g * g)
    return out.permute(0, 3, 1, 2).contiguous()


def torch_state(np_model):
    """The NumPy model's parameters as a dict of torch tensors (copies), keyed by dotted name."""
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in np_model.named_params()}


def load_from_numpy(twin, np_model):
    """Copy every parameter of the NumPy model into the twin; names and shapes must match exactly."""
    own = dict(twin.named_parameters())
    src = torch_state(np_model)
    missing, unexpected = sorted(set(own) - set(src)), sorted(set(src) - set(own))
    if missing or unexpected:
        raise KeyError(f"twin and numpy model differ: missing in numpy {missing}, missing in twin {unexpected}")
    with torch.no_grad():
        for k, p in own.items():
            if tuple(p.shape) != tuple(src[k].shape):
                raise ValueError(f"{k}: twin {tuple(p.shape)} vs numpy {tuple(src[k].shape)}")
            p.copy_(src[k])
    return twin


def preprocess(np_model, images):
    x, image_size = np_model.preprocess(images)
    return torch.from_numpy(x), image_size


def rpn_outputs(twin, features):
    """Head on every level -> objectness (N, T), deltas (N, T, 4) torch, level shapes (as flatten_head_outputs)."""
    logits_l, deltas_l, shapes = [], [], []
    for p in features:
        lg, dl = twin.rpn.head(p)
        n, a, h, w = lg.shape
        shapes.append(tuple(lg.shape))
        logits_l.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))
        deltas_l.append(dl.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
    return torch.cat(logits_l, 1), torch.cat(deltas_l, 1), shapes


def _smooth_l1_sum(pred, target, beta):
    d = (pred - target).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum()


def training_losses(twin, np_model, images, targets, rng, replay=None, record=None):
    """The five training losses of the twin, with the NumPy model's non-differentiable steps.

    `np_model` (an npmaskrcnn MaskRCNN in training mode) supplies anchors, proposals (from the
    twin's own detached RPN outputs), anchor and RoI sampling (with `rng`), and mask targets.
    `replay` (a dict from a NumPy forward recorded by `record_numpy_forward`) makes the twin use
    exactly the NumPy run's proposals, anchor labels and sampled RoIs, for gradient comparisons.
    Returns a dict of 0-d tensors.
    """
    from npmaskrcnn.model import check_targets
    cfg = twin.cfg
    x, image_size = preprocess(np_model, images)
    targets = check_targets(targets, x.shape[0], image_size, cfg.num_classes)
    features = twin.backbone(x)
    objectness, deltas, shapes = rpn_outputs(twin, features)
    rpn = np_model.rpn
    anchors_per_level = rpn.anchors([s[2:] for s in shapes])
    anchors = np.concatenate(anchors_per_level, 0)
    counts = [a.shape[0] for a in anchors_per_level]
    # proposals (no gradient)
    if replay is not None:
        proposals = replay["proposals"]
    else:
        obj_np, del_np = objectness.detach().numpy(), deltas.detach().numpy()
        proposals = [rpn.propose(obj_np[i], del_np[i], anchors, counts, image_size) for i in range(x.shape[0])]
    # RPN targets and losses (same order of rng draws as RPN.losses)
    if replay is not None:
        labels, reg, pos, neg = replay["rpn"]
    else:
        labels, reg = zip(*[rpn.assign_targets(anchors, t["boxes"].astype(anchors.dtype)) for t in targets])
        pos, neg = rpn.sampler(list(labels), rng)
        labels, reg, pos, neg = np.stack(labels), np.stack(reg), np.stack(pos), np.stack(neg)
    sampled = torch.from_numpy(pos | neg).to(objectness.dtype)
    num_sampled = max(int((pos | neg).sum()), 1)
    lab_t = torch.from_numpy(labels == 1).to(objectness.dtype)
    loss_obj = (F.binary_cross_entropy_with_logits(objectness, lab_t, reduction="none") * sampled).sum() / sampled.sum()
    pos_t = torch.from_numpy(pos)
    loss_rpn_box = _smooth_l1_sum(deltas[pos_t], torch.from_numpy(reg[pos]).to(deltas.dtype), 1.0 / 9) / num_sampled
    # RoI sampling (no gradient)
    rh = np_model.roi_heads
    if replay is not None:
        rois, cls_labels, reg_targets, matched, mask_idx = replay["roi"]
    else:
        rois, cls_labels, reg_targets, matched = rh.sample_proposals(proposals, targets, rng)
    box_feats = twin.pool(features[:4], rois, cfg.box_pool_size)
    class_logits, box_deltas = twin.roi_heads.box_predictor(twin.roi_heads.box_head(box_feats))
    r = rois.shape[0]
    lab = torch.from_numpy(cls_labels)
    loss_cls = F.cross_entropy(class_logits, lab)
    posi = np.flatnonzero(cls_labels > 0)
    d = box_deltas.reshape(r, -1, 4)[torch.from_numpy(posi), lab[posi]]
    loss_box = _smooth_l1_sum(d, torch.from_numpy(reg_targets[posi]), 1.0 / 9) / max(r, 1)
    if replay is None:
        mask_idx = rh.select_mask_rois(rois, cls_labels, rng)
    loss_mask = box_deltas.new_zeros(())
    out = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box, "loss_classifier": loss_cls,
           "loss_box_reg": loss_box}
    if mask_idx.size:
        mrois = rois[mask_idx]
        mask_feats = twin.pool(features[:4], mrois, cfg.mask_pool_size)
        mask_logits = twin.roi_heads.mask_predictor(twin.roi_heads.mask_head(mask_feats))
        mt = mask_targets([t["masks"] for t in targets], mrois, matched[mask_idx], mask_logits.shape[-1])
        if cfg.mask_loss != "sigmoid":
            raise ValueError("the twin implements the sigmoid mask loss only")
        ch = np.zeros(mask_idx.size, np.int64) if cfg.class_agnostic_masks else cls_labels[mask_idx] - 1
        sel = mask_logits[torch.arange(mask_idx.size), torch.from_numpy(ch)]
        loss_mask = F.binary_cross_entropy_with_logits(sel, torch.from_numpy(mt))
    out["loss_mask"] = loss_mask
    return out


def record_numpy_forward(np_model):
    """Wrap the NumPy model's RPN / RoI sampling so that its next forward is recorded for replay.

    Returns (replay dict, undo function).
    """
    rec = {"proposals": []}
    rpn, rh = np_model.rpn, np_model.roi_heads
    orig = (rpn.propose, rpn.sampler, rpn.assign_targets, rh.sample_proposals, rh.select_mask_rois)
    names = [(rpn, "propose"), (rpn, "sampler"), (rpn, "assign_targets"), (rh, "sample_proposals"),
             (rh, "select_mask_rois")]
    saved = [(obj, name, obj.__dict__.get(name)) for obj, name in names]
    labels_reg = []

    def propose(*a, **k):
        p = orig[0](*a, **k)
        rec["proposals"].append(p)
        return p

    def assign_targets(*a, **k):
        out = orig[2](*a, **k)
        labels_reg.append(out)
        return out

    def sampler(labels, rng):
        pos, neg = orig[1](labels, rng)
        lab, reg = zip(*labels_reg)
        rec["rpn"] = (np.stack(lab), np.stack(reg), np.stack(pos), np.stack(neg))
        return pos, neg

    def sample_proposals(*a, **k):
        out = orig[3](*a, **k)
        rec["roi_partial"] = out
        return out

    def select_mask_rois(*a, **k):
        idx = orig[4](*a, **k)
        rec["roi"] = tuple(rec.pop("roi_partial")) + (idx,)
        return idx

    rpn.propose, rpn.sampler, rpn.assign_targets = propose, sampler, assign_targets
    rh.sample_proposals, rh.select_mask_rois = sample_proposals, select_mask_rois

    def undo():
        for obj, name, old in saved:                    # restore instance attributes, drop wrappers
            if old is None:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = old
    return rec, undo


@torch.no_grad()
def predict(twin, np_model, image):
    """Inference of the twin on one image, with npmaskrcnn's post-processing (detections as dicts)."""
    from npmaskrcnn.boxes import batched_nms, clip_boxes, remove_small_boxes
    from npmaskrcnn.mask_head import mask_probs, paste_masks
    cfg = twin.cfg
    was = np_model.training
    np_model.eval()
    try:
        x, image_size = preprocess(np_model, image)
        features = twin.backbone(x)
        objectness, deltas, shapes = rpn_outputs(twin, features)
        anchors_per_level = np_model.rpn.anchors([s[2:] for s in shapes])
        anchors = np.concatenate(anchors_per_level, 0)
        counts = [a.shape[0] for a in anchors_per_level]
        props = np_model.rpn.propose(objectness[0].numpy(), deltas[0].numpy(), anchors, counts, image_size)
        rois = np.concatenate([np.zeros((props.shape[0], 1), np.float32), props.astype(np.float32)], 1)
        cl, bd = twin.roi_heads.box_predictor(twin.roi_heads.box_head(twin.pool(features[:4], rois, cfg.box_pool_size)))
        probs = torch.softmax(cl, 1).numpy()
        rh = np_model.roi_heads
        boxes = rh.box_coder.decode(bd.numpy(), rois[:, 1:]).reshape(rois.shape[0], -1, 4)
        boxes = clip_boxes(boxes.reshape(-1, 4), image_size).reshape(boxes.shape)
        b, s = boxes[:, 1:].reshape(-1, 4), probs[:, 1:].reshape(-1)
        lab = np.tile(np.arange(1, cfg.num_classes + 1), rois.shape[0])
        keep = np.flatnonzero(s > cfg.box_score_thresh)
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = remove_small_boxes(b, 1e-2)
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = batched_nms(b, s, lab, cfg.box_nms_thresh)[:cfg.detections_per_img]
        b, s, lab = b[keep], s[keep], lab[keep]
        masks = np.zeros((0,) + tuple(image_size), bool)
        if len(b):
            drois = np.concatenate([np.zeros((len(b), 1), np.float32), b.astype(np.float32)], 1)
            ml = twin.roi_heads.mask_predictor(twin.roi_heads.mask_head(
                twin.pool(features[:4], drois, cfg.mask_pool_size))).numpy()
            masks = paste_masks(mask_probs(ml, lab, cfg.mask_loss, cfg.class_agnostic_masks), b,
                                image_size, cfg.mask_threshold)
        return {"boxes": b, "labels": lab, "scores": s, "masks": masks}
    finally:
        np_model.train(was)

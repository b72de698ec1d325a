"""Model summary: parameters and FLOPs per stage, counted from the shapes that actually flow.

FLOPs are counted analytically, 2 per multiply-add, for the layers that hold nearly all the
work (convolutions, transposed convolutions, fully connected layers); GroupNorm, ReLU, pooling,
RoIAlign, NMS and box decoding are left out, as in the usual detection FLOP tables. The counter
runs each stage once on zeros with every Conv2d / ConvTranspose2d / Linear `forward` wrapped to
record its input and output shapes, so the numbers follow the real code path and cannot drift
from the layer definitions. Nothing in `nn.py` changes: the wrappers are instance attributes,
removed afterwards.

The RoI heads' cost depends on how many RoIs reach them, so it is counted at the inference
budget of the config: the box branch on `rpn_post_nms_top_n_test` proposals, the mask branch on
`detections_per_img` detections (the paper runs the mask branch on the top 100 boxes).

Shape shorthand:
    N images (1 here), C input channels, F output channels, k kernel size, Ho x Wo output size,
    R RoIs, D detections.

Naming:
    stage     one of STAGES, a dotted module path inside MaskRCNN
    flops     2 x multiply-adds of one image
"""

from collections import OrderedDict

import numpy as np

from .nn import Conv2d, ConvTranspose2d, Linear

STAGES = ("backbone.body", "backbone.fpn", "rpn", "roi_heads.box_head",
          "roi_heads.box_predictor", "roi_heads.mask_head", "roi_heads.mask_predictor")


def layer_flops(module, x_shape, out_shape):
    """FLOPs (2 x multiply-adds, bias ignored) of one call of a conv / transposed conv / linear.

    Inputs:
    - module: Conv2d, ConvTranspose2d or Linear
    - x_shape: its input's shape; out_shape: its output's shape
    Returns:
    - flops: int
    """
    w = module.params["weight"]
    if isinstance(module, Conv2d):
        # each of the N*F*Ho*Wo outputs is a dot product of length C*k*k; w is (F, C, k, k)
        return 2 * int(np.prod(out_shape)) * int(np.prod(w.shape[1:]))
    if isinstance(module, ConvTranspose2d):
        # each of the N*C*H*W inputs is scattered into F*k*k outputs; w is (C, F, k, k)
        return 2 * int(np.prod(x_shape)) * int(np.prod(w.shape[1:]))
    # Linear: (N, D_in) @ (D_in, D_out)
    return 2 * int(np.prod(out_shape[:-1])) * int(w.shape[0]) * int(w.shape[1])


def _module_at(model, dotted):
    """Inputs: a module and a dotted path ("roi_heads.box_head"). Returns: the child there."""
    m = model
    for part in dotted.split("."):
        m = m.children[part]
    return m


def params_per_stage(model):
    """Parameter counts of each stage.

    Inputs:
    - model: MaskRCNN
    Returns:
    - counts: OrderedDict stage -> int (STAGES cover every parameter of the model)
    """
    return OrderedDict((s, _module_at(model, s).num_params()) for s in STAGES)


class _FlopCounter:
    """Context manager: wraps the forward of every counted layer under `root`, sums its FLOPs."""

    def __init__(self, root):
        self.layers = [m for m in root.modules() if isinstance(m, (Conv2d, ConvTranspose2d, Linear))]
        self.flops = 0

    def __enter__(self):
        for m in self.layers:
            def wrapped(x, _m=m, _forward=m.forward):
                out = _forward(x)
                self.flops += layer_flops(_m, x.shape, out.shape)
                return out
            m.forward = wrapped                       # instance attribute shadows the method
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            del m.forward
        return False


def flops_per_stage(model):
    """FLOPs of each stage for one image at the config's size (see the module docstring).

    Inputs:
    - model: MaskRCNN
    Returns:
    - flops: OrderedDict stage -> int
    - budget: dict with the RoI counts assumed for the heads: "rois" (R), "detections" (D)
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    dtype = model.dtype
    s = cfg.image_size
    r, d = cfg.rpn_post_nms_top_n_test, cfg.detections_per_img
    f = cfg.fpn_channels
    flops = OrderedDict()
    try:
        x = np.zeros((1, 3, s, s), dtype)
        with _FlopCounter(model.backbone.body) as c:
            feats = model.backbone.body(x)                                 # [c2..c5]
        flops["backbone.body"] = c.flops
        with _FlopCounter(model.backbone.fpn) as c:
            features = model.backbone.fpn(feats)                           # [p2..p6]
        flops["backbone.fpn"] = c.flops
        with _FlopCounter(model.rpn) as c:
            for p in features:                                             # the head runs per level
                model.rpn.head(p)
        flops["rpn"] = c.flops
        heads = model.roi_heads
        with _FlopCounter(heads.box_head) as c:
            h = heads.box_head(np.zeros((r, f, cfg.box_pool_size, cfg.box_pool_size), dtype))
        flops["roi_heads.box_head"] = c.flops
        with _FlopCounter(heads.box_predictor) as c:
            heads.box_predictor(h)
        flops["roi_heads.box_predictor"] = c.flops
        with _FlopCounter(heads.mask_head) as c:
            m = heads.mask_head(np.zeros((d, f, cfg.mask_pool_size, cfg.mask_pool_size), dtype))
        flops["roi_heads.mask_head"] = c.flops
        with _FlopCounter(heads.mask_predictor) as c:
            heads.mask_predictor(m)
        flops["roi_heads.mask_predictor"] = c.flops
    finally:
        model.train(was_training)
    return flops, {"rois": r, "detections": d}


def _human(n):
    """Inputs: a count. Returns: it with a k / M / G suffix, 2 decimals."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return str(int(n))


def format_summary(model):
    """A text table of parameters and FLOPs per stage.

    Inputs:
    - model: MaskRCNN
    Returns:
    - text: one row per stage, a total row, and the assumptions of the FLOP count
    """
    params = params_per_stage(model)
    flops, budget = flops_per_stage(model)
    cfg = model.config
    total_p, total_f = sum(params.values()), sum(flops.values())
    width = max(len(s) for s in STAGES) + 2
    per_roi = {"roi_heads.box_head": budget["rois"], "roi_heads.box_predictor": budget["rois"],
               "roi_heads.mask_head": budget["detections"], "roi_heads.mask_predictor": budget["detections"]}
    lines = [f"MaskRCNN: {cfg.num_classes} classes ({', '.join(model.class_names)}), "
             f"{cfg.image_size}x{cfg.image_size} images, pooler {cfg.pooler}",
             "",
             f"{'stage':<{width}}{'params':>12}{'':>9}{'FLOPs':>16}{'':>9}{'per RoI':>10}"]
    for s in STAGES:
        each = _human(flops[s] / per_roi[s]) if s in per_roi else ""
        lines.append(f"{s:<{width}}{params[s]:>12,}{_human(params[s]):>9}"
                     f"{flops[s]:>16,}{_human(flops[s]):>9}{each:>10}")
    lines.append(f"{'total':<{width}}{total_p:>12,}{_human(total_p):>9}{total_f:>16,}{_human(total_f):>9}")
    lines.append("")
    lines.append(f"FLOPs = 2 x multiply-adds of convs, transposed convs and linears for one "
                 f"{cfg.image_size}x{cfg.image_size} image;")
    lines.append(f"box branch on {budget['rois']} proposals (rpn_post_nms_top_n_test), mask branch "
                 f"on {budget['detections']} detections (detections_per_img, an upper bound).")
    return "\n".join(line.rstrip() for line in lines)

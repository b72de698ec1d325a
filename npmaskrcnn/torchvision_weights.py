"""torchvision's Mask R-CNN weights in and out: `maskrcnn_resnet50_fpn` state dicts <-> our names.

An imported model is an ordinary checkpoint of `Config.torchvision_r50_fpn()`: the same code the
shapes models run, with torchvision's options selected (Bottleneck ResNet-50 with frozen BN,
torchvision's anchors, unaligned RoIAlign, the 1024-wide box head, the mask head without norm,
torchvision's paste and input transform). Every tensor maps to one parameter by name:

    torchvision                                   npmaskrcnn
    backbone.body.conv1 / bn1                     backbone.body.stem.0 / stem.1
    backbone.body.layer{L}.{b}.*                  the same (resnet.Bottleneck uses its names)
    backbone.fpn.inner_blocks.{i}.0               backbone.fpn.inner{i+2}
    backbone.fpn.layer_blocks.{i}.0               backbone.fpn.layer{i+2}
    rpn.head.conv.0.0                             rpn.head.conv
    roi_heads.mask_head.{i}.0                     roi_heads.mask_head.convs.{i}.0
    roi_heads.mask_predictor.conv5_mask           roi_heads.mask_head.deconv
    everything else (rpn.head.cls_logits, roi_heads.box_head.fc6, box_predictor.*, ...): the same

The legacy spellings torchvision still loads (`backbone.fpn.inner_blocks.{i}.weight`,
`rpn.head.conv.weight`, `roi_heads.mask_head.mask_fcn{i+1}.weight`) are accepted, and BatchNorm's
`num_batches_tracked` counters dropped. The mask predictor has 91 channels there, channel 0 (the
background) never read; here it has one per class (label - 1), so import drops channel 0 and
export writes zeros into it.

eps: a state dict does not store it. torchvision's COCO weights run with eps = 0
(`overwrite_eps`), and their file has no `num_batches_tracked` (FrozenBatchNorm2d); a model built
with `weights=None` has plain BatchNorm2d layers (eps 1e-5, counters in the state dict). So
`bn_eps=None` picks 0.0 without counters and 1e-5 with them; pass it explicitly otherwise.

torch is imported only by `read_state_dict` and `write_state_dict`; the mapping itself is NumPy.

Naming:
    ours / theirs   a parameter name here / in a torchvision state dict
"""

import re

import numpy as np

FROZEN_BN_EPS = 0.0        # torchvision's COCO weights (overwrite_eps after loading them)
BATCH_NORM_EPS = 1e-5      # nn.BatchNorm2d's default: a model built without weights

_LEGACY = ((re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"),
            r"backbone.fpn.\1_blocks.\2.0.\3"),
           (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
           (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
            lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"))

_OURS_TO_THEIRS = ((re.compile(r"^backbone\.body\.stem\.0\."), "backbone.body.conv1."),
                   (re.compile(r"^backbone\.body\.stem\.1\."), "backbone.body.bn1."),
                   (re.compile(r"^backbone\.fpn\.(inner|layer)(\d)\."),
                    lambda m: f"backbone.fpn.{m.group(1)}_blocks.{int(m.group(2)) - 2}.0."),
                   (re.compile(r"^rpn\.head\.conv\."), "rpn.head.conv.0.0."),
                   (re.compile(r"^roi_heads\.mask_head\.convs\.(\d+)\.0\."),
                    r"roi_heads.mask_head.\1.0."),
                   (re.compile(r"^roi_heads\.mask_head\.deconv\."),
                    "roi_heads.mask_predictor.conv5_mask."))

MASK_LOGITS = "roi_heads.mask_predictor.mask_fcn_logits."


def _rename(rules, name):
    """name rewritten by the first (pattern, replacement) of rules that matches it, else as is."""
    for pattern, repl in rules:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return name


def canonical_key(key):
    """A torchvision key in today's spelling (legacy FPN, RPN and mask-head names renamed)."""
    return _rename(_LEGACY, key)


def torchvision_name(ours):
    """The torchvision state-dict key of one of our parameter names."""
    return _rename(_OURS_TO_THEIRS, ours)


def check_exportable(cfg):
    """Raise ValueError naming the first part of `cfg` torchvision's maskrcnn_resnet50_fpn cannot
    express (the shapes models: GroupNorm BasicBlocks, their anchors, aligned RoIAlign, ...)."""
    from .config import Config

    tv = Config.torchvision_r50_fpn()
    parts = (("block", "the backbone's blocks (backbone.body.layer1.0: BasicBlock; torchvision's "
                       "maskrcnn_resnet50_fpn has ResNet-50 Bottlenecks)"),
             ("norm", "the backbone's norm (GroupNorm; torchvision's ResNet has frozen BatchNorm)"),
             ("stem_channels", "the stem width"), ("stage_channels", "the ResNet stage widths"),
             ("stage_blocks", "the blocks per ResNet stage"), ("fpn_channels", "the FPN width"),
             ("fpn_norm", "the FPN's norm"), ("anchor_convention", "the anchor convention"),
             ("anchor_ratios", "the anchor ratios"), ("pooler", "the RoI pooler (torchvision: "
                                                               "unaligned RoIAlign)"),
             ("pooler_levels", "the pooled FPN levels"), ("pooler_sampling_ratio", "the RoIAlign "
                                                                               "sampling ratio"),
             ("canonical_size", "the FPN level mapper's s0"), ("canonical_level", "its k0"),
             ("box_pool_size", "the box head's pool size"), ("box_head_convs", "the box head's convs"),
             ("box_fc_dim", "the box head's FC width"), ("mask_pool_size", "the mask pool size"),
             ("mask_head", "the mask head (torchvision: FCN)"), ("mask_channels", "the mask head width"),
             ("mask_num_convs", "the mask head's convs"), ("mask_head_norm", "the mask head's norm"),
             ("mask_loss", "the mask loss (torchvision: per-class sigmoid)"),
             ("class_agnostic_masks", "class-agnostic masks"))
    for field, what in parts:
        if getattr(cfg, field) != getattr(tv, field):
            raise ValueError(f"torchvision's maskrcnn_resnet50_fpn cannot express {what}: "
                             f"Config.{field} is {getattr(cfg, field)!r}, it needs "
                             f"{getattr(tv, field)!r}")


def to_torchvision(model):
    """Our parameters as a torchvision `maskrcnn_resnet50_fpn` state dict of NumPy float32 arrays
    (307 keys for 91 outputs: FrozenBatchNorm2d's layout, which nn.BatchNorm2d loads too).

    Raises ValueError naming the part of the model's config torchvision cannot express."""
    check_exportable(model.config)
    out = {}
    for ours, v in model.named_params():
        v = np.asarray(v, np.float32)
        if ours.startswith(MASK_LOGITS):                     # 91 channels, 0 = background, unused
            v = np.concatenate([np.zeros_like(v[:1]), v], axis=0)
        out[torchvision_name(ours)] = v
    return out


def from_torchvision(state, model):
    """Load a torchvision state dict (name -> array) into `model` (of torchvision_r50_fpn's
    architecture), in place. Returns the model.

    Raises ValueError naming the first key that is unknown, missing or of the wrong shape."""
    check_exportable(model.config)
    own = dict(model.named_params())
    wanted = {torchvision_name(k): k for k in own}
    seen = set()
    for key, value in state.items():
        theirs = canonical_key(key)
        if theirs.endswith("num_batches_tracked"):
            continue
        if theirs not in wanted:
            raise ValueError(f"state dict key {key!r}: not a parameter of torchvision's "
                             f"maskrcnn_resnet50_fpn (v1) with {model.config.num_classes + 1} outputs")
        ours = wanted[theirs]
        v, shape = np.asarray(value), own[ours].shape
        if ours.startswith(MASK_LOGITS):                       # theirs has the background channel
            shape = (shape[0] + 1,) + shape[1:]
        if v.shape != shape:
            raise ValueError(f"state dict key {key!r}: expected shape {shape}, got {v.shape}")
        if ours.startswith(MASK_LOGITS):
            v = v[1:]                                           # drop the background channel
        if not np.all(np.isfinite(v)):
            raise ValueError(f"state dict key {key!r}: holds NaN or inf")
        own[ours][...] = v
        seen.add(ours)
    missing = [torchvision_name(k) for k in own if k not in seen]
    if missing:
        raise ValueError(f"state dict: missing key {missing[0]!r}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}")
    return model


def guess_bn_eps(state):
    """eps of the file's BN layers: 1e-5 when it has BatchNorm2d's num_batches_tracked, else 0.0
    (torchvision's COCO weights); see the module docstring."""
    return BATCH_NORM_EPS if any(k.endswith("num_batches_tracked") for k in state) else FROZEN_BN_EPS


def num_outputs(state):
    """K + 1, the box predictor's classes in a state dict (91 for COCO)."""
    key = "roi_heads.box_predictor.cls_score.bias"
    if key not in state:
        raise ValueError(f"state dict: missing key {key!r}; not a torchvision Mask R-CNN")
    return int(np.asarray(state[key]).shape[0])


def read_state_dict(path):
    """A torchvision .pth file -> {key: float32 NumPy array}, with torch, `weights_only=True`.

    Accepts a bare state dict or a training checkpoint holding one under "model"."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{path!r}: key {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach().cpu().numpy() if k.endswith("num_batches_tracked") else \
            v.detach().cpu().to(torch.float32).numpy()
    return out


def write_state_dict(state, path):
    """Save {key: array} as a torch .pth state dict (atomically, via files.atomic_write)."""
    import torch

    from .files import atomic_write

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    return atomic_write(path, lambda f: torch.save(tensors, f))


def import_torchvision(path, bn_eps=None):
    """A MaskRCNN of Config.torchvision_r50_fpn() holding the weights of a torchvision .pth file.

    Inputs:
    - path: a `maskrcnn_resnet50_fpn` state dict saved by torch (old or new key spellings)
    - bn_eps: the BN eps the weights were trained with; None guesses it (`guess_bn_eps`)
    Returns: (model, bn_eps used)
    """
    from .config import Config
    from .model import MaskRCNN

    state = read_state_dict(path)
    eps = guess_bn_eps(state) if bn_eps is None else float(bn_eps)
    k = num_outputs(state) - 1
    names = None if k == 90 else tuple(f"class{i}" for i in range(1, k + 1))
    model = MaskRCNN(Config.torchvision_r50_fpn(num_classes=k, bn_eps=eps), names)
    return from_torchvision(state, model), eps

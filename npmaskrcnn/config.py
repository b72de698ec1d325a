"""Every hyperparameter of the model and of its training, in one dataclass.

`Config()` is the paper's algorithm (Mask R-CNN with FPN, He et al. 2017, as torchvision
implements it) scaled to 128x128 shapes images: the paper's values (and torchvision's defaults)
are given in each comment where it differs — widths, anchor sizes and RoI counts are scaled down
for small images and a CPU. The fields under "beyond the paper" are all off in it; they are read
only by `beyond_paper.py`.

Presets (classmethods):
    Config.paper()      the same as Config(): the paper's algorithm on shapes
    Config.shipped()    the shipped model's recipe: the paper plus the additions it lists
    Config.tiny()       a very small network on 32x32 images, for gradient checks and tests
    Config.torchvision_r50_fpn()  torchvision's maskrcnn_resnet50_fpn (COCO, 91 outputs), for
                        imported weights (`torchvision_weights.py`)
A config round-trips through JSON (`to_json`, `from_json`); `with_overrides` applies
"key=value" strings as the command line's --set does.
"""

import json
from dataclasses import asdict, dataclass, fields

VAL_SEED = 10_000          # seed of the held-out shapes images (training uses seed 0: disjoint)
LEVEL_NAMES = {2: "p2", 3: "p3", 4: "p4", 5: "p5", 6: "p6"}
# inference options a loaded model may change (MaskRCNN.set_inference): the paper's ...
PAPER_INFERENCE_FIELDS = ("box_score_thresh", "box_nms_thresh", "detections_per_img", "mask_threshold",
                          "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_nms_thresh")
# ... and those of beyond_paper.WithInferenceAdditions
ADDITION_INFERENCE_FIELDS = ("box_refine", "test_flip", "mask_rescore", "box_from_mask")
BLOCKS = ("basic", "bottleneck")
NORMS = ("group", "frozen_bn")
ANCHOR_CONVENTIONS = ("centre", "torchvision")
MASK_HEAD_NORMS = ("group", "none")
MASK_PASTES = ("subpixel", "torchvision")
POOLERS = ("roi_align", "roi_align_unaligned", "roi_align_max", "roi_pool", "roi_warp", "roi_warp_max")


@dataclass
class Config:
    # ---- data ----
    image_size: int = 128                 # the shapes generator's square side and the model's
    #                                       nominal input size; a multiple of 32
    num_classes: int = 3                  # K foreground classes (labels 1..K, 0 is background)
    pixel_mean: tuple = (127.5, 127.5, 127.5)  # subtracted from uint8 RGB before the backbone
    pixel_std: tuple = (64.0, 64.0, 64.0)      # divides after the mean
    # the input transform (transform.py, torchvision's GeneralizedRCNNTransform): each image's
    # shorter side resized to min_size unless its longer side would pass max_size; None = no resize
    # (the shapes presets: 128 x 128 in, 128 x 128 out). Several sizes: one drawn per training image
    min_size: tuple = None                # paper / torchvision: (800,)
    max_size: int = None                  # paper / torchvision: 1333
    input_divisor: float = 1.0            # uint8 divided by this before the mean (torchvision: 255)
    shapes: str = "gentle"                # the shapes generator's settings that training and the
    #                                       default evaluation draw: gentle | hard | large (shapes.SETTINGS)

    # ---- backbone: ResNet with GroupNorm + FPN ----
    stem_channels: int = 32               # 7x7 stride-2 stem conv width (ResNet: 64)
    stage_channels: tuple = (32, 64, 128, 256)  # C2..C5 widths (ResNet-18: 64, 128, 256, 512)
    stage_blocks: tuple = (2, 2, 2, 2)    # BasicBlocks per stage (as ResNet-18)
    gn_groups: int = 8                    # GroupNorm groups (paper: 32); capped at the channel count
    fpn_channels: int = 64                # FPN width (paper: 256)
    fpn_norm: bool = False                # GroupNorm after the FPN convs (torchvision's GN recipe)
    block: str = "basic"                  # basic (ResNet-18/34's two 3x3) | bottleneck (ResNet-50's
    #                                       1x1-3x3-1x1; stage_channels are then 4x the planes)
    norm: str = "group"                   # the ResNet's norm: group | frozen_bn (stored statistics,
    #                                       an imported model's; needs block = bottleneck)
    bn_eps: float = 1e-5                  # frozen_bn's eps (torchvision's COCO weights: 0.0)

    # ---- anchors (one size per level P2..P6) ----
    anchor_sizes: tuple = (8, 16, 32, 64, 128)  # paper: 32, 64, 128, 256, 512 for ~800 px images
    anchor_ratios: tuple = (0.5, 1.0, 2.0)      # h / w, as in the paper
    anchor_convention: str = "centre"     # centre: unrounded, at cell centres ((x + 0.5) s);
    #                                       torchvision: rounded, at cell corners (x s), s = padded
    #                                       size // grid size (anchors.py)

    # ---- RPN ----
    rpn_fg_iou: float = 0.7               # anchor positive at IoU >= this (paper)
    rpn_bg_iou: float = 0.3               # anchor negative below this (paper)
    rpn_batch_size_per_image: int = 256   # anchors sampled per image for the RPN loss (paper)
    rpn_positive_fraction: float = 0.5    # paper: 1:1
    rpn_pre_nms_top_n_train: int = 500    # per level, before NMS (torchvision: 2000)
    rpn_post_nms_top_n_train: int = 300   # per image, after NMS (torchvision: 2000)
    rpn_pre_nms_top_n_test: int = 500     # torchvision: 1000
    rpn_post_nms_top_n_test: int = 100    # torchvision: 1000
    rpn_nms_thresh: float = 0.7           # paper
    rpn_min_size: float = 1.0             # drop proposals smaller than this (pixels)

    # ---- RoI heads ----
    box_fg_iou: float = 0.5               # RoI positive at IoU >= this (paper)
    box_bg_iou: float = 0.5               # RoI background below this (paper)
    box_batch_size_per_image: int = 128   # RoIs sampled per image (paper: 512)
    box_positive_fraction: float = 0.25   # paper: 1:3 positives
    bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0)  # delta scaling (torchvision)
    box_reg_loss_weight: float = 1.0      # multiplies the box head's smooth L1 loss (paper: 1)
    pooler: str = "roi_align"             # roi_align | roi_align_unaligned | roi_align_max | roi_pool | roi_warp | roi_warp_max
    pooler_levels: tuple = (2, 3, 4, 5)   # FPN levels the RoI heads pool from; (4,) = stride 16 only
    pooler_sampling_ratio: int = 2        # bilinear samples per bin side (torchvision: 2)
    canonical_size: float = 112.0         # FPN eq. 1: s0 (paper: 224, for ~800 px images)
    canonical_level: int = 4              # FPN eq. 1: k0 (paper: 4)
    box_pool_size: int = 7                # box head RoI size (paper: 7)
    box_fc_dim: int = 256                 # the FC layer(s) of the box head (paper: 1024)
    box_head_convs: int = 0               # 0: two FC layers (paper); n: n x (3x3 conv+GN+ReLU) + one FC
    mask_pool_size: int = 14              # mask head RoI size (paper: 14)
    mask_channels: int = 64               # mask head conv width (paper: 256)
    mask_num_convs: int = 4               # 3x3 convs in the mask head (paper: 4)
    mask_head_norm: str = "group"         # group (conv + GN + ReLU) | none (conv with bias + ReLU,
    #                                       torchvision's MaskRCNNHeads)
    mask_head: str = "fcn"                # fcn (figure 4) | mlp (the ablation of Table 2e)
    mask_fc_dim: int = 256                # the MLP mask head's FC width (paper: 1024)
    max_mask_rois_per_image: int = 8      # positives per image sent to the mask head in training
    mask_loss: str = "sigmoid"            # sigmoid (per-class BCE, paper) | softmax (across classes)
    class_agnostic_masks: bool = False    # one mask per RoI instead of one per class

    # ---- inference ----
    box_score_thresh: float = 0.05        # drop detections scoring below this (torchvision)
    box_nms_thresh: float = 0.5           # per-class NMS (torchvision)
    detections_per_img: int = 100         # paper: top 100
    mask_threshold: float = 0.5           # paper
    mask_paste: str = "subpixel"          # subpixel (mask_head.paste_masks) | torchvision (its
    #                                       paste_masks_in_image: 1-pixel expand, integer corners)

    # ---- training ----
    seed: int = 0                         # seeds initialisation, data and sampling
    batch_size: int = 4                   # images per step
    grad_shards: int = 2                  # the batch's gradient is the mean of this many shards
    #                                       (parallel.py), each computable by its own process
    train_steps: int = 4500               # optimizer steps
    optimizer: str = "adamw"              # adamw | sgd
    lr: float = 2e-3                      # peak learning rate
    momentum: float = 0.9                 # SGD only
    weight_decay: float = 1e-4            # not on norms and biases
    warmup_steps: int = 200               # linear warmup from lr * 0.001
    schedule: str = "cosine"              # cosine | step | constant
    grad_clip: float = 10.0               # max global gradient norm (0 = off)
    hflip: bool = True                    # random horizontal flip

    # ---- beyond the paper (beyond_paper.py); all off here, Config.shipped() turns some on ----
    box_neg_iou_bins: int = 0             # > 1: IoU-balanced negative RoIs in that many IoU bins
    #                                       (Libra R-CNN); 0: random negatives (paper)
    box_jitter_per_gt: int = 0            # training: jittered copies of each gt box added to the
    box_jitter: float = 0.1               # RoI candidates, and how far they move (0 copies = off)
    box_refine: bool = False              # the box head looks again at its own detections; the
    #                                       two boxes and class probabilities are averaged
    test_flip: bool = False               # ... and at each detection in the mirrored image,
    #                                       averaging box, probability and mask
    mask_rescore: bool = False            # score x the mask's mean probability inside the mask
    box_from_mask: bool = False           # report the tight box of the pasted mask

    def __post_init__(self):
        if isinstance(self.min_size, int) and not isinstance(self.min_size, bool):
            self.min_size = (self.min_size,)             # min_size=800 means (800,)
        self.validate()

    def validate(self):
        """Raise ValueError naming the first field that is out of range or of the wrong type."""
        import math

        import numpy as np

        def need(cond, name, expected):
            if not cond:
                raise ValueError(f"Config.{name}: expected {expected}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v):
            return (isinstance(v, (int, float, np.integer, np.floating))
                    and not isinstance(v, (bool, np.bool_)) and math.isfinite(v))

        def seq(v, n, ok):
            return (isinstance(v, (tuple, list)) and (n is None or len(v) == n) and len(v) >= 1
                    and all(ok(x) for x in v))

        def pos_int(name, least=1):
            v = getattr(self, name)
            need(is_int(v) and v >= least, name, f"an int >= {least}")

        def fraction(name, lo_open=True):
            v = getattr(self, name)
            need(is_num(v) and (0 < v if lo_open else 0 <= v) and v <= 1, name,
                 "a number in (0, 1]" if lo_open else "a number in [0, 1]")

        def flag(name):
            need(isinstance(getattr(self, name), (bool, np.bool_)), name, "true or false")

        # data
        need(is_int(self.image_size) and self.image_size >= 32 and self.image_size % 32 == 0,
             "image_size", "a positive multiple of 32")
        pos_int("num_classes")
        need(seq(self.pixel_mean, 3, is_num), "pixel_mean", "3 finite numbers (R, G, B)")
        need(seq(self.pixel_std, 3, lambda v: is_num(v) and v > 0), "pixel_std",
             "3 positive numbers (R, G, B)")
        need(self.min_size is None or seq(self.min_size, None, lambda v: is_int(v) and v >= 1),
             "min_size", "None (no resize) or one or more shorter-side sizes >= 1")
        need(self.max_size is None or (is_int(self.max_size) and self.max_size >= 1), "max_size",
             "None (no bound) or an int >= 1")
        need(self.shapes in ("gentle", "hard", "large"), "shapes", "'gentle', 'hard' or 'large'")
        need(is_num(self.input_divisor) and self.input_divisor > 0, "input_divisor",
             "a positive number")
        # backbone
        pos_int("stem_channels")
        need(seq(self.stage_channels, 4, lambda v: is_int(v) and v >= 1), "stage_channels",
             "4 widths >= 1 (C2..C5)")
        need(seq(self.stage_blocks, 4, lambda v: is_int(v) and v >= 1), "stage_blocks",
             "4 block counts >= 1")
        pos_int("gn_groups")
        pos_int("fpn_channels")
        flag("fpn_norm")
        need(self.block in BLOCKS, "block", f"one of {BLOCKS}")
        need(self.norm in NORMS, "norm", f"one of {NORMS}")
        need(self.norm == "group" or self.block == "bottleneck", "norm",
             "'group' with block 'basic' (frozen_bn needs block 'bottleneck')")
        need(is_num(self.bn_eps) and self.bn_eps >= 0, "bn_eps", "a number >= 0")
        need(self.block == "basic" or all(c % 4 == 0 for c in self.stage_channels), "stage_channels",
             "widths divisible by 4 (a bottleneck's output is 4x its planes)")
        # anchors
        need(seq(self.anchor_sizes, 5, lambda v: is_num(v) and v > 0), "anchor_sizes",
             "5 positive sizes (P2..P6)")
        need(seq(self.anchor_ratios, None, lambda v: is_num(v) and v > 0), "anchor_ratios",
             "one or more positive h / w ratios")
        need(self.anchor_convention in ANCHOR_CONVENTIONS, "anchor_convention",
             f"one of {ANCHOR_CONVENTIONS}")
        # RPN
        need(is_num(self.rpn_bg_iou) and is_num(self.rpn_fg_iou)
             and 0 < self.rpn_bg_iou <= self.rpn_fg_iou <= 1, "rpn_fg_iou",
             "0 < rpn_bg_iou <= rpn_fg_iou <= 1")
        pos_int("rpn_batch_size_per_image")
        fraction("rpn_positive_fraction")
        for name in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                     "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test"):
            pos_int(name)
        fraction("rpn_nms_thresh", lo_open=False)
        need(is_num(self.rpn_min_size) and self.rpn_min_size > 0, "rpn_min_size",
             "a positive number of pixels (proposals must have a size to be encoded)")
        # RoI heads
        need(is_num(self.box_bg_iou) and is_num(self.box_fg_iou)
             and 0 < self.box_bg_iou <= self.box_fg_iou <= 1, "box_fg_iou",
             "0 < box_bg_iou <= box_fg_iou <= 1")
        pos_int("box_batch_size_per_image")
        fraction("box_positive_fraction")
        pos_int("box_neg_iou_bins", least=0)
        need(seq(self.bbox_reg_weights, 4, lambda v: is_num(v) and v > 0), "bbox_reg_weights",
             "4 positive numbers (wx, wy, ww, wh)")
        need(self.pooler in POOLERS, "pooler", f"one of {POOLERS}")
        need(seq(self.pooler_levels, None, lambda k: is_int(k) and 2 <= k <= 5)
             and len(set(self.pooler_levels)) == len(self.pooler_levels), "pooler_levels",
             "distinct levels within 2..5")
        need(is_int(self.pooler_sampling_ratio), "pooler_sampling_ratio",
             "an int (<= 0: adaptive)")
        need(is_num(self.canonical_size) and self.canonical_size > 0, "canonical_size",
             "a positive number of pixels")
        need(is_int(self.canonical_level), "canonical_level", "an int")
        pos_int("box_pool_size")
        pos_int("box_fc_dim")
        pos_int("box_head_convs", least=0)
        pos_int("mask_pool_size")
        pos_int("mask_channels")
        pos_int("mask_num_convs", least=0)
        need(self.mask_head_norm in MASK_HEAD_NORMS, "mask_head_norm", f"one of {MASK_HEAD_NORMS}")
        need(self.mask_head in ("fcn", "mlp"), "mask_head", "'fcn' or 'mlp'")
        pos_int("mask_fc_dim")
        pos_int("max_mask_rois_per_image")
        widths = {"stem_channels": [self.stem_channels], "stage_channels": self.stage_channels,
                  "fpn_channels": [self.fpn_channels], "mask_channels": [self.mask_channels]}
        for name, ws in widths.items():
            need(all(c % min(self.gn_groups, c) == 0 for c in ws), name,
                 f"widths divisible by gn_groups={self.gn_groups} (GroupNorm)")
        need(self.mask_loss in ("sigmoid", "softmax"), "mask_loss", "'sigmoid' or 'softmax'")
        flag("class_agnostic_masks")
        # inference
        fraction("box_score_thresh", lo_open=False)
        fraction("box_nms_thresh", lo_open=False)
        pos_int("detections_per_img")
        flag("box_from_mask")
        flag("box_refine")
        flag("mask_rescore")
        flag("test_flip")
        fraction("mask_threshold", lo_open=False)
        need(self.mask_paste in MASK_PASTES, "mask_paste", f"one of {MASK_PASTES}")
        # training
        pos_int("seed", least=0)
        pos_int("batch_size")
        pos_int("grad_shards")
        need(self.batch_size % self.grad_shards == 0, "grad_shards",
             f"a divisor of batch_size ({self.batch_size})")
        pos_int("train_steps")
        need(self.optimizer in ("adamw", "sgd"), "optimizer", "'adamw' or 'sgd'")
        need(is_num(self.lr) and self.lr > 0, "lr", "a positive number")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
             "a number >= 0")
        pos_int("warmup_steps", least=0)
        need(self.schedule in ("cosine", "step", "constant"), "schedule",
             "'cosine', 'step' or 'constant'")
        need(is_num(self.box_reg_loss_weight) and self.box_reg_loss_weight > 0,
             "box_reg_loss_weight", "a positive number")
        pos_int("box_jitter_per_gt", least=0)
        need(is_num(self.box_jitter) and 0 <= self.box_jitter <= 1, "box_jitter", "a number in [0, 1]")
        need(is_num(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a number >= 0 (0 = off)")
        flag("hflip")

    # ---- presets ----
    @classmethod
    def paper(cls, **overrides):
        """Mask R-CNN as the paper describes it (FPN variant), scaled to 128x128 shapes."""
        return cls(**overrides)

    @classmethod
    def shipped(cls, **overrides):
        """The shipped model's recipe: the paper plus jittered ground-truth RoIs, IoU-balanced
        negatives (3 bins), the box head's second look and mask-confidence rescoring."""
        kw = dict(box_jitter_per_gt=8, box_neg_iou_bins=3, box_refine=True, mask_rescore=True)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def tiny(cls, **overrides):
        """A very small network on 32x32 images, for gradient checks and fast tests."""
        kw = dict(image_size=32, stem_channels=4, stage_channels=(4, 4, 8, 8), stage_blocks=(1, 1, 1, 1),
                  gn_groups=2, fpn_channels=8, anchor_sizes=(4, 8, 16, 32, 64),
                  rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
                  rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
                  box_batch_size_per_image=16, canonical_size=28.0, box_pool_size=3, box_fc_dim=8,
                  mask_pool_size=4, mask_channels=4, mask_num_convs=2, max_mask_rois_per_image=4,
                  grad_shards=1)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def torchvision_r50_fpn(cls, **overrides):
        """torchvision's `maskrcnn_resnet50_fpn` (v1) as its COCO weights run, field by field:
        ResNet-50 with frozen BN (eps 0, torchvision's overwrite_eps for those weights), FPN 256
        with biased convs, anchors 32..512 in torchvision's convention, RPN 2000/2000 (train) and
        1000/1000 (test) with min size 1e-3, unaligned RoIAlign from P2..P5 with s0 = 224, the
        two-FC box head of 1024, the 4-conv mask head of 256 without norm, 90 classes (labels are
        COCO category ids, `COCO_CATEGORY_NAMES`), torchvision's paste, and its input transform
        (x / 255, ImageNet mean / std, shorter side 800, longer at most 1333, padded to 32)."""
        kw = dict(image_size=800, num_classes=90, pixel_mean=(0.485, 0.456, 0.406),
                  pixel_std=(0.229, 0.224, 0.225), min_size=(800,), max_size=1333,
                  input_divisor=255.0, stem_channels=64, stage_channels=(256, 512, 1024, 2048),
                  stage_blocks=(3, 4, 6, 3), gn_groups=32, fpn_channels=256, block="bottleneck",
                  norm="frozen_bn", bn_eps=0.0, anchor_sizes=(32, 64, 128, 256, 512),
                  anchor_convention="torchvision", rpn_pre_nms_top_n_train=2000,
                  rpn_post_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
                  rpn_post_nms_top_n_test=1000, rpn_min_size=1e-3, box_batch_size_per_image=512,
                  pooler="roi_align_unaligned", canonical_size=224.0, box_fc_dim=1024,
                  mask_channels=256, mask_head_norm="none", max_mask_rois_per_image=512,
                  mask_paste="torchvision", batch_size=2, grad_shards=1, optimizer="sgd", lr=0.02)
        kw.update(overrides)
        return cls(**kw)

    # ---- JSON ----
    def to_dict(self):
        return asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        # checkpoints from before the `shapes` field were all trained on the gentle generator
        kw = {} if "shapes" in d else {"shapes": "gentle"}
        for k, v in d.items():
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    @classmethod
    def from_json(cls, s):
        return cls.from_dict(json.loads(s))

    @staticmethod
    def parse_overrides(items):
        """{key: value} from "key=value" strings, each value parsed as JSON when it parses
        (`true`, `3`, `[4]`), else kept as a string. Raises ValueError for a malformed item."""
        out = {}
        for item in items or []:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected key=value, got {item!r}")
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
        return out

    def with_overrides(self, items):
        """A copy with "key=value" strings applied (see parse_overrides). Raises ValueError
        naming an unknown field or a bad value."""
        return type(self).from_dict({**self.to_dict(), **self.parse_overrides(items)})


# torchvision's COCO categories (torchvision/models/_meta.py): label l = COCO category id l, names
# of labels 1..90; "N/A" at the 10 ids COCO skips (they are real outputs of the 91-way softmax)
COCO_CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")

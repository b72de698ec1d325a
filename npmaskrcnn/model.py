"""Mask R-CNN (He, Gkioxari, Dollar, Girshick 2017): the whole network, forward and backward.

    image -> ResNet -> FPN -> [p2..p6] -> RPN -> proposals
                                   \\-> RoI heads (box branch, mask branch) -> losses / detections

`forward(images, targets)` returns the five losses of torchvision's Mask R-CNN; `backward()`
walks the same path in reverse — RoI heads, RPN, FPN, ResNet — and fills every parameter's
gradient (the total loss is their plain sum, so each branch starts from d(total)/d(loss) = 1).
Proposals and sampled RoIs are constants, as in the paper: gradients reach the backbone through
the RPN head and through the pooled RoI features only. `predict(images)` runs in eval mode;
`set_inference(...)` changes its options (score threshold, NMS, ...) in the model's one config.

This is the paper's network and nothing else. The RoI heads take two optional objects that a
recipe may hand in (a sampler and a source of extra training RoIs, see `roi_heads.py`);
`beyond_paper.py` builds them, and wraps the model for inference additions.

Shape shorthand:
    N images, H_i x W_i image i's size (resized by `config.min_size` / `max_size`, when set, and
    padded to a multiple of 32 inside), K classes, D detections.

Naming:
    images      list of (H_i, W_i, 3) uint8 arrays of any sizes, or one (N, H, W, 3) / (H, W, 3)
    targets     list of N dicts: "boxes" (M, 4) float xyxy pixels, "labels" (M,) int in 1..K,
                "masks" (M, H_i, W_i) bool, each in its own image
    batch       transform.ImageList: the resized, padded tensors and each image's sizes
    features    [p2, p3, p4, p5, p6], each (N, F, H/2^k, W/2^k)
"""

from dataclasses import replace

import numpy as np

from .backbone import Backbone
from .config import COCO_CATEGORY_NAMES, PAPER_INFERENCE_FIELDS, Config
from .nn import Module
from .roi_heads import RoIHeads
from .rpn import RPN
from .transform import Transform, size_list

SHAPES_CLASSES = ("square", "circle", "triangle")


class MaskRCNN(Module):
    """Mask R-CNN with a ResNet+FPN backbone. `MaskRCNN(Config(), class_names)`.

    roi_sampler, extra_training_rois: handed to RoIHeads (None: the paper's sampling).
    class_names None: the shapes names for 3 classes, torchvision's COCO names for 90
    (`Config.torchvision_r50_fpn`, whose labels are COCO category ids), else class1, class2, ...
    """

    def __init__(self, config=None, class_names=None, roi_sampler=None, extra_training_rois=None):
        super().__init__()
        cfg = config if config is not None else Config()
        if not isinstance(cfg, Config):
            raise TypeError(f"config: expected a Config, got {type(cfg).__name__}")
        if class_names is None:
            class_names = {3: SHAPES_CLASSES, 90: COCO_CATEGORY_NAMES}.get(cfg.num_classes) or tuple(
                f"class{i}" for i in range(1, cfg.num_classes + 1))
        if len(class_names) != cfg.num_classes:
            raise ValueError(f"class_names: expected {cfg.num_classes} names (config.num_classes), "
                             f"got {len(class_names)}")
        cfg = replace(cfg)                                     # the model's own copy, shared by its modules
        self.config, self.class_names = cfg, tuple(str(c) for c in class_names)
        rng = np.random.default_rng(cfg.seed)
        self.add("backbone", Backbone(cfg, rng))
        self.add("rpn", RPN(cfg, rng))
        self.add("roi_heads", RoIHeads(cfg, rng, roi_sampler, extra_training_rois))
        self.rng = np.random.default_rng([cfg.seed, 1])        # anchor and RoI sampling

    @property
    def dtype(self):
        return self.backbone.body.stem.children["0"].params["weight"].dtype

    # ---- input ----------------------------------------------------------------------------
    @property
    def transform(self):
        """The input transform the config describes (transform.Transform): normalise, resize
        (min_size None: no resize), pad to a multiple of 32."""
        return transform_of(self.config)

    def transform_images(self, images, targets=None, training=False, rng=None):
        """uint8 images of any sizes (and their targets) -> (ImageList, resized targets or None).

        The batch is zero-padded at the bottom/right to a multiple of 32 so every FPN level
        halves exactly; each image keeps its own (resized) size in `image_sizes`, which the RPN
        and the RoI heads clip to, and its original size, which detections are mapped back to.
        """
        images = as_image_list(images)
        return self.transform(images, targets, training=training, rng=rng,
                              dtype=np.dtype(self.dtype).type)

    def preprocess(self, images):
        """uint8 images -> normalised (N, 3, Hp, Wp) in the model's dtype, and the image size(s):
        one (h, w) when all images have it after the transform, else the list of each one's."""
        batch, _ = self.transform_images(images)
        sizes = batch.image_sizes
        return batch.tensors, (sizes[0] if len(set(sizes)) == 1 else sizes)

    # ---- training -------------------------------------------------------------------------
    def forward(self, images, targets):
        """Losses for a batch: loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg,
        loss_mask (floats). Caches what `backward` needs (training mode)."""
        if not self.training:
            raise RuntimeError("MaskRCNN.forward computes losses in training mode; call "
                               "model.train() first, or use model.predict(images)")
        images = as_image_list(images)
        targets = check_targets(targets, len(images), [im.shape[:2] for im in images],
                                self.config.num_classes)
        # resized with their images; several min_size: one drawn per image from self.rng
        batch, targets = self.transform_images(images, targets, training=True, rng=self.rng)
        sizes = batch.image_sizes
        features = self.backbone(batch.tensors)                            # [p2..p6]
        proposals, rpn_losses = self.rpn(features, sizes, [t["boxes"] for t in targets], self.rng)
        _, roi_losses = self.roi_heads(features[:4], proposals, sizes, targets, self.rng)
        return {**rpn_losses, **roi_losses}

    def backward(self):
        """Fill every parameter's gradient of the summed losses of the last `forward`."""
        droi = self.roi_heads.backward()                                   # [dp2..dp5]
        drpn = self.rpn.backward()                                         # [dp2..dp6]
        dfeatures = [d if k >= len(droi) or droi[k] is None else d + droi[k]
                     for k, d in enumerate(drpn)]
        self.backbone.backward(dfeatures)

    # ---- inference ------------------------------------------------------------------------
    def set_inference(self, **options):
        """Change inference options (Config field names in config.PAPER_INFERENCE_FIELDS), e.g.
        `model.set_inference(box_score_thresh=0.5)`. Raises ValueError naming a bad one."""
        self.update_config(PAPER_INFERENCE_FIELDS, **options)

    def update_config(self, allowed, **fields):
        """Set `fields` (names in `allowed`) of the model's config in place, validated first;
        every module holds this same Config object, so all of them see the change."""
        for k in fields:
            if k not in allowed:
                raise ValueError(f"{k!r} is not an inference option of this model; expected one "
                                 f"of {', '.join(allowed)}")
        new = replace(self.config, **fields)                  # validates
        for k in fields:
            setattr(self.config, k, getattr(new, k))

    def predict(self, images):
        """Detections for each image, in its own original pixels: list of dicts with "boxes"
        (D, 4) float32 xyxy, "labels" (D,) int64 in 1..K, "scores" (D,) float32, "masks"
        (D, H, W) bool at that image's (H, W). Images may have different sizes: those of one
        padded size run as one batch (`by_padded_size`), so an image's detections do not depend
        on its neighbours' sizes."""
        return by_padded_size(self, images, self._predict_batch)

    def _predict_batch(self, images):
        was_training = self.training
        self.eval()
        try:
            batch, _ = self.transform_images(images)
            features = self.backbone(batch.tensors)
            proposals, _ = self.rpn(features, batch.image_sizes)
            detections = self.roi_heads.predict(features[:4], proposals, batch.image_sizes,
                                                batch.original_image_sizes)
        finally:
            self.train(was_training)
        return detections


def by_padded_size(model, images, run):
    """`run(images)` on each group of images that pad to one size, results in the input order.

    A larger neighbour would pad an image further, and GroupNorm's statistics (over all of a
    feature map, padding included) would then shift every feature of it — measured on the shipped
    model: a 128 x 128 image padded to 192 x 256 by a neighbour moves its confident boxes by
    1.4 px (median over images; 4.4 at most) and its scores by 0.014 (0.26 at most). Running
    each padded size as its own batch gives every image the padding it has alone. Training pads
    to the batch's largest image, as torchvision does.
    """
    images = as_image_list(images)
    t, d = model.transform, 32
    keys = []
    for im in images:
        h, w = t.target_size(*im.shape[:2], t.pick_min_size(False))
        keys.append((-(-h // d), -(-w // d)))
    groups = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    if len(groups) == 1:
        return run(images)
    out = [None] * len(images)
    for idx in groups.values():
        for i, det in zip(idx, run([images[i] for i in idx])):
            out[i] = det
    return out


def transform_of(cfg):
    """The transform.Transform a Config describes (min_size, max_size, pixel_mean, pixel_std,
    input_divisor; padding to a multiple of 32)."""
    return Transform(cfg.min_size, cfg.max_size, cfg.pixel_mean, cfg.pixel_std, cfg.input_divisor)


def as_image_list(images):
    """Accept (H, W, 3) uint8, (N, H, W, 3) uint8 or a list of (H, W, 3) uint8 of any sizes.

    Grayscale, RGBA, 16-bit and other files are converted at the boundary
    (`imageio.read_image`); the model itself takes 8-bit RGB."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = [images]
        elif images.ndim == 4:
            images = list(images)
        else:
            raise ValueError(f"images: expected (H, W, 3), (N, H, W, 3) or a list of (H, W, 3) "
                             f"arrays, got an array of shape {images.shape}")
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError(f"images: expected a non-empty list of (H, W, 3) uint8 arrays, got {type(images).__name__}")
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray):
            raise TypeError(f"images[{i}]: expected a numpy array, got {type(im).__name__}")
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"images[{i}]: expected shape (H, W, 3), got {im.shape}")
        if im.dtype != np.uint8:
            raise TypeError(f"images[{i}]: expected dtype uint8, got {im.dtype}")
        if min(im.shape[:2]) < 1:
            raise ValueError(f"images[{i}]: expected a non-empty image, got shape {im.shape}")
    return list(images)


def check_targets(targets, n, image_sizes, num_classes):
    """Validate training targets; returns them with boxes float32, labels int64, masks bool.

    image_sizes: one (h, w) for all images or a list of each image's own (h, w).

    Boxes must be finite, inside the image (1 pixel of slack) and have x2 > x1, y2 > y1: an empty
    or inverted ground-truth box has no regression target (log of its size), as in torchvision.
    """
    if not isinstance(targets, (list, tuple)) or len(targets) != n:
        raise ValueError(f"targets: expected a list of {n} dicts (one per image), got "
                         f"{type(targets).__name__} of length {len(targets) if hasattr(targets, '__len__') else '?'}")
    sizes = size_list(image_sizes, n)
    out = []
    for i, t in enumerate(targets):
        h, w = sizes[i]
        if not isinstance(t, dict):
            raise TypeError(f"targets[{i}]: expected a dict with 'boxes', 'labels', 'masks', got "
                            f"{type(t).__name__}")
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise ValueError(f"targets[{i}]: expected a dict with 'boxes', 'labels', 'masks'; "
                                 f"'{key}' is missing")
        raw = np.asarray(t["boxes"])
        if raw.size and not (np.issubdtype(raw.dtype, np.integer)
                             or np.issubdtype(raw.dtype, np.floating)):
            raise TypeError(f"targets[{i}]['boxes']: expected real numbers, got dtype {raw.dtype}")
        boxes = raw.astype(np.float32).reshape(-1, 4) if raw.size == 0 else raw.astype(np.float32)
        labels = np.asarray(t["labels"])
        masks = np.asarray(t["masks"])
        m = boxes.shape[0]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes']: expected shape (M, 4), got {boxes.shape}")
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"targets[{i}]['boxes']: expected finite values, got NaN or inf")
        if m and (np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1])):
            bad = int(np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0])
            raise ValueError(f"targets[{i}]['boxes']: expected x2 > x1 and y2 > y1 (positive width "
                             f"and height, as torchvision), got box {bad} = {boxes[bad].tolist()}")
        if m and (boxes.min() < -1 or np.any(boxes[:, 2] > w + 1) or np.any(boxes[:, 3] > h + 1)):
            raise ValueError(f"targets[{i}]['boxes']: expected boxes inside the {w}x{h} image, "
                             f"got range [{boxes.min():.1f}, {boxes.max():.1f}]")
        if labels.shape != (m,) or (m and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"targets[{i}]['labels']: expected ({m},) integers, got shape "
                             f"{labels.shape} dtype {labels.dtype}")
        if m and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(f"targets[{i}]['labels']: expected values in 1..{num_classes}, got "
                             f"[{labels.min()}, {labels.max()}]")
        if masks.shape != (m, h, w):
            raise ValueError(f"targets[{i}]['masks']: expected shape ({m}, {h}, {w}), got {masks.shape}")
        if masks.dtype != bool:
            raise TypeError(f"targets[{i}]['masks']: expected dtype bool, got {masks.dtype}")
        out.append({"boxes": boxes, "labels": labels.astype(np.int64), "masks": masks})
    return out

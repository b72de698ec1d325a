"""The input transform: images of any size -> one normalised, resized, padded batch, and back.

Mask R-CNN resizes every image so its shorter side is 800 pixels unless its longer side would
pass 1333 (the paper, §4 "Implementation Details": "images are resized such that their scale
(shorter edge) is 800 pixels"), and pads the batch so every FPN level halves exactly. This file
is torchvision's `GeneralizedRCNNTransform` (torchvision/models/detection/transform.py) in NumPy,
with its exact numbers:

    1) normalise   x = (image / input_divisor - mean) / std, per channel, in the batch dtype
    2) resize      scale = min(min_size / min(h, w), max_size / max(h, w))   (Python floats)
                   (h', w') = (int(h * scale), int(w * scale))   truncated, so a 578 x 640 image
                   becomes 799 x 885, not 800 x 886 (578 * (800 / 578) = 799.99999999999989)
                   bilinear, align_corners=False, no antialiasing, source step in / out (float)
    3) pad         zeros at the bottom/right up to the batch's largest h', w', each rounded up to
                   a multiple of size_divisible (32)

`min_size=None` skips step 2 (the shapes preset: 128 x 128 in, 128 x 128 out), so the batch is
exactly `MaskRCNN.preprocess`'s. In training `min_size` may hold several sizes, one drawn per image
(multi-scale training). Targets follow their image: boxes times (w'/w, h'/h) (`resize_boxes`),
masks by nearest-neighbour interpolation, kept bool. After inference, `postprocess` maps the boxes
back to the original image; the mask branch pastes each mask at the original size from those boxes.

Shape shorthand:
    N images; H x W an original image; H' x W' after resize; Hp x Wp the padded batch; M instances

Naming:
    image_sizes            list of N (H', W'): each image after resize, before padding (what the RPN
                           and the RoI heads clip to)
    original_image_sizes   list of N (H, W): each image as given (what results are mapped back to)
    input_divisor          1 for the shapes model's 0..255 units, 255 for torchvision's 0..1
"""

from dataclasses import dataclass

import numpy as np

TORCHVISION_MEAN = (0.485, 0.456, 0.406)            # ImageNet, in 0..1 units
TORCHVISION_STD = (0.229, 0.224, 0.225)


def resize_scale(h, w, min_size, max_size=None):
    """torchvision's scale factor: shorter side to min_size unless the longer passes max_size.

    Inputs:
    - h, w: image size (ints)
    - min_size: target shorter side; max_size: bound on the longer side, or None for none
    Returns:
    - scale: float (double precision, as torchvision computes it in Python)
    """
    scale = min_size / min(h, w)
    return scale if max_size is None else min(scale, max_size / max(h, w))


def resized_size(h, w, min_size, max_size=None):
    """The (H', W') torchvision's interpolate gives for this scale: int(h * scale), truncated.

    `recompute_scale_factor=True` makes the output size floor(in * scale) of the double product.

    Inputs: as `resize_scale`
    Returns:
    - (H', W'): ints, each at least 1
    """
    scale = resize_scale(h, w, min_size, max_size)
    return max(int(h * scale), 1), max(int(w * scale), 1)


def _linear_indices(in_size, out_size, dtype):
    """Source indices and weights of align_corners=False linear interpolation along one axis.

    As PyTorch's CPU kernel, in the image's dtype: step = in / out, src = max((dst + 0.5) * step
    - 0.5, 0), i0 = min(floor(src), in - 1), i1 = i0 + 1 unless at the last row, l1 = src - i0.
    PyTorch's compiled kernel evaluates step * (dst + 0.5) - 0.5 as one fused multiply-add (one
    rounding, measured: its float32 weights equal these exactly, while rounding the product first
    differs by up to half a unit of src, 1.5e-5 at src ~ 200). For float32 the product and the
    subtraction are exact in float64, so that single rounding is reproduced here.

    Inputs:
    - in_size, out_size: ints; dtype: float32 or float64
    Returns:
    - i0, i1: (out_size,) int64; l0, l1: (out_size,) dtype
    """
    step = dtype(in_size) / dtype(out_size)
    centres = np.arange(out_size) + 0.5                              # exact in float64
    src = (np.float64(step) * centres - 0.5).astype(dtype)           # one rounding, as an FMA
    src = np.maximum(src, dtype(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = i0 + (i0 < in_size - 1)
    l1 = np.clip(src - i0.astype(dtype), 0, 1).astype(dtype)
    return i0, i1, (dtype(1) - l1).astype(dtype), l1


def _interpolate(x, rows, cols):
    """Separable linear interpolation of (C, H, W) given (i0, i1, l0, l1) per axis."""
    i0h, i1h, l0h, l1h = rows
    i0w, i1w, l0w, l1w = cols
    out = l0w * x[:, :, i0w] + l1w * x[:, :, i1w]                          # (C, H, W')
    return l0h[:, None] * out[:, i0h] + l1h[:, None] * out[:, i1h]         # (C, H', W')


def _used(i0, i1):
    """The source indices an axis reads, and i0, i1 renumbered into them."""
    used, inverse = np.unique(np.concatenate([i0, i1]), return_inverse=True)
    return used, inverse[:len(i0)], inverse[len(i0):]


def resize_bilinear(x, size):
    """Bilinear resize of (C, H, W), as F.interpolate(mode="bilinear", align_corners=False).

    No antialiasing: shrinking samples 2 x 2 source pixels per output pixel, as torchvision's
    transform does. Separable, rows of the W pass first: out = l0h * (l0w * x00 + l1w * x01)
    + l1h * (l0w * x10 + l1w * x11), each product rounded in the input's dtype. Against
    torch.nn.functional.interpolate in float32 (torch 2.13 CPU): the same weights, values within
    2 units in the last place (2.4e-7 on values in [-2, 2]; torch sums in another order).

    Inputs:
    - x: (C, H, W) float32 or float64
    - size: (H', W')
    Returns:
    - out: (C, H', W') same dtype
    """
    if x.ndim != 3 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x: expected a (C, H, W) float32/float64 array, got {x.shape} {x.dtype}")
    dtype = x.dtype.type
    (h, w), (oh, ow) = x.shape[1:], size
    if (oh, ow) == (h, w):
        return x.copy()
    return _interpolate(x, _linear_indices(h, oh, dtype), _linear_indices(w, ow, dtype))


def resize_masks(masks, size):
    """Nearest-neighbour resize of instance masks, as F.interpolate(mode="nearest"): bool stays bool.

    Source index floor(dst * (in / out)) in float32, clamped to in - 1 (PyTorch's nearest_idx).

    Inputs:
    - masks: (M, H, W) bool
    - size: (H', W')
    Returns:
    - masks: (M, H', W') bool
    """
    masks = np.asarray(masks)
    (h, w), (oh, ow) = masks.shape[1:], size

    def index(n_in, n_out):
        step = np.float32(n_in) / np.float32(n_out)
        return np.minimum(np.floor(np.arange(n_out).astype(np.float32) * step).astype(np.int64),
                          n_in - 1)

    return masks[:, index(h, oh)][:, :, index(w, ow)]


def resize_boxes(boxes, original_size, new_size):
    """Scale xyxy boxes from an image of original_size to one of new_size (torchvision's).

    ratio_h = float32(new_h) / float32(orig_h), likewise w; x times ratio_w, y times ratio_h.
    Not clipped. Mapping detections back is the same call with the sizes swapped.

    Inputs:
    - boxes: (M, 4) float xyxy
    - original_size, new_size: (h, w)
    Returns:
    - boxes: (M, 4) same dtype
    """
    boxes = np.asarray(boxes)
    ratio_h = np.float32(new_size[0]) / np.float32(original_size[0])
    ratio_w = np.float32(new_size[1]) / np.float32(original_size[1])
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32).astype(boxes.dtype)
    return boxes * ratios


def hflip(image, target=None):
    """Mirror an image left-right, with its target (torchvision references' RandomHorizontalFlip).

    Inputs:
    - image: (H, W, 3)
    - target: None or dict with "boxes" (M, 4) xyxy and optionally "masks" (M, H, W)
    Returns:
    - image: (H, W, 3); target: a new dict, boxes (W - x2, y1, W - x1, y2), masks mirrored
    """
    w = image.shape[1]
    image = image[:, ::-1].copy()
    if target is None:
        return image, None
    target = dict(target)
    boxes = np.asarray(target["boxes"]).copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = np.asarray(target["masks"])[:, :, ::-1].copy()
    return image, target


def size_list(image_sizes, n):
    """N (h, w) tuples from one (h, w) shared by all N images or a list of N of them.

    The RPN and the RoI heads take either, so a batch of one size may still pass its (h, w)."""
    if (isinstance(image_sizes, tuple) and len(image_sizes) == 2
            and all(isinstance(v, (int, np.integer)) for v in image_sizes)):
        return [tuple(int(v) for v in image_sizes)] * n
    sizes = [tuple(int(v) for v in s) for s in image_sizes]
    if len(sizes) != n or any(len(s) != 2 for s in sizes):
        raise ValueError(f"image_sizes: expected one (h, w) or a list of {n} of them, got "
                         f"{image_sizes!r}")
    return sizes


@dataclass
class ImageList:
    """A padded batch and the sizes needed to use and undo the transform (torchvision's ImageList).

    - tensors: (N, 3, Hp, Wp) normalised, zero-padded bottom/right
    - image_sizes: list of N (H', W') after resize
    - original_image_sizes: list of N (H, W) as given
    """
    tensors: np.ndarray
    image_sizes: list
    original_image_sizes: list


class Transform:
    """Normalise, resize, pad; resize targets; map detections back (GeneralizedRCNNTransform).

    Inputs:
    - min_size: None (no resize), an int, or a tuple of ints (training draws one per image;
      evaluation uses the last, as torchvision)
    - max_size: bound on the longer side after resize, or None (no bound)
    - pixel_mean, pixel_std: per channel, in the units after dividing by input_divisor
    - input_divisor: uint8 values are divided by this first (1: 0..255 units; 255: torchvision's
      `convert_image_dtype`, x / 255)
    - size_divisible: the padded height and width are multiples of this
    """

    def __init__(self, min_size=None, max_size=None, pixel_mean=(127.5, 127.5, 127.5),
                 pixel_std=(64.0, 64.0, 64.0), input_divisor=1.0, size_divisible=32):
        if min_size is not None:
            min_size = (min_size,) if np.isscalar(min_size) else tuple(min_size)
            if not min_size or not all(isinstance(s, (int, np.integer)) and s > 0 for s in min_size):
                raise ValueError(f"min_size: expected None, a positive int or a tuple of them, got "
                                 f"{min_size!r}")
            min_size = tuple(int(s) for s in min_size)
        if max_size is not None and not (isinstance(max_size, (int, np.integer)) and max_size > 0):
            raise ValueError(f"max_size: expected None or a positive int, got {max_size!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(f"pixel_mean, pixel_std: expected 3 numbers each, std > 0; got "
                             f"{pixel_mean!r}, {pixel_std!r}")
        if not (input_divisor > 0 and np.isfinite(input_divisor)):
            raise ValueError(f"input_divisor: expected a positive number, got {input_divisor!r}")
        if not (isinstance(size_divisible, (int, np.integer)) and size_divisible > 0):
            raise ValueError(f"size_divisible: expected a positive int, got {size_divisible!r}")
        self.min_size, self.max_size = min_size, None if max_size is None else int(max_size)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.input_divisor, self.size_divisible = float(input_divisor), int(size_divisible)

    @classmethod
    def torchvision(cls, min_size=800, max_size=1333):
        """torchvision's Mask R-CNN defaults: 0..1 input, ImageNet mean/std, 800 / 1333."""
        return cls(min_size, max_size, TORCHVISION_MEAN, TORCHVISION_STD, input_divisor=255)

    def to_dict(self):
        """The transform as JSON-ready numbers, for a checkpoint; `Transform(**d)` rebuilds it."""
        return {"min_size": None if self.min_size is None else list(self.min_size),
                "max_size": self.max_size, "pixel_mean": list(self.pixel_mean),
                "pixel_std": list(self.pixel_std), "input_divisor": self.input_divisor,
                "size_divisible": self.size_divisible}

    def __repr__(self):
        return "Transform(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    # ---- one image ------------------------------------------------------------------------
    def pick_min_size(self, training=False, rng=None):
        """The shorter side for one image: min_size[-1] in evaluation, one drawn in training.

        A draw (rng.integers) happens only in training with more than one size, so a single size
        consumes no random numbers.
        """
        if self.min_size is None:
            return None
        if training and len(self.min_size) > 1:
            if rng is None:
                raise ValueError(f"rng: training with several min_size {self.min_size} needs a "
                                 f"np.random.Generator to draw one per image")
            return self.min_size[int(rng.integers(len(self.min_size)))]
        return self.min_size[-1]

    def normalize(self, image, dtype=np.float32):
        """(H, W, 3) uint8 -> (3, H, W) dtype: (image / input_divisor - mean) / std."""
        x = image.transpose(2, 0, 1).astype(dtype)
        if self.input_divisor != 1:
            x = x / dtype(self.input_divisor)
        mean = np.asarray(self.pixel_mean, dtype)[:, None, None]
        std = np.asarray(self.pixel_std, dtype)[:, None, None]
        return (x - mean) / std

    def normalize_resize(self, image, size, dtype=np.float32):
        """`resize_bilinear(self.normalize(image), size)`, normalising only the pixels it reads.

        Shrinking a 4000 x 3000 photo to 1066 x 800 reads at most 2 rows per output row and 2
        columns per output column; normalisation is per pixel, so normalising those alone gives
        the same numbers bit for bit, with a quarter of the memory and time.

        Inputs: image (H, W, 3) uint8; size (H', W'); dtype
        Returns: (3, H', W') dtype
        """
        (h, w), (oh, ow) = image.shape[:2], size
        (i0h, i1h, l0h, l1h), (i0w, i1w, l0w, l1w) = (_linear_indices(h, oh, dtype),
                                                      _linear_indices(w, ow, dtype))
        rows, r0, r1 = _used(i0h, i1h)
        cols, c0, c1 = _used(i0w, i1w)
        x = self.normalize(image[rows][:, cols], dtype)
        return _interpolate(x, (r0, r1, l0h, l1h), (c0, c1, l0w, l1w))

    def target_size(self, h, w, min_size):
        """(H', W') of an (H, W) image for this min_size (None: unchanged)."""
        return (h, w) if min_size is None else resized_size(h, w, min_size, self.max_size)

    # ---- the batch ------------------------------------------------------------------------
    def __call__(self, images, targets=None, training=False, rng=None, dtype=np.float32):
        """Normalise, resize and pad a batch; resize its targets alongside.

        Inputs:
        - images: list of N (H_i, W_i, 3) uint8, any sizes
        - targets: None or list of N dicts with "boxes" (M, 4) xyxy in the image's pixels and
          optionally "masks" (M, H_i, W_i) bool; other keys are passed through
        - training: draw min_size per image (needs rng if min_size has several entries)
        - rng: np.random.Generator
        - dtype: of the batch
        Returns:
        - batch: ImageList
        - targets: None or list of N new dicts, boxes and masks in the resized image
        """
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"targets: expected {len(images)} dicts (one per image), got {len(targets)}")
        for i, im in enumerate(images):
            if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3
                    and im.dtype == np.uint8 and min(im.shape[:2]) >= 1):
                raise ValueError(f"images[{i}]: expected a non-empty (H, W, 3) uint8 array, got "
                                 f"{getattr(im, 'shape', type(im).__name__)} "
                                 f"{getattr(im, 'dtype', '')}")
        xs, sizes, originals, out_targets = [], [], [], []
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            new = self.target_size(h, w, self.pick_min_size(training, rng))
            xs.append(self.normalize(im, dtype) if new == (h, w) else self.normalize_resize(im, new, dtype))
            sizes.append(new)
            originals.append((h, w))
            if targets is not None:
                out_targets.append(self.resize_target(targets[i], (h, w), new))
        return ImageList(self.pad(xs), sizes, originals), (out_targets if targets is not None else None)

    def pad(self, xs):
        """Zero-pad (3, H'_i, W'_i) arrays into one (N, 3, Hp, Wp), Hp and Wp multiples of
        size_divisible (torchvision's batch_images)."""
        d = self.size_divisible
        hp = -(-max(x.shape[1] for x in xs) // d) * d
        wp = -(-max(x.shape[2] for x in xs) // d) * d
        batch = np.zeros((len(xs), xs[0].shape[0], hp, wp), xs[0].dtype)
        for i, x in enumerate(xs):
            batch[i, :, :x.shape[1], :x.shape[2]] = x
        return batch

    @staticmethod
    def resize_target(target, original_size, new_size):
        """A target dict for the image resized from original_size to new_size.

        Inputs:
        - target: dict with "boxes" (M, 4) and optionally "masks" (M, H, W) bool
        - original_size, new_size: (h, w)
        Returns:
        - target: new dict; boxes by `resize_boxes`, masks by `resize_masks` (bool)
        """
        if not isinstance(target, dict) or "boxes" not in target:
            raise ValueError(f"target: expected a dict with 'boxes', got {type(target).__name__}")
        out = dict(target)
        if tuple(new_size) == tuple(original_size):
            return out
        out["boxes"] = resize_boxes(np.asarray(target["boxes"]).reshape(-1, 4), original_size, new_size)
        if "masks" in target:
            masks = np.asarray(target["masks"])
            if masks.shape[1:] != tuple(original_size):
                raise ValueError(f"target['masks']: expected (M, {original_size[0]}, "
                                 f"{original_size[1]}), got {masks.shape}")
            out["masks"] = resize_masks(masks, new_size)
        return out

    # ---- back to the original images ------------------------------------------------------
    @staticmethod
    def postprocess(detections, image_sizes, original_image_sizes):
        """Map each image's detected boxes back to its original image (torchvision's postprocess).

        Only "boxes" change (`resize_boxes` from (H', W') to (H, W), not clipped, as torchvision);
        the other keys are passed through. The mask branch pastes its 28 x 28 masks into the
        (H, W) original image from these boxes (torchvision's paste_masks_in_image), so call this
        before pasting.

        Inputs:
        - detections: list of N dicts with "boxes" (D, 4) in the resized image's pixels
        - image_sizes, original_image_sizes: as in ImageList
        Returns:
        - detections: list of N new dicts, boxes in original pixels
        """
        out = []
        for det, size, original in zip(detections, image_sizes, original_image_sizes):
            det = dict(det)
            if tuple(size) != tuple(original):
                det["boxes"] = resize_boxes(det["boxes"], size, original)
            out.append(det)
        return out

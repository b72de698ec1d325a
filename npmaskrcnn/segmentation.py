"""COCO segmentations: masks to compressed RLE and back, and the checks a segmentation must pass.

An annotation's `segmentation` is a list of polygons ([x1, y1, x2, y2, ...] in pixels), an
uncompressed RLE (`counts` a list of run lengths) or a compressed RLE (`counts` a string);
pycocotools turns each into an (H, W) mask. RLE runs go down the columns (Fortran order).

Shape shorthand:
    H, W   image height and width      M   masks
"""

import warnings

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask):
    """Compressed RLE of one mask, JSON-ready.

    Inputs:
    - mask: (H, W) bool
    Returns:
    - rle: {"size": [H, W], "counts": str}
    """
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_masks(masks):
    """Compressed RLEs of several masks at once.

    Inputs:
    - masks: (M, H, W) bool
    Returns:
    - rles: list of M {"size": [H, W], "counts": str}
    """
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.transpose(masks, (1, 2, 0)), dtype=np.uint8))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def is_json_int(v):
    """True for a JSON integer (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite_number(v):
    """True for a JSON int or float that is not NaN or infinite (Python's json reads NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_segmentation(segmentation, ann_id, height, width):
    """Raise a ValueError naming the annotation unless `segmentation` is a valid COCO one.

    Inputs:
    - segmentation: the annotation's `segmentation` field
    - ann_id: the annotation id, for the message
    - height, width: of the annotation's image; an RLE's `size` must equal [height, width]
    Returns: nothing
    """
    where = f"annotation id {ann_id}: field 'segmentation'"
    if isinstance(segmentation, list):
        for poly in segmentation:
            if (not isinstance(poly, list) or len(poly) % 2
                    or not all(is_finite_number(v) for v in poly)):
                raise ValueError(f"{where}: expected a list of polygons, each a flat list of an even "
                                 f"number of x, y coordinates, got {str(poly)[:80]}")
        return
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(f"{where}: expected an RLE dict with 'counts' and 'size', got keys "
                             f"{sorted(segmentation)}")
        size = segmentation["size"]
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            raise ValueError(f"{where}: RLE size {segmentation['size']} does not match the image's "
                             f"[height, width] = {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
                raise ValueError(f"{where}: expected uncompressed RLE counts of non-negative ints "
                                 f"summing to height * width = {height * width}")
        elif not isinstance(counts, (str, bytes)):
            raise ValueError(f"{where}: expected RLE counts as a list of ints or a string, got "
                             f"{type(counts).__name__}")
        return
    raise ValueError(f"{where}: expected a list of polygons or an RLE dict, got "
                     f"{type(segmentation).__name__}")


def decode_segmentation(segmentation, height, width):
    """The mask of a COCO segmentation (polygons, uncompressed RLE or compressed RLE).

    Inputs:
    - segmentation: a segmentation that `check_segmentation` accepts
    - height, width: of the image
    Returns:
    - mask: (H, W) bool
    """
    if isinstance(segmentation, list):
        # polygons of fewer than 3 points have no area (and pycocotools reads 4 numbers as a box)
        polys = [[float(v) for v in p] for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips numpy 2's __array__(copy=...) deprecation; harmless
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)

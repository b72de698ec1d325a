"""COCO-format datasets: write one, read any, and build the ground truth COCOeval expects.

The COCO instance format (Lin et al. 2014, cocodataset.org/#format-data) is a folder of images
plus one JSON with `images`, `categories` and `annotations`; an annotation's `segmentation` is a
list of polygons, an uncompressed RLE (`counts` a list of run lengths) or a compressed RLE
(`counts` a string). pycocotools turns each into a mask. Reading returns exactly what
`ShapesDataset` returns, so training and evaluation do not care where the data came from.

Shape shorthand:
    H, W   image height and width
    M      instances in one image (crowd annotations excluded)
    K      classes

Naming:
    label          contiguous class index 1..K (0 is background), in sorted category-id order
    category_id    the id a COCO JSON uses for a class; `label_to_category_id` maps between them
    image_id       the id of an image in the JSON; `image_ids[i]` is the id of `dataset[i]`
    RLE            run-length encoding, column-major, as pycocotools writes it
"""

import copy
import json
import os
import warnings

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .files import atomic_write, write_json_atomic  # noqa: F401  (write_json_atomic: part of this module's API)
from .imageio import read_image
from .segmentation import (check_segmentation, decode_segmentation, encode_mask,  # noqa: F401
                           encode_masks, is_finite_number, is_json_int)
from .shapes import masks_to_boxes

REQUIRED_KEYS = ("images", "annotations", "categories")
REQUIRED_IMAGE_FIELDS = ("id", "file_name", "height", "width")
REQUIRED_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "segmentation")


class CocoDataset:
    """A COCO-format instance segmentation dataset, indexable like `ShapesDataset`.

    `ds[i]` -> (image (H, W, 3) uint8, {"boxes" (M, 4) float32 xyxy, "labels" (M,) int64 1..K,
    "masks" (M, H, W) bool}). Images are read from disk on access, through `imageio.read_image`
    (grey, 16-bit, palette, RGBA, CMYK and EXIF-rotated files become 8-bit RGB); crowd
    annotations are skipped.
    """

    def __init__(self, coco_dict, image_dir, on_bad_image="raise"):
        """Validate a parsed instances JSON and index it.

        Inputs:
        - coco_dict: the parsed JSON
        - image_dir: folder the images' `file_name`s are relative to
        - on_bad_image: "raise" (default): an image that is missing, cannot be decoded or does not
          have the JSON's size raises, naming the file, when it is read; "skip": every image is
          read once here and those are left out, with their annotations, and one warning names
          each file and why (also in `self.skipped`, a list of (file_name, reason))
        Returns: the dataset; raises ValueError naming the offending field
        """
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image: expected 'raise' or 'skip', got {on_bad_image!r}")
        for key in REQUIRED_KEYS:
            if key not in coco_dict:
                raise ValueError(f"COCO JSON is missing the top-level field '{key}' "
                                 f"(expected {', '.join(REQUIRED_KEYS)})")
            if not isinstance(coco_dict[key], list):
                raise ValueError(f"COCO JSON field '{key}': expected a list, got "
                                 f"{type(coco_dict[key]).__name__}")
        self.coco_dict = coco_dict
        self.image_dir = image_dir
        seen = set()
        for img in coco_dict["images"]:
            if not isinstance(img, dict):
                raise ValueError(f"COCO JSON field 'images': expected objects, got "
                                 f"{type(img).__name__}")
            for field in REQUIRED_IMAGE_FIELDS:
                if field not in img:
                    raise ValueError(f"image id {img.get('id')}: missing field '{field}' "
                                     f"(expected {', '.join(REQUIRED_IMAGE_FIELDS)})")
            for field in ("height", "width"):
                if not is_json_int(img[field]) or img[field] < 1:
                    raise ValueError(f"image id {img['id']}: field '{field}' must be a positive "
                                     f"integer, got {img[field]!r}")
            if not isinstance(img["file_name"], str) or not img["file_name"]:
                raise ValueError(f"image id {img['id']}: field 'file_name' must be a non-empty "
                                 f"string, got {img['file_name']!r}")
            if not is_json_int(img["id"]) or img["id"] in seen:
                raise ValueError(f"image id {img['id']!r}: field 'id' must be a unique integer")
            seen.add(img["id"])
        for cat in coco_dict["categories"]:
            if not isinstance(cat, dict) or "id" not in cat or not is_json_int(cat["id"]):
                raise ValueError(f"COCO JSON field 'categories': each category needs an integer "
                                 f"'id', got {str(cat)[:80]}")
        category_ids = sorted(c["id"] for c in coco_dict["categories"])
        if len(set(category_ids)) != len(category_ids):
            raise ValueError(f"COCO JSON field 'categories': duplicate category ids in "
                             f"{category_ids}")
        names = {c["id"]: c.get("name", str(c["id"])) for c in coco_dict["categories"]}
        self.class_names = tuple(names[c] for c in category_ids)
        self.label_to_category_id = {label: c for label, c in enumerate(category_ids, start=1)}
        self.category_id_to_label = {c: label for label, c in self.label_to_category_id.items()}
        self.images = list(coco_dict["images"])
        self.image_ids = [img["id"] for img in self.images]
        by_id = {img["id"]: img for img in self.images}
        self._annotations = {image_id: [] for image_id in self.image_ids}
        for ann in coco_dict["annotations"]:
            if not isinstance(ann, dict):
                raise ValueError(f"COCO JSON field 'annotations': expected objects, got "
                                 f"{type(ann).__name__}")
            for field in REQUIRED_ANNOTATION_FIELDS:
                if field not in ann:
                    raise ValueError(f"annotation id {ann.get('id')}: missing field '{field}' "
                                     f"(expected {', '.join(REQUIRED_ANNOTATION_FIELDS)})")
            if ann["image_id"] not in by_id:
                raise ValueError(f"annotation id {ann['id']}: field 'image_id' = {ann['image_id']} "
                                 f"is not the id of any image")
            if ann["category_id"] not in self.category_id_to_label:
                raise ValueError(f"annotation id {ann['id']}: field 'category_id' = "
                                 f"{ann['category_id']} is not the id of any category")
            img = by_id[ann["image_id"]]
            check_segmentation(ann["segmentation"], ann["id"], img["height"], img["width"])
            if "bbox" in ann and (not isinstance(ann["bbox"], list) or len(ann["bbox"]) != 4
                                  or not all(is_finite_number(v) for v in ann["bbox"])
                                  or ann["bbox"][2] < 0 or ann["bbox"][3] < 0):
                raise ValueError(f"annotation id {ann['id']}: field 'bbox' must be [x, y, w, h] "
                                 f"of finite numbers with w, h >= 0, got {ann['bbox']}")
            self._annotations[ann["image_id"]].append(ann)
        self.skipped = []
        if on_bad_image == "skip":
            self._skip_bad_images()

    def _skip_bad_images(self):
        """Read every image once; drop those that fail (`on_bad_image="skip"`), with one warning."""
        keep = []
        for info in self.images:
            try:
                self._read(info)
            except (OSError, ValueError) as e:
                self.skipped.append((info["file_name"], str(e)))
                del self._annotations[info["id"]]
            else:
                keep.append(info)
        self.images = keep
        self.image_ids = [info["id"] for info in keep]
        if self.skipped:
            lines = "".join(f"\n  {name}: {reason}" for name, reason in self.skipped)
            warnings.warn(f"COCO dataset: skipped {len(self.skipped)} of "
                          f"{len(self.skipped) + len(keep)} images that cannot be used:{lines}",
                          stacklevel=3)

    def _read(self, info, return_conversions=False):
        """Read one image of the JSON and check its size against the JSON's height and width."""
        path = os.path.join(self.image_dir, info["file_name"])
        image, conversions = read_image(path, return_conversions=True)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"image id {info['id']}: {path} is {image.shape[1]}x{image.shape[0]} "
                             f"(width x height) but the JSON says {info['width']}x{info['height']}")
        return (image, conversions) if return_conversions else image

    def __len__(self):
        return len(self.images)

    def head(self, n):
        """The dataset of its first n images (in the JSON's order), sharing this one's index."""
        sub = copy.copy(self)
        sub.images, sub.image_ids = self.images[:n], self.image_ids[:n]
        return sub

    def image_path(self, i):
        """Inputs: i, the dataset index. Returns: the path of image i on disk."""
        return os.path.join(self.image_dir, self.images[i]["file_name"])

    def load_image(self, i, return_conversions=False):
        """Image i as 8-bit RGB, converted as `imageio.read_image` does (alpha dropped, 16-bit
        scaled, EXIF orientation applied).

        Inputs:
        - i: int in [0, len)
        - return_conversions: also return what was converted
        Returns:
        - image: (H, W, 3) uint8
        - conversions: tuple of str (only with return_conversions=True)
        Raises FileNotFoundError or ValueError naming the file if it is missing, cannot be
        decoded, or is not the JSON's size.
        """
        return self._read(self.images[i], return_conversions)

    def load_target(self, i):
        """The instances of image i, without reading the image.

        Inputs:
        - i: int in [0, len)
        Returns:
        - target: {"boxes": (M, 4) float32 xyxy, "labels": (M,) int64, "masks": (M, H, W) bool};
          boxes are the mask extents, or the `bbox` field where a mask is empty
        """
        info = self.images[i]
        H, W = info["height"], info["width"]
        anns = [a for a in self._annotations[info["id"]] if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), H, W), dtype=bool)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        for k, ann in enumerate(anns):
            masks[k] = decode_segmentation(ann["segmentation"], H, W)
            if masks[k].any():
                boxes[k] = masks_to_boxes(masks[k:k + 1])[0]
            elif "bbox" in ann:
                x, y, w, h = ann["bbox"]
                boxes[k] = (x, y, x + w, y + h)
            else:
                raise ValueError(f"annotation id {ann['id']}: the segmentation is empty and there "
                                 f"is no field 'bbox' to take the box from")
        labels = np.array([self.category_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        return {"boxes": boxes, "labels": labels, "masks": masks}

    def __getitem__(self, i):
        """Image i and its target (see `load_image`, `load_target`).

        Inputs:
        - i: int in [-len, len)
        Returns:
        - image: (H, W, 3) uint8
        - target: dict as `load_target`
        """
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        return self.load_image(i), self.load_target(i)

    def __repr__(self):
        return f"CocoDataset({len(self)} images, classes={self.class_names})"


def load_coco(instances_json, image_dir=None, on_bad_image="raise"):
    """Read a COCO-format instance segmentation dataset.

    Inputs:
    - instances_json: path of the instances JSON
    - image_dir: folder of the images; default the JSON's folder + "/images" if that exists,
      else the JSON's folder
    - on_bad_image: "raise" or "skip" (see `CocoDataset`; "skip" reads every image once here)
    Returns:
    - dataset: CocoDataset; FileNotFoundError if the JSON is missing, ValueError (naming the
      field and annotation id) if it is malformed
    """
    if not isinstance(instances_json, (str, os.PathLike)):
        raise TypeError(f"instances_json: expected a path, got {type(instances_json).__name__}")
    if not os.path.isfile(instances_json):
        raise FileNotFoundError(f"COCO instances JSON not found: {instances_json}")
    with open(instances_json, encoding="utf-8") as f:
        try:
            coco_dict = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{instances_json} is not valid JSON: {e}") from e
    if not isinstance(coco_dict, dict):
        raise ValueError(f"{instances_json}: expected a JSON object with "
                         f"{', '.join(REQUIRED_KEYS)}, got {type(coco_dict).__name__}")
    if image_dir is None:
        folder = os.path.dirname(os.path.abspath(instances_json))
        images = os.path.join(folder, "images")
        image_dir = images if os.path.isdir(images) else folder
    return CocoDataset(coco_dict, image_dir, on_bad_image)


def _label_to_category_id(dataset):
    """Inputs: a dataset. Returns: its label -> category id map (identity 1..K if it has none)."""
    mapping = getattr(dataset, "label_to_category_id", None)
    if mapping is None:
        mapping = {k: k for k in range(1, len(dataset.class_names) + 1)}
    return mapping


def dataset_to_coco(dataset):
    """The COCO ground-truth dict of a dataset held in memory (what COCOeval evaluates against).

    For a CocoDataset this is its own JSON (its image and category ids, crowd annotations kept so
    that COCOeval ignores detections on them), with `area`, `bbox` and `iscrowd` filled in where
    missing. For any other dataset (`ShapesDataset`) the annotations are built from the targets:
    RLE of each mask, area = mask pixels, bbox [x, y, w, h] from the box.

    Inputs:
    - dataset: indexable as `(image, target)`, with `class_names` and `image_ids`
    Returns:
    - coco: {"images", "categories", "annotations"}
    """
    if isinstance(dataset, CocoDataset):
        return _coco_dataset_to_coco(dataset)
    mapping = _label_to_category_id(dataset)
    images, annotations = [], []
    for i, image_id in enumerate(dataset.image_ids):
        image, target = dataset[i]
        H, W = image.shape[:2]
        images.append({"id": int(image_id), "file_name": f"{int(image_id):06d}.png",
                       "height": int(H), "width": int(W)})
        rles = encode_masks(target["masks"])
        for rle, box, label in zip(rles, target["boxes"], target["labels"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image_id),
                "category_id": int(mapping[int(label)]), "segmentation": rle,
                "area": float(mask_utils.area(rle)), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0})
    categories = [{"id": int(mapping[k]), "name": name}
                  for k, name in enumerate(dataset.class_names, start=1)]
    return {"images": images, "categories": categories, "annotations": annotations}


def _coco_dataset_to_coco(dataset):
    """`dataset_to_coco` for a CocoDataset: its own annotations, completed.

    Inputs:
    - dataset: CocoDataset
    Returns:
    - coco: dict as `dataset_to_coco`
    """
    images, annotations = [], []
    for info in dataset.images:
        images.append({k: info[k] for k in REQUIRED_IMAGE_FIELDS})
        for ann in dataset._annotations[info["id"]]:
            ann = copy.deepcopy(ann)
            ann.setdefault("iscrowd", 0)
            if "area" not in ann or "bbox" not in ann:
                mask = decode_segmentation(ann["segmentation"], info["height"], info["width"])
                rle = encode_mask(mask)
                ann.setdefault("area", float(mask_utils.area(rle)))
                ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
            annotations.append(ann)
    categories = copy.deepcopy(dataset.coco_dict["categories"])
    return {"images": images, "categories": categories, "annotations": annotations}


def save_coco(dataset, out_dir, json_name="instances.json"):
    """Write a dataset in COCO format: PNG images plus an instances JSON.

    Images go to `out_dir/images/000001.png` ... (named by image id); the JSON to
    `out_dir/json_name`, with RLE segmentations (see `dataset_to_coco`). Every file is written
    atomically.

    Inputs:
    - dataset: indexable as `(image, target)`, with `class_names` and `image_ids`
    - out_dir: output folder, created if needed
    - json_name: file name of the JSON inside out_dir
    Returns:
    - path: str, the path of the JSON
    """
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    coco = dataset_to_coco(dataset)
    for i, info in enumerate(coco["images"]):
        image = dataset.load_image(i) if isinstance(dataset, CocoDataset) else dataset[i][0]
        info["file_name"] = f"{int(info['id']):06d}.png"
        path = os.path.join(image_dir, info["file_name"])
        atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))
    path = os.path.join(out_dir, json_name)
    write_json_atomic(coco, path)
    return path


def detections_to_json(entries, class_names, model, score_thresh):
    """The `predict` command's detections file: per image its detections, masks as COCO RLE.

    Inputs:
    - entries: list of dicts with "file", "figure", "image" ((H, W, 3) array) and "pred" (a
      prediction dict of that image)
    - class_names: K names; model: the checkpoint's path; score_thresh: the threshold applied
    Returns: a JSON-ready dict
    """
    images = []
    for e in entries:
        pred, (h, w) = e["pred"], e["image"].shape[:2]
        images.append({
            "file": e["file"], "figure": e["figure"], "height": int(h), "width": int(w),
            "detections": [{"box": [float(v) for v in box], "label": int(label),
                            "class_name": class_names[int(label) - 1], "score": float(score), "mask": rle}
                           for box, label, score, rle in zip(pred["boxes"], pred["labels"],
                                                             pred["scores"], encode_masks(pred["masks"]))]})
    return {"model": model, "class_names": list(class_names), "score_thresh": score_thresh,
            "box_format": "x1, y1, x2, y2 pixels", "mask_format": "COCO compressed RLE", "images": images}

"""COCO box and mask AP: pycocotools' COCOeval on our predictions.

The evaluator *is* COCOeval (the metric of the Mask R-CNN paper, Sec. 4): the ground truth is
`coco.dataset_to_coco(dataset)`, the predictions are converted to COCO results (bbox [x, y, w, h],
RLE segmentation, score), and the numbers are COCOeval's own. AP averages precision over IoU
thresholds 0.50:0.05:0.95 and 101 recall points; AP50 / AP75 at one threshold; APs / APm / APl
over objects of area < 32^2, 32^2..96^2, > 96^2 pixels. As detectron2 does, mask AP is computed
from the results without their boxes, so a detection's area (for APs/m/l) is its mask area.

Shape shorthand:
    N      images
    D      detections in one image
    H, W   image height and width
    K      classes

Naming:
    prediction   dict of one image: "boxes" (D, 4) xyxy, "labels" (D,) 1..K, "scores" (D,),
                 "masks" (D, H, W) bool
    result       one detection in COCO results format (image_id, category_id, bbox, score,
                 segmentation)
    iou_type     "bbox" or "segm", as COCOeval calls them
    metrics      {"bbox": {...}, "segm": {...}}; AP values are fractions, NaN where undefined
                 (COCOeval's -1, e.g. APl when no object is large)
"""

import contextlib
import copy
import io
import math

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from npmaskrcnn.coco import dataset_to_coco, encode_masks, write_json_atomic

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SUMMARY_NAMES = STAT_NAMES[:6]


def predictions_to_coco_results(predictions, image_ids, label_to_category_id=None):
    """Convert per-image predictions to a COCO results list.

    Inputs:
    - predictions: list of N prediction dicts (see Naming); "masks" may be absent (box-only) and
      non-bool masks are thresholded at 0.5
    - image_ids: N COCO image ids, one per prediction
    - label_to_category_id: dict label -> category id; default identity
    Returns:
    - results: list of dicts with image_id, category_id, bbox [x, y, w, h], score and, when masks
      are given, segmentation (RLE, counts as str)
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} image ids")
    results = []
    for i, (pred, image_id) in enumerate(zip(predictions, image_ids)):
        if not isinstance(pred, dict) or not all(k in pred for k in ("boxes", "labels", "scores")):
            raise ValueError(f"predictions[{i}]: expected a dict with 'boxes', 'labels', 'scores'")
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(pred["labels"]).reshape(-1)
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"predictions[{i}]: 'boxes', 'labels', 'scores' have different "
                             f"lengths {len(boxes)}, {len(labels)}, {len(scores)}")
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
            raise ValueError(f"predictions[{i}]: 'boxes' and 'scores' must be finite, got NaN or inf")
        rles = [None] * len(boxes)
        if "masks" in pred:
            masks = np.asarray(pred["masks"])
            if masks.dtype != bool:
                masks = masks >= 0.5
            rles = encode_masks(masks)
        for box, label, score, rle in zip(boxes, labels, scores, rles):
            x1, y1, x2, y2 = box
            category_id = int(label) if label_to_category_id is None else label_to_category_id[int(label)]
            result = {"image_id": int(image_id), "category_id": int(category_id),
                      "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                      "score": float(score)}
            if rle is not None:
                result["segmentation"] = rle
            results.append(result)
    return results


def _coco_gt(coco_dict):
    """Inputs: a COCO ground-truth dict. Returns: a pycocotools COCO object over it (silently)."""
    coco_gt = COCO()
    coco_gt.dataset = coco_dict
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    return coco_gt


def _coco_dt(coco_gt, results, iou_type):
    """The COCO object of the results for one iou_type, as `COCO.loadRes` builds it.

    Inputs:
    - coco_gt: ground-truth COCO
    - results: list of result dicts
    - iou_type: "bbox" or "segm"; for "segm" the boxes are dropped (area from the mask)
    Returns:
    - coco_dt: COCO; with no results, an empty one (loadRes cannot take an empty list)
    """
    if not results:
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                           "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                           "annotations": []}
        coco_dt.createIndex()
        return coco_dt
    results = copy.deepcopy(results)  # loadRes writes into the dicts
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    return coco_gt.loadRes(results)


def _metrics_from_cocoeval(cocoeval, class_names, category_ids):
    """Read the summary, per-class AP and PR curves out of a finished COCOeval.

    Inputs:
    - cocoeval: COCOeval after evaluate / accumulate / summarize
    - class_names: K names; category_ids: their K category ids
    Returns:
    - metrics: {"AP", ..., "APl": float, "stats": list of 12, "per_class": {name: AP},
      "pr_curves": {"recall": (101,), "precision_50": {name: (101,)}, "precision_75": {...}}}
    """
    stats = [float(s) for s in cocoeval.stats]
    metrics = {name: (s if s >= 0 else float("nan")) for name, s in zip(SUMMARY_NAMES, stats)}
    metrics["stats"] = stats
    params = cocoeval.params
    precision = cocoeval.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M maxDets)
    area = params.areaRngLbl.index("all")
    max_det = params.maxDets.index(100)
    t50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    per_class, pr50, pr75 = {}, {}, {}
    for name, category_id in zip(class_names, category_ids):
        k = params.catIds.index(category_id)
        p = precision[:, :, k, area, max_det]  # (T, R); -1 where the class has no ground truth
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        pr50[name] = precision[t50, :, k, area, max_det].copy()
        pr75[name] = precision[t75, :, k, area, max_det].copy()
    metrics["per_class"] = per_class
    metrics["pr_curves"] = {"recall": np.array(params.recThrs, dtype=np.float64),
                            "precision_50": pr50, "precision_75": pr75}
    return metrics


def evaluate_predictions(predictions, dataset, iou_types=("bbox", "segm"), results_path=None,
                         verbose=False):
    """COCO AP of predictions on a dataset, by COCOeval.

    Inputs:
    - predictions: list of prediction dicts, one per image of `dataset`, in dataset order
    - dataset: ShapesDataset, CocoDataset, or any dataset with `class_names` and `image_ids`
    - iou_types: which of "bbox", "segm" to evaluate
    - results_path: if given, the COCO results JSON is written there (atomically)
    - verbose: let COCOeval print its usual summary
    Returns:
    - metrics: {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "stats", "per_class",
      "pr_curves"}} (see `_metrics_from_cocoeval`)
    """
    gt = dataset_to_coco(dataset)
    label_to_category_id = getattr(dataset, "label_to_category_id", None)
    results = predictions_to_coco_results(predictions, dataset.image_ids, label_to_category_id)
    if results_path is not None:
        write_json_atomic(results, results_path)
    category_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    metrics = {}
    with out:
        coco_gt = _coco_gt(gt)
        for iou_type in iou_types:
            coco_dt = _coco_dt(coco_gt, results, iou_type)
            cocoeval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            cocoeval.evaluate()
            cocoeval.accumulate()
            cocoeval.summarize()
            metrics[iou_type] = _metrics_from_cocoeval(cocoeval, dataset.class_names, category_ids)
    return metrics


def predict_dataset(model, dataset, batch_size=8, progress=False):
    """Run `model.predict` over a dataset in batches.

    Inputs:
    - model: has `predict(list of (H, W, 3) uint8 images) -> list of prediction dicts`
    - dataset: indexable as `(image, target)`
    - batch_size: images per `predict` call
    - progress: show a tqdm bar
    Returns:
    - predictions: list of len(dataset) prediction dicts, in dataset order
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    predictions = []
    with tqdm(total=len(dataset), disable=not progress, desc="predict", unit="img") as bar:
        for start in range(0, len(dataset), batch_size):
            images = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = model.predict(images)
            if len(batch) != len(images):
                raise ValueError(f"model.predict returned {len(batch)} predictions for "
                                 f"{len(images)} images")
            predictions.extend(batch)
            bar.update(len(images))
    return predictions


def evaluate_model(model, dataset, batch_size=8, results_path=None, progress=False):
    """Predict on every image of a dataset and compute its COCO box and mask AP.

    Inputs:
    - model: has `predict(images) -> list of prediction dicts`
    - dataset: as `evaluate_predictions`
    - batch_size, progress: as `predict_dataset`
    - results_path: as `evaluate_predictions`
    Returns:
    - metrics: as `evaluate_predictions`
    """
    predictions = predict_dataset(model, dataset, batch_size=batch_size, progress=progress)
    return evaluate_predictions(predictions, dataset, results_path=results_path)


ERROR_TYPES = ("class", "duplicate", "localization", "background")


def _match_image(pred, target, iou_type, iou_threshold):
    """COCO-style greedy matching of one image's detections at one IoU threshold.

    Detections in descending score order each take the unmatched ground truth of their own class
    with the highest IoU, if it reaches `iou_threshold` (as COCOeval does, without crowd
    regions). An unmatched detection is typed by its best IoU with *any* ground truth:
    "class" (>= threshold, another class), "duplicate" (>= threshold, its own class, already
    taken), "localization" (0.1 up to the threshold) or "background" (< 0.1).

    Returns:
    - kinds: (D,) object array: "tp" or one of ERROR_TYPES
    - missed: (M,) bool, ground truth no detection matched
    """
    from pycocotools import mask as mask_utils

    gt_labels = np.asarray(target["labels"])
    labels, scores = np.asarray(pred["labels"]), np.asarray(pred["scores"])
    d, m = len(labels), len(gt_labels)
    if d and m:
        if iou_type == "segm":
            gt = encode_masks(np.asarray(target["masks"]).astype(bool))
            dt = encode_masks(np.asarray(pred["masks"]).astype(bool))
        else:
            gt = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in np.asarray(target["boxes"], np.float64)]
            dt = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in np.asarray(pred["boxes"], np.float64)]
        iou = np.asarray(mask_utils.iou(dt, gt, [0] * m)).reshape(d, m)
    else:
        iou = np.zeros((d, m))
    taken = np.zeros(m, bool)
    kinds = np.empty(d, dtype=object)
    for j in np.argsort(-scores, kind="stable"):
        free = (gt_labels == labels[j]) & ~taken
        cand = np.where(free, iou[j], -1.0)
        if m and cand.max() >= iou_threshold:
            taken[int(np.argmax(cand))] = True
            kinds[j] = "tp"
            continue
        best = int(np.argmax(iou[j])) if m else -1
        top = iou[j, best] if m else 0.0
        if top >= iou_threshold:
            kinds[j] = "class" if gt_labels[best] != labels[j] else "duplicate"
        else:
            kinds[j] = "localization" if top >= 0.1 else "background"
    return kinds, ~taken


def error_breakdown(predictions, dataset, iou_type="segm", iou_threshold=0.5, min_score=0.0):
    """Where the AP at one IoU threshold goes: false positives by type, and misses.

    The false positives are typed as in `_match_image`; for each type, AP50 (AP at
    `iou_threshold`; COCOeval) is recomputed with the detections of that type removed, which
    says how much that kind of error costs. With all false positives removed, what is left below
    100 is the misses.

    Inputs:
    - predictions, dataset: as `evaluate_predictions`
    - iou_type: "segm" or "bbox"; iou_threshold: 0.5 or 0.75 (a COCOeval threshold)
    - min_score: count only false positives scoring at least this (all are removed for the AP)
    Returns:
    - report: {"AP": AP at the threshold, "objects", "true_positives", "missed": counts,
      "false_positives": {type: count}, "AP_without": {type: AP at the threshold without it,
      and "all": without any false positive}}
    """
    key = {0.5: "AP50", 0.75: "AP75"}.get(iou_threshold)
    if key is None:
        raise ValueError(f"iou_threshold: expected 0.5 or 0.75, got {iou_threshold!r}")
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type: expected 'segm' or 'bbox', got {iou_type!r}")
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images")
    if iou_type == "segm" and not all(isinstance(p, dict) and "masks" in p for p in predictions):
        raise ValueError("predictions: iou_type 'segm' needs 'masks' in every prediction")
    kinds, counts = [], {t: 0 for t in ERROR_TYPES}
    objects = missed = 0
    for pred, i in zip(predictions, range(len(dataset))):
        k, miss = _match_image(pred, dataset[i][1], iou_type, iou_threshold)
        kinds.append(k)
        objects += miss.size
        missed += int(miss.sum())
        strong = np.asarray(pred["scores"]) >= min_score
        for t in ERROR_TYPES:
            counts[t] += int(((k == t) & strong).sum())

    def ap_keeping(keep):
        kept = [{name: (np.asarray(v)[keep(k)] if name in ("boxes", "labels", "scores", "masks") else v)
                 for name, v in p.items()} for p, k in zip(predictions, kinds)]
        return evaluate_predictions(kept, dataset, iou_types=(iou_type,))[iou_type][key]

    without = {t: ap_keeping(lambda k, t=t: k != t) for t in ERROR_TYPES}
    without["all"] = ap_keeping(lambda k: k == "tp")
    return {"AP": ap_keeping(lambda k: np.ones(len(k), bool)), "objects": objects,
            "true_positives": objects - missed, "missed": missed, "false_positives": counts,
            "AP_without": without, "iou_type": iou_type, "iou_threshold": iou_threshold,
            "min_score": min_score}


def format_errors(report):
    """The error breakdown as a few lines of text (percent)."""
    t, thr = report["iou_type"], report["iou_threshold"]
    lines = [f"{t} AP at IoU {thr}: {100 * report['AP']:.2f}; {report['objects']} objects, "
             f"{report['missed']} never matched",
             f"false positives (score >= {report['min_score']}) and the AP without them:"]
    for name in ERROR_TYPES:
        lines.append(f"  {name:<13}{report['false_positives'][name]:>6}   "
                     f"{100 * report['AP_without'][name]:.2f}")
    lines.append(f"  {'all':<13}{sum(report['false_positives'].values()):>6}   "
                 f"{100 * report['AP_without']['all']:.2f}  (what the misses leave)")
    return "\n".join(lines)


def _percent(value):
    """Inputs: a fraction or NaN. Returns: it in percent with one decimal, "-" if NaN."""
    return "-" if value != value else f"{100.0 * value:.1f}"


def format_metrics(metrics):
    """A small text table of COCO metrics, in percent.

    Inputs:
    - metrics: as returned by `evaluate_predictions`
    Returns:
    - text: rows bbox / segm with AP, AP50, AP75, APs, APm, APl, then the per-class AP
    """
    iou_types = [t for t in ("bbox", "segm") if t in metrics]
    lines = ["      " + "".join(f"{name:>7}" for name in SUMMARY_NAMES)]
    for t in iou_types:
        lines.append(f"{t:<6}" + "".join(f"{_percent(metrics[t][name]):>7}" for name in SUMMARY_NAMES))
    class_names = list(metrics[iou_types[0]]["per_class"]) if iou_types else []
    width = max([len(name) for name in class_names] + [5])
    lines.append("")
    lines.append(f"{'class':<{width}}" + "".join(f"{t + ' AP':>9}" for t in iou_types))
    for name in class_names:
        lines.append(f"{name:<{width}}"
                     + "".join(f"{_percent(metrics[t]['per_class'][name]):>9}" for t in iou_types))
    return "\n".join(lines)


def to_jsonable(x):
    """Metrics (dicts, lists, numpy arrays, floats) as plain JSON values, NaN -> null."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x

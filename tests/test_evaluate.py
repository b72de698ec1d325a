"""Tests of COCO evaluation: perfect and empty predictions, agreement with COCOeval called directly."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from npmaskrcnn.coco import dataset_to_coco, load_coco, save_coco
from npmaskrcnn.evaluate import (evaluate_model, evaluate_predictions, format_metrics,
                                 predict_dataset, predictions_to_coco_results)
from npmaskrcnn.shapes import ShapesDataset

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(16, seed=21)


def perfect_predictions(dataset):
    predictions = []
    for i in range(len(dataset)):
        _, target = dataset[i]
        predictions.append({"boxes": target["boxes"].copy(), "labels": target["labels"].copy(),
                            "scores": np.ones(len(target["labels"])),
                            "masks": target["masks"].copy()})
    return predictions


def empty_predictions(dataset):
    return [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=np.int64),
             "scores": np.zeros(0), "masks": np.zeros((0, 128, 128), dtype=bool)}
            for _ in range(len(dataset))]


def test_perfect_predictions_give_ap_one(dataset):
    metrics = evaluate_predictions(perfect_predictions(dataset), dataset)
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
        assert m["AP75"] == pytest.approx(1.0)
        assert np.isnan(m["APl"]) and m["stats"][5] == -1  # no object is larger than 96^2
        assert len(m["stats"]) == 12
        assert m["per_class"] == pytest.approx({"square": 1.0, "circle": 1.0, "triangle": 1.0})
        curves = m["pr_curves"]
        np.testing.assert_allclose(curves["recall"], np.linspace(0, 1, 101))
        for name in dataset.class_names:
            np.testing.assert_allclose(curves["precision_50"][name], 1.0)
            np.testing.assert_allclose(curves["precision_75"][name], 1.0)


def test_empty_predictions_give_zero(dataset):
    metrics = evaluate_predictions(empty_predictions(dataset), dataset)
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AP75"] == 0.0
        assert all(ap == 0.0 for ap in m["per_class"].values())
    assert "0.0" in format_metrics(metrics)


def perturbed(dataset):
    """Ground truth with the first box of every image shifted, scores spread, one false positive."""
    rng = np.random.default_rng(0)
    predictions = perfect_predictions(dataset)
    for p in predictions:
        p["boxes"][0] += np.array([3, -2, 3, -2], dtype=np.float32)
        p["masks"][0] = np.roll(p["masks"][0], (2, 3), axis=(0, 1))
        p["scores"] = rng.uniform(0.2, 1.0, size=len(p["scores"]))
        p["boxes"] = np.concatenate([p["boxes"], [[0, 0, 20, 20]]]).astype(np.float32)
        p["labels"] = np.concatenate([p["labels"], [2]])
        p["scores"] = np.concatenate([p["scores"], [0.5]])
        fp_mask = np.zeros((1, 128, 128), dtype=bool)
        fp_mask[0, :20, :20] = True
        p["masks"] = np.concatenate([p["masks"], fp_mask])
    return predictions


def direct_cocoeval(dataset, predictions, iou_type):
    """COCOeval called the textbook way, with results built here independently of evaluate.py."""
    results = []
    for image_id, p in zip(dataset.image_ids, predictions):
        for box, label, score, mask in zip(p["boxes"], p["labels"], p["scores"], p["masks"]):
            r = {"image_id": image_id, "category_id": int(label), "score": float(score)}
            if iou_type == "bbox":
                x1, y1, x2, y2 = map(float, box)
                r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                r["segmentation"] = rle
            results.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset_to_coco(dataset)
        gt.createIndex()
        cocoeval = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval.stats


def test_agrees_with_cocoeval_called_directly(dataset):
    predictions = perturbed(dataset)
    metrics = evaluate_predictions(predictions, dataset)
    for iou_type in ("bbox", "segm"):
        stats = direct_cocoeval(dataset, predictions, iou_type)
        np.testing.assert_allclose(metrics[iou_type]["stats"], stats)
        assert 0.2 < metrics[iou_type]["AP"] < 0.95  # the perturbation does cost AP
        for name, value in zip(SUMMARY, stats):
            expected = value if value >= 0 else np.nan
            np.testing.assert_allclose(metrics[iou_type][name], expected)


def test_results_json_loadable(dataset, tmp_path):
    path = str(tmp_path / "results.json")
    predictions = perturbed(dataset)
    evaluate_predictions(predictions, dataset, results_path=path)
    with open(path) as f:
        results = json.load(f)
    assert len(results) == sum(len(p["scores"]) for p in predictions)
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert isinstance(results[0]["segmentation"]["counts"], str)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset_to_coco(dataset)
        gt.createIndex()
        dt = gt.loadRes(path)
    assert len(dt.getAnnIds()) == len(results)


def test_predictions_to_coco_results_maps_ids():
    masks = np.zeros((1, 4, 5), dtype=bool)
    masks[0, 1:3, 2:4] = True
    preds = [{"boxes": np.array([[2, 1, 4, 3]]), "labels": np.array([2]), "scores": np.array([0.9]),
              "masks": masks}]
    (r,) = predictions_to_coco_results(preds, [42], {1: 7, 2: 9})
    assert r["image_id"] == 42 and r["category_id"] == 9
    assert r["bbox"] == [2.0, 1.0, 2.0, 2.0] and r["score"] == pytest.approx(0.9)
    assert mask_utils.area(r["segmentation"]) == 4
    with pytest.raises(ValueError):
        predictions_to_coco_results(preds, [1, 2])


def test_coco_dataset_uses_its_own_ids(dataset, tmp_path):
    loaded = load_coco(save_coco(dataset, str(tmp_path)))
    loaded.label_to_category_id = {1: 10, 2: 20, 3: 30}
    loaded.category_id_to_label = {10: 1, 20: 2, 30: 3}
    for ann in loaded.coco_dict["annotations"]:
        ann["category_id"] *= 10
    for cat in loaded.coco_dict["categories"]:
        cat["id"] *= 10
    metrics = evaluate_predictions(perfect_predictions(dataset), loaded, iou_types=("segm",))
    assert set(metrics) == {"segm"} and metrics["segm"]["AP"] == pytest.approx(1.0)


class OracleModel:
    """Predicts the ground truth of the images it was built for, looked up by pixel content."""

    def __init__(self, dataset):
        self.answers = {dataset[i][0].tobytes(): p
                        for i, p in enumerate(perfect_predictions(dataset))}
        self.batch_sizes = []

    def predict(self, images):
        self.batch_sizes.append(len(images))
        return [self.answers[image.tobytes()] for image in images]


def test_evaluate_model_batches(dataset):
    model = OracleModel(dataset)
    predictions = predict_dataset(model, dataset, batch_size=5)
    assert model.batch_sizes == [5, 5, 5, 1] and len(predictions) == len(dataset)
    metrics = evaluate_model(model, dataset, batch_size=8)
    assert set(metrics) == {"bbox", "segm"} and metrics["bbox"]["AP"] == pytest.approx(1.0)


def test_format_metrics(dataset):
    text = format_metrics(evaluate_predictions(perfect_predictions(dataset), dataset))
    lines = text.splitlines()
    assert lines[0].split() == list(SUMMARY)
    assert lines[1].split()[:2] == ["bbox", "100.0"] and lines[2].split()[:2] == ["segm", "100.0"]
    assert lines[1].split()[-1] == "-"  # APl undefined
    assert any(line.split() == ["triangle", "100.0", "100.0"] for line in lines)


def test_error_breakdown_perfect_and_empty(dataset):
    from npmaskrcnn.evaluate import error_breakdown, format_errors

    report = error_breakdown(perfect_predictions(dataset), dataset)
    n = sum(len(dataset[i][1]["labels"]) for i in range(len(dataset)))
    assert report["objects"] == report["true_positives"] == n and report["missed"] == 0
    assert report["false_positives"] == {"class": 0, "duplicate": 0, "localization": 0, "background": 0}
    assert report["AP"] == pytest.approx(1.0) and report["AP_without"]["all"] == pytest.approx(1.0)
    empty = error_breakdown(empty_predictions(dataset), dataset, "bbox", 0.75)
    assert empty["missed"] == n and empty["AP"] == 0.0
    assert "never matched" in format_errors(report)


def test_error_breakdown_types_each_false_positive():
    """One image, each kind of false positive added once to the perfect detections."""
    from npmaskrcnn.evaluate import error_breakdown

    sub = next(d for d in (ShapesDataset(1, seed=s) for s in range(50))
               if len(set(d[0][1]["labels"].tolist())) >= 2)
    t = sub[0][1]
    perfect = perfect_predictions(sub)[0]
    other = next(c for c in (1, 2, 3) if c != t["labels"][0])
    m0, b0 = t["masks"][0], t["boxes"][0]
    rows = np.flatnonzero(m0.any(axis=1))
    part = m0 & (np.arange(128)[:, None] < rows[0] + max(2, int(0.4 * len(rows))))  # its top 40 %
    far = np.zeros_like(m0)
    far[0:2, 0:2] = True
    far &= ~t["masks"].any(axis=0)
    extra = [(m0, b0, other, 0.97),                          # another class on object 0: "class"
             (m0, b0, t["labels"][0], 0.96),                 # a second copy: "duplicate"
             (part, b0, t["labels"][0], 0.95),               # a part of it: "localization"
             (far, np.array([0, 0, 2, 2.0]), t["labels"][0], 0.94)]       # nothing: "background"
    pred = {"boxes": np.concatenate([perfect["boxes"], [e[1] for e in extra]]),
            "labels": np.concatenate([perfect["labels"], [e[2] for e in extra]]),
            "scores": np.concatenate([np.full(len(perfect["labels"]), 0.5), [e[3] for e in extra]]),
            "masks": np.concatenate([perfect["masks"], [e[0] for e in extra]])}
    iou_part = (part & m0).sum() / (part | m0).sum()
    assert 0.1 <= iou_part < 0.5
    report = error_breakdown([pred], sub)
    assert report["false_positives"] == {"class": 1, "duplicate": 1, "localization": 1, "background": 1}
    assert report["missed"] == 0 and report["AP"] < 1.0
    assert report["AP_without"]["all"] == pytest.approx(1.0)
    for kind in ("class", "duplicate", "localization", "background"):
        assert report["AP"] <= report["AP_without"][kind] <= 1.0
    # the copy at 0.96 outranks the right detection (0.5), so COCO's matching takes the copy and
    # the 0.5 one becomes the duplicate: below min_score 0.955 it is not counted
    assert error_breakdown([pred], sub, min_score=0.955)["false_positives"] == {
        "class": 1, "duplicate": 0, "localization": 0, "background": 0}
    with pytest.raises(ValueError, match="iou_threshold"):
        error_breakdown([pred], sub, iou_threshold=0.6)
    with pytest.raises(ValueError, match="iou_type"):
        error_breakdown([pred], sub, iou_type="keypoints")
    boxes_only = {k: v for k, v in pred.items() if k != "masks"}
    with pytest.raises(ValueError, match="needs 'masks'"):
        error_breakdown([boxes_only], sub)
    assert error_breakdown([boxes_only], sub, "bbox")["true_positives"] == len(t["labels"])

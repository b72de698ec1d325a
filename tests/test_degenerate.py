"""Degenerate data: the model trains a step and predicts without NaNs or shape surprises.

Each case runs one full training step (forward, backward, gradient clip, AdamW step) of
`Config.tiny()` on 32x32 images, then `predict`. Losses and gradients must be finite, the
parameters must stay finite, and every prediction must have the documented dtypes and shapes,
also when it is empty: boxes (0, 4) float32, labels (0,) int64, scores (0,) float32,
masks (0, H, W) bool.
"""

import math

import numpy as np
import pytest

from npmaskrcnn.config import Config
from npmaskrcnn.model import MaskRCNN
from npmaskrcnn.train import LOSS_KEYS, make_optimizer, train_step

S = 32


def blank(color=(40, 80, 120)):
    image = np.empty((S, S, 3), np.uint8)
    image[:] = color
    return image


def no_instances():
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
            "masks": np.zeros((0, S, S), bool)}


def instances(rects, labels=None):
    """Rectangular instances (x1, y1, x2, y2) in whole pixels, and the image painting them."""
    image = blank()
    masks = np.zeros((len(rects), S, S), bool)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        masks[k, y1:y2, x1:x2] = True
        image[y1:y2, x1:x2] = (230, 30 + 60 * k, 10)
    labels = np.arange(1, len(rects) + 1) % 3 + 1 if labels is None else labels
    return image, {"boxes": np.asarray(rects, np.float32).reshape(-1, 4),
                   "labels": np.asarray(labels, np.int64), "masks": masks}


def check_prediction(pred):
    assert set(pred) == {"boxes", "labels", "scores", "masks"}
    d = pred["scores"].shape[0]
    assert pred["boxes"].shape == (d, 4) and pred["boxes"].dtype == np.float32
    assert pred["labels"].shape == (d,) and pred["labels"].dtype == np.int64
    assert pred["scores"].shape == (d,) and pred["scores"].dtype == np.float32
    assert pred["masks"].shape == (d, S, S) and pred["masks"].dtype == bool
    assert np.all(np.isfinite(pred["boxes"])) and np.all(np.isfinite(pred["scores"]))
    assert np.all((pred["labels"] >= 1) & (pred["labels"] <= 3))


def train_and_predict(images, targets, **overrides):
    cfg = Config.tiny(batch_size=len(images), warmup_steps=0, **overrides)
    model = MaskRCNN(cfg)
    opt = make_optimizer(model, cfg)
    row = train_step(model, opt, images, targets, 0, cfg)       # raises TrainingDiverged on NaN
    for key in LOSS_KEYS:
        assert math.isfinite(row[key]), (key, row)
    assert math.isfinite(row["grad_norm"])
    for name, p in model.named_params():
        assert np.all(np.isfinite(p)), name
    preds = model.predict(images)
    assert len(preds) == len(images)
    for pred in preds:
        check_prediction(pred)
    return row, preds


def test_images_without_instances():
    row, _ = train_and_predict([blank(), blank((200, 10, 10))], [no_instances(), no_instances()])
    # nothing to regress or segment: those losses are exactly zero, the classifiers still learn
    assert row["loss_rpn_box_reg"] == 0.0 and row["loss_box_reg"] == 0.0 and row["loss_mask"] == 0.0
    assert row["loss_objectness"] > 0 and row["loss_classifier"] > 0


def test_one_image_without_instances_beside_one_with():
    image, tgt = instances([(8, 8, 20, 20)])
    row, _ = train_and_predict([blank(), image], [no_instances(), tgt])
    assert row["loss_mask"] > 0


def test_one_instance_filling_the_whole_image():
    image, tgt = instances([(0, 0, S, S)], labels=[2])
    row, _ = train_and_predict([image], [tgt])
    assert row["loss_mask"] > 0 and row["loss_box_reg"] >= 0


@pytest.mark.parametrize("rects", [[(5, 5, 6, 6)], [(0, 0, 1, 1), (30, 29, 32, 32), (14, 3, 17, 5)]])
def test_instances_of_a_few_pixels(rects):
    image, tgt = instances(rects)
    train_and_predict([image], [tgt])


def test_thin_instances_on_the_border():
    image, tgt = instances([(0, 0, S, 1), (31, 0, 32, S)])
    train_and_predict([image], [tgt])


def test_no_anchor_is_a_positive_by_iou():
    # a 1x1 box overlaps every anchor (>= 4 px) by IoU <= 1/16 < rpn_fg_iou: only the
    # low-quality matches (Faster R-CNN's "highest IoU" rule) make any anchor positive
    image, tgt = instances([(20, 7, 21, 8)])
    train_and_predict([image], [tgt], rpn_fg_iou=1.0, rpn_bg_iou=0.99)


def test_zero_proposals_in_training_with_ground_truth():
    # every proposal is smaller than rpn_min_size, so the RPN returns none; the RoI heads still
    # train on the ground-truth boxes added to the proposals
    image, tgt = instances([(4, 4, 28, 28)])
    cfg = Config.tiny(batch_size=2, warmup_steps=0, rpn_min_size=1e6)
    model = MaskRCNN(cfg)
    row = train_step(model, make_optimizer(model, cfg), [image, blank()], [tgt, no_instances()], 0, cfg)
    assert all(math.isfinite(row[k]) for k in LOSS_KEYS)


def test_zero_proposals_in_predict():
    image, tgt = instances([(4, 4, 28, 28)])
    model = MaskRCNN(Config.tiny(rpn_min_size=1e6))
    preds = model.predict([image, blank()])
    for pred in preds:
        check_prediction(pred)
        assert pred["scores"].shape == (0,)


def test_zero_rois_in_training():
    # no ground truth and no proposals: the box head gets zero RoIs
    train_and_predict([blank()], [no_instances()], rpn_min_size=1e6)


def test_zero_detections():
    image, tgt = instances([(4, 4, 20, 20)])
    _, preds = train_and_predict([image], [tgt], box_score_thresh=1.0)
    assert preds[0]["scores"].shape == (0,) and preds[0]["masks"].shape == (0, S, S)


def test_predict_on_a_uniform_image_and_a_batch_of_one_size():
    model = MaskRCNN(Config.tiny())
    for images in ([blank()], np.stack([blank(), blank((0, 0, 0))]), blank((255, 255, 255))):
        preds = model.predict(images)
        for pred in preds:
            check_prediction(pred)


def test_predict_on_non_square_and_tiny_images():
    model = MaskRCNN(Config.tiny())
    for h, w in ((1, 1), (5, 40), (33, 31)):
        pred = model.predict(np.zeros((h, w, 3), np.uint8))[0]
        d = pred["scores"].shape[0]
        assert pred["masks"].shape == (d, h, w)
        assert np.all(pred["boxes"][:, [0, 2]] <= w) and np.all(pred["boxes"][:, [1, 3]] <= h)

"""Bad inputs at every public entry point: a clear exception naming the argument, never a crash.

Each case checks the exception type and that the message names the offending argument. The RoI
ops and NMS run numba kernels without bounds checks, so their validation must come first: a
case that slipped through could segfault the test process instead of failing.
"""

import json
import re

import numpy as np
import pytest

from npmaskrcnn.__main__ import main
from npmaskrcnn.boxes import BoxCoder, batched_nms, box_iou, nms
from npmaskrcnn.checkpoint import FORMAT_VERSION, load_model, save_model
from npmaskrcnn.coco import load_coco
from npmaskrcnn.evaluate import predict_dataset, predictions_to_coco_results
from npmaskrcnn.config import Config
from npmaskrcnn.model import MaskRCNN
from npmaskrcnn.roi_ops import (multilevel_roi_forward, roi_align_backward, roi_align_forward,
                                roi_pool_backward, roi_pool_forward)
from npmaskrcnn.shapes import ShapesDataset


@pytest.fixture(scope="module")
def model():
    return MaskRCNN(Config.tiny())


def image(h=32, w=32):
    return np.zeros((h, w, 3), np.uint8)


def target(boxes=((4, 4, 12, 12),), labels=(1,), h=32, w=32):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.asarray(labels, np.int64),
            "masks": np.zeros((len(boxes), h, w), bool)}


FEATURES = np.zeros((2, 3, 8, 8), np.float32)
ROIS = np.array([[0, 1, 1, 6, 6], [1, 0, 0, 4, 4]], np.float32)


# ---- model --------------------------------------------------------------------------------

@pytest.mark.parametrize("images,exc,match", [
    ([image().astype(np.float32)], TypeError, r"images\[0\].*uint8"),
    ([image(), image().astype(np.float64)], TypeError, r"images\[1\].*uint8"),
    ([np.zeros((32, 32), np.uint8)], ValueError, r"images\[0\].*\(H, W, 3\)"),
    ([np.zeros((32, 32, 4), np.uint8)], ValueError, r"images\[0\].*\(H, W, 3\)"),
    ([np.zeros((0, 32, 3), np.uint8)], ValueError, r"images\[0\].*non-empty"),
    ([], ValueError, r"images"),
    (np.zeros((1, 1, 32, 32, 3), np.uint8), ValueError, r"images"),
    ([[[1, 2, 3]]], TypeError, r"images\[0\].*numpy array"),
    ("picture.png", ValueError, r"images"),
])
def test_predict_refuses_bad_images(model, images, exc, match):
    with pytest.raises(exc, match=match):
        model.predict(images)


@pytest.mark.parametrize("targets,exc,match", [
    ([target(), target()], ValueError, r"targets: expected a list of 1"),
    (target(), ValueError, r"targets: expected a list of 1"),
    (["boxes"], TypeError, r"targets\[0\].*dict"),
    ([{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}], ValueError,
     r"targets\[0\].*'masks' is missing"),
    ([target(boxes=((12, 4, 4, 12),))], ValueError, r"targets\[0\]\['boxes'\].*x2 > x1"),
    ([target(boxes=((4, 4, 4, 12),))], ValueError, r"targets\[0\]\['boxes'\].*x2 > x1"),
    ([target(boxes=((4, 4, np.nan, 12),))], ValueError, r"targets\[0\]\['boxes'\].*finite"),
    ([target(boxes=((4, 4, 200, 12),))], ValueError, r"targets\[0\]\['boxes'\].*inside"),
    ([{**target(), "boxes": np.array([["a", "b", "c", "d"]])}], TypeError,
     r"targets\[0\]\['boxes'\].*real numbers"),
    ([target(labels=(0,))], ValueError, r"targets\[0\]\['labels'\].*1\.\.3"),
    ([{**target(), "labels": np.array([1.0])}], ValueError, r"targets\[0\]\['labels'\].*integers"),
    ([{**target(), "masks": np.zeros((1, 16, 16), bool)}], ValueError,
     r"targets\[0\]\['masks'\].*\(1, 32, 32\)"),
    ([{**target(), "masks": np.zeros((1, 32, 32), np.uint8)}], TypeError,
     r"targets\[0\]\['masks'\].*bool"),
])
def test_forward_refuses_bad_targets(model, targets, exc, match):
    model.train()
    with pytest.raises(exc, match=match):
        model.forward([image()], targets)


# ---- RoI ops ------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["align", "align_max", "pool"])
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(features=FEATURES.astype(np.int32)), TypeError, r"features.*float32"),
    (dict(features=FEATURES[0]), ValueError, r"features.*4-D"),
    (dict(features=[[1.0]]), ValueError, r"features.*4-D"),
    (dict(rois=ROIS[:, 1:]), ValueError, r"rois.*\(R, 5\)"),
    (dict(rois=ROIS[None]), ValueError, r"rois.*\(R, 5\)"),
    (dict(rois=ROIS.astype(str)), TypeError, r"rois.*real numbers"),
    (dict(rois=ROIS.astype(bool)), TypeError, r"rois.*real numbers"),
    (dict(rois=np.array([[2, 0, 0, 4, 4]], np.float32)), ValueError, r"rois\[:, 0\].*\[0, 2\)"),
    (dict(rois=np.array([[-1, 0, 0, 4, 4]], np.float32)), ValueError, r"rois\[:, 0\]"),
    (dict(rois=np.array([[0.5, 0, 0, 4, 4]], np.float32)), ValueError, r"rois\[:, 0\].*integer"),
    (dict(rois=np.array([[np.nan, 0, 0, 4, 4]], np.float32)), ValueError, r"rois\[:, 0\]"),
    (dict(rois=np.array([[0, 0, np.nan, 4, 4]], np.float32)), ValueError, r"rois\[:, 1:\].*finite"),
    (dict(rois=np.array([[0, 0, 0, np.inf, 4]], np.float32)), ValueError, r"rois\[:, 1:\].*finite"),
    (dict(rois=np.array([[0, 0, 0, 1e30, 4]])), ValueError, r"rois\[:, 1:\].*2\*\*31"),
    (dict(output_size=0), ValueError, r"output_size"),
    (dict(output_size=(3, -1)), ValueError, r"output_size"),
    (dict(output_size=2.5), ValueError, r"output_size"),
    (dict(output_size=(3,)), ValueError, r"output_size"),
    (dict(spatial_scale=0.0), ValueError, r"spatial_scale"),
    (dict(spatial_scale=-0.25), ValueError, r"spatial_scale"),
    (dict(spatial_scale=float("nan")), ValueError, r"spatial_scale"),
    (dict(spatial_scale="0.25"), ValueError, r"spatial_scale"),
])
def test_roi_ops_refuse_bad_arguments(op, kwargs, exc, match):
    args = dict(features=FEATURES, rois=ROIS, output_size=3, spatial_scale=1.0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        if op == "pool":
            roi_pool_forward(**args)
        else:
            roi_align_forward(**args, mode="max" if op == "align_max" else "avg")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(sampling_ratio=2.0), TypeError, r"sampling_ratio.*int"),
    (dict(sampling_ratio="2"), TypeError, r"sampling_ratio.*int"),
    (dict(sampling_ratio=10 ** 8), ValueError, r"rois: boxes too large for sampling_ratio"),
    (dict(mode="mean"), ValueError, r"mode.*'avg' or 'max'"),
    (dict(aligned="yes"), TypeError, r"aligned.*bool"),
    (dict(rois=np.array([[0, 0, 0, 1e8, 1e8]])), ValueError, r"rois: boxes too large"),
])
def test_roi_align_refuses_bad_options(kwargs, exc, match):
    args = dict(features=FEATURES, rois=ROIS, output_size=3, spatial_scale=1.0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        roi_align_forward(**args)


@pytest.mark.parametrize("op", ["align", "align_max", "pool"])
@pytest.mark.parametrize("shape", [(3, 3, 3, 3), (2, 4, 3, 3), (2, 3, 4, 3), (2, 3, 3)])
def test_roi_backward_refuses_a_misshaped_dout(op, shape):
    if op == "pool":
        _, cache = roi_pool_forward(FEATURES, ROIS, 3, 1.0)
        backward = roi_pool_backward
    else:
        _, cache = roi_align_forward(FEATURES, ROIS, 3, 1.0, mode="max" if op == "align_max" else "avg")
        backward = roi_align_backward
    with pytest.raises(ValueError, match=r"dout.*\(2, 3, 3, 3\)"):
        backward(np.ones(shape, np.float32), cache)


@pytest.mark.parametrize("op", ["align", "align_max", "pool"])
def test_roi_ops_let_nan_features_through(op):
    # documented: NaN/inf in the features are not an input error (a diverging network makes
    # them, and the training loop reports the non-finite loss). Averages propagate NaN; a max
    # never picks a NaN (NaN > x is False), as in torchvision's kernels
    features = FEATURES.copy()
    features[0, 1] = np.nan
    if op == "pool":
        out, _ = roi_pool_forward(features, ROIS, 3, 1.0)
    else:
        out, _ = roi_align_forward(features, ROIS, 3, 1.0, mode="max" if op == "align_max" else "avg")
    assert out.shape == (2, 3, 3, 3) and np.all(out[1] == 0) and np.all(out[0, [0, 2]] == 0)
    assert np.isnan(out[0, 1]).all() if op == "align" else not np.isnan(out).any()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(kind="roi_max"), ValueError, r"kind must be one of"),
    (dict(scales=[1 / 4, 1 / 16]), ValueError, r"scales.*powers of 1/2"),
    (dict(scales=[1 / 4]), ValueError, r"one scale per feature level"),
    (dict(rois=np.array([[0, 0, 0, np.nan, 4]])), ValueError, r"rois.*finite"),
    (dict(rois=np.zeros((1, 4))), ValueError, r"rois.*\(R, 5\)"),
])
def test_multilevel_pooler_refuses_bad_arguments(kwargs, exc, match):
    args = dict(features_per_level=[FEATURES, FEATURES[:, :, :4, :4]], rois=ROIS, output_size=2,
                scales=[1 / 4, 1 / 8])
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        multilevel_roi_forward(**args)


# ---- boxes --------------------------------------------------------------------------------

B = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: box_iou(B[:, :3], B), ValueError, r"boxes1.*\(N, 4\)"),
    (lambda: box_iou(B, B[0]), ValueError, r"boxes2.*\(N, 4\)"),
    (lambda: box_iou(B.astype(str), B), TypeError, r"boxes1.*real numbers"),
    (lambda: box_iou(B, np.array([[0, 0, np.nan, 1]])), ValueError, r"boxes2.*finite"),
    (lambda: nms(B, np.ones(3), 0.5), ValueError, r"scores.*\(2,\)"),
    (lambda: nms(B[None], np.ones(2), 0.5), ValueError, r"boxes.*\(N, 4\)"),
    (lambda: nms(np.array([[0, 0, np.inf, 1]]), np.ones(1), 0.5), ValueError, r"boxes.*finite"),
    (lambda: nms(B, np.array(["a", "b"]), 0.5), TypeError, r"scores.*real numbers"),
    (lambda: nms(B, np.ones(2), float("nan")), ValueError, r"iou_threshold.*finite"),
    (lambda: nms(B, np.ones(2), "0.5"), ValueError, r"iou_threshold"),
    (lambda: batched_nms(B, np.ones(2), np.array([0.5, 1.5]), 0.5), TypeError, r"labels.*integers"),
    (lambda: batched_nms(B, np.ones(2), np.zeros(3, int), 0.5), ValueError, r"labels.*\(2,\)"),
    (lambda: BoxCoder(weights=(1, 1, 1)), ValueError, r"weights"),
    (lambda: BoxCoder(weights=(1, 1, 0, 1)), ValueError, r"weights.*positive"),
    (lambda: BoxCoder(bbox_xform_clip=float("inf")), ValueError, r"bbox_xform_clip"),
    (lambda: BoxCoder().encode(B, B[:1]), ValueError, r"reference_boxes and proposals.*length"),
    (lambda: BoxCoder().encode(B, np.array([[0, 0, 0, 1], [0, 0, 1, 1]], np.float32)), ValueError,
     r"proposals.*x2 > x1"),
    (lambda: BoxCoder().encode(np.array([[3, 0, 1, 1], [0, 0, 1, 1]], np.float32), B), ValueError,
     r"reference_boxes.*x2 > x1"),
    (lambda: BoxCoder().encode(B, np.full((2, 4), np.nan)), ValueError, r"proposals.*finite"),
    (lambda: BoxCoder().decode(np.zeros((2, 5)), B), ValueError, r"deltas.*\(N, 4\*K\)"),
    (lambda: BoxCoder().decode(np.zeros((2, 4)), B[:1]), ValueError, r"deltas and boxes.*length"),
    (lambda: BoxCoder().decode(np.zeros((2, 4)).astype(str), B), TypeError, r"deltas.*real"),
    (lambda: BoxCoder().decode(np.zeros((1, 4)), np.array([[0, 0, np.nan, 1]])), ValueError,
     r"boxes.*finite"),
])
def test_box_functions_refuse_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- datasets -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(num_images=-1), r"num_images"),
    (dict(num_images=2.5), r"num_images"),
    (dict(seed=-3), r"seed"),
    (dict(seed="0"), r"seed"),
    (dict(image_size=0), r"image_size"),
    (dict(min_shapes=0), r"min_shapes"),
    (dict(min_shapes=3, max_shapes=2), r"min_shapes <= max_shapes"),
    (dict(min_size=0), r"min_size"),
    (dict(min_size=float("nan")), r"min_size"),
    (dict(max_size=200), r"max_size <= image_size"),
    (dict(min_visible_fraction=1.5), r"min_visible_fraction"),
])
def test_shapes_dataset_refuses_bad_arguments(kwargs, match):
    args = dict(num_images=2, seed=0, image_size=32, min_size=8, max_size=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**args)


def coco_dict():
    return {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "segmentation": [[1, 1, 6, 1, 6, 6]], "bbox": [1, 1, 5, 5]}]}


def broken(path, **changes):
    d = coco_dict()
    for where, value in changes.items():
        section, field = where.split("__") if "__" in where else (where, None)
        if field is None:
            d[section] = value
        else:
            d[section][0][field] = value
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("changes,match", [
    (dict(images={"id": 1}), r"'images': expected a list"),
    (dict(images__height=0), r"image id 1: field 'height'"),
    (dict(images__width="8"), r"image id 1: field 'width'"),
    (dict(images__file_name=None), r"image id 1: field 'file_name'"),
    (dict(categories=[{"name": "x"}]), r"'categories'.*'id'"),
    (dict(annotations__category_id=7), r"annotation id 1: field 'category_id'"),
    (dict(annotations__image_id=9), r"annotation id 1: field 'image_id'"),
    (dict(annotations__bbox=[1, 1, -5, 5]), r"annotation id 1: field 'bbox'"),
    (dict(annotations__bbox=[1, 1, "5", 5]), r"annotation id 1: field 'bbox'"),
    (dict(annotations__segmentation=[[1, 1, 6, float("nan"), 6, 6]]),
     r"annotation id 1: field 'segmentation'"),
    (dict(annotations__segmentation={"counts": [64], "size": [4, 4]}),
     r"annotation id 1: field 'segmentation'.*size"),
    (dict(annotations__segmentation="polygon"), r"annotation id 1: field 'segmentation'"),
])
def test_load_coco_refuses_broken_json(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        load_coco(str(broken(tmp_path / "instances.json", **changes)))


def test_load_coco_refuses_files_that_are_not_json(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe\x00not json")
    with pytest.raises(ValueError, match=r"garbage\.json is not valid JSON"):
        load_coco(str(garbage))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        load_coco(str(tmp_path / "list.json"))
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_coco(str(tmp_path / "missing.json"))
    with pytest.raises(TypeError, match=r"instances_json"):
        load_coco(None)


# ---- evaluation ---------------------------------------------------------------------------

GOOD_PRED = {"boxes": np.zeros((1, 4)), "labels": np.ones(1, np.int64), "scores": np.ones(1)}


@pytest.mark.parametrize("predictions,image_ids,match", [
    ([GOOD_PRED], [1, 2], r"1 predictions for 2 image ids"),
    ([{"boxes": np.zeros((0, 4))}], [1], r"predictions\[0\].*'labels'"),
    ([{**GOOD_PRED, "scores": np.ones(2)}], [1], r"predictions\[0\].*different lengths"),
    ([{**GOOD_PRED, "scores": np.array([np.nan])}], [1], r"predictions\[0\].*finite"),
])
def test_predictions_to_coco_results_refuses_bad_predictions(predictions, image_ids, match):
    with pytest.raises(ValueError, match=match):
        predictions_to_coco_results(predictions, image_ids)


@pytest.mark.parametrize("batch_size", [0, -2, 2.0, None])
def test_predict_dataset_refuses_a_bad_batch_size(model, batch_size):
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int"):
        predict_dataset(model, [(image(), None)], batch_size=batch_size)


# ---- checkpoints --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_entries(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    save_model(MaskRCNN(Config.tiny()), path)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_npz(path, entries):
    np.savez(path, **entries)
    return str(path)


@pytest.mark.parametrize("change,match", [
    (lambda e: e.update(format_version=np.array("1")), r"'format_version'.*scalar int"),
    (lambda e: e.update(format_version=np.array(FORMAT_VERSION + 1)), r"format_version 2"),
    (lambda e: e.pop("config"), r"missing entry 'config'"),
    (lambda e: e.update(config=np.array("{not json")), r"invalid config entry"),
    (lambda e: e.update(config=np.array("[]")), r"invalid config entry"),
    (lambda e: e.update(config=np.array(json.dumps({"rpn_nms_thresh": 2.0}))),
     r"invalid config entry.*Config\.rpn_nms_thresh"),
    (lambda e: e.update(config=np.arange(3)), r"'config' must be a JSON string"),
    (lambda e: e.update(class_names=np.array("square")), r"'class_names' must be a 1-D"),
    (lambda e: e.update(class_names=np.array(["a", "b"])), r"class_names: expected 3 names"),
    (lambda e: e.update({"param/no.such.weight": np.zeros(3, np.float32)}), r"unexpected keys"),
    (lambda e: e.update({k: v.astype(np.int32) for k, v in e.items() if k.startswith("param/")}),
     r"entry 'param/.*' must be float32"),
    (lambda e: e.update({k: np.full_like(v, np.nan) for k, v in e.items()
                         if k.startswith("param/")}), r"entry 'param/.*' holds NaN"),
])
def test_load_model_refuses_broken_checkpoints(tmp_path, checkpoint_entries, change, match):
    entries = dict(checkpoint_entries)
    change(entries)
    with pytest.raises(ValueError, match=match):
        load_model(write_npz(tmp_path / "broken.npz", entries))


def test_load_model_refuses_object_arrays_and_non_archives(tmp_path, checkpoint_entries):
    entries = dict(checkpoint_entries)
    entries["extra/evil"] = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **entries)              # savez pickles object arrays
    with pytest.raises(ValueError, match=r"'extra/evil' is an object \(pickled\) array"):
        load_model(tmp_path / "pickled.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"not an \.npz"):
        load_model(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match=r"path: no checkpoint"):
        load_model(tmp_path / "nothing.npz")
    with pytest.raises(TypeError, match=r"path: expected a file path"):
        load_model(None)


# ---- Config -------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("image_size", 48), ("image_size", 64.0), ("num_classes", 0), ("num_classes", True),
    ("pixel_mean", (1, 2)), ("pixel_std", (64, 0, 64)), ("stem_channels", 0),
    ("stage_channels", (4, 4, 8)), ("stage_blocks", (1, 0, 1, 1)), ("gn_groups", 0),
    ("gn_groups", 3), ("fpn_channels", -8), ("fpn_norm", "no"),
    ("anchor_sizes", (4, 8, 0, 32, 64)), ("anchor_ratios", ()), ("anchor_ratios", (0.5, -1)),
    ("rpn_fg_iou", 1.5), ("rpn_bg_iou", 0.9), ("rpn_batch_size_per_image", 0),
    ("rpn_positive_fraction", 0.0), ("rpn_pre_nms_top_n_train", 0), ("rpn_post_nms_top_n_test", 0),
    ("rpn_nms_thresh", 1.1), ("rpn_nms_thresh", float("nan")), ("rpn_min_size", 0.0),
    ("box_fg_iou", 0.0), ("box_batch_size_per_image", 0), ("box_positive_fraction", 1.5),
    ("bbox_reg_weights", (10, 10, 5)), ("pooler", "roi_magic"), ("pooler_levels", (1,)),
    ("pooler_levels", (2, 2)), ("pooler_sampling_ratio", 2.5), ("canonical_size", 0.0),
    ("canonical_level", 4.5), ("box_pool_size", 0), ("box_fc_dim", 0), ("box_head_convs", -1),
    ("mask_pool_size", 0), ("mask_channels", 0), ("mask_num_convs", -1),
    ("max_mask_rois_per_image", 0), ("mask_loss", "l2"), ("class_agnostic_masks", 1),
    ("box_score_thresh", -0.1), ("box_nms_thresh", 2.0), ("detections_per_img", 0),
    ("mask_threshold", 1.5), ("seed", -1), ("batch_size", 0), ("train_steps", 0),
    ("optimizer", "adam"), ("lr", 0.0), ("lr", float("inf")), ("momentum", 1.0),
    ("weight_decay", -1e-4), ("warmup_steps", -1), ("schedule", "linear"), ("grad_clip", -1.0),
    ("hflip", None), ("lr", "fast"), ("box_from_mask", "yes"), ("box_refine", "yes"),
    ("grad_shards", 0), ("grad_shards", 3), ("box_reg_loss_weight", 0.0),
    ("box_jitter_per_gt", -1), ("box_jitter", 1.5), ("mask_rescore", "yes"), ("test_flip", 1),
    ("box_neg_iou_bins", -1), ("box_neg_iou_bins", 2.0),
])
def test_config_refuses_out_of_range_fields(field, value):
    # every field of Config must appear in this list (a new field needs a range check)
    # a field checked together with another (rpn_bg_iou with rpn_fg_iou) is named in the message
    with pytest.raises(ValueError, match=rf"Config\.{field}: expected|Config\.\w+: expected .*{field}"):
        Config.tiny(**{field: value})


# ---- CLI ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,match", [
    (["evaluate", "--set", "lr=1"], r"--set: 'lr' is not an inference option"),
    (["evaluate", "--set", "box_refine"], r"--set: expected key=value"),
    (["evaluate", "--set", "box_nms_thresh=2"], r"--set: Config.box_nms_thresh"),
    (["demo", "--set", "seed=1"], r"--set: 'seed' is not an inference option"),
    (["demo", "--set", "test_flip=maybe"], r"--set: Config.test_flip"),
    (["predict", "{tmp}/missing.png"], r"IMAGE: no such file"),
    (["predict", "--model", "{tmp}/img.png", "{tmp}/img.png"], r"IMAGE: cannot read"),
    (["predict", "--score-thresh", "1.5", "{tmp}/img.png"], r"--score-thresh"),
    (["predict", "--score-thresh", "nan", "{tmp}/img.png"], r"--score-thresh"),
    (["evaluate", "--seed", "-1"], r"--seed"),
    (["evaluate", "--model", "{tmp}/none.npz"], r"--model: no such file"),
    (["evaluate", "--model", "{tmp}/img.png"], r"--model: .*not an \.npz"),
    (["evaluate", "--data", "{tmp}/none.json"], r"--data"),
    (["demo", "--seed", "-5"], r"--seed"),
    (["demo", "--score-thresh", "-1"], r"--score-thresh"),
    (["train", "--set", "rpn_nms_thresh=3", "--out", "{tmp}/run"], r"--set: Config\.rpn_nms_thresh"),
    (["train", "--seed", "-1", "--out", "{tmp}/run"], r"--seed: Config\.seed"),
    (["train", "--config", "{tmp}/list.json", "--out", "{tmp}/run"], r"--config"),
    (["summary", "--config", "{tmp}/list.json"], r"--config"),
    (["summary", "--config", "{tmp}/groups.json"], r"--config.*gn_groups"),
])
def test_cli_reports_bad_arguments_with_exit_code_2(tmp_path, capsys, argv, match):
    (tmp_path / "img.png").write_text("not an image")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "groups.json").write_text(json.dumps({"gn_groups": 5}))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err
    assert not (tmp_path / "run").exists()


def test_nothing_in_the_package_unpickles_or_evals():
    import pathlib
    src = pathlib.Path(__file__).resolve().parents[1] / "npmaskrcnn"
    for path in src.glob("*.py"):
        text = path.read_text()
        assert "allow_pickle=True" not in text, path
        assert "import pickle" not in text and "pickle.load" not in text, path
        bad = re.findall(r"(?<![\w.])(?<!def )(?:eval|exec)\(", text)     # not .eval(), def eval(
        assert not bad, (path, bad)
        if "np.load(" in text:
            assert text.count("np.load(") == text.count("allow_pickle=False"), path


def test_every_config_field_is_range_checked():
    import dataclasses
    import inspect

    source = inspect.getsource(Config.validate)
    unchecked = [f.name for f in dataclasses.fields(Config)
                 if f'"{f.name}"' not in source and f"self.{f.name} " not in source]
    assert not unchecked, f"Config.validate does not check {unchecked}"

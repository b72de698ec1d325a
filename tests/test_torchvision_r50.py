"""Equivalence with torchvision's maskrcnn_resnet50_fpn, stage by stage, if torch and torchvision
are installed (the module skips otherwise; NPMASKRCNN_REQUIRE_TORCH=1 makes that a failure).

The oracle is torchvision's own model with random weights (nothing is downloaded), made to give
real detections as shared/reference/torchvision-maskrcnn.md section 5 says: BN affine drawn at
random, BN statistics calibrated on the sample photo (one train-mode pass of the backbone), the box
predictor's weights scaled (class x 6, deltas x 3). Its state dict goes through our importer.

float64 on both sides: every stage to 1e-6 (relative, or pixels for boxes) and every discrete
decision identical (top-k, NMS, the detections, the integer paste). float32: feature maps and head
outputs to 1e-3 relative, >= 98 % of proposals and >= 90 % of detections matched (IoU > 0.99, same
label, score within 1e-3), pasted masks equal on >= 99 % of pixels. Images: matplotlib's sample
photo (600 x 512 -> 937 x 800), a 578 x 640 one (short side 799 after resize) and a 480 x 640 one
(800 x 1066, padded 800 x 1088: P5 is 25 x 34 and P6 13 x 17, P6 strides 61 and 64).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection import maskrcnn_resnet50_fpn  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

from npmaskrcnn import torchvision_weights as tw  # noqa: E402
from npmaskrcnn.box_head import postprocess_detections  # noqa: E402
from npmaskrcnn.boxes import box_iou, boxes_to_rois  # noqa: E402
from npmaskrcnn.mask_head import paste_masks_torchvision  # noqa: E402

SIZES = {"photo": None, "short799": (578, 640), "oddP5": (480, 640)}


def photo(name):
    """The sample photo, or it resized to an awkward (h, w), as uint8 (H, W, 3)."""
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        im = Image.open(f).convert("RGB")
        if SIZES[name] is not None:
            im = im.resize(SIZES[name][::-1], Image.BILINEAR)
        return np.asarray(im).copy()


def to_tensor(image, dtype):
    return torch.from_numpy(image).permute(2, 0, 1).to(dtype) / 255


def build_oracle():
    """torchvision's model, random but calibrated so that it detects (see the module docstring)."""
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.momentum = None
                m.reset_running_stats()
        batch, _ = tv.transform([to_tensor(photo("photo"), torch.float32)])
        tv.backbone.train()
        tv.backbone(batch.tensors)
        tv.backbone.eval()
        tv.roi_heads.box_predictor.cls_score.weight *= 6
        tv.roi_heads.box_predictor.bbox_pred.weight *= 3
    return tv


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(2)
    tv32 = build_oracle()
    state = {k: v.numpy() for k, v in tv32.state_dict().items()}
    from npmaskrcnn.config import Config
    from npmaskrcnn.model import MaskRCNN

    eps = tw.guess_bn_eps(state)
    assert eps == 1e-5                          # built with weights=None: plain BatchNorm2d
    ours32 = tw.from_torchvision(state, MaskRCNN(Config.torchvision_r50_fpn(bn_eps=eps))).eval()
    return {np.float32: (tv32, ours32)}


def pair(models, dtype):
    """(torchvision, ours) in dtype; the float64 twins are made on first use."""
    if dtype not in models:
        import copy

        tv32, ours32 = models[np.float32]
        models[dtype] = (copy.deepcopy(tv32).double(), copy.deepcopy(ours32).astype(dtype))
    return models[dtype]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if a.size else 0.0


def run_torch(tv, image, dtype):
    """Every intermediate of torchvision's inference on one image, as NumPy."""
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    out = {}
    with torch.no_grad():
        batch, _ = tv.transform([to_tensor(image, tdt)])
        feats = tv.backbone(batch.tensors)
        fl = list(feats.values())
        logits, deltas = tv.rpn.head(fl)
        anchors = tv.rpn.anchor_generator(batch, fl)[0]
        proposals, _ = tv.rpn(batch, feats)
        box_feats = tv.roi_heads.box_roi_pool(feats, proposals, batch.image_sizes)
        class_logits, box_reg = tv.roi_heads.box_predictor(tv.roi_heads.box_head(box_feats))
        boxes, scores, labels = tv.roi_heads.postprocess_detections(class_logits, box_reg, proposals,
                                                                     batch.image_sizes)
        mask_feats = tv.roi_heads.mask_roi_pool(feats, boxes, batch.image_sizes)
        mask_logits = tv.roi_heads.mask_predictor(tv.roi_heads.mask_head(mask_feats))
        final = tv([to_tensor(image, tdt)])[0]
    out.update(tensor=batch.tensors.numpy(), image_size=tuple(batch.image_sizes[0]),
               features=[f.numpy() for f in fl], rpn_logits=[t.numpy() for t in logits],
               rpn_deltas=[t.numpy() for t in deltas], anchors=anchors.numpy(),
               proposals=proposals[0].numpy(), box_feats=box_feats.numpy(),
               class_logits=class_logits.numpy(), box_reg=box_reg.numpy(),
               det_boxes=boxes[0].numpy(), det_scores=scores[0].numpy(), det_labels=labels[0].numpy(),
               mask_logits=mask_logits.numpy(), final={k: v.numpy() for k, v in final.items()})
    return out


def match(boxes_a, boxes_b, labels_a=None, labels_b=None, iou=0.99):
    """For each box of a, the index of a box of b with IoU > iou (and the same label), or -1."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.full(len(boxes_a), -1)
    m = box_iou(np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64))
    if labels_a is not None:
        m = np.where(np.asarray(labels_a)[:, None] == np.asarray(labels_b)[None, :], m, 0)
    best = m.argmax(axis=1)
    return np.where(m[np.arange(len(m)), best] > iou, best, -1)


CACHE = {}


def results(models, name, dtype):
    """(torch intermediates, ours) for one image in one dtype, computed once per module."""
    key = (name, dtype)
    if key not in CACHE:
        tv, ours = pair(models, dtype)
        image = photo(name)
        t = run_torch(tv, image, dtype)
        o = {}
        batch, _ = ours.transform_images([image])
        o["tensor"], o["image_size"] = batch.tensors, tuple(batch.image_sizes[0])
        x = t["tensor"].astype(dtype)                          # teacher forcing from here on
        o["features"] = ours.backbone(x)
        heads = [ours.rpn.head(p) for p in o["features"]]
        o["rpn_logits"], o["rpn_deltas"] = [h[0] for h in heads], [h[1] for h in heads]
        o["anchors"] = np.concatenate(ours.rpn.anchors([p.shape[2:] for p in o["features"]]))
        o["proposals"] = ours.rpn(o["features"], [o["image_size"]])[0][0]
        rois = boxes_to_rois([t["proposals"].astype(dtype)], dtype)
        feats = [f.astype(dtype) for f in t["features"][:4]]
        o["box_feats"], _ = ours.roi_heads.pool(feats, rois, 7)
        o["class_logits"], o["box_reg"] = ours.roi_heads.box_predictor(ours.roi_heads.box_head(o["box_feats"]))
        rh = ours.roi_heads
        o["post"] = postprocess_detections(t["class_logits"], t["box_reg"], rois, 1, [t["image_size"]],
                                           rh.box_coder, rh.cfg.box_score_thresh, rh.cfg.box_nms_thresh,
                                           rh.cfg.detections_per_img)[0]
        det_rois = boxes_to_rois([t["det_boxes"].astype(dtype)], dtype)
        mf, _ = rh.pool(feats, det_rois, 14)
        o["mask_logits"] = rh.mask_predictor(rh.mask_head(mf))
        o["final"] = ours.predict(image)[0]
        o["image"] = image
        CACHE[key] = (t, o)
    return CACHE[key]


def check_dense_stages(t, o, tol):
    """The transform (sizes exactly, values to 1e-6), FPN maps and RPN head outputs to tol, anchors
    exactly."""
    assert o["image_size"] == t["image_size"] and o["tensor"].shape == t["tensor"].shape
    assert rel(o["tensor"], t["tensor"]) < 1e-6
    for a, b in zip(o["features"], t["features"]):
        assert rel(a, b) < tol
    for a, b in zip(o["rpn_logits"] + o["rpn_deltas"], t["rpn_logits"] + t["rpn_deltas"]):
        assert rel(a, b) < tol
    np.testing.assert_array_equal(o["anchors"], t["anchors"])


@pytest.mark.parametrize("name", list(SIZES))
def test_float64_every_stage_and_decision(models, name):
    t, o = results(models, name, np.float64)
    check_dense_stages(t, o, 1e-6)
    # proposals: the same boxes in the same order (top-k, NMS identical)
    assert o["proposals"].shape == t["proposals"].shape
    np.testing.assert_allclose(o["proposals"], t["proposals"], atol=1e-6, rtol=0)
    assert rel(o["box_feats"], t["box_feats"]) < 1e-6
    assert rel(o["class_logits"], t["class_logits"]) < 1e-6
    assert rel(o["box_reg"], t["box_reg"]) < 1e-6
    boxes, labels, scores = o["post"]
    np.testing.assert_array_equal(labels, t["det_labels"])
    np.testing.assert_allclose(boxes, t["det_boxes"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(scores, t["det_scores"], atol=1e-9, rtol=0)
    assert len(labels) >= 10, "the oracle should detect something"
    assert rel(o["mask_logits"], t["mask_logits"][:, 1:]) < 1e-6
    # end to end, in the original image (our predict returns float32 boxes, hence 1e-4 px)
    f, g = o["final"], t["final"]
    np.testing.assert_array_equal(f["labels"], g["labels"])
    np.testing.assert_allclose(f["boxes"], g["boxes"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(f["scores"], g["scores"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(f["masks"], g["masks"][:, 0] >= 0.5)


@pytest.mark.parametrize("name", list(SIZES))
def test_float32_within_tolerance(models, name):
    t, o = results(models, name, np.float32)
    check_dense_stages(t, o, 1e-3)
    matched = match(t["proposals"], o["proposals"]) >= 0
    assert matched.mean() >= 0.98, f"{matched.mean():.3f} of the proposals matched"
    assert rel(o["box_feats"], t["box_feats"]) < 1e-3
    assert rel(o["class_logits"], t["class_logits"]) < 1e-3
    assert rel(o["box_reg"], t["box_reg"]) < 1e-3
    boxes, labels, scores = o["post"]                          # identical inputs: identical logic
    np.testing.assert_array_equal(labels, t["det_labels"])
    np.testing.assert_allclose(boxes, t["det_boxes"], atol=1e-3, rtol=0)
    assert rel(o["mask_logits"], t["mask_logits"][:, 1:]) < 1e-3
    f, g = o["final"], t["final"]
    j = match(g["boxes"], f["boxes"], g["labels"], f["labels"])
    ok = (j >= 0) & (np.abs(f["scores"][np.maximum(j, 0)] - g["scores"]) <= 1e-3)
    assert ok.mean() >= 0.90, f"{ok.mean():.3f} of {len(ok)} detections matched"
    agree = (f["masks"][j[ok]] == (g["masks"][ok, 0] >= 0.5)).mean()
    assert agree >= 0.99, f"pasted masks agree on {agree:.4f} of pixels"


def test_paste_is_torchvisions_given_the_same_masks_and_boxes(models):
    t, o = results(models, "photo", np.float32)
    h, w = o["image"].shape[:2]
    probs = 1 / (1 + np.exp(-t["mask_logits"][np.arange(len(t["det_labels"])), t["det_labels"]]))
    boxes = t["final"]["boxes"]
    theirs = paste_masks_in_image(torch.from_numpy(probs[:, None]), torch.from_numpy(boxes), (h, w)).numpy()
    ours = paste_masks_torchvision(probs, boxes, (h, w))
    assert np.abs(ours - theirs[:, 0]).max() < 1e-6


def test_import_and_export_commands_round_trip(models, tmp_path):
    from npmaskrcnn.__main__ import main
    from npmaskrcnn.checkpoint import load_model
    from npmaskrcnn.config import COCO_CATEGORY_NAMES

    tv32, ours32 = models[np.float32]
    state = tv32.state_dict()
    # the legacy spellings torchvision still loads: FPN, RPN conv and mask head before _version 2
    legacy = {k.replace("fpn.inner_blocks.1.0.", "fpn.inner_blocks.1.").replace("rpn.head.conv.0.0.", "rpn.head.conv.")
              .replace("roi_heads.mask_head.0.0.", "roi_heads.mask_head.mask_fcn1."): v for k, v in state.items()}
    assert "roi_heads.mask_head.mask_fcn1.weight" in legacy
    torch.save(legacy, tmp_path / "coco.pth")
    assert main(["import-torchvision", str(tmp_path / "coco.pth"), "--out", str(tmp_path / "coco.npz")]) == 0
    loaded = load_model(tmp_path / "coco.npz")                # no torch, no pickle
    assert loaded.class_names == COCO_CATEGORY_NAMES and loaded.config.bn_eps == 1e-5
    for (k, a), (_, b) in zip(loaded.named_params(), ours32.named_params()):
        assert np.array_equal(a, b), k
    torch.save({"model": state, "epoch": 3}, tmp_path / "train_checkpoint.pth")   # references' layout
    assert main(["import-torchvision", str(tmp_path / "train_checkpoint.pth"), "--out",
                 str(tmp_path / "b.npz"), "--bn-eps", "0"]) == 0
    assert load_model(tmp_path / "b.npz").config.bn_eps == 0.0
    torch.save({"backbone.body.fc.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    assert main(["import-torchvision", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "c.npz")]) == 2

    assert main(["export-torchvision", str(tmp_path / "coco.npz"), "--out", str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    fresh = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    fresh.load_state_dict(back)                                # strict: every key, every shape
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        w = back[k] if "mask_fcn_logits" not in k else back[k][1:]
        assert torch.equal(w, v if "mask_fcn_logits" not in k else v[1:]), k
    image = to_tensor(photo("oddP5"), torch.float32)
    with torch.no_grad():
        a, b = fresh([image])[0], tv32([image])[0]
    assert len(a["boxes"]) > 0 and torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])

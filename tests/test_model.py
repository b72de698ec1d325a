"""The whole network: gradient check through every stage, overfitting, ablation switches, edge cases."""

import numpy as np
import pytest

from npmaskrcnn import Config, MaskRCNN
from npmaskrcnn.boxes import box_iou
from npmaskrcnn.shapes import ShapesDataset
from gradcheck import model_central_difference


def tiny_batch(n=2, seed=3, size=32):
    ds = ShapesDataset(n, seed=seed, image_size=size, min_size=8, max_size=20, max_shapes=2)
    images, targets = zip(*[ds[i] for i in range(n)])
    return list(images), list(targets)


def freeze_proposals(model):
    """Record the proposals of the next forward and replay them afterwards (held fixed)."""
    original = model.rpn.propose
    recorded = []

    def propose(*args, **kwargs):
        if len(recorded) < propose.n_images:
            recorded.append(original(*args, **kwargs))
            return recorded[-1]
        out = recorded[propose.calls % len(recorded)]
        propose.calls += 1
        return out

    propose.calls = 0
    propose.n_images = 0
    model.rpn.propose = propose
    return propose


def randomize(model, rng, scale=0.3):
    """Move every parameter away from its initial value (zero-init GN gammas, tiny predictors),
    so that every path carries gradient."""
    for name, p in model.named_params():
        p += rng.normal(0, scale * (p.std() + 0.1), size=p.shape).astype(p.dtype)


def total_loss(model, images, targets, seed=0):
    model.rng = np.random.default_rng(seed)
    losses = model.forward(images, targets)
    return sum(losses.values()), losses


# The paper's network and the variants whose modules have no gradient check of their own (the
# softmax mask loss, GroupNorm in the FPN, the conv box head, class-agnostic masks) in the default
# suite; the RoIPool and MLP-mask-head variants, each of whose pieces is checked on its own, in
# the slow group that CI runs.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("overrides", [
    {},
    pytest.param({"pooler": "roi_pool"}, marks=SLOW),
    pytest.param({"mask_head": "mlp", "mask_fc_dim": 8}, marks=SLOW),
    {"mask_loss": "softmax", "fpn_norm": True, "box_head_convs": 1},
    # max-RoIAlign is piecewise linear: with the jittered gt RoIs too, a +-h step of this seed
    # crosses a kink
    {"class_agnostic_masks": True, "pooler": "roi_align_max", "box_jitter_per_gt": 0}])
def test_whole_model_gradient_check(overrides):
    rng = np.random.default_rng(0)
    cfg = Config.tiny(**overrides)
    model = MaskRCNN(cfg).astype(np.float64)
    randomize(model, rng)
    images, targets = tiny_batch()
    prop = freeze_proposals(model)
    prop.n_images = len(images)
    model.zero_grad()
    loss, losses = total_loss(model, images, targets)
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0 and losses["loss_box_reg"] > 0 and losses["loss_rpn_box_reg"] > 0
    model.backward()
    grads = dict(model.named_grads())
    h = 1e-5      # small: max-pool, RoIPool and max-RoIAlign are piecewise linear (kinks)
    for name, p in model.named_params():
        g = grads[name]
        # random entries where the gradient is not negligible, and the largest one
        big = np.flatnonzero(np.abs(g) >= 0.1 * np.abs(g).max())
        idx = [np.unravel_index(int(j), p.shape) for j in rng.choice(big, min(3, big.size), replace=False)]
        idx.append(np.unravel_index(int(np.argmax(np.abs(g))), p.shape))
        num, ana = [], []
        for i in idx:
            num.append(model_central_difference(lambda: total_loss(model, images, targets)[0],
                                                model, p, i, h))
            ana.append(g[i])
        num, ana = np.array(num), np.array(ana)
        # relative error; the loss is O(1), so central differences carry ~1e-16 / h = 1e-11 of
        # roundoff: arrays whose gradient is below 1e-4 are held to 1e-10 absolute instead
        err = np.max(np.abs(num - ana)) / max(np.max(np.abs(num) + np.abs(ana)), 1e-4)
        assert err < 1e-6, f"{name}: analytic {ana} numerical {num} rel error {err:.2e}"
    if not overrides:
        zero = [n for n, g in grads.items() if not np.any(g)]
        assert not zero, f"parameters without gradient: {zero}"


def test_float32_training_step_and_losses_named_as_torchvision():
    model = MaskRCNN(Config.tiny())
    images, targets = tiny_batch()
    losses = model.forward(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}
    model.backward()
    for name, g in model.named_grads():
        assert g.dtype == np.float32, name


@pytest.mark.parametrize("key,value", [("pooler", "roi_pool"), ("pooler", "roi_align_unaligned"),
                                       ("pooler", "roi_align_max"), ("mask_loss", "softmax"),
                                       ("class_agnostic_masks", True), ("pooler_levels", (4,))])
def test_ablation_switches_change_the_computation(key, value):
    images, targets = tiny_batch()
    out = []
    for cfg in (Config.tiny(), Config.tiny(**{key: value})):
        model = MaskRCNN(cfg)
        randomize(model, np.random.default_rng(1))
        model.rng = np.random.default_rng(0)
        losses = model.forward(images, targets)
        model.backward()
        out.append(losses)
        assert all(np.isfinite(v) for v in losses.values())
    assert out[0]["loss_mask"] != out[1]["loss_mask"] or out[0]["loss_classifier"] != out[1]["loss_classifier"]


def test_image_without_instances_trains_and_predicts_empty():
    model = MaskRCNN(Config.tiny())
    image = np.full((32, 32, 3), 90, np.uint8)
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "masks": np.zeros((0, 32, 32), bool)}
    losses = model.forward([image, image], [empty, empty])
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] == 0.0 and losses["loss_box_reg"] == 0.0
    model.backward()
    model.roi_heads.cfg.box_score_thresh = 1.1                 # force zero detections
    det = model.predict(image)
    assert len(det) == 1
    d = det[0]
    assert d["boxes"].shape == (0, 4) and d["boxes"].dtype == np.float32
    assert d["labels"].shape == (0,) and d["labels"].dtype == np.int64
    assert d["scores"].shape == (0,) and d["scores"].dtype == np.float32
    assert d["masks"].shape == (0, 32, 32) and d["masks"].dtype == bool


def test_batch_of_one_and_of_several():
    model = MaskRCNN(Config.tiny())
    images, targets = tiny_batch(3)
    for k in (1, 3):
        losses = model.forward(images[:k], targets[:k])
        model.backward()
        assert all(np.isfinite(v) for v in losses.values())
    dets = model.predict(images)
    assert len(dets) == 3
    for d in dets:
        assert d["masks"].shape[1:] == (32, 32)


@pytest.mark.slow
def test_overfit_two_images():
    """A short run drives the loss down 10x and predict recovers every object."""
    from npmaskrcnn.optim import AdamW, clip_grad_norm

    cfg = Config(image_size=64, stem_channels=16, stage_channels=(16, 32, 32, 64), fpn_channels=32,
                 anchor_sizes=(8, 16, 32, 64, 128), box_batch_size_per_image=64, box_fc_dim=128,
                 mask_channels=32, mask_num_convs=2, canonical_size=56.0,
                 rpn_post_nms_top_n_train=100, max_mask_rois_per_image=8)
    ds = ShapesDataset(2, seed=11, image_size=64, min_size=16, max_size=32, max_shapes=2)
    images, targets = zip(*[ds[i] for i in range(2)])
    model = MaskRCNN(cfg)
    opt = AdamW(model, lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(240):
        model.rng = np.random.default_rng(step)
        model.zero_grad()
        loss = sum(model.forward(list(images), list(targets)).values())
        first = loss if first is None else first
        model.backward()
        clip_grad_norm(model, 10.0)
        opt.lr = 3e-3 * min(1.0, (step + 1) / 20)
        opt.step()
    assert loss < first / 10, (first, loss)
    for det, tgt in zip(model.predict(list(images)), targets):
        for box, label, mask in zip(tgt["boxes"], tgt["labels"], tgt["masks"]):
            ious = box_iou(box[None], det["boxes"])[0] if len(det["boxes"]) else np.zeros(0)
            assert ious.size and ious.max() > 0.8, (box, det["boxes"])
            j = int(np.argmax(ious))
            assert det["labels"][j] == label
            inter = np.logical_and(mask, det["masks"][j]).sum()
            union = np.logical_or(mask, det["masks"][j]).sum()
            assert inter / union > 0.8


def test_box_reg_loss_weight_scales_the_box_loss():
    images, targets = tiny_batch(2, seed=4)
    losses = {}
    for w in (1.0, 3.0):
        model = MaskRCNN(Config.tiny(box_reg_loss_weight=w))
        randomize(model, np.random.default_rng(0))
        losses[w] = total_loss(model, images, targets)[1]
    assert losses[3.0]["loss_box_reg"] == pytest.approx(3 * losses[1.0]["loss_box_reg"], rel=1e-6)
    assert losses[3.0]["loss_classifier"] == losses[1.0]["loss_classifier"]

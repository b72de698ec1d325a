"""The additions beyond the paper (beyond_paper.py): each changes exactly what it says, through
its seam, and the paper's path is untouched when they are off."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npmaskrcnn import Config, MaskRCNN
from npmaskrcnn.beyond_paper import (IoUBalancedSampler, WithInferenceAdditions, build_model,
                                     for_inference, jitter_boxes, mask_confidence, mirror_boxes,
                                     second_look)
from npmaskrcnn.boxes import BalancedPositiveNegativeSampler, box_iou, boxes_to_rois
from npmaskrcnn.mask_head import mask_probs, paste_masks
from test_model import randomize, tiny_batch


def _second_look_by_hand(model, features, boxes, labels, image_size, mirrored=False):
    """The box head on `boxes` (pooled at the mirrored box when `mirrored`), from public pieces."""
    from npmaskrcnn.box_head import softmax
    from npmaskrcnn.boxes import clip_boxes

    heads, w = model.roi_heads, image_size[1]
    b = mirror_boxes(boxes, w) if mirrored else boxes
    feats, _ = heads.pool(features, np.concatenate([np.zeros((len(b), 1), b.dtype), b], 1),
                          model.config.box_pool_size)
    logits, deltas = heads.box_predictor(heads.box_head(feats))
    rows = np.arange(len(b))
    deltas = deltas.reshape(len(b), -1, 4)[rows, labels]
    again = clip_boxes(heads.box_coder.decode(deltas, b).reshape(-1, 4), image_size)
    return (mirror_boxes(again, w) if mirrored else again), softmax(logits, axis=1)[rows, labels]


def test_box_refine_averages_a_second_look_of_the_box_head():
    """box_refine: final box and score = mean of the first detection's and the box head's second
    look at it; detections re-sorted by the new score."""
    images, _ = tiny_batch(1, seed=5)
    model = MaskRCNN(Config.tiny())
    randomize(model, np.random.default_rng(0))
    first = model.predict(images)[0]
    assert len(first["boxes"]) > 1
    wrapped = WithInferenceAdditions(model)
    assert all(np.array_equal(first[k], v) for k, v in wrapped.predict(images)[0].items())  # all off
    wrapped.set_inference(box_refine=True)
    second = wrapped.predict(images)[0]
    x, image_size = model.preprocess(images)
    b, lab = first["boxes"], first["labels"]
    again, p = _second_look_by_hand(model, model.backbone(x)[:4], b, lab, image_size)
    score = 0.5 * (first["scores"] + p)
    order = np.argsort(-score, kind="stable")
    np.testing.assert_array_equal(second["labels"], lab[order])
    np.testing.assert_allclose(second["scores"], score[order], rtol=1e-5)
    np.testing.assert_allclose(second["boxes"], (0.5 * (b + again))[order], rtol=1e-5, atol=1e-4)
    assert not np.allclose(second["boxes"], b[order])         # it did move them
    assert np.all(np.diff(second["scores"]) <= 0)
    assert second["masks"].shape == first["masks"].shape     # masks come from the final boxes


def test_mask_rescore_multiplies_the_score_by_the_mask_confidence():
    probs = np.array([[[0.9, 0.7], [0.2, 0.1]], [[0.3, 0.4], [0.1, 0.0]], [[0.5, 1.0], [1.0, 1.0]]])
    np.testing.assert_allclose(mask_confidence(probs), [0.8, 0.0, 0.875])
    images, _ = tiny_batch(1, seed=5)
    model = MaskRCNN(Config.tiny())
    randomize(model, np.random.default_rng(0))
    plain = model.predict(images)[0]
    rescored = WithInferenceAdditions(model)
    rescored.set_inference(mask_rescore=True)
    rescored = rescored.predict(images)[0]
    # the same detections (boxes do not depend on the scores), re-scored and re-sorted
    heads = model.roi_heads
    x, image_size = model.preprocess(images)
    rois = np.concatenate([np.zeros((len(plain["boxes"]), 1), np.float32), plain["boxes"]], 1)
    feats, _ = heads.pool(model.backbone(x)[:4], rois, model.config.mask_pool_size)
    conf = mask_confidence(mask_probs(heads.mask_predictor(heads.mask_head(feats)), plain["labels"]))
    score = plain["scores"] * conf
    order = np.argsort(-score, kind="stable")
    np.testing.assert_allclose(rescored["scores"], score[order], rtol=1e-5)
    np.testing.assert_array_equal(rescored["boxes"], plain["boxes"][order])
    np.testing.assert_array_equal(rescored["masks"], plain["masks"][order])


def test_mirror_boxes_and_roi_align_commute_with_the_flip():
    """Pooling the mirrored box from the mirrored feature map = the mirrored pooled features
    (exact for the half-pixel-aligned RoIAlign): what test-time flip relies on."""
    from npmaskrcnn.roi_ops import roi_align_forward

    b = np.array([[3.0, 1.0, 10.5, 7.0], [0.0, 2.0, 32.0, 5.0]])
    np.testing.assert_array_equal(mirror_boxes(b, 32), [[21.5, 1.0, 29.0, 7.0], [0.0, 2.0, 32.0, 5.0]])
    rois = np.concatenate([np.zeros((2, 1)), b], 1)
    np.testing.assert_array_equal(mirror_boxes(mirror_boxes(rois, 32), 32), rois)
    np.testing.assert_array_equal(mirror_boxes(rois, 32)[:, 0], rois[:, 0])
    feat = np.random.default_rng(0).normal(size=(1, 3, 16, 16))
    pooled, _ = roi_align_forward(feat, rois, (5, 5), 0.5, 2, aligned=True)
    mirrored, _ = roi_align_forward(np.ascontiguousarray(feat[..., ::-1]), mirror_boxes(rois, 32),
                                    (5, 5), 0.5, 2, aligned=True)
    np.testing.assert_allclose(mirrored, pooled[..., ::-1], rtol=1e-12, atol=1e-12)


def test_test_flip_averages_the_mirror_view():
    """test_flip: each detection's box, score and mask probabilities averaged with the box head's
    and mask head's look at it in the mirrored image."""
    images, _ = tiny_batch(1, seed=5)
    model = MaskRCNN(Config.tiny())
    randomize(model, np.random.default_rng(0))
    first = model.predict(images)[0]
    flipped = WithInferenceAdditions(model)
    flipped.set_inference(test_flip=True)
    flipped = flipped.predict(images)[0]
    heads, cfg = model.roi_heads, model.config
    x, image_size = model.preprocess(images)
    xm, _ = model.preprocess([images[0][:, ::-1]])
    fm = model.backbone(xm)[:4]
    b, lab = first["boxes"], first["labels"]
    again, p = _second_look_by_hand(model, fm, b, lab, image_size, mirrored=True)
    box, score = 0.5 * (b + again), 0.5 * (first["scores"] + p)
    order = np.argsort(-score, kind="stable")
    np.testing.assert_allclose(flipped["scores"], score[order], rtol=1e-5)
    np.testing.assert_allclose(flipped["boxes"], box[order], rtol=1e-5, atol=1e-4)
    rois = np.concatenate([np.zeros((len(b), 1), np.float32), box], 1)
    probs = [mask_probs(heads.mask_predictor(heads.mask_head(heads.pool(f, r, cfg.mask_pool_size)[0])), lab)
             for f, r in ((model.backbone(x)[:4], rois), (fm, mirror_boxes(rois, image_size[1])))]
    masks = paste_masks(0.5 * (probs[0] + probs[1][:, :, ::-1]), box, image_size)
    np.testing.assert_array_equal(flipped["masks"], masks[order])


def test_jitter_boxes_hand_case_and_distribution():
    b = np.array([[10, 10, 30, 30], [40, 40, 100, 90]], np.float32)
    assert jitter_boxes(b, 3, 0.0, np.random.default_rng(0)).tolist() == np.repeat(b, 3, 0).tolist()
    j = jitter_boxes(b, 500, 0.1, np.random.default_rng(1))
    assert j.shape == (1000, 4) and j.dtype == np.float32
    iou = np.concatenate([box_iou(b[:1], j[:500])[0], box_iou(b[1:], j[500:])[0]])
    assert iou.min() > 0.6 and np.median(iou) > 0.75              # close copies, positives
    centre_shift = (0.5 * (j[:500, :2] + j[:500, 2:]) - 20.0) / 20.0
    assert np.abs(centre_shift).max() <= 0.1 + 1e-6




def test_jittered_gt_rois_add_positives_through_the_seam():
    images, targets = tiny_batch(2, seed=4)

    def sample(**kw):
        model = build_model(Config.tiny(box_batch_size_per_image=64, **kw))   # room for 16 positives
        model.train()
        props = [np.zeros((0, 4), np.float32)] * 2                  # the ground truth alone
        _, labels, *_ = model.roi_heads.sample_proposals(props, targets, np.random.default_rng(0))
        return int((labels > 0).sum())

    n_gt = sum(len(t["boxes"]) for t in targets)
    assert sample(box_jitter_per_gt=0) == n_gt
    assert sample(box_jitter_per_gt=4) == 5 * n_gt                # each copy at IoU > 0.6 >= 0.5
    assert jitter_boxes(np.zeros((0, 4), np.float32), 4, 0.1, np.random.default_rng(0)).shape == (0, 4)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.integers(0, 64), st.integers(2, 4),
       st.lists(st.integers(0, 200), min_size=1, max_size=3))
def test_iou_balanced_negatives_budget_and_bins(seed, batch, bins, sizes):
    """Libra R-CNN's IoU-balanced negatives: same budget as random sampling, and each IoU bin
    gets min(its size, quota) or more."""
    rng = np.random.default_rng(seed)
    labels = [rng.integers(-1, 3, n) for n in sizes]
    ious = [np.where(lab >= 1, rng.uniform(0.5, 1, lab.shape), rng.uniform(0, 0.5, lab.shape) ** 3)
            for lab in labels]                                          # mostly easy negatives
    pos, neg = IoUBalancedSampler(batch, 0.25, bins, 0.5)(labels, rng, ious)
    for lab, iou, p, q in zip(labels, ious, pos, neg):
        assert np.all(lab[p] >= 1) and np.all(lab[q] == 0) and not np.any(p & q)
        assert p.sum() == min(int(batch * 0.25), (lab >= 1).sum())
        assert q.sum() == min(batch - p.sum(), (lab == 0).sum())
        quota = q.sum() // bins
        which = np.minimum((iou * bins / 0.5).astype(int), bins - 1)
        for b in range(bins):
            assert (q & (which == b)).sum() >= min(quota, ((lab == 0) & (which == b)).sum())


def test_iou_balanced_negatives_hand_case():
    """10 easy negatives (IoU 0), 2 hard (IoU 0.4), budget 4, 2 bins: both hard ones are taken;
    random sampling takes them only sometimes."""
    labels = np.zeros(12, np.int64)
    ious = np.array([0.0] * 10 + [0.4, 0.4])
    for seed in range(5):
        _, neg = IoUBalancedSampler(4, 0.25, 2, 0.5)([labels], np.random.default_rng(seed), [ious])
        assert neg[0].sum() == 4 and neg[0][10:].all()
    hard = [BalancedPositiveNegativeSampler(4, 0.25)([labels], np.random.default_rng(s), [ious])[1][0][10:].sum()
            for s in range(20)]
    assert min(hard) < 2


def test_build_model_plugs_each_addition_into_its_seam_and_the_paper_has_none():
    paper = build_model(Config.tiny())
    assert type(paper.roi_heads.sampler) is BalancedPositiveNegativeSampler
    assert paper.roi_heads.extra_training_rois is None
    assert for_inference(paper) is paper
    shipped = build_model(Config.tiny(box_neg_iou_bins=3, box_jitter_per_gt=8, box_refine=True))
    assert isinstance(shipped.roi_heads.sampler, IoUBalancedSampler)
    assert shipped.roi_heads.sampler.num_bins == 3
    assert shipped.roi_heads.extra_training_rois.copies == 8
    wrapped = for_inference(shipped)
    assert isinstance(wrapped, WithInferenceAdditions) and wrapped.model is shipped
    assert wrapped.eval() is wrapped and not shipped.training
    with pytest.raises(ValueError, match="'test_flip' is not an inference option"):
        paper.set_inference(test_flip=True)                  # the paper's model has no flip
    with pytest.raises(ValueError, match="detections_per_img"):
        wrapped.set_inference(detections_per_img=0)


def test_second_look_is_the_box_head_on_the_detections():
    images, _ = tiny_batch(1, seed=5)
    model = MaskRCNN(Config.tiny())
    randomize(model, np.random.default_rng(0))
    det = model.predict(images)[0]
    x, image_size = model.preprocess(images)
    feats = model.backbone(x)[:4]
    rois = boxes_to_rois([det["boxes"]])
    boxes, probs = second_look(model.roi_heads, feats, rois, det["labels"], image_size)
    again, p = _second_look_by_hand(model, feats, det["boxes"], det["labels"], image_size)
    np.testing.assert_allclose(boxes, again, rtol=1e-6)
    np.testing.assert_allclose(probs, p, rtol=1e-6)

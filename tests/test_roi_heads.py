"""The RoI heads' forward logic from the paper's definitions, on hand cases small enough to check
on paper: RoI matching and sampling, box targets and the normalisation of the box losses, mask
targets, mask pasting at pixel level, the mask loss on the ground-truth class only, and the
post-processing (score threshold, per-class NMS, top-k)."""

import numpy as np
import pytest

from npmaskrcnn import Config
from npmaskrcnn.box_head import fastrcnn_loss, postprocess_detections
from npmaskrcnn.boxes import BoxCoder, boxes_to_rois
from npmaskrcnn.mask_head import maskrcnn_loss, paste_masks, paste_masks_reference, project_masks_on_boxes
from npmaskrcnn.roi_heads import RoIHeads

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def heads(**kw):
    return RoIHeads(Config.tiny(**kw), np.random.default_rng(0))


def strip(x1, x2):
    """A box spanning y 0..10: its IoU with another strip is the IoU of the x-intervals."""
    return [x1, 0.0, x2, 10.0]


# ---- sampling ----------------------------------------------------------------------------------


def test_rois_are_matched_at_iou_half_and_the_gt_boxes_join_them():
    """gt strip 0..10, class 2. Proposals at IoU 1/1.1 (pos), exactly 0.5 (pos: >= 0.5),
    0.4 (negative) and 0 (negative); the gt box itself is a candidate too (a perfect positive)."""
    h = heads(box_batch_size_per_image=64)
    props = np.array([strip(0, 11), strip(0, 5), strip(6, 16), strip(30, 40)], np.float32)
    # IoUs with [0, 10]: 10/11, 5/10 = 0.5, 4/16 = 0.25, 0
    targets = [{"boxes": np.array([strip(0, 10)], np.float32), "labels": np.array([2]),
                "masks": np.zeros((1, 10, 50), bool)}]
    rois, labels, reg, matched = h.sample_proposals([props], targets, np.random.default_rng(0))
    assert rois.shape == (5, 5) and np.all(rois[:, 0] == 0)
    pos = labels > 0
    assert pos.sum() == 3 and np.all(labels[pos] == 2)           # the two proposals and the gt
    got = {tuple(r) for r in rois[pos, 1:].tolist()}
    assert got == {tuple(strip(0, 11)), tuple(strip(0, 5)), tuple(strip(0, 10))}
    assert np.all(labels[:3] > 0) and np.all(labels[3:] == 0)    # positives first
    # the box targets move each positive onto the gt box; a gt RoI has zero deltas
    np.testing.assert_allclose(reg[pos], CODER.encode(np.repeat([strip(0, 10)], 3, 0), rois[pos, 1:]),
                               rtol=1e-6)
    gt_row = [i for i in np.flatnonzero(pos) if rois[i, 1:].tolist() == strip(0, 10)][0]
    np.testing.assert_allclose(reg[gt_row], 0, atol=1e-6)
    assert np.all(matched == 0)


def test_sampling_keeps_the_budget_and_the_positive_fraction():
    """64 candidates over a gt box: budget 8 at 25 % positives -> exactly 2 positives, 6
    negatives, per image."""
    h = heads(box_batch_size_per_image=8, box_positive_fraction=0.25)
    pos_props = [strip(0, 10.0 + 0.1 * k) for k in range(20)]               # IoU > 0.9
    neg_props = [strip(50 + k, 60 + k) for k in range(44)]                  # IoU 0
    props = np.array(pos_props + neg_props, np.float32)
    t = {"boxes": np.array([strip(0, 10)], np.float32), "labels": np.array([1]),
         "masks": np.zeros((1, 10, 120), bool)}
    rois, labels, _, _ = h.sample_proposals([props, props], [t, t], np.random.default_rng(1))
    for i in (0, 1):
        lab = labels[rois[:, 0] == i]
        assert len(lab) == 8 and (lab > 0).sum() == 2


def test_an_image_without_instances_gives_only_background():
    h = heads(box_batch_size_per_image=6)
    props = np.array([strip(0, 10), strip(5, 15)], np.float32)
    t = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
         "masks": np.zeros((0, 10, 20), bool)}
    rois, labels, reg, _ = h.sample_proposals([props], [t], np.random.default_rng(0))
    assert len(rois) == 2 and np.all(labels == 0) and np.all(reg == 0)


# ---- the box losses ----------------------------------------------------------------------------


def test_box_losses_are_divided_by_the_number_of_sampled_rois():
    """R = 4 RoIs, 1 positive of class 1, uniform logits over K+1 = 3 classes: loss_classifier =
    log 3 (a mean over the 4 rows); loss_box_reg = smooth L1 (beta 1/9) of the positive's class-1
    deltas, summed over its 4 coordinates, divided by R = 4 (not by the one positive)."""
    logits = np.zeros((4, 3))
    deltas = np.zeros((4, 12))
    deltas[0, 4:8] = [0.5, 0.0, 0.0, 0.0]          # class 1's deltas of RoI 0
    deltas[0, 8:12] = [9.0, 9.0, 9.0, 9.0]         # class 2's: must not count
    labels = np.array([1, 0, 0, 0])
    targets = np.zeros((4, 4))
    cls, box, dlogits, ddeltas = fastrcnn_loss(logits, deltas, labels, targets)
    assert cls == pytest.approx(np.log(3))
    assert box == pytest.approx((0.5 - 0.5 / 9) / 4)             # |d| - beta/2, / R
    assert np.all(ddeltas[1:] == 0) and np.all(ddeltas[0, 8:] == 0) and np.all(ddeltas[0, :4] == 0)
    assert ddeltas[0, 4] == pytest.approx(1 / 4)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-12)


# ---- mask targets, loss and pasting ------------------------------------------------------------


def test_a_gt_mask_equal_to_its_roi_gives_an_all_ones_target():
    mask = np.zeros((1, 20, 30), bool)
    mask[0, 4:16, 6:22] = True                                  # pixels [6, 22) x [4, 16)
    t = project_masks_on_boxes(mask, np.array([[6.0, 4.0, 22.0, 16.0]]), np.array([0]), 8)
    assert t.shape == (1, 8, 8) and np.all(t == 1)


def test_mask_target_of_a_half_covered_roi_is_its_covered_half():
    """The RoI spans pixels 0..16 in x; the mask covers x in [0, 8): the left 4 of 8 target
    columns are 1, the right 4 are 0 — the aligned half-pixel model puts the boundary exactly
    between target columns 3 and 4 (the other convention would shift it by half a cell)."""
    mask = np.zeros((1, 8, 16), bool)
    mask[0, :, :8] = True
    t = project_masks_on_boxes(mask, np.array([[0.0, 0.0, 16.0, 8.0]]), np.array([0]), 8)[0]
    np.testing.assert_array_equal(t, np.repeat([[1] * 4 + [0] * 4], 8, 0))
    t = project_masks_on_boxes(mask, np.array([[0.0, 0.0, 16.0, 8.0]]), np.array([0]), 16)[0]
    np.testing.assert_array_equal(t[:, :8], 1)
    np.testing.assert_array_equal(t[:, 8:], 0)


def test_paste_hand_case_at_pixel_level():
    """A 2x2 mask [[1, 0], [0, 0]] pasted in the box (0, 0, 4, 4): cell centres at 1 and 3, so
    pixel centres 0.5 and 1.5 read the top-left cell (bilinear, clamped) at probability 1 and
    0.75, pixel 2.5 reads 0.25: only the top-left 2x2 pixels pass 0.5; nothing outside the box."""
    probs = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    m = paste_masks(probs, np.array([[0.0, 0.0, 4.0, 4.0]]), (6, 6), threshold=0.5)[0]
    expected = np.zeros((6, 6), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(m, expected)
    half = paste_masks(np.full((1, 2, 2), 0.9), np.array([[1.0, 2.0, 3.0, 5.0]]), (6, 6))[0]
    expected = np.zeros((6, 6), bool)
    expected[2:5, 1:3] = True                                  # pixel centres inside the box
    np.testing.assert_array_equal(half, expected)


def test_paste_masks_equals_its_readable_reference_bit_for_bit():
    """The compiled paste against paste_masks_reference: random boxes (inside, across and outside
    the image, integer and fractional, empty), M in {1, 2, 3, 28}, float16/32/64 probabilities,
    two thresholds: the same booleans everywhere."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        d, m = int(rng.integers(0, 12)), int(rng.choice([1, 2, 3, 28]))
        h, w = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        xy, wh = rng.uniform(-20, 60, (d, 2)), rng.uniform(0, 40, (d, 2))
        if trial % 4 == 0:
            xy, wh = np.round(xy), np.round(wh)
        boxes = np.concatenate([xy, xy + wh], 1).astype([np.float32, np.float64][trial % 2])
        probs = rng.uniform(0, 1, (d, m, m)).astype([np.float16, np.float32, np.float64][trial % 3])
        if trial % 5 == 0:
            probs = np.round(probs * 4) / 4                    # values exactly at the threshold
        thr = [0.5, 0.25][trial % 2]
        np.testing.assert_array_equal(paste_masks(probs, boxes, (h, w), thr),
                                      paste_masks_reference(probs, boxes, (h, w), thr))


def test_paste_masks_refuses_inputs_that_do_not_fit():
    probs, box = np.zeros((2, 4, 4)), np.zeros((2, 4))
    for args, name in [((np.zeros((2, 4, 3)), box, (8, 8)), "mask_probs"),
                       ((np.zeros((2, 0, 0)), box, (8, 8)), "mask_probs"),
                       ((probs, np.zeros((3, 4)), (8, 8)), "boxes"),
                       ((probs, np.array([[0, 0, np.nan, 1], [0, 0, 1, 1]]), (8, 8)), "boxes"),
                       ((probs, np.array([[0, 0, 1e12, 1], [0, 0, 1, 1]]), (8, 8)), "boxes"),
                       ((probs, box, (0, 8)), "image_size")]:
        with pytest.raises(ValueError, match=name):
            paste_masks(*args)


def test_project_then_paste_returns_the_mask():
    """A gt mask resampled into its own box at 28x28, then pasted back, is the mask again."""
    yy, xx = np.mgrid[:40, :50]
    mask = ((yy - 18.0) ** 2 / 12 ** 2 + (xx - 24.0) ** 2 / 16 ** 2) <= 1.0   # an ellipse
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float64)
    target = project_masks_on_boxes(mask[None], box, np.array([0]), 28)
    back = paste_masks(target, box, mask.shape)[0]
    assert (back != mask).sum() <= 0.03 * mask.sum()            # only boundary pixels may flip
    assert (back & mask).sum() / (back | mask).sum() > 0.95


def test_mask_loss_uses_only_the_gt_class_channel():
    """Two RoIs of classes 1 and 3 (K = 3): only channel 0 of RoI 0 and channel 2 of RoI 1 get a
    gradient; the loss is the mean BCE over those 2 x M x M pixels."""
    logits = np.zeros((2, 3, 2, 2))
    logits[0, 0] = 2.0
    targets = np.ones((2, 2, 2))
    loss, d = maskrcnn_loss(logits, targets, np.array([1, 3]))
    expected = (4 * np.log1p(np.exp(-2.0)) + 4 * np.log(2)) / 8
    assert loss == pytest.approx(expected)
    used = np.zeros((2, 3), bool)
    used[0, 0] = used[1, 2] = True
    assert np.all(d[~used] == 0) and np.all(d[used] != 0)


# ---- post-processing ---------------------------------------------------------------------------


def test_postprocess_thresholds_runs_nms_per_class_and_keeps_the_top_k():
    """Three RoIs on one image, K = 2, zero deltas (boxes stay the RoIs):
    RoI 0 and 1 overlap (IoU 0.82); both score high for class 1 -> NMS keeps RoI 0 only;
    RoI 1 also scores for class 2 -> kept (NMS is per class); RoI 2 scores below the threshold."""
    rois = boxes_to_rois([np.array([strip(0, 10), strip(1, 11), strip(40, 50)], np.float32)])
    p = np.array([[0.1, 0.8, 0.1],       # RoI 0: class 1 at 0.8
                  [0.1, 0.6, 0.3],       # RoI 1: class 1 at 0.6 (suppressed), class 2 at 0.3
                  [0.96, 0.02, 0.02]])   # RoI 2: below 0.05 for both
    logits = np.log(p)
    deltas = np.zeros((3, 12))
    (boxes, labels, scores), = postprocess_detections(logits, deltas, rois, 1, (10, 60), CODER,
                                                      score_thresh=0.05, nms_thresh=0.5,
                                                      detections_per_img=100)
    np.testing.assert_allclose(scores, [0.8, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(labels, [1, 2])
    np.testing.assert_allclose(boxes, [strip(0, 10), strip(1, 11)], atol=1e-4)
    (_, _, top1), = postprocess_detections(logits, deltas, rois, 1, (10, 60), CODER, 0.05, 0.5, 1)
    np.testing.assert_allclose(top1, [0.8], rtol=1e-6)


def test_postprocess_clips_to_the_image_and_decodes_each_class_on_its_own():
    rois = boxes_to_rois([np.array([strip(50, 58)], np.float32)])
    logits = np.log(np.array([[0.2, 0.4, 0.4]]))
    deltas = np.zeros((1, 12))
    deltas[0, 8] = 0.5                   # class 2: dx 0.5 / wx 10 = 0.05 widths = 0.4 px right
    (boxes, labels, scores), = postprocess_detections(logits, deltas, rois, 1, (10, 56), CODER,
                                                      0.05, 0.5, 100)
    by_class = {int(lab): b for lab, b in zip(labels, boxes)}
    np.testing.assert_allclose(by_class[1], [50, 0, 56, 10], atol=1e-4)     # clipped at x = 56
    np.testing.assert_allclose(by_class[2], [50.4, 0, 56, 10], atol=1e-4)   # dx * w = 0.05 * 8


def test_the_mlp_mask_head_of_table_2e_maps_a_roi_to_k_masks_and_backpropagates():
    """fc -> fc -> fc(Kc * M * M): shapes, and a float64 gradient check of every parameter and
    of the input through head and predictor."""
    from gradcheck import numerical_gradient, rel_error

    from npmaskrcnn.mask_head import build_mask_branch

    cfg = Config.tiny(mask_head="mlp", mask_fc_dim=6)
    head, pred = build_mask_branch(cfg, np.random.default_rng(0))
    head.astype(np.float64), pred.astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, cfg.fpn_channels, cfg.mask_pool_size, cfg.mask_pool_size))
    out = pred(head(x))
    m = 2 * cfg.mask_pool_size
    assert out.shape == (3, cfg.num_classes, m, m)
    dout = rng.standard_normal(out.shape)

    def loss():
        return float((pred(head(x)) * dout).sum())

    for mod in (head, pred):
        for mm in mod.modules():
            for g in mm.grads.values():
                g.fill(0)
    dx = head.backward(pred.backward(dout))
    head.clear_caches(), pred.clear_caches()
    assert rel_error(dx, numerical_gradient(lambda: loss(), x)) < 1e-7
    for mod in (head, pred):
        for mm in mod.modules():
            for k, p in mm.params.items():
                assert rel_error(mm.grads[k], numerical_gradient(lambda: loss(), p)) < 1e-7

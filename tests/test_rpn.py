"""The RPN's forward semantics from their definitions, on hand cases small enough to check on paper.

Anchor targets (Faster R-CNN §3.1.2, torchvision `RegionProposalNetwork.assign_targets_to_anchors`):
positive at IoU >= 0.7, negative below 0.3, ignored in between, plus each ground-truth box's best
anchors (ties included) whatever their IoU. The loss normalisation (torchvision
`compute_loss`): objectness BCE averaged over the sampled anchors of the whole batch, box loss a
smooth L1 (beta 1/9) summed over the sampled positives and divided by the number of sampled
anchors. Proposals (torchvision `filter_proposals`): top-k per level on the logits, decode, clip
to the image, drop small boxes, NMS within each level, the best post-NMS top-n of the image.

The boxes of the hand cases all span y = 0..10, so every IoU is the 1-D IoU of the x intervals.
"""

import math

import numpy as np
import pytest

from npmaskrcnn.boxes import BoxCoder, clip_boxes
from npmaskrcnn.config import Config
from npmaskrcnn.rpn import RPN


def make_rpn(**overrides):
    return RPN(Config.tiny(**overrides), np.random.default_rng(0))


def strips(*intervals):
    """Boxes [x1, 0, x2, 10] for the given x intervals, float64."""
    return np.array([[x1, 0.0, x2, 10.0] for x1, x2 in intervals], np.float64)


# anchors of the hand cases, with their IoU against GT_A = [0, 10] and GT_B = [100, 110]
ANCHORS = strips((0, 10),       # 0: IoU 1.0 with A          -> positive
                 (0, 7),        # 1: IoU 0.7 with A (= fg)   -> positive
                 (0, 5),        # 2: IoU 0.5 with A          -> ignored
                 (0, 3),        # 3: IoU 0.3 with A (= bg)   -> ignored (not below 0.3)
                 (0, 2),        # 4: IoU 0.2 with A          -> negative
                 (50, 60),      # 5: IoU 0                   -> negative
                 (100, 104),    # 6: IoU 0.4 with B, B's best (tied with 7) -> positive (low quality)
                 (106, 110),    # 7: IoU 0.4 with B, tied                   -> positive (low quality)
                 (100, 103),    # 8: IoU 0.3 with B, not B's best           -> ignored
                 (200, 210))    # 9: IoU 0                   -> negative
GT_A, GT_B = strips((0, 10)), strips((100, 110))


def test_anchor_labels_by_the_two_thresholds():
    rpn = make_rpn()
    labels, targets = rpn.assign_targets(ANCHORS, GT_A)
    # A's best anchor is anchor 0 (IoU 1), already positive; 2 and 3 lie in [0.3, 0.7): ignored
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0, 0, 0, 0, 0, 0])
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(targets[:2], coder.encode(np.repeat(GT_A, 2, 0), ANCHORS[:2]))
    np.testing.assert_allclose(targets[1], [0.5 * 3 / 7, 0.0, math.log(10 / 7), 0.0])


def test_between_thresholds_is_ignored_not_negative():
    """IoU 0.5 and exactly 0.3 are neither positive nor negative: label -1, never sampled, no
    gradient. (Labelling them negative trains the RPN to call half-covered objects background.)"""
    rpn = make_rpn(rpn_batch_size_per_image=1000)               # a budget that samples everything
    labels, _ = rpn.assign_targets(ANCHORS, GT_A)
    assert labels[2] == -1 and labels[3] == -1
    logits = np.linspace(-1, 1, len(ANCHORS))[None]
    _, dobj, _ = rpn.losses(logits, np.zeros((1, len(ANCHORS), 4)), ANCHORS, [GT_A],
                            np.random.default_rng(0))
    assert dobj[0, 2] == 0 and dobj[0, 3] == 0
    assert np.all(dobj[0, [0, 1, 4, 5, 6, 7, 8, 9]] != 0)


def test_low_quality_matches_keep_each_gt_best_anchors_ties_included():
    """B's best IoU is 0.4 < 0.7, shared by anchors 6 and 7: both become positives matched to B
    (torchvision's Matcher with allow_low_quality_matches); anchor 8 (0.3) stays ignored."""
    rpn = make_rpn()
    gt = np.concatenate([GT_A, GT_B])
    labels, targets = rpn.assign_targets(ANCHORS, gt)
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0, 0, 1, 1, -1, 0])
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(targets[6:8], coder.encode(np.repeat(GT_B, 2, 0), ANCHORS[6:8]))
    np.testing.assert_allclose(targets[6], [0.5 * 6 / 4, 0.0, math.log(10 / 4), 0.0])


def test_low_quality_match_keeps_the_anchors_own_best_gt():
    """An anchor promoted as C's best (IoU 4/11 with C) keeps its own best match D (IoU 0.5),
    as torchvision does: the target is D's box, not C's."""
    rpn = make_rpn()
    anchors = strips((204, 209), (0, 10))
    gt = strips((205, 215), (200, 210))                           # C, D
    labels, targets = rpn.assign_targets(anchors, gt)
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(targets[0], BoxCoder().encode(gt[1:], anchors[:1])[0])


def test_image_without_ground_truth_is_all_negative():
    labels, targets = make_rpn().assign_targets(ANCHORS, np.zeros((0, 4)))
    np.testing.assert_array_equal(labels, 0)
    assert targets.shape == ANCHORS.shape


@pytest.mark.parametrize("batch,fraction,gt,expected_pos,expected_neg", [
    (1000, 0.5, GT_A, 2, 6),        # everything labelled is sampled: 2 positives, 6 negatives
    (4, 0.5, GT_A, 2, 2),           # 2 positives (quota 2), 2 negatives fill the budget
    (6, 0.5, GT_B, 2, 4),           # fewer positives than the quota (3): negatives fill the rest
    (2, 0.5, GT_A, 1, 1),           # the positive quota int(2 * 0.5) = 1
    (8, 0.25, GT_A, 2, 6),          # quota 2
    (3, 1.0, GT_A, 2, 1),           # quota 3 > 2 positives: one negative fills the budget
])
def test_balanced_sample_counts(batch, fraction, gt, expected_pos, expected_neg):
    rpn = make_rpn(rpn_batch_size_per_image=batch, rpn_positive_fraction=fraction)
    labels, _ = rpn.assign_targets(ANCHORS, gt)
    logits = np.zeros((1, len(ANCHORS)))
    for seed in range(5):
        _, dobj, _ = rpn.losses(logits, np.zeros((1, len(ANCHORS), 4)), ANCHORS, [gt],
                                np.random.default_rng(seed))
        sampled = dobj[0] != 0                                    # logit 0: gradient +-0.5 / n
        assert (sampled & (labels == 1)).sum() == expected_pos
        assert (sampled & (labels == 0)).sum() == expected_neg
        assert not (sampled & (labels == -1)).any()


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _smooth_l1(d, beta):
    a = np.abs(d)
    return np.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)


def test_rpn_loss_normalisation_by_the_sampled_anchors_of_the_batch():
    """Two images, budget large enough to sample every labelled anchor: image 0 samples 8
    (2 positives), image 1 samples 9 (2 positives), so both losses divide by 17, not by the
    positives (4), not by all anchors (20), not per image."""
    rpn = make_rpn(rpn_batch_size_per_image=1000)
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, len(ANCHORS)))
    deltas = 0.3 * rng.standard_normal((2, len(ANCHORS), 4))
    losses, dobj, ddeltas = rpn.losses(logits, deltas, ANCHORS, [GT_A, GT_B],
                                       np.random.default_rng(0))
    pos = np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]], bool)
    neg = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0, 1]], bool)
    n = 17
    assert pos.sum() + neg.sum() == n
    bce = _softplus(-logits[pos]).sum() + _softplus(logits[neg]).sum()
    assert losses["loss_objectness"] == pytest.approx(bce / n, rel=1e-12)
    coder = BoxCoder()
    targets = np.concatenate([coder.encode(np.repeat(GT_A, 2, 0), ANCHORS[:2]),
                              coder.encode(np.repeat(GT_B, 2, 0), ANCHORS[6:8])])
    box = _smooth_l1(deltas[pos] - targets, 1.0 / 9).sum()
    assert losses["loss_rpn_box_reg"] == pytest.approx(box / n, rel=1e-12)
    # gradients: (sigmoid - label) / 17 on the sampled anchors, zero on the ignored ones;
    # box gradients only on the positives
    sig = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(dobj[pos], (sig[pos] - 1) / n, rtol=1e-12)
    np.testing.assert_allclose(dobj[neg], sig[neg] / n, rtol=1e-12)
    assert not dobj[~(pos | neg)].any()
    assert not ddeltas[~pos].any() and np.all(ddeltas[pos] != 0)


def test_rpn_box_loss_hand_case_with_beta_one_ninth():
    """One positive (anchor 0 on GT_A, target 0) and one negative sampled: a delta of 0.05 is
    in the quadratic zone (0.5 * 0.05^2 * 9), one of 1.0 in the linear zone (1 - 1/18); / 2."""
    rpn = make_rpn(rpn_batch_size_per_image=1000)
    anchors = strips((0, 10), (50, 60))
    deltas = np.array([[[0.05, 0.0, 1.0, 0.0], [7.0, 7.0, 7.0, 7.0]]])
    losses, _, _ = rpn.losses(np.zeros((1, 2)), deltas, anchors, [GT_A], np.random.default_rng(0))
    assert losses["loss_rpn_box_reg"] == pytest.approx((0.5 * 0.05 ** 2 * 9 + 1 - 1 / 18) / 2)
    assert losses["loss_objectness"] == pytest.approx(math.log(2))


# ---- proposals -------------------------------------------------------------------------------

def propose(rpn, anchors_per_level, scores_per_level, image_size=(100, 300), deltas=None):
    anchors = np.concatenate(anchors_per_level)
    scores = np.concatenate([np.asarray(s, np.float64) for s in scores_per_level])
    if deltas is None:
        deltas = np.zeros_like(anchors)
    return rpn.propose(scores, deltas, anchors, [len(a) for a in anchors_per_level], image_size)


def test_nms_runs_within_each_level_not_across():
    """The same box on two levels survives twice; on one level its near copy is suppressed."""
    rpn = make_rpn(rpn_nms_thresh=0.7)
    rpn.eval()
    same = strips((0, 10))
    level0 = np.concatenate([same, strips((0, 9.5))])             # IoU 0.95 with the first
    out = propose(rpn, [level0, same], [[3.0, 2.5], [2.0]])
    np.testing.assert_array_equal(out, np.concatenate([same, same]))


def test_pre_nms_top_k_is_per_level():
    """pre_nms_top_n = 2 per level: the two best of each level (5, 4 and 2, 1), although the
    third of level 0 (3) beats everything on level 1."""
    rpn = make_rpn(rpn_pre_nms_top_n_test=2, rpn_post_nms_top_n_test=100)
    rpn.eval()
    level0 = strips((0, 10), (20, 30), (40, 50))
    level1 = strips((60, 70), (80, 90), (100, 110))
    out = propose(rpn, [level0, level1], [[4.0, 3.0, 5.0], [1.0, 0.5, 2.0]])
    np.testing.assert_array_equal(out, strips((40, 50), (0, 10), (100, 110), (60, 70)))


def test_post_nms_top_n_keeps_the_best_of_the_image_in_score_order():
    rpn = make_rpn(rpn_post_nms_top_n_test=3)
    rpn.eval()
    level0 = strips((0, 10), (20, 30), (40, 50))
    level1 = strips((60, 70), (80, 90), (100, 110))
    out = propose(rpn, [level0, level1], [[4.0, -3.0, 5.0], [1.0, 4.5, 2.0]])
    np.testing.assert_array_equal(out, strips((40, 50), (80, 90), (0, 10)))


def test_training_and_test_mode_use_their_own_top_n():
    rpn = make_rpn(rpn_pre_nms_top_n_train=3, rpn_post_nms_top_n_train=2,
                   rpn_pre_nms_top_n_test=1, rpn_post_nms_top_n_test=10)
    level0 = strips((0, 10), (20, 30), (40, 50))
    level1 = strips((60, 70), (80, 90), (100, 110))
    scores = [[4.0, 3.0, 5.0], [1.0, 0.5, 2.0]]
    rpn.train()
    np.testing.assert_array_equal(propose(rpn, [level0, level1], scores), strips((40, 50), (0, 10)))
    rpn.eval()
    np.testing.assert_array_equal(propose(rpn, [level0, level1], scores),
                                  strips((40, 50), (100, 110)))


def test_proposals_are_decoded_then_clipped_to_the_image():
    rpn = make_rpn()
    rpn.eval()
    anchors = strips((0, 10), (20, 30))
    # anchor 0: centre +0.1 * 10 = 6, width x2 = 20 -> [-4, 16] -> clipped to [0, 16]
    # anchor 1: height x4 = 40 around y = 5 -> [-15, 25] -> clipped to [0, 20] (image h = 20)
    deltas = np.array([[0.1, 0.0, math.log(2), 0.0], [0.0, 0.0, 0.0, math.log(4)]])
    out = propose(rpn, [anchors], [[2.0, 1.0]], image_size=(20, 300), deltas=deltas)
    np.testing.assert_allclose(out, [[0, 0, 16, 10], [20, 0, 30, 20]], atol=1e-12)
    out = propose(rpn, [strips((-5, 320))], [[1.0]], image_size=(8, 300))
    np.testing.assert_array_equal(out, [[0, 0, 300, 8]])


def test_small_boxes_are_dropped_after_clipping():
    """rpn_min_size = 1: a box 0.5 wide is dropped, and so is one 10.5 wide that clipping to
    the image leaves 0.5 wide; one 1.0 wide stays."""
    rpn = make_rpn(rpn_min_size=1.0)
    rpn.eval()
    anchors = strips((20, 20.5), (-10, 0.5), (40, 41), (60, 70))
    out = propose(rpn, [anchors], [[4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(out, strips((40, 41), (60, 70)))


def test_nms_sees_the_clipped_boxes():
    """Boxes [-20, 10] and [-5, 10] overlap by 0.5 (kept at NMS 0.7) but are both [0, 10] once
    clipped: the clipped copy is suppressed, as clipping comes before NMS."""
    rpn = make_rpn(rpn_nms_thresh=0.7)
    rpn.eval()
    out = propose(rpn, [strips((-20, 10), (-5, 10))], [[2.0, 1.0]])
    np.testing.assert_array_equal(out, strips((0, 10)))


def test_forward_flattens_levels_in_anchor_order():
    """RPN.forward reads the head's (N, A, H, W) logits in anchor order (y, x, a): with P2's
    logit at (a, y, x) equal to the anchor index (y * W + x) * A + a and the other levels far
    below, the four proposals are P2's last four anchors (clipped), best first."""
    cfg = Config.tiny(rpn_pre_nms_top_n_test=4, rpn_post_nms_top_n_test=4, rpn_nms_thresh=1.0)
    rpn = RPN(cfg, np.random.default_rng(0)).eval()
    a, h = len(cfg.anchor_ratios), 8
    shapes = [(h >> k, h >> k) for k in range(5)]
    features = [np.zeros((2, cfg.fpn_channels) + s, np.float32) for s in shapes]

    def fake_head(p):
        n, _, hh, ww = p.shape
        if hh == h:
            index = np.arange(hh * ww * a, dtype=np.float32).reshape(hh, ww, a)
            logits = index.transpose(2, 0, 1)                      # (A, H, W)
        else:
            logits = np.full((a, hh, ww), -1e3, np.float32)
        return np.repeat(logits[None], n, 0), np.zeros((n, 4 * a, hh, ww), np.float32)

    rpn.head = fake_head
    proposals, losses = rpn.forward(features, (32, 32))
    assert losses == {} and len(proposals) == 2
    expected = clip_boxes(rpn.anchors(shapes)[0][-4:][::-1], (32, 32))
    for p in proposals:
        np.testing.assert_allclose(p, expected, atol=1e-5)


def test_nan_objectness_is_dropped_like_a_nan_box():
    """A diverged head's NaN logit (or NaN box) never reaches NMS (which refuses NaN scores):
    the proposal is dropped, the training loop then reports the non-finite loss."""
    rpn = make_rpn()
    rpn.eval()
    deltas = np.array([[0.0, 0, 0, 0], [0, 0, 0, 0], [np.nan, 0, 0, 0]])
    out = propose(rpn, [strips((0, 10), (20, 30), (40, 50))], [[1.0, np.nan, 2.0]], deltas=deltas)
    np.testing.assert_array_equal(out, strips((0, 10)))

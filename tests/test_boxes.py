"""Tests for npmaskrcnn.boxes: IoU, BoxCoder, NMS, Matcher and the balanced sampler."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npmaskrcnn.boxes import (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS,
                              BalancedPositiveNegativeSampler, BoxCoder, Matcher, batched_nms,
                              box_area, box_iou, clip_boxes, nms, remove_small_boxes)
from reference_ops import box_iou_ref, nms_ref

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def boxes_from(seed, n, grid=False):
    """n boxes in a 50 x 50 picture; on a coarse grid (many exact ties) when grid is set."""
    rng = np.random.default_rng(seed)
    if grid:
        xy = rng.integers(0, 4, (n, 2)) * 5.0
        wh = rng.integers(0, 4, (n, 2)) * 5.0                    # some empty boxes too
    else:
        xy = rng.uniform(0, 40, (n, 2))
        wh = rng.uniform(0, 20, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_box_area_and_iou_hand_computed():
    a = np.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_allclose(box_area(a), [4.0, 4.0, 0.0])
    iou = box_iou(a, a)
    np.testing.assert_allclose(iou[0, 1], 1.0 / 7.0)               # inter 1, union 4 + 4 - 1
    assert iou[2, 2] == 0.0                                         # empty with empty: 0, not NaN
    assert box_iou(a, a[:0]).shape == (3, 0)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(0, 8), st.integers(0, 8), st.booleans())
def test_box_iou_matches_reference(seed, n, m, grid):
    b1, b2 = boxes_from(seed, n, grid), boxes_from(seed + 1, m, grid)
    iou = box_iou(b1, b2)
    assert iou.shape == (n, m) and not np.isnan(iou).any()
    np.testing.assert_allclose(iou, box_iou_ref(b1, b2), rtol=1e-12, atol=1e-15)


def test_box_iou_keeps_dtype():
    b = boxes_from(0, 5).astype(np.float32)
    assert box_iou(b, b).dtype == np.float32


def test_clip_and_remove_small_boxes():
    b = np.array([[-5.0, -1.0, 30.0, 8.0], [2.0, 3.0, 2.5, 9.0], [1.0, 1.0, 4.0, 4.0]])
    c = clip_boxes(b, (6, 20))                                      # (h, w)
    np.testing.assert_array_equal(c[0], [0.0, 0.0, 20.0, 6.0])
    assert b[0, 0] == -5.0                                          # input untouched
    keep = remove_small_boxes(b, 1.0)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, [0, 2])


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 6),
       st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]))
def test_encode_decode_round_trip(seed, n, weights):
    rng = np.random.default_rng(seed)
    proposals = boxes_from(seed, n) + np.array([0, 0, 1, 1])      # width and height >= 1
    gt = proposals + rng.uniform(-0.4, 0.4, (n, 4)) * 5
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 0.5)
    coder = BoxCoder(weights)
    deltas = coder.encode(gt, proposals)
    assert deltas.shape == (n, 4)
    np.testing.assert_allclose(coder.decode(deltas, proposals), gt, rtol=1e-10, atol=1e-9)


def test_encode_hand_computed_and_decode_clamp():
    coder = BoxCoder()
    proposal = np.array([[0.0, 0.0, 10.0, 20.0]])                  # centre (5, 10), size 10 x 20
    gt = np.array([[5.0, 5.0, 25.0, 25.0]])                         # centre (15, 15), size 20 x 20
    np.testing.assert_allclose(coder.encode(gt, proposal),
                               [[1.0, 0.25, math.log(2.0), 0.0]])
    huge = coder.decode(np.array([[0.0, 0.0, 100.0, 100.0]]), proposal)
    w = huge[0, 2] - huge[0, 0]
    np.testing.assert_allclose(w, 10.0 * 1000.0 / 16)              # dw clamped at log(1000/16)


def test_decode_class_specific_deltas_and_dtype():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = boxes_from(3, 4).astype(np.float32) + np.float32(1)
    deltas = np.random.default_rng(0).normal(0, 1, (4, 12)).astype(np.float32)
    out = coder.decode(deltas, boxes)
    assert out.shape == (4, 12) and out.dtype == np.float32
    for k in range(3):                                              # class k = its own 4 deltas
        np.testing.assert_allclose(out[:, 4 * k:4 * k + 4],
                                   coder.decode(deltas[:, 4 * k:4 * k + 4], boxes), rtol=1e-6)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(0, 25), st.booleans(),
       st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_nms_matches_brute_force(seed, n, grid, threshold):
    rng = np.random.default_rng(seed)
    boxes = boxes_from(seed, n, grid)
    scores = rng.integers(0, 4, n) / 4.0 if grid else rng.uniform(0, 1, n)   # ties on the grid
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, nms_ref(boxes, scores, threshold))


@SETTINGS
@given(st.integers(0, 10_000), st.integers(0, 25), st.integers(1, 3))
def test_batched_nms_is_nms_per_label(seed, n, n_labels):
    rng = np.random.default_rng(seed)
    boxes = boxes_from(seed, n, grid=True)
    scores = rng.integers(0, 5, n) / 5.0
    labels = rng.integers(0, n_labels, n)
    keep = batched_nms(boxes, scores, labels, 0.5)
    np.testing.assert_array_equal(keep, nms_ref(boxes, scores, 0.5, labels))
    assert np.all(np.diff(scores[keep]) <= 0)


def test_nms_edge_cases():
    empty = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == np.int64
    b = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    # equal scores: the lower index wins; IoU exactly 0.5 is not > 0.5, so box 2 survives
    np.testing.assert_array_equal(nms(b, np.array([0.5, 0.5, 0.4]), 0.5), [0, 2])
    with pytest.raises(ValueError, match="boxes"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)


def test_matcher_hand_computed_and_sentinels():
    mqm = np.array([[0.9, 0.5, 0.1, 0.2],
                    [0.1, 0.6, 0.2, 0.25]])
    m = Matcher(0.7, 0.3)
    np.testing.assert_array_equal(m(mqm), [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD,
                                           BELOW_LOW_THRESHOLD])
    assert Matcher.BELOW_LOW_THRESHOLD == -1 and Matcher.BETWEEN_THRESHOLDS == -2
    low = Matcher(0.7, 0.3, allow_low_quality_matches=True)(mqm)
    # gt 1's best prediction is 1 (0.6): it keeps its match although 0.6 < 0.7
    np.testing.assert_array_equal(low, [0, 1, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD])
    no_gt = m(np.zeros((0, 5)))
    assert no_gt.dtype == np.int64 and np.all(no_gt == BELOW_LOW_THRESHOLD) and no_gt.shape == (5,)
    assert m(np.zeros((2, 0))).shape == (0,)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 12), st.booleans())
def test_matcher_properties(seed, n_gt, n_pred, low_quality):
    rng = np.random.default_rng(seed)
    mqm = rng.integers(0, 11, (n_gt, n_pred)) / 10.0                 # ties are common
    matches = Matcher(0.7, 0.3, low_quality)(mqm)
    best = mqm.max(axis=0)
    for j in range(n_pred):
        if matches[j] >= 0:
            assert mqm[matches[j], j] == best[j]                      # the first best gt
            assert matches[j] == np.argmax(mqm[:, j])
            assert best[j] >= 0.7 or low_quality
        elif matches[j] == BETWEEN_THRESHOLDS:
            assert 0.3 <= best[j] < 0.7
        else:
            assert matches[j] == BELOW_LOW_THRESHOLD and best[j] < 0.3
    if low_quality:                                                    # every gt keeps a match
        for i in range(n_gt):
            tied = np.nonzero(mqm[i] == mqm[i].max())[0]
            assert np.all(matches[tied] >= 0)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(0, 64), st.sampled_from([0.0, 0.25, 0.5, 1.0]),
       st.lists(st.integers(0, 200), min_size=1, max_size=3))
def test_sampler_budget_and_fraction(seed, batch, fraction, sizes):
    rng = np.random.default_rng(seed)
    labels = [rng.integers(-1, 3, n) for n in sizes]                   # -1, 0, 1, 2
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)(labels, rng)
    for lab, p, q in zip(labels, pos, neg):
        assert p.dtype == bool and p.shape == lab.shape and q.shape == lab.shape
        assert np.all(lab[p] >= 1) and np.all(lab[q] == 0) and not np.any(p & q)
        assert p.sum() + q.sum() <= batch
        assert p.sum() == min(int(batch * fraction), (lab >= 1).sum())
        assert q.sum() == min(batch - p.sum(), (lab == 0).sum())       # negatives fill the rest


@pytest.mark.parametrize("fn", ["nms", "batched_nms"])
def test_nms_refuses_nan_scores_by_name(fn):
    """A NaN score has no place in the order: refused, naming the argument (a diverged network
    is reported by the training loop, not hidden by NMS). +-inf scores are ordered."""
    b = np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    labels = np.zeros(3, np.int64)
    run = (lambda s: nms(b, s, 0.5)) if fn == "nms" else (lambda s: batched_nms(b, s, labels, 0.5))
    with pytest.raises(ValueError, match=r"scores must not hold NaN.*1 NaN of 3"):
        run(np.array([0.9, np.nan, 0.1]))
    with pytest.raises(ValueError, match=r"scores must not hold NaN"):
        run(np.array([0.9, 0.5, np.nan], np.float32))
    np.testing.assert_array_equal(run(np.array([-np.inf, np.inf, 0.0])), [1, 2])

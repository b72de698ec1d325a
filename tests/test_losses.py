"""Tests for npmaskrcnn.losses: naive float64 formulas at moderate logits, numerical gradients,
hand-computed cases, stability at +-1000 logits, ignore_index, weights, empty and zero-count inputs."""

import numpy as np
import pytest
from gradcheck import numerical_gradient, rel_error

from npmaskrcnn.losses import sigmoid_binary_cross_entropy, smooth_l1, softmax_cross_entropy


def _naive_softmax_ce(logits, labels, ignore_index=-1):
    rows = [i for i in range(len(labels)) if labels[i] != ignore_index]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return -np.mean([np.log(probs[i, labels[i]]) for i in rows])


def _naive_bce(logits, targets, weights):
    s = 1 / (1 + np.exp(-logits))
    per = -(targets * np.log(s) + (1 - targets) * np.log(1 - s))
    return np.sum(weights * per) / np.sum(weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_cross_entropy_matches_naive_and_gradient(seed):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, size=6)
    labels[seed] = -1
    loss, dlogits = softmax_cross_entropy(logits, labels)
    assert abs(loss - _naive_softmax_ce(logits, labels)) < 1e-12
    num = numerical_gradient(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    assert rel_error(dlogits, num) < 1e-7
    np.testing.assert_array_equal(dlogits[seed], 0.0)  # the ignored row gets no gradient


def test_softmax_cross_entropy_hand_case_and_ignore_index():
    loss, dlogits = softmax_cross_entropy(np.zeros((2, 2)), np.array([0, -100]), ignore_index=-100)
    assert abs(loss - np.log(2)) < 1e-15  # mean over the one counted row
    np.testing.assert_allclose(dlogits, [[-0.5, 0.5], [0.0, 0.0]], atol=1e-15)


def test_softmax_cross_entropy_no_counted_rows():
    logits = np.ones((3, 4), dtype=np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.full(3, -1))
    assert loss == 0.0
    assert dlogits.dtype == np.float32 and not dlogits.any()
    loss, dlogits = softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, dtype=int))
    assert loss == 0.0 and dlogits.shape == (0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_stable_at_1000(dtype):
    logits = np.array([[1000.0, -1000.0, 0.0], [1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]], dtype=dtype)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1, 2]))
    assert isinstance(loss, float) and np.isfinite(loss)
    assert abs(loss - (0.0 + 2000.0 + np.log(3)) / 3) < 1e-3
    assert dlogits.dtype == dtype and np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(dlogits[1], [1 / 3, -1 / 3, 0.0], atol=1e-6)


@pytest.mark.parametrize("seed,weighted", [(0, False), (1, True), (2, True)])
def test_sigmoid_bce_matches_naive_and_gradient(seed, weighted):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((2, 3, 4))
    targets = rng.uniform(size=logits.shape)
    targets[0, 0] = 1.0
    weights = rng.uniform(size=logits.shape) * (rng.uniform(size=logits.shape) > 0.3) if weighted else None
    loss, dlogits = sigmoid_binary_cross_entropy(logits, targets, weights)
    naive = _naive_bce(logits, targets, np.ones_like(logits) if weights is None else weights)
    assert abs(loss - naive) < 1e-12
    num = numerical_gradient(lambda: sigmoid_binary_cross_entropy(logits, targets, weights)[0], logits)
    assert rel_error(dlogits, num) < 1e-7
    if weighted:
        np.testing.assert_array_equal(dlogits[weights == 0], 0.0)


def test_sigmoid_bce_hand_case():
    loss, dlogits = sigmoid_binary_cross_entropy(np.array([0.0, 0.0]), np.array([1.0, 0.0]))
    assert abs(loss - np.log(2)) < 1e-15
    np.testing.assert_allclose(dlogits, [-0.25, 0.25], atol=1e-15)  # (s - t) / 2 elements


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_bce_stable_at_1000(dtype):
    logits = np.array([1000.0, -1000.0, 1000.0, -1000.0], dtype=dtype)
    targets = np.array([1.0, 0.0, 0.0, 1.0], dtype=dtype)
    loss, dlogits = sigmoid_binary_cross_entropy(logits, targets)
    assert abs(loss - 500.0) < 1e-3  # (0 + 0 + 1000 + 1000) / 4
    assert dlogits.dtype == dtype
    np.testing.assert_allclose(dlogits, [0.0, 0.0, 0.25, -0.25], atol=1e-7)


def test_sigmoid_bce_zero_weight_and_empty():
    logits = np.ones((2, 2), dtype=np.float32)
    loss, dlogits = sigmoid_binary_cross_entropy(logits, np.zeros((2, 2)), np.zeros((2, 2)))
    assert loss == 0.0 and dlogits.dtype == np.float32 and not dlogits.any()
    loss, dlogits = sigmoid_binary_cross_entropy(np.zeros((0, 28, 28)), np.zeros((0, 28, 28)))
    assert loss == 0.0 and dlogits.shape == (0, 28, 28)


@pytest.mark.parametrize("beta,normalizer", [(1.0, None), (1 / 9, 7.0), (0.0, None), (2.5, 3)])
def test_smooth_l1_matches_naive_and_gradient(beta, normalizer):
    rng = np.random.default_rng(3)
    pred = 2 * rng.standard_normal((5, 4))
    target = rng.standard_normal((5, 4))
    d = pred - target
    d[np.abs(np.abs(d) - beta) < 1e-3] += 0.01  # keep central differences off the kinks
    d[np.abs(d) < 1e-3] += 0.01
    pred = target + d
    loss, dpred = smooth_l1(pred, target, beta=beta, normalizer=normalizer)
    per = [abs(v) if beta == 0 else (0.5 * v * v / beta if abs(v) < beta else abs(v) - 0.5 * beta) for v in d.ravel()]
    assert abs(loss - sum(per) / (d.size if normalizer is None else normalizer)) < 1e-12
    num = numerical_gradient(lambda: smooth_l1(pred, target, beta=beta, normalizer=normalizer)[0], pred)
    assert rel_error(dpred, num) < 1e-7


def test_smooth_l1_hand_case():
    loss, dpred = smooth_l1(np.array([0.0, 0.5, 3.0, -3.0]), np.zeros(4))
    assert abs(loss - (0 + 0.125 + 2.5 + 2.5) / 4) < 1e-15
    np.testing.assert_allclose(dpred, [0.0, 0.125, 0.25, -0.25], atol=1e-15)


def test_smooth_l1_zero_normalizer_empty_and_float32():
    pred = np.ones(3, dtype=np.float32)
    loss, dpred = smooth_l1(pred, np.zeros(3), normalizer=0)
    assert loss == 0.0 and not dpred.any() and dpred.dtype == np.float32
    loss, dpred = smooth_l1(np.zeros((0, 4)), np.zeros((0, 4)))
    assert loss == 0.0 and dpred.shape == (0, 4)
    loss, dpred = smooth_l1(np.array([1000.0, -1000.0], dtype=np.float32), np.zeros(2))
    assert abs(loss - 999.5) < 1e-3 and dpred.dtype == np.float32


def test_softmax_cross_entropy_is_the_mean_over_counted_rows_hand_case():
    """Rows: log 2 (two equal logits), log 4 (logits (log 3, 0), label 1), ignored: the mean of
    the two counted rows, 1.5 log 2 (not their sum, not over all three rows)."""
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [5.0, -5.0]])
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1, -1]))
    assert abs(loss - 1.5 * np.log(2)) < 1e-15
    np.testing.assert_allclose(dlogits, [[-0.25, 0.25], [0.375, -0.375], [0.0, 0.0]], atol=1e-15)


def test_smooth_l1_beta_one_ninth_hand_case():
    """The RPN's beta = 1/9, divided by a normalizer of 4 (the sampled anchors): |d| = 0.1 is
    quadratic (0.5 * 0.01 * 9 = 0.045), |d| = 0.2 and 1 linear (|d| - 1/18)."""
    pred = np.array([0.1, -0.1, 0.2, 1.0])
    loss, dpred = smooth_l1(pred, np.zeros(4), beta=1 / 9, normalizer=4)
    assert abs(loss - (0.045 + 0.045 + 0.2 - 1 / 18 + 1 - 1 / 18) / 4) < 1e-15
    np.testing.assert_allclose(dpred, [0.9 / 4, -0.9 / 4, 0.25, 0.25], atol=1e-15)

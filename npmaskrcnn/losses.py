"""Losses: the three that train Mask R-CNN, each returning (loss, gradient of the loss).

- softmax cross-entropy: the box classifier over K+1 classes (Fast R-CNN, Mask R-CNN §3 L_cls);
- sigmoid binary cross-entropy with logits: RPN objectness and the per-pixel, per-class mask loss
  (Mask R-CNN §3: "average binary cross-entropy loss", which beats a softmax over classes);
- smooth L1: box regression for the RPN and the box head (Fast R-CNN eq. 3).

All take logits (never probabilities) and are computed in log-sum-exp form, so logits of +-1000
neither overflow nor produce NaN. Every function keeps the input dtype.

Shape shorthand:
    N   rows (anchors or RoIs)      K   classes, background included

Naming:
    logits, labels (int class ids), targets (probabilities in [0, 1]), weights (per element, >= 0)
    pred, target    regression outputs and their targets; beta is smooth L1's transition point
    loss, dlogits / dpred   a Python float and its gradient, same shape and dtype as the input
"""

import numpy as np


def softmax_cross_entropy(logits, labels, ignore_index=-1):
    """Softmax cross-entropy, averaged over the rows whose label is not ignore_index.

    loss = mean_i ( logsumexp(logits[i]) - logits[i, labels[i]] ) over counted rows i.

    Inputs:
    - logits: (N, K)
    - labels: (N,) ints in [0, K), or ignore_index for rows that do not count
    - ignore_index: label value of ignored rows

    Returns a tuple of:
    - loss: float; 0.0 if no row counts
    - dlogits: (N, K); zero rows for ignored labels (all zero if no row counts)
    """
    labels = np.asarray(labels)
    counted = labels != ignore_index  # (N,)
    n_counted = int(counted.sum())
    dlogits = np.zeros_like(logits)
    if n_counted == 0:
        return 0.0, dlogits
    z = logits[counted]
    y = labels[counted]
    shifted = z - z.max(axis=1, keepdims=True)  # the largest logit becomes 0: exp cannot overflow
    log_sum = np.log(np.exp(shifted).sum(axis=1))  # (M,)
    rows = np.arange(n_counted)
    loss = np.sum(log_sum - shifted[rows, y]) / n_counted
    # d/dz_k (logsumexp(z) - z_y) = softmax(z)_k - [k == y], then / M for the mean
    dz = np.exp(shifted - log_sum[:, None])
    dz[rows, y] -= 1
    dlogits[counted] = dz / n_counted
    return float(loss), dlogits


def sigmoid_binary_cross_entropy(logits, targets, weights=None):
    """Binary cross-entropy on sigmoid(logits), averaged over all elements (or weighted).

    Per element, l = -t log s(x) - (1 - t) log(1 - s(x)) = max(x, 0) - x t + log(1 + exp(-|x|)),
    the form with no overflow. Without weights the loss is mean(l) over every element; with
    weights it is sum(w l) / sum(w).

    Inputs:
    - logits: any shape
    - targets: same shape, values in [0, 1]
    - weights: None, or same shape with values >= 0

    Returns a tuple of:
    - loss: float; 0.0 for an empty input or sum(weights) == 0
    - dlogits: same shape as logits; all zero when the loss is 0 by the rules above
    """
    targets = np.asarray(targets, dtype=logits.dtype)
    if weights is None:
        weights = np.ones_like(logits)
    else:
        weights = np.asarray(weights, dtype=logits.dtype)
    total = weights.sum()
    if logits.size == 0 or total == 0:
        return 0.0, np.zeros_like(logits)
    abs_x = np.abs(logits)
    per_elem = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-abs_x))
    loss = np.sum(weights * per_elem) / total
    # dl/dx = s(x) - t, with s(x) from exp(-|x|) so that neither branch overflows
    e = np.exp(-abs_x)
    sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    dlogits = weights * (sig - targets) / total
    return float(loss), dlogits


def smooth_l1(pred, target, beta=1.0, normalizer=None):
    """Smooth L1 (Huber-like) regression loss, summed and divided by a normalizer.

    Per element with d = pred - target: 0.5 d^2 / beta if |d| < beta, else |d| - 0.5 beta;
    beta == 0 gives the plain L1 |d|.

    Inputs:
    - pred, target: same shape, any
    - beta: transition point >= 0
    - normalizer: divides the sum; None means the number of elements (a mean). The RPN and box
      head pass the number of sampled anchors / RoIs, as torchvision does

    Returns a tuple of:
    - loss: float; 0.0 for an empty input or normalizer == 0
    - dpred: same shape and dtype as pred
    """
    target = np.asarray(target, dtype=pred.dtype)
    if normalizer is None:
        normalizer = pred.size
    if pred.size == 0 or normalizer == 0:
        return 0.0, np.zeros_like(pred)
    diff = pred - target
    abs_d = np.abs(diff)
    if beta == 0:
        per_elem = abs_d
        dpred = np.sign(diff)
    else:
        quadratic = abs_d < beta
        per_elem = np.where(quadratic, 0.5 * diff * diff / beta, abs_d - 0.5 * beta)
        # d/dd: d / beta in the quadratic zone, sign(d) in the linear one (they meet at |d| = beta)
        dpred = np.where(quadratic, diff / beta, np.sign(diff))
    loss = np.sum(per_elem) / normalizer
    return float(loss), (dpred / normalizer).astype(pred.dtype, copy=False)

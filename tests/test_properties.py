"""Property tests: random boxes (inverted, huge, negative, zero-size), feature maps and scores.

Whatever comes in, the box functions and the RoI ops either return finite outputs of the
documented shape and dtype or raise a ValueError naming the argument; they never crash the
process (the numba kernels do no bounds checks), hang, or return NaN from finite inputs.
"""

import glob
import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from npmaskrcnn.boxes import BoxCoder, batched_nms, box_iou, nms
from npmaskrcnn.roi_ops import (roi_align_backward, roi_align_forward, roi_pool_backward,
                                roi_pool_forward)

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# a coordinate: mostly small (so boxes overlap), sometimes negative, huge or exactly repeated
coord = st.one_of(st.integers(-8, 40).map(float),
                  st.floats(-50, 100, allow_nan=False, width=32),
                  st.sampled_from([0.0, -1e6, 1e6, 3e7, -2.5, 1e-3]))
bad_coord = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def boxes(draw, max_n=8, allow_bad=False):
    """(N, 4) boxes of independent coordinates: inverted, zero-size and huge boxes all occur."""
    n = draw(st.integers(0, max_n))
    values = draw(st.lists(coord, min_size=4 * n, max_size=4 * n))
    out = np.array(values, np.float64).reshape(n, 4)
    if allow_bad and n and draw(st.booleans()):
        out[draw(st.integers(0, n - 1)), draw(st.integers(0, 3))] = draw(bad_coord)
    return out.astype(draw(st.sampled_from([np.float32, np.float64])))


def scores_for(draw, n, allow_nan=False):
    """n scores with many ties, +-inf, and (allow_nan) sometimes a NaN, which nms refuses."""
    special = [0.5, 0.5, np.inf, -np.inf] + ([np.nan] if allow_nan else [])
    return np.array(draw(st.lists(st.one_of(st.floats(-5, 5, allow_nan=False),
                                            st.sampled_from(special)),
                                  min_size=n, max_size=n)), np.float64)


# ---- box_iou ------------------------------------------------------------------------------

@SETTINGS
@given(boxes(allow_bad=True), boxes(allow_bad=True))
def test_box_iou_is_finite_and_in_0_1(b1, b2):
    if not (np.all(np.isfinite(b1)) and np.all(np.isfinite(b2))):
        with pytest.raises(ValueError, match=r"boxes[12] must hold finite"):
            box_iou(b1, b2)
        return
    iou = box_iou(b1, b2)
    assert iou.shape == (len(b1), len(b2)) and iou.dtype == b1.dtype
    assert np.all(np.isfinite(iou))
    assert np.all(iou >= 0) and np.all(iou <= 1 + 1e-5)
    inverted = (b1[:, 2] < b1[:, 0]) | (b1[:, 3] < b1[:, 1])
    assert np.all(iou[inverted] == 0)                      # documented: inverted boxes overlap nothing


# ---- nms ----------------------------------------------------------------------------------

@SETTINGS
@given(st.data(), boxes(max_n=12, allow_bad=True), st.floats(0, 1))
def test_nms_keeps_a_valid_subset_by_decreasing_score(data, b, thresh):
    s = scores_for(data.draw, len(b), allow_nan=True)
    if not np.all(np.isfinite(b)):
        with pytest.raises(ValueError, match=r"boxes must hold finite"):
            nms(b, s, thresh)
        return
    if np.isnan(s).any():
        with pytest.raises(ValueError, match=r"scores must not hold NaN"):
            nms(b, s, thresh)
        return
    keep = nms(b, s, thresh)
    assert keep.dtype == np.int64 and keep.ndim == 1
    assert len(set(keep.tolist())) == len(keep) and np.all((keep >= 0) & (keep < len(b)))
    assert np.all(s[keep][:-1] >= s[keep][1:])             # by decreasing score (inf too)
    if len(b):
        assert keep[0] == np.argsort(-s, kind="stable")[0]  # the best box always survives
    # no two kept boxes overlap by more than the threshold
    iou = box_iou(b[keep], b[keep])
    np.fill_diagonal(iou, 0)
    assert np.all(iou <= thresh + 1e-6)


@SETTINGS
@given(st.data(), boxes(max_n=12))
def test_nms_with_threshold_1_keeps_everything(data, b):
    s = scores_for(data.draw, len(b))
    assert sorted(nms(b, s, 1.0).tolist()) == list(range(len(b)))


@SETTINGS
@given(st.data(), boxes(max_n=12), st.floats(0, 1))
def test_batched_nms_never_suppresses_across_labels(data, b, thresh):
    s = scores_for(data.draw, len(b))
    labels = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(b), max_size=len(b))),
                      np.int64)
    keep = batched_nms(b, s, labels, thresh)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        per_label = idx[nms(b[idx], s[idx], thresh)]
        assert sorted(per_label.tolist()) == sorted(k for k in keep.tolist() if labels[k] == lab)


# ---- BoxCoder -----------------------------------------------------------------------------

@st.composite
def proper_boxes(draw, n):
    """n boxes with positive width and height (centre within +-1000, size 0.5 .. 1000)."""
    c = np.array(draw(st.lists(st.floats(-1000, 1000), min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    wh = np.array(draw(st.lists(st.floats(0.5, 1000), min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1)


@SETTINGS
@given(st.data(), st.integers(0, 8), st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]))
def test_box_coder_round_trip(data, n, weights):
    proposals = data.draw(proper_boxes(n))
    # reference boxes: shifted and rescaled within the decode clamp (size ratio < 1000 / 16)
    shift = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    log_scale = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=2 * n, max_size=2 * n))).reshape(n, 2)
    wh = proposals[:, 2:] - proposals[:, :2]
    centre = (proposals[:, :2] + proposals[:, 2:]) / 2 + shift * wh
    ref_wh = wh * np.exp(log_scale)
    reference = np.concatenate([centre - ref_wh / 2, centre + ref_wh / 2], axis=1)
    coder = BoxCoder(weights)
    deltas = coder.encode(reference, proposals)
    assert deltas.shape == (n, 4) and np.all(np.isfinite(deltas))
    decoded = coder.decode(deltas, proposals)
    np.testing.assert_allclose(decoded, reference, rtol=1e-9, atol=1e-6 * (1 + np.abs(reference)).max(initial=1))


@SETTINGS
@given(boxes(allow_bad=True), boxes(allow_bad=True))
def test_box_coder_encode_is_finite_or_refuses(b1, b2):
    n = min(len(b1), len(b2))
    b1, b2 = b1[:n], b2[:n]
    try:
        deltas = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(b1, b2)
    except ValueError as e:
        assert ("finite" in str(e) or "x2 > x1" in str(e)) and ("proposals" in str(e)
                                                               or "reference_boxes" in str(e))
        return
    assert deltas.shape == (n, 4) and np.all(np.isfinite(deltas))


@SETTINGS
@given(st.data(), boxes(), st.integers(1, 3))
def test_box_coder_decode_of_finite_deltas_is_finite(data, b, k):
    b = np.clip(b, -1e6, 1e6)             # float32 boxes of 3e7 px times exp(4.1) stay finite anyway
    deltas = np.array(data.draw(st.lists(st.floats(-10, 10, width=32), min_size=len(b) * 4 * k,
                                         max_size=len(b) * 4 * k)), b.dtype).reshape(len(b), 4 * k)
    out = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, b)
    assert out.shape == (len(b), 4 * k) and out.dtype == b.dtype
    assert np.all(np.isfinite(out))


# ---- RoI ops ------------------------------------------------------------------------------

@st.composite
def roi_problem(draw):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2 ** 16))
    features = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)
    b = draw(boxes(max_n=5, allow_bad=True))
    batch = np.array(draw(st.lists(st.integers(0, n - 1), min_size=len(b), max_size=len(b))))
    rois = np.concatenate([batch[:, None].astype(b.dtype), b], axis=1)
    output_size = draw(st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 1 / 16]))
    return features, rois, output_size, scale


def check_roi_op(forward, backward, features, rois, output_size, scale, **kw):
    finite_rois = np.all(np.isfinite(rois))
    try:
        out, cache = forward(features, rois, output_size, scale, **kw)
    except ValueError as e:
        # the only refusals possible here: NaN/inf coordinates, or boxes too large to sample
        assert "rois" in str(e), e
        assert not finite_rois or "too large" in str(e) or "2**31" in str(e), e
        return
    assert finite_rois
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    assert out.shape == (len(rois), features.shape[1], oh, ow) and out.dtype == features.dtype
    assert np.all(np.isfinite(out))
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(features.dtype)
    dfeatures = backward(dout, cache)
    assert dfeatures.shape == features.shape and dfeatures.dtype == features.dtype
    assert np.all(np.isfinite(dfeatures))
    # the op is linear in the features (given the argmax for max modes), so backward is its
    # adjoint: <op(x), g> = <x, op^T(g)>
    lhs = float(np.vdot(out.astype(np.float64), dout.astype(np.float64)))
    rhs = float(np.vdot(features.astype(np.float64), dfeatures.astype(np.float64)))
    tol = 1e-9 if features.dtype == np.float64 else 1e-3
    assert abs(lhs - rhs) <= tol * (1 + np.abs(out).sum() * np.abs(dout).max(initial=0))


@SETTINGS
@given(roi_problem(), st.sampled_from([-1, 0, 1, 2]), st.booleans(), st.sampled_from(["avg", "max"]))
def test_roi_align_is_finite_shaped_and_adjoint(problem, sampling_ratio, aligned, mode):
    check_roi_op(roi_align_forward, roi_align_backward, *problem, sampling_ratio=sampling_ratio,
                 aligned=aligned, mode=mode)


@SETTINGS
@given(roi_problem())
def test_roi_pool_is_finite_shaped_and_adjoint(problem):
    check_roi_op(roi_pool_forward, roi_pool_backward, *problem)


# ---- repeatability ------------------------------------------------------------------------

def test_every_hypothesis_test_is_derandomised():
    """CI must be repeatable: every @given test in tests/ runs derandomised (the conftest
    profile, which a test's own @settings inherits unless it sets derandomize=False)."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for path in sorted(glob.glob(os.path.join(here, "test_*.py"))):
        with open(path) as f:
            if "hypothesis" not in f.read():
                continue
        module = importlib.import_module(os.path.basename(path)[:-3])
        for name, obj in vars(module).items():
            if getattr(obj, "is_hypothesis_test", False):
                found.append(name)
                assert obj._hypothesis_internal_use_settings.derandomize, f"{path}::{name}"
    assert len(found) >= 15, found                        # the scan does find them

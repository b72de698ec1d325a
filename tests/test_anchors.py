"""Tests for npmaskrcnn.anchors: sizes, ratios, centres and the (y, x, a) ordering."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npmaskrcnn.anchors import AnchorGenerator


def test_cell_anchors_hand_computed():
    gen = AnchorGenerator(sizes=(16,), aspect_ratios=(0.5, 1.0, 2.0), strides=(4,))
    assert gen.num_anchors_per_location == 3
    a = gen.cell_anchors(0)
    np.testing.assert_allclose(a[1], [-8.0, -8.0, 8.0, 8.0])
    r = np.sqrt(2.0)                                   # ratio 2 = h / w: w = 16 / sqrt 2, h = 16 sqrt 2
    np.testing.assert_allclose(a[2], [-8.0 / r, -8.0 * r, 8.0 / r, 8.0 * r])


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.lists(st.floats(2.0, 300.0), min_size=1, max_size=4),
       st.lists(st.floats(0.2, 5.0), min_size=1, max_size=4),
       st.integers(1, 5), st.integers(1, 6))
def test_grid_anchors_centred_and_sized(sizes, ratios, h, w):
    strides = [4 * 2 ** i for i in range(len(sizes))]
    gen = AnchorGenerator(sizes, ratios, strides)
    A = gen.num_anchors_per_location
    anchors_per_level = gen.grid_anchors([(h, w)] * len(sizes))
    for level, (anchors, s, size) in enumerate(zip(anchors_per_level, strides, sizes)):
        assert anchors.shape == (h * w * A, 4) and anchors.dtype == np.float32
        a = anchors.astype(np.float64).reshape(h, w, A, 4)            # index (y*W + x)*A + a
        cx, cy = (a[..., 0] + a[..., 2]) / 2, (a[..., 1] + a[..., 3]) / 2
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        np.testing.assert_allclose(cx, ((xs + 0.5) * s)[..., None] + 0 * cx, rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(cy, ((ys + 0.5) * s)[..., None] + 0 * cy, rtol=1e-6, atol=1e-3)
        # area size**2 and h / w = ratio: w = size / sqrt(ratio), h = size * sqrt(ratio)
        # (atol: float32 coordinates of a few hundred pixels are exact to ~3e-5)
        bw, bh = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
        r = np.broadcast_to(ratios, bw.shape)
        np.testing.assert_allclose(bw, size / np.sqrt(r), rtol=1e-6, atol=2e-4)
        np.testing.assert_allclose(bh, size * np.sqrt(r), rtol=1e-6, atol=2e-4)


def test_grid_anchors_order_matches_rpn_head_layout():
    gen = AnchorGenerator((32,), (0.5, 1.0, 2.0), (8,))
    H, W, A = 3, 5, 3
    anchors = gen.grid_anchors([(H, W)])[0]
    # an RPN head output (N, A, H, W) permuted to (N, H, W, A) and flattened
    head = np.arange(A * H * W).reshape(1, A, H, W)
    flat = head.transpose(0, 2, 3, 1).reshape(-1)
    for i in (0, 7, 22, H * W * A - 1):
        a, y, x = np.unravel_index(flat[i], (A, H, W))
        np.testing.assert_allclose(anchors[i], gen.cell_anchors(0)[a] + [(x + .5) * 8, (y + .5) * 8] * 2,
                                   rtol=1e-6)


def test_anchor_generator_validates():
    with pytest.raises(ValueError, match="strides"):
        AnchorGenerator((16, 32), (1.0,), (4,))
    with pytest.raises(ValueError, match="feature_shapes"):
        AnchorGenerator((16, 32), (1.0,), (4, 8)).grid_anchors([(2, 2)])


def test_grid_anchor_hand_case_and_rpn_level_order():
    """Stride 8, size 16, ratio 1: cell (y=1, x=2) is centred at (20, 12), so [12, 4, 28, 20].
    The RPN concatenates the levels P2..P6 in order, each (y, x, a)."""
    gen = AnchorGenerator((16, 32), (1.0,), (8, 16))
    level0, level1 = gen.grid_anchors([(3, 4), (2, 2)])
    np.testing.assert_array_equal(level0[1 * 4 + 2], [12, 4, 28, 20])
    np.testing.assert_array_equal(level1[3], [8, 8, 40, 40])     # (y=1, x=1) centred at (24, 24)
    from npmaskrcnn.config import Config
    from npmaskrcnn.rpn import RPN
    rpn = RPN(Config.tiny(), np.random.default_rng(0))
    shapes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    per_level = rpn.anchors(shapes)
    assert [len(a) for a in per_level] == [h * w * 3 for h, w in shapes]
    for a, size, s in zip(per_level, Config.tiny().anchor_sizes, (4, 8, 16, 32, 64)):
        np.testing.assert_allclose(a[1] - a[1][[0, 1, 0, 1]], [0, 0, size, size], rtol=1e-6)
        np.testing.assert_allclose((a[1, :2] + a[1, 2:]) / 2, [s / 2, s / 2])

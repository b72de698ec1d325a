"""Colours and backgrounds of the shapes images: contrast floors, low-contrast colours, gradients.

`shapes.generate_shapes_image` draws the layout; this module chooses each shape's colour and
paints the noise-free background. A colour must clear two floors (Euclidean RGB distance): from
the background at every pixel the shape covers, and from every shape drawn before it. The gentle
rule draws 32 uniform candidates and takes the first that clears them (the best one if none
does); the options add colours aimed just above a floor, further rounds of candidates, and
backgrounds with a ramp and smooth blotches. See the module docstring of `shapes`.

Shape shorthand:
    H, W   image height and width     C   candidate colours     P   pixels under a shape

Naming:
    floors     (background floor, shape floor), in RGB levels
    slack      distance minus floor, minimised over the colours a candidate is compared with
    reference  the colour a low-contrast candidate is aimed at (the background or a shape)
"""

import math

import numpy as np

COLOR_CANDIDATES = 32  # colours drawn at once for the rejection sampling of the floors
LOW_CONTRAST_SPAN = 30.0  # low-contrast colours lie [floor, floor + span] from their reference
STRICT_ROUNDS = 64  # strict_contrast: rounds of further candidates before giving up


def min_distance(colors, others):
    """Distance from each colour to the nearest of `others` (Euclidean RGB).

    Integer-valued inputs give exact squared distances (|a|^2 - 2 a.b + |b|^2 in float64), so the
    result equals np.linalg.norm of the differences bit for bit.
    Inputs:
    - colors: (C, 3) float64; others: (B, 3) float64, B >= 1
    Returns:
    - distance: (C,) float64
    """
    sq = (colors ** 2).sum(axis=1)[:, None] - 2.0 * colors @ others.T + (others ** 2).sum(axis=1)
    return np.sqrt(sq.min(axis=1))


def color_slack(candidates, background, shapes, floors):
    """How far each candidate colour clears the contrast floors; >= 0 where it meets both.

    Inputs:
    - candidates: (C, 3) float64 integer-valued colours
    - background: (B, 3) the background colours under the shape (one row when plain)
    - shapes: (S, 3) the colours of the shapes drawn so far (S may be 0)
    - floors: (background floor, shape floor)
    Returns:
    - slack: (C,) float64, the smallest of (distance - floor) over all those colours
    """
    slack = min_distance(candidates, background) - floors[0]
    if len(shapes):
        slack = np.minimum(slack, min_distance(candidates, shapes) - floors[1])
    return slack


def _first_ok(candidates, slack):
    """The first candidate with slack >= 0 as (3,) uint8, or None."""
    ok = np.flatnonzero(slack >= 0)
    return candidates[ok[0]].astype(np.uint8) if len(ok) else None


def near_colors(arng, reference, floor):
    """`COLOR_CANDIDATES` colours at distance uniform in [floor, floor + LOW_CONTRAST_SPAN] from
    `reference` (3,) in random directions, rounded and clipped to 0..255 (which can bring one
    below the floor: `color_slack` then rejects it). Returns (C, 3) float64."""
    directions = arng.normal(size=(COLOR_CANDIDATES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    distance = arng.uniform(floor, floor + LOW_CONTRAST_SPAN, size=(COLOR_CANDIDATES, 1))
    return np.clip(np.rint(reference + distance * directions), 0, 255)


def background_image(arng, base, H, W, gradient, texture):
    """The noise-free background: the base colour, plus a linear ramp and smooth blotches.

    The ramp changes each channel by g_c, uniform in [-gradient, gradient], from one side of the
    image to the other along a random direction; the blotches are a random grid (one node per
    H/8 px) of offsets in [-a, a], a uniform in [0, texture], bilinearly interpolated.
    Inputs:
    - arng: np.random.Generator (the colour stream)
    - base: (3,) uint8; H, W: image size; gradient, texture: RGB levels, >= 0
    Returns:
    - background: (H, W, 3) uint8
    """
    planes = np.empty((3, H, W), dtype=np.float32)  # one plane per channel
    planes[:] = base.astype(np.float32)[:, None, None]
    if gradient > 0:
        g = arng.uniform(-gradient, gradient, size=3).astype(np.float32)
        theta = arng.uniform(0.0, 2.0 * np.pi)
        x = (np.arange(W, dtype=np.float32) + 0.5) / W - 0.5  # (W,) in (-1/2, 1/2)
        y = (np.arange(H, dtype=np.float32) + 0.5) / H - 0.5
        ramp = np.float32(math.cos(theta)) * x[None, :] + np.float32(math.sin(theta)) * y[:, None]
        planes += g[:, None, None] * ramp
    if texture > 0:
        cell = max(H, W) / 8.0
        amplitude = texture * arng.random()
        grid = arng.uniform(-amplitude, amplitude, size=(int(H // cell) + 2, int(W // cell) + 2, 3))
        grid = grid.transpose(2, 0, 1).astype(np.float32)  # (3, grid rows, grid cols)
        # bilinear: along x at every grid row first (small), then along y (elementwise, exact
        # IEEE arithmetic, so the same on every machine)
        u, v = (np.arange(W) + 0.5) / cell, (np.arange(H) + 0.5) / cell
        j, i = u.astype(int), v.astype(int)
        fu = (u - j).astype(np.float32)
        fv = (v - i).astype(np.float32)[:, None]
        rows = grid[:, :, j] * (1 - fu) + grid[:, :, j + 1] * fu  # (3, grid rows, W)
        planes += rows[:, i] * (1 - fv) + rows[:, i + 1] * fv
    return np.ascontiguousarray(np.clip(np.rint(planes), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def color_codes(image):
    """(H, W) int32 24-bit codes r * 65536 + g * 256 + b of an (H, W, 3) uint8 image."""
    rgb = image.astype(np.int32)
    return (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]


def pick_color(candidates, arng, full, background, bg_codes, colors, full_masks, floors,
                low_contrast_prob, strict_contrast):
    """A shape colour that clears the contrast floors against the background under the shape and
    against the shapes drawn so far.

    Order: a low-contrast colour (with probability low_contrast_prob, aimed at the background or,
    half the time, at an earlier shape this one overlaps), else the first of the uniform
    `candidates` that clears the floors, else (strict_contrast) further uniform rounds from
    `arng`; without strict_contrast the best candidate (the original rule, rare at the floors).
    Inputs:
    - candidates: (C, 3) float64 uniform colours (from the layout stream)
    - arng: the colour stream (None when no colour option is on)
    - full: (H, W) bool, the shape's pixels inside the image
    - background: (3,) uint8; bg_codes: `color_codes` of the background, or None (plain)
    - colors: list of (3,) uint8 of the earlier shapes; full_masks: their (H, W) masks
    - floors, low_contrast_prob, strict_contrast: as in `ShapesDataset`
    Returns:
    - color: (3,) uint8
    """
    if bg_codes is not None and full.any():
        # the distinct colours under the shape (far fewer than its pixels), via 24-bit codes
        codes = np.unique(bg_codes[full])
        under = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1).astype(np.float64)
    else:
        under = background[None].astype(np.float64)
    shapes = np.array(colors, dtype=np.float64).reshape(-1, 3)
    color = None
    if low_contrast_prob > 0 and arng.random() < low_contrast_prob:
        touching = [j for j, m in enumerate(full_masks) if (m & full).any()]
        if touching and arng.random() < 0.5:
            reference, floor = shapes[touching[int(arng.integers(len(touching)))]], floors[1]
        else:
            reference, floor = under.mean(axis=0), floors[0]
        near = near_colors(arng, reference, floor)
        color = _first_ok(near, color_slack(near, under, shapes, floors))
    slack = color_slack(candidates, under, shapes, floors)
    if color is None:
        color = _first_ok(candidates, slack)
    for _ in range(STRICT_ROUNDS if strict_contrast and color is None else 0):
        more = arng.integers(0, 256, size=(COLOR_CANDIDATES, 3)).astype(np.float64)
        color = _first_ok(more, color_slack(more, under, shapes, floors))
        if color is not None:
            break
    if color is None and strict_contrast:
        raise ValueError(f"min_background_contrast={floors[0]}, min_shape_contrast={floors[1]}: "
                         f"no colour meets both floors in {STRICT_ROUNDS + 1} rounds; lower them")
    return candidates[int(np.argmax(slack))].astype(np.uint8) if color is None else color

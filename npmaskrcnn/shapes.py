"""The synthetic shapes dataset: squares, circles and triangles on a plain background.

This is the toy problem the model trains on (the kind matterport's `samples/shapes` made
popular): every image is a solid background with 1-4 solid-coloured shapes, each an instance
of one of three classes. It is small enough to train from scratch on a CPU, and exact: the
image and the masks are rasterised by the same point-in-shape tests at pixel centres (pixel
(r, c) has centre (c + 0.5, r + 0.5)), so every coloured pixel belongs to exactly one mask.

Generation of one image:
1) draw a background colour, a number of shapes, and per shape a class, a size, a rotation,
   a centre (the whole shape inside the image) and a colour far from the background and from
   the colours already drawn;
2) paint in drawing order, later shapes on top; going from the top shape down, a shape keeps
   only the pixels not covered by the kept shapes above it, and is dropped (not painted at all)
   when that visible part falls below `min_visible_fraction` of its full area or below
   `MIN_VISIBLE_PIXELS`; the top shape is never occluded, so an image always has an instance.
   The default keeps shapes at least half visible: below that a square, a circle and a triangle
   leave fragments that no longer say which they were, and the class label becomes noise;
3) boxes are the extents of the visible masks.

Image i comes from `np.random.default_rng([seed, i])`: the data are the same on any machine and
independent of the order in which images are read, so training can draw fresh images on the fly.

Shape shorthand:
    H, W   image height and width (both `image_size`)
    M      instances in one image (after occlusion)
    K      classes (3)

Naming:
    size     the longer side of a shape's full (unoccluded) axis-aligned bounding box, in pixels
    label    1-based index into `class_names`: 1 square, 2 circle, 3 triangle (0 is background)
    visible  the part of a shape's mask not covered by shapes drawn after it
"""

import numpy as np

CLASS_NAMES = ("square", "circle", "triangle")
MIN_VISIBLE_PIXELS = 10  # an instance with fewer visible pixels is dropped
MIN_BACKGROUND_DISTANCE = 100.0  # Euclidean RGB distance of a shape colour from the background
MIN_SHAPE_DISTANCE = 60.0  # ... and from the colours of the other shapes in the image
_COLOR_CANDIDATES = 32  # colours drawn at once for the rejection sampling above


def _unit_polygon(label, angle):
    """Vertices of a square or equilateral triangle of circumradius 1, rotated by `angle`.

    Inputs:
    - label: 1 (square) or 3 (triangle)
    - angle: rotation in radians
    Returns:
    - vertices: (V, 2) float64 (x, y), counter-clockwise in the (x, y) plane, so the interior
      lies to the left of every edge
    """
    n = 4 if label == 1 else 3
    t = angle + 2.0 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _inside_polygon(xs, ys, vertices):
    """Point-in-convex-polygon test: inside iff left of (or on) every edge.

    Inputs:
    - xs: (1, w) x coordinates, ys: (h, 1) y coordinates of the points
    - vertices: (V, 2) counter-clockwise vertices
    Returns:
    - inside: (h, w) bool
    """
    inside = np.ones((ys.shape[0], xs.shape[1]), dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        # cross((v1 - v0), (p - v0)) >= 0  <=>  p on the left of the edge v0 -> v1
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _pick_color(rng, taken):
    """A random RGB colour at least the minimum distances from the colours already taken.

    Inputs:
    - rng: np.random.Generator
    - taken: (T, 3) float64, background first, then the shape colours so far
    Returns:
    - color: (3,) uint8; the best candidate if none meets the distances (rare)
    """
    candidates = rng.integers(0, 256, size=(_COLOR_CANDIDATES, 3)).astype(np.float64)
    dist = np.linalg.norm(candidates[:, None, :] - taken[None, :, :], axis=2)  # (C, T)
    need = np.full(len(taken), MIN_SHAPE_DISTANCE)
    need[0] = MIN_BACKGROUND_DISTANCE
    slack = (dist - need).min(axis=1)  # (C,)
    ok = np.flatnonzero(slack >= 0)
    best = ok[0] if len(ok) else int(np.argmax(slack))
    return candidates[best].astype(np.uint8)


def masks_to_boxes(masks):
    """Tight boxes around masks: x1 = min col, y1 = min row, x2 = max col + 1, y2 = max row + 1.

    Inputs:
    - masks: (M, H, W) bool, each non-empty
    Returns:
    - boxes: (M, 4) float32 (x1, y1, x2, y2)
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def generate_shapes_image(rng, image_size=128, min_shapes=1, max_shapes=4, min_size=16,
                          max_size=64, min_visible_fraction=0.5):
    """Draw one shapes image and its instances (steps 1-3 of the module docstring).

    Inputs:
    - rng: np.random.Generator, the only source of randomness
    - image_size, min_shapes, max_shapes, min_size, max_size, min_visible_fraction: as in
      `ShapesDataset`
    Returns:
    - image: (H, W, 3) uint8
    - target: dict with "boxes" (M, 4) float32 xyxy, "labels" (M,) int64 in 1..3,
      "masks" (M, H, W) bool, disjoint
    """
    H = W = image_size
    # 1) background, then each shape's parameters
    background = rng.integers(0, 256, size=3).astype(np.uint8)
    taken = [background.astype(np.float64)]
    num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
    xs = np.arange(W, dtype=np.float64)[None, :] + 0.5  # (1, W) pixel-centre x
    ys = np.arange(H, dtype=np.float64)[:, None] + 0.5  # (H, 1) pixel-centre y
    full_masks, labels, colors = [], [], []
    for _ in range(num_shapes):
        label = int(rng.integers(1, len(CLASS_NAMES) + 1))
        size = rng.uniform(min_size, max_size)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        if label == 2:
            offsets = None
            lo = np.full(2, -size / 2.0)
            hi = -lo
        else:
            # scale the unit polygon so the longer side of its bounding box equals `size`
            offsets = _unit_polygon(label, angle)
            offsets *= size / (offsets.max(axis=0) - offsets.min(axis=0)).max()
            lo, hi = offsets.min(axis=0), offsets.max(axis=0)
        # max() guards against rounding when the shape is as large as the image
        cx = rng.uniform(-lo[0], max(W - hi[0], -lo[0]))
        cy = rng.uniform(-lo[1], max(H - hi[1], -lo[1]))
        color = _pick_color(rng, np.array(taken))
        taken.append(color.astype(np.float64))

        # rasterise inside the shape's bounding window only; the test itself is exact
        c0, c1 = max(int(np.floor(cx + lo[0])), 0), min(int(np.ceil(cx + hi[0])) + 1, W)
        r0, r1 = max(int(np.floor(cy + lo[1])), 0), min(int(np.ceil(cy + hi[1])) + 1, H)
        wx, wy = xs[:, c0:c1], ys[r0:r1]
        if offsets is None:
            inside = (wx - cx) ** 2 + (wy - cy) ** 2 <= (size / 2.0) ** 2
        else:
            inside = _inside_polygon(wx, wy, offsets + (cx, cy))
        full = np.zeros((H, W), dtype=bool)
        full[r0:r1, c0:c1] = inside
        full_masks.append(full)
        labels.append(label)
        colors.append(color)

    # 2) occlusion, from the top shape down; dropped shapes cover nothing
    covered = np.zeros((H, W), dtype=bool)
    kept = []
    for k in range(num_shapes - 1, -1, -1):
        visible = full_masks[k] & ~covered
        area = int(visible.sum())
        if area >= MIN_VISIBLE_PIXELS and area >= min_visible_fraction * full_masks[k].sum():
            kept.append((k, visible))
            covered |= full_masks[k]
    kept.reverse()  # back to drawing order: later instances lie on top

    image = np.empty((H, W, 3), dtype=np.uint8)
    image[:] = background
    for k, visible in kept:
        image[visible] = colors[k]
    masks = np.array([visible for _, visible in kept], dtype=bool).reshape(len(kept), H, W)
    # 3) boxes from the visible masks
    target = {
        "boxes": masks_to_boxes(masks),
        "labels": np.array([labels[k] for k, _ in kept], dtype=np.int64),
        "masks": masks,
    }
    return image, target


class ShapesDataset:
    """A fixed-length, random-access, deterministic shapes dataset.

    `ds[i]` -> (image (H, W, 3) uint8, target dict as in `generate_shapes_image`); the image
    with index i has COCO image id i + 1 (`ds.image_ids`).
    """

    def __init__(self, num_images, seed, image_size=128, min_shapes=1, max_shapes=4,
                 min_size=16, max_size=64, min_visible_fraction=0.5):
        """Inputs: as the attributes; sizes in pixels. Returns: the dataset (nothing is drawn yet)."""
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v):
            return is_int(v) or (isinstance(v, (float, np.floating)) and np.isfinite(v))

        for name, v, least in (("num_images", num_images, 0), ("seed", seed, 0),
                               ("image_size", image_size, 1), ("min_shapes", min_shapes, 1),
                               ("max_shapes", max_shapes, 1)):
            if not is_int(v) or v < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {v!r}")
        for name, v in (("min_size", min_size), ("max_size", max_size)):
            if not is_num(v):
                raise ValueError(f"{name}: expected a finite number of pixels, got {v!r}")
        if not is_num(min_visible_fraction) or not 0 <= min_visible_fraction <= 1:
            raise ValueError(f"min_visible_fraction: expected a number in [0, 1], got "
                             f"{min_visible_fraction!r}")
        if not 1 <= min_shapes <= max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        if not 0 < min_size <= max_size <= image_size:
            raise ValueError(f"need 0 < min_size <= max_size <= image_size, got "
                             f"{min_size}, {max_size}, {image_size}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.min_visible_fraction = float(min_visible_fraction)
        self.class_names = CLASS_NAMES
        self.image_ids = list(range(1, self.num_images + 1))

    def __len__(self):
        return self.num_images

    def __getitem__(self, i):
        """Image i and its target, drawn from `np.random.default_rng([seed, i])`.

        Inputs:
        - i: int in [-len, len)
        Returns:
        - image: (H, W, 3) uint8
        - target: {"boxes": (M, 4) float32, "labels": (M,) int64, "masks": (M, H, W) bool}
        """
        i = int(i)
        if i < 0:
            i += self.num_images
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, i])
        return generate_shapes_image(
            rng, self.image_size, self.min_shapes, self.max_shapes, self.min_size,
            self.max_size, self.min_visible_fraction)

    def __repr__(self):
        return (f"ShapesDataset(num_images={self.num_images}, seed={self.seed}, "
                f"image_size={self.image_size})")

"""The synthetic shapes dataset: squares, circles and triangles on a plain (or graded) background.

This is the toy problem the model trains on (the kind matterport's `samples/shapes` made
popular): every image is a background with 1-4 solid-coloured shapes (up to `max_shapes`), each
an instance of one of three classes. It is small enough to train from scratch on a CPU, and exact:
the image and the masks are rasterised by the same point-in-shape tests at pixel centres (pixel
(r, c) has centre (c + 0.5, r + 0.5)), so every shape-coloured pixel belongs to exactly one mask.

Generation of one image:
1) draw a background colour, a number of shapes, and per shape a class, a size, a rotation,
   a centre (the whole shape inside the image) and a colour far from the background and from
   the colours already drawn;
2) paint in drawing order, later shapes on top; going from the top shape down, a shape keeps
   only the pixels not covered by the kept shapes above it, and is dropped (not painted at all)
   when that visible part falls below `min_visible_fraction` of its full area or below
   `min_visible_pixels`; the top shape is never occluded, so an image always has an instance
   (unless border cuts are on: a shape mostly outside the image can be dropped too). The default
   keeps shapes at least half visible: below that a square, a circle and a triangle leave
   fragments that no longer say which they were, and the class label becomes noise;
3) boxes are the extents of the visible masks.

The defaults are the gentle generator the shipped model was trained on (`GENTLE`): every shape
at least 100 RGB levels from the background and 60 from the others, wholly inside the image, at
least half visible, at most 64 px, rotated at random. Options make the data harder (`HARD` is a
set of them, see `ShapesDataset.hard_settings`; `LARGE` only enlarges the shapes); each is off at its
default value, and then draws no random number, so the default images are those of the original code:
- contrast floors `min_background_contrast`, `min_shape_contrast` (Euclidean distance in RGB, so
  a floor of 15 also admits colours that differ by as little as 15/sqrt(3) = 8.7 levels in each
  channel), `low_contrast_prob` (a shape's colour is aimed at [floor, floor + LOW_CONTRAST_SPAN]
  from the background or from an earlier shape it overlaps) and `strict_contrast`;
- `border_cut_prob`: a shape's centre may lie anywhere in the image, so up to 3/4 of the shape
  can lie outside; the visible part is the instance (mask = its visible pixels, box = their box),
  and its visible fraction counts the outside part as hidden;
- `overlap_prob`: a shape is centred near an earlier one (so that it covers part of it): more
  heavily occluded instances than uniform placement gives;
- `axis_aligned_prob`: a square is axis-aligned, a triangle upright (apex up);
- `background_gradient`, `background_texture`, `noise_std`: a linear colour ramp, smooth blotches
  and Gaussian pixel noise. Contrast is measured against the noise-free background at every
  pixel a shape covers; the noise is added last and changes pixels, never masks.

Random streams: image i comes from `np.random.default_rng([seed, i])`: the data are the same on any
machine and independent of the order in which images are read, so training can draw fresh images
on the fly. The layout (classes, sizes, angles, centres, the 32 uniform colour candidates) comes
from that generator in the original order, plus one draw per shape for each geometry option that
is on (`axis_aligned_prob`, `border_cut_prob`, `overlap_prob`; the latter 3 more when it applies).
Everything that only changes colours (background pattern, low-contrast colours, extra colour
candidates, noise) comes from a second generator spawned from it (`rng.spawn(1)`, which draws
nothing from the first), so turning those on changes pixels but never masks.

Shape shorthand:
    H, W   image height and width (both `image_size`)
    M      instances in one image (after occlusion)
    K      classes (3)

Naming:
    size       the longer side of a shape's full (unoccluded) axis-aligned bounding box, in pixels
    label      1-based index into `class_names`: 1 square, 2 circle, 3 triangle (0 is background)
    visible    the part of a shape's mask inside the image and not covered by shapes drawn after it
    full area  the pixels of the whole shape, inside and outside the image
    contrast   Euclidean RGB distance between two (noise-free) colours
"""

import numpy as np

from .shapes_colors import COLOR_CANDIDATES, background_image, color_codes, pick_color
from .shapes_colors import LOW_CONTRAST_SPAN  # noqa: F401  (named in the docstring above)

CLASS_NAMES = ("square", "circle", "triangle")
MIN_VISIBLE_PIXELS = 10  # an instance with fewer visible pixels is dropped (default)
MIN_BACKGROUND_DISTANCE = 100.0  # default floor: RGB distance of a shape colour from the background
MIN_SHAPE_DISTANCE = 60.0  # ... and from the colours of the other shapes in the image

# Today's defaults: the data of the shipped model. Sizes are for 128 x 128 images.
GENTLE = dict(min_shapes=1, max_shapes=4, min_size=16, max_size=64, min_visible_fraction=0.5,
              min_visible_pixels=MIN_VISIBLE_PIXELS, min_background_contrast=MIN_BACKGROUND_DISTANCE,
              min_shape_contrast=MIN_SHAPE_DISTANCE, low_contrast_prob=0.0, strict_contrast=False,
              border_cut_prob=0.0, overlap_prob=0.0, axis_aligned_prob=0.0,
              background_gradient=0.0, background_texture=0.0, noise_std=0.0)
# What the next shipped model is to be trained on: contrast down to 15, shapes cut by the border,
# down to 15 % visible (and placed to overlap more often), up to 80 px, half of the squares and
# triangles axis-aligned, mild gradients, blotches and noise, up to 6 shapes.
HARD = dict(GENTLE, max_shapes=6, max_size=80, min_visible_fraction=0.15,
            min_background_contrast=15.0, min_shape_contrast=15.0, low_contrast_prob=0.25,
            strict_contrast=True, border_cut_prob=0.5, overlap_prob=0.3, axis_aligned_prob=0.5,
            background_gradient=40.0, background_texture=12.0, noise_std=3.0)
# The gentle rules with shapes of 32-80 px: for the ablation table (`ablate --set shapes=large`),
# whose stride-16 rows pool from P4 alone, where a 16 px shape is one cell (docs/results.md).
LARGE = dict(GENTLE, min_size=32, max_size=80)
SETTINGS = {"gentle": GENTLE, "hard": HARD, "large": LARGE}   # by name, as Config.shapes names them


def _unit_polygon(label, angle):
    """Vertices of a square or equilateral triangle of circumradius 1, rotated by `angle`.

    Inputs:
    - label: 1 (square) or 3 (triangle)
    - angle: rotation in radians (pi/4 gives an axis-aligned square, -pi/2 an upright triangle)
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
                          max_size=64, min_visible_fraction=0.5, *,
                          min_visible_pixels=MIN_VISIBLE_PIXELS,
                          min_background_contrast=MIN_BACKGROUND_DISTANCE,
                          min_shape_contrast=MIN_SHAPE_DISTANCE, low_contrast_prob=0.0,
                          strict_contrast=False, border_cut_prob=0.0, overlap_prob=0.0,
                          axis_aligned_prob=0.0, background_gradient=0.0,
                          background_texture=0.0, noise_std=0.0, return_info=False):
    """Draw one shapes image and its instances (steps 1-3 of the module docstring).

    Inputs:
    - rng: np.random.Generator, the only source of randomness (spawnable, as default_rng(seed)
      makes it, when a colour option is on: see Random streams in the module docstring)
    - image_size, min_shapes, ..., noise_std: as in `ShapesDataset`
    - return_info: also return what the image was made of (for `shapes_stats`)
    Returns:
    - image: (H, W, 3) uint8
    - target: dict with "boxes" (M, 4) float32 xyxy, "labels" (M,) int64 in 1..3,
      "masks" (M, H, W) bool, disjoint
    - info (only with return_info): dict with "colors" (M, 3) uint8 (noise-free), "full_area"
      (M,) and "inside_area" (M,) int64 (pixels of the whole shape, and of its part inside the
      image, before occlusion), "background" (H, W, 3) uint8 (noise-free), "noise_sigma" float
    """
    H = W = image_size
    floors = (float(min_background_contrast), float(min_shape_contrast))
    patterned = background_gradient > 0 or background_texture > 0
    # 1) background, then each shape's parameters
    background = rng.integers(0, 256, size=3).astype(np.uint8)
    num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
    arng = None  # the colour stream; spawning draws nothing from rng
    if patterned or low_contrast_prob > 0 or strict_contrast or noise_std > 0:
        arng = rng.spawn(1)[0]
    bg_image = background_image(arng, background, H, W, background_gradient,
                                 background_texture) if patterned else None
    bg_codes = color_codes(bg_image) if patterned else None
    full_masks, full_areas, labels, colors, centres = [], [], [], [], []
    for k in range(num_shapes):
        label = int(rng.integers(1, len(CLASS_NAMES) + 1))
        size = rng.uniform(min_size, max_size)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        if axis_aligned_prob > 0 and rng.random() < axis_aligned_prob:
            angle = np.pi / 4 if label == 1 else -np.pi / 2  # square axis-aligned, triangle apex up
        cut = border_cut_prob > 0 and rng.random() < border_cut_prob
        near = overlap_prob > 0 and k > 0 and rng.random() < overlap_prob
        if label == 2:
            offsets = None
            lo = np.full(2, -size / 2.0)
            hi = -lo
        else:
            # scale the unit polygon so the longer side of its bounding box equals `size`
            offsets = _unit_polygon(label, angle)
            offsets *= size / (offsets.max(axis=0) - offsets.min(axis=0)).max()
            lo, hi = offsets.min(axis=0), offsets.max(axis=0)
        if cut:  # the centre anywhere in the image: up to 3/4 of the shape outside
            x_range, y_range = (0.0, W), (0.0, H)
        else:  # the whole shape inside; max() guards against rounding when it is image-sized
            x_range = (-lo[0], max(W - hi[0], -lo[0]))
            y_range = (-lo[1], max(H - hi[1], -lo[1]))
        if near:  # within a quarter of the two sizes of an earlier centre, per axis: they overlap
            (px, py, p_size) = centres[int(rng.integers(len(centres)))]
            reach = (p_size + size) / 4.0
            cx = float(np.clip(px + rng.uniform(-reach, reach), *x_range))
            cy = float(np.clip(py + rng.uniform(-reach, reach), *y_range))
        else:
            cx, cy = rng.uniform(*x_range), rng.uniform(*y_range)
        centres.append((cx, cy, size))
        candidates = rng.integers(0, 256, size=(COLOR_CANDIDATES, 3)).astype(np.float64)

        # rasterise the whole shape inside its bounding window only (which may reach past the
        # border: the full area counts the outside too); the test itself is exact
        c0, c1 = int(np.floor(cx + lo[0])), int(np.ceil(cx + hi[0])) + 1
        r0, r1 = int(np.floor(cy + lo[1])), int(np.ceil(cy + hi[1])) + 1
        wx = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
        wy = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
        if offsets is None:
            inside = (wx - cx) ** 2 + (wy - cy) ** 2 <= (size / 2.0) ** 2
        else:
            inside = _inside_polygon(wx, wy, offsets + (cx, cy))
        full = np.zeros((H, W), dtype=bool)
        a0, a1, b0, b1 = max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)
        if a0 < a1 and b0 < b1:
            full[a0:a1, b0:b1] = inside[a0 - r0:a1 - r0, b0 - c0:b1 - c0]
        color = pick_color(candidates, arng, full, background, bg_codes, colors, full_masks,
                            floors, low_contrast_prob, strict_contrast)
        full_masks.append(full)
        full_areas.append(int(inside.sum()))
        labels.append(label)
        colors.append(color)

    # 2) occlusion, from the top shape down; dropped shapes cover nothing
    covered = np.zeros((H, W), dtype=bool)
    kept = []
    for k in range(num_shapes - 1, -1, -1):
        visible = full_masks[k] & ~covered
        area = int(visible.sum())
        if area >= min_visible_pixels and area >= min_visible_fraction * full_areas[k]:
            kept.append((k, visible))
            covered |= full_masks[k]
    kept.reverse()  # back to drawing order: later instances lie on top

    image = np.empty((H, W, 3), dtype=np.uint8)
    image[:] = background if bg_image is None else bg_image
    for k, visible in kept:
        image[visible] = colors[k]
    noise_sigma = 0.0
    if noise_std > 0:
        noise_sigma = noise_std * arng.random()
        noisy = image + np.float32(noise_sigma) * arng.standard_normal(image.shape, np.float32)
        image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    masks = np.array([visible for _, visible in kept], dtype=bool).reshape(len(kept), H, W)
    # 3) boxes from the visible masks
    target = {
        "boxes": masks_to_boxes(masks),
        "labels": np.array([labels[k] for k, _ in kept], dtype=np.int64),
        "masks": masks,
    }
    if not return_info:
        return image, target
    idx = [k for k, _ in kept]
    info = {"colors": np.array([colors[k] for k in idx], dtype=np.uint8).reshape(-1, 3),
            "full_area": np.array([full_areas[k] for k in idx], dtype=np.int64),
            "inside_area": np.array([int(full_masks[k].sum()) for k in idx], dtype=np.int64),
            "background": np.broadcast_to(background, (H, W, 3)).copy()
            if bg_image is None else bg_image,
            "noise_sigma": float(noise_sigma)}
    return image, target, info


class ShapesDataset:
    """A fixed-length, random-access, deterministic shapes dataset.

    `ds[i]` -> (image (H, W, 3) uint8, target dict as in `generate_shapes_image`); the image
    with index i has COCO image id i + 1 (`ds.image_ids`). `ds.describe(i)` adds the info dict.
    `ShapesDataset(n, seed, **ShapesDataset.hard_settings())` gives the harder data (`HARD`).
    """

    def __init__(self, num_images, seed, image_size=128, min_shapes=1, max_shapes=4,
                 min_size=16, max_size=64, min_visible_fraction=0.5, *,
                 min_visible_pixels=MIN_VISIBLE_PIXELS,
                 min_background_contrast=MIN_BACKGROUND_DISTANCE,
                 min_shape_contrast=MIN_SHAPE_DISTANCE, low_contrast_prob=0.0,
                 strict_contrast=False, border_cut_prob=0.0, overlap_prob=0.0,
                 axis_aligned_prob=0.0, background_gradient=0.0, background_texture=0.0,
                 noise_std=0.0):
        """Inputs (sizes in pixels, colours in RGB levels; the defaults are `GENTLE`):
        - num_images, seed: ints >= 0; image_size: int >= 1
        - min_shapes, max_shapes: shapes drawn per image (uniform), 1 <= min <= max
        - min_size, max_size: the shape size (see Naming) is uniform in [min_size, max_size]
        - min_visible_fraction (0.5): a shape is dropped below this visible fraction of its full
          area (the part outside the image counts as hidden)
        - min_visible_pixels (10): ... or below this many visible pixels
        - min_background_contrast (100), min_shape_contrast (60): floors of the Euclidean RGB
          distance of a shape colour from the background at every pixel the shape covers, and from
          the other shapes' colours
        - low_contrast_prob (0): share of shapes whose colour is aimed at [floor, floor + 30] from
          the background or from an earlier shape it overlaps
        - strict_contrast (False): never fall back to a colour below the floors (the default
          takes the best of 32 candidates when none clears them: rare, the original rule)
        - border_cut_prob (0): share of shapes whose centre is anywhere in the image, so that
          the image border may cut them
        - overlap_prob (0): share of shapes (after the first) centred near an earlier shape's
          centre, so that they overlap it
        - axis_aligned_prob (0): share of squares drawn axis-aligned and triangles upright
        - background_gradient (0): a linear ramp of up to this many levels per channel across
          the image; background_texture (0): smooth blotches of up to +- this many levels
        - noise_std (0): Gaussian pixel noise, sigma uniform in [0, noise_std] per image
        Returns: the dataset (nothing is drawn yet).
        """
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v):
            return is_int(v) or (isinstance(v, (float, np.floating)) and np.isfinite(v))

        for name, v, least in (("num_images", num_images, 0), ("seed", seed, 0),
                               ("image_size", image_size, 1), ("min_shapes", min_shapes, 1),
                               ("max_shapes", max_shapes, 1),
                               ("min_visible_pixels", min_visible_pixels, 1)):
            if not is_int(v) or v < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {v!r}")
        for name, v in (("min_size", min_size), ("max_size", max_size)):
            if not is_num(v):
                raise ValueError(f"{name}: expected a finite number of pixels, got {v!r}")
        for name, v in (("min_visible_fraction", min_visible_fraction),
                        ("low_contrast_prob", low_contrast_prob),
                        ("border_cut_prob", border_cut_prob), ("overlap_prob", overlap_prob),
                        ("axis_aligned_prob", axis_aligned_prob)):
            if not is_num(v) or not 0 <= v <= 1:
                raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
        for name, v in (("min_background_contrast", min_background_contrast),
                        ("min_shape_contrast", min_shape_contrast),
                        ("background_gradient", background_gradient),
                        ("background_texture", background_texture), ("noise_std", noise_std)):
            if not is_num(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number of RGB levels >= 0, got {v!r}")
        if not isinstance(strict_contrast, (bool, np.bool_)):
            raise ValueError(f"strict_contrast: expected True or False, got {strict_contrast!r}")
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
        # the keyword options, as generate_shapes_image takes them
        self.options = dict(
            min_visible_pixels=int(min_visible_pixels),
            min_background_contrast=float(min_background_contrast),
            min_shape_contrast=float(min_shape_contrast),
            low_contrast_prob=float(low_contrast_prob), strict_contrast=bool(strict_contrast),
            border_cut_prob=float(border_cut_prob), overlap_prob=float(overlap_prob),
            axis_aligned_prob=float(axis_aligned_prob),
            background_gradient=float(background_gradient),
            background_texture=float(background_texture), noise_std=float(noise_std))
        self.class_names = CLASS_NAMES
        self.image_ids = list(range(1, self.num_images + 1))

    @staticmethod
    def gentle_settings(image_size=128):
        """`GENTLE`, sizes scaled to `image_size` as training scales them (16-64 px at 128)."""
        return dict(GENTLE, min_size=max(8, int(image_size) // 8), max_size=int(image_size) // 2)

    @staticmethod
    def hard_settings(image_size=128):
        """`HARD`, sizes scaled to `image_size` (16-80 px at 128): keyword arguments for ShapesDataset."""
        s = int(image_size)
        return dict(HARD, min_size=max(8, s // 8), max_size=max(max(8, s // 8), s * 5 // 8))

    @staticmethod
    def named_settings(name, image_size=128):
        """The settings of a key of `SETTINGS` (as `Config.shapes` names them), sizes scaled to the
        image: `gentle_settings`, `hard_settings`, or LARGE's 32-80 px at 128. ValueError otherwise."""
        if name not in SETTINGS:
            raise ValueError(f"shapes settings: expected one of {sorted(SETTINGS)}, got {name!r}")
        lo, s = max(8, int(image_size) // 4), int(image_size)
        return (dict(LARGE, min_size=lo, max_size=max(lo, s * 5 // 8)) if name == "large" else
                (ShapesDataset.gentle_settings if name == "gentle" else ShapesDataset.hard_settings)(s))

    def __len__(self):
        return self.num_images

    def _index(self, i):
        i = int(i)
        if i < 0:
            i += self.num_images
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        return i

    def _generate(self, i, return_info):
        rng = np.random.default_rng([self.seed, self._index(i)])
        return generate_shapes_image(
            rng, self.image_size, self.min_shapes, self.max_shapes, self.min_size,
            self.max_size, self.min_visible_fraction, return_info=return_info, **self.options)

    def __getitem__(self, i):
        """Image i and its target, drawn from `np.random.default_rng([seed, i])`.

        Inputs:
        - i: int in [-len, len)
        Returns:
        - image: (H, W, 3) uint8
        - target: {"boxes": (M, 4) float32, "labels": (M,) int64, "masks": (M, H, W) bool}
        """
        return self._generate(i, False)

    def describe(self, i):
        """`ds[i]` plus the info dict of `generate_shapes_image` (colours, full areas, the
        noise-free background): (image, target, info)."""
        return self._generate(i, True)

    def __repr__(self):
        settings = dict(min_shapes=self.min_shapes, max_shapes=self.max_shapes,
                        min_size=self.min_size, max_size=self.max_size,
                        min_visible_fraction=self.min_visible_fraction, **self.options)
        extra = "".join(f", {k}={v!r}" for k, v in settings.items() if v != GENTLE[k])
        return (f"ShapesDataset(num_images={self.num_images}, seed={self.seed}, "
                f"image_size={self.image_size}{extra})")

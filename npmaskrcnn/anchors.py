"""Anchors: the reference boxes the RPN scores and regresses, one size per FPN level.

Faster R-CNN (Ren et al. 2015, §3.1) places k anchors at every feature-map location; FPN (Lin et
al. 2017, §4.1) gives each pyramid level P2..P6 a single anchor size (32..512 px on COCO) and
three aspect ratios, so A = 3 anchors per location. Mask R-CNN uses the same RPN (§3, "Network
Architecture"). Anchors depend only on the feature-map shapes, so the RPN caches them.

Centre convention ("centre", the shapes models): the anchors of cell (y, x) at a level of stride
s are centred at ((x + 0.5) * s, (y + 0.5) * s), the centre of the s x s image pixels that cell
covers, with unrounded sides. torchvision's convention ("torchvision", for its weights): the cell
anchors are rounded to integers, centred at the cell's top-left corner (x * s_x, y * s_y), and the
strides come from the padded image: s_y = padded_h // grid_h, s_x = padded_w // grid_w, per level
and axis — so P6 of an 800-high batch (P5 25 rows, P6 13) has s_y = 61, not 64.

Shape shorthand:
    L   FPN levels      A   anchors per location (aspect ratios)      H, W  size of one level

Naming:
    sizes           anchor side sqrt(w * h) in pixels, one per level
    aspect_ratios   h / w of the anchors, the same at every level
    strides         image pixels per feature-map cell, one per level
    cell_anchors    (A, 4) the anchors of one level centred at (0, 0)
    anchors         (H*W*A, 4) float32 x1, y1, x2, y2, ordered (y, x, a)
"""

import numpy as np


class AnchorGenerator:
    """Anchors for every location of every FPN level.

    Inputs:
    - sizes: one anchor size per level, in pixels (area = size**2)
    - aspect_ratios: h / w ratios, shared by all levels
    - strides: one stride per level, in pixels ("centre"; "torchvision" derives them)
    - convention: "centre" or "torchvision" (see the module docstring)
    """

    def __init__(self, sizes=(16, 32, 64, 128, 256), aspect_ratios=(0.5, 1.0, 2.0),
                 strides=(4, 8, 16, 32, 64), convention="centre"):
        if convention not in ("centre", "torchvision"):
            raise ValueError(f"convention: expected 'centre' or 'torchvision', got {convention!r}")
        if len(sizes) != len(strides):
            raise ValueError(f"sizes and strides need one entry per level, got {len(sizes)} sizes "
                             f"and {len(strides)} strides")
        if min(sizes, default=1) <= 0 or min(aspect_ratios, default=0) <= 0 or not aspect_ratios:
            raise ValueError(f"sizes and aspect_ratios must be positive, aspect_ratios non-empty; "
                             f"got sizes={sizes!r}, aspect_ratios={aspect_ratios!r}")
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.strides = tuple(strides)
        self.convention = convention

    @property
    def num_anchors_per_location(self):
        """A, the number of anchors at each location (one per aspect ratio)."""
        return len(self.aspect_ratios)

    def cell_anchors(self, level):
        """The A anchors of one level, centred at (0, 0).

        An anchor of ratio r = h / w and area size**2 has w = size / sqrt(r), h = size * sqrt(r),
        not rounded ("centre"). torchvision computes w = size * (1 / sqrt(r)) in float32 and rounds
        the corners half to even: (-23, -11, 23, 11) for size 32, r = 0.5.

        Inputs:
        - level: index into sizes/strides (0 for the finest level)
        Returns:
        - anchors: (A, 4) float64 (-w/2, -h/2, w/2, h/2)
        """
        if self.convention == "torchvision":
            h_ratios = np.sqrt(np.asarray(self.aspect_ratios, np.float32))
            w_ratios = np.float32(1) / h_ratios
            size = np.float32(self.sizes[level])
            ws, hs = w_ratios * size, h_ratios * size
            return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float64)
        ratios = np.asarray(self.aspect_ratios, np.float64)
        h = self.sizes[level] * np.sqrt(ratios)
        w = self.sizes[level] / np.sqrt(ratios)
        return np.stack([-w, -h, w, h], axis=1) / 2

    def grid_anchors(self, feature_shapes, image_shape=None):
        """Anchors at every location of every level.

        The order matches an RPN head output (N, A, H, W) permuted to (N, H, W, A) and flattened:
        anchor index (y * W + x) * A + a.

        Inputs:
        - feature_shapes: list of L (H, W), one per level
        - image_shape: the padded batch's (H, W); needed by the "torchvision" convention (its
          strides are image_shape // feature shape), ignored by "centre"
        Returns:
        - anchors_per_level: list of L (H*W*A, 4) float32 arrays
        """
        if len(feature_shapes) != len(self.sizes):
            raise ValueError(f"feature_shapes needs one (H, W) per level ({len(self.sizes)}), got "
                             f"{len(feature_shapes)}")
        if self.convention == "torchvision" and image_shape is None:
            raise ValueError("image_shape: the torchvision convention needs the padded (H, W)")
        anchors_per_level = []
        for level, (h, w) in enumerate(feature_shapes):
            if self.convention == "torchvision":                          # cell corners
                cx = np.arange(w) * (image_shape[1] // w)
                cy = np.arange(h) * (image_shape[0] // h)
            else:
                s = self.strides[level]
                cx = (np.arange(w) + 0.5) * s                              # centres of the cells
                cy = (np.arange(h) + 0.5) * s
            shift_y, shift_x = np.meshgrid(cy, cx, indexing="ij")          # (H, W)
            shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # (H, W, 4)
            anchors = shifts[:, :, None, :] + self.cell_anchors(level)     # (H, W, A, 4)
            anchors_per_level.append(anchors.reshape(-1, 4).astype(np.float32))
        return anchors_per_level

"""Do the anchors fit the data? Each object's best anchor IoU, after the input transform.

The RPN learns only from the anchors it labels: an anchor is positive at IoU >= 0.7 with a
ground-truth box (Faster R-CNN §3.1.2), and an object that no anchor reaches 0.7 gets just its
single best anchor (the "low-quality" match), so a dataset of objects much smaller than the
smallest anchor, or much flatter than the flattest ratio, trains a weak RPN. This file measures
it: every object's best IoU over all anchors of all levels, placed as the RPN places them on the
padded image, and a search over one factor scaling all anchor sizes that maximises the share of
objects with an anchor at IoU >= 0.7.

Exact and fast: anchors of one level and ratio differ only by translation on a regular grid, and
the overlap of two intervals of fixed lengths falls with the distance of their centres, so the
best anchor has the grid centre nearest the box centre in x and, independently, in y. Only those
(2 candidates per axis, for rounding ties) are scored; a test checks it against all anchors.

Shape shorthand:
    n objects (all images), L levels, A aspect ratios, S scale factors tried

Naming:
    samples        list of ((H', W'), boxes (M, 4)): each image's size after the transform and
                   its boxes in those pixels (`dataset_samples`)
    object_sizes   sqrt(w * h) of each box, pixels after the transform
    best_iou       (n,) each object's largest IoU with any anchor
"""

from dataclasses import dataclass

import numpy as np

from .anchors import AnchorGenerator
from .rpn import STRIDES
from .transform import resize_boxes


def dataset_samples(dataset, transform=None):
    """Each image's size and boxes after the transform's evaluation resize (no pixels resized).

    A CocoDataset gives its boxes from the JSON's `bbox` fields (crowd annotations left out, as
    in training) without reading images; other datasets (ShapesDataset) are indexed.

    Inputs:
    - dataset: CocoDataset, or indexable as (image (H, W, 3), {"boxes": (M, 4)}) with len()
    - transform: transform.Transform, or None (sizes as they are)
    Returns:
    - samples: list of ((H', W'), boxes (M, 4) float32 xyxy)
    """
    raw = []
    if hasattr(dataset, "images") and hasattr(dataset, "_annotations"):        # a CocoDataset
        for i, info in enumerate(dataset.images):
            anns = [a for a in dataset._annotations[info["id"]] if not a.get("iscrowd", 0)]
            if all("bbox" in a for a in anns):
                boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                                 np.float32).reshape(-1, 4)
            else:
                boxes = dataset.load_target(i)["boxes"]
            raw.append(((info["height"], info["width"]), boxes))
    else:
        for i in range(len(dataset)):
            image, target = dataset[i]
            raw.append((tuple(image.shape[:2]), np.asarray(target["boxes"], np.float32).reshape(-1, 4)))
    if transform is None:
        return raw
    out = []
    for (h, w), boxes in raw:
        new = transform.target_size(h, w, transform.pick_min_size())
        out.append((new, resize_boxes(boxes, (h, w), new) if new != (h, w) else boxes))
    return out


def feature_shapes(padded_size, strides=STRIDES):
    """(H, W) of each FPN level for a padded input: ceil(Hp / stride) (P6 = ceil(P5 / 2)).

    Inputs: padded_size (Hp, Wp), multiples of 32; strides one per level
    Returns: list of L (H_l, W_l)
    """
    return [(-(-padded_size[0] // s), -(-padded_size[1] // s)) for s in strides]


def _paired_iou(a, b):
    """IoU of a[i] with b[i]. Inputs: (..., 4) and (..., 4) xyxy. Returns: (...,) float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
             + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def best_anchor_iou(boxes, padded_size, generator):
    """Each box's largest IoU with the anchors of every level on a padded image.

    Inputs:
    - boxes: (M, 4) xyxy in the padded image's pixels
    - padded_size: (Hp, Wp)
    - generator: anchors.AnchorGenerator (sizes, ratios, strides)
    Returns:
    - best_iou: (M,) float64
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    if len(boxes) == 0:
        return best
    shapes = feature_shapes(padded_size, generator.strides)
    a_count = generator.num_anchors_per_location
    # the anchors' x extents of one grid row and y extents of one grid column, from the generator
    rows = generator.grid_anchors([(1, w) for _, w in shapes])
    cols = generator.grid_anchors([(h, 1) for h, _ in shapes])
    bx, by = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    for level, ((h, w), row, col) in enumerate(zip(shapes, rows, cols)):
        row, col = row.reshape(w, a_count, 4), col.reshape(h, a_count, 4)
        cx = (row[:, 0, 0].astype(np.float64) + row[:, 0, 2]) / 2               # (W,) sorted
        cy = (col[:, 0, 1].astype(np.float64) + col[:, 0, 3]) / 2               # (H,)
        jx = np.searchsorted(cx, bx)
        jy = np.searchsorted(cy, by)
        for dx in (-1, 0):
            ix = np.clip(jx + dx, 0, w - 1)
            for dy in (-1, 0):
                iy = np.clip(jy + dy, 0, h - 1)
                anchors = np.stack([row[ix, :, 0], col[iy, :, 1], row[ix, :, 2], col[iy, :, 3]],
                                   axis=-1)                                     # (M, A, 4)
                best = np.maximum(best, _paired_iou(anchors, boxes[:, None]).max(axis=1))
    return best


def _best_ious(samples, sizes, ratios, strides, size_divisible):
    """best_anchor_iou over all samples, each image padded alone (a batch of one).

    Images of one padded size share their anchors, so their boxes are scored in one call.
    """
    generator = AnchorGenerator(sizes, ratios, strides)
    d = size_divisible
    groups = {}
    for k, ((h, w), boxes) in enumerate(samples):
        groups.setdefault((-(-h // d) * d, -(-w // d) * d), []).append(k)
    out = [None] * len(samples)
    for padded, members in groups.items():
        boxes = [np.asarray(samples[k][1], np.float64).reshape(-1, 4) for k in members]
        best = best_anchor_iou(np.concatenate(boxes), padded, generator)
        for k, part in zip(members, np.split(best, np.cumsum([len(b) for b in boxes])[:-1])):
            out[k] = part
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class AnchorFit:
    """What `fit_anchors` measured. Shares are fractions of all objects (0 if there are none)."""
    anchor_sizes: tuple
    anchor_ratios: tuple
    num_images: int
    best_iou: np.ndarray             # (n,)
    object_sizes: np.ndarray         # (n,) sqrt(w * h) after the transform
    aspect_ratios: np.ndarray        # (n,) h / w
    share_07: float                  # objects with an anchor at IoU >= 0.7
    share_05: float                  # ... at IoU >= 0.5
    histogram: tuple                 # (counts (B,), edges (B + 1,)) of best_iou over [0, 1]
    scale_factors: np.ndarray        # (S,) factors tried on all anchor sizes
    share_07_by_scale: np.ndarray    # (S,)
    share_05_by_scale: np.ndarray    # (S,)
    best_scale: float                # the factor with the largest share_07 (nearest 1 on ties)
    suggested_sizes: tuple           # anchor_sizes * best_scale, rounded to 0.1 px
    size_quantiles: dict             # {q: sqrt(w * h) quantile} for q in 5, 25, 50, 75, 95 %

    def describe(self):
        """The measurements as text lines, for a CLI to print."""
        n = len(self.best_iou)
        lines = [f"{n} objects in {self.num_images} images; anchors {list(self.anchor_sizes)} px, "
                 f"ratios (h / w) {list(self.anchor_ratios)}"]
        if n == 0:
            return lines + ["no objects: nothing to measure"]
        q = self.size_quantiles
        lines += [f"object size sqrt(w*h) after the transform: 5% {q[5]:.1f}, median {q[50]:.1f}, "
                  f"95% {q[95]:.1f} px; aspect h / w median {np.median(self.aspect_ratios):.2f}",
                  f"best anchor IoU: median {np.median(self.best_iou):.3f}; share >= 0.7: "
                  f"{100 * self.share_07:.1f}%, >= 0.5: {100 * self.share_05:.1f}%"]
        k = int(np.argmin(np.abs(self.scale_factors - self.best_scale)))
        if self.best_scale == 1.0:
            lines.append("suggested anchor sizes: the current ones (no factor tried does better)")
        else:
            lines.append(f"suggested anchor sizes {list(self.suggested_sizes)} (x {self.best_scale:.3g}): "
                         f"share >= 0.7 {100 * self.share_07_by_scale[k]:.1f}%, >= 0.5 "
                         f"{100 * self.share_05_by_scale[k]:.1f}%")
        return lines


def fit_anchors(samples, anchor_sizes, anchor_ratios=(0.5, 1.0, 2.0), strides=STRIDES,
                size_divisible=32, scale_factors=tuple(2.0 ** (np.arange(-8, 9) / 4)), bins=20):
    """Measure how the anchors fit a dataset's objects, and search a factor on all anchor sizes.

    Inputs:
    - samples: list of ((H', W'), boxes (M, 4)) as `dataset_samples` returns
    - anchor_sizes: one per level (Config.anchor_sizes); anchor_ratios: h / w (Config.anchor_ratios)
    - strides: per level (rpn.STRIDES); size_divisible: padding of each image (batch of one)
    - scale_factors: factors tried on all sizes at once (default 2^(-2) .. 2^2 in quarter octaves)
    - bins: histogram bins over [0, 1]
    Returns:
    - fit: AnchorFit
    """
    if not scale_factors or min(scale_factors) <= 0:
        raise ValueError(f"scale_factors: expected positive numbers, got {scale_factors!r}")
    boxes = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for _, b in samples]) \
        if samples else np.zeros((0, 4))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if np.any(w <= 0) or np.any(h <= 0):
        raise ValueError("samples: expected boxes with x2 > x1 and y2 > y1")
    n = len(boxes)

    def shares(iou):
        return (float(np.mean(iou >= 0.7)), float(np.mean(iou >= 0.5))) if n else (0.0, 0.0)

    best_iou = _best_ious(samples, anchor_sizes, anchor_ratios, strides, size_divisible)
    factors = np.asarray(scale_factors, np.float64)
    by_scale = np.array([shares(best_iou if f == 1 else _best_ious(
        samples, tuple(s * f for s in anchor_sizes), anchor_ratios, strides, size_divisible))
        for f in factors]).reshape(-1, 2)
    top = by_scale[:, 0].max() if len(factors) else 0
    candidates = [f for f, s in zip(factors, by_scale[:, 0]) if s == top]
    best_scale = 1.0
    if n and top > shares(best_iou)[0]:
        best_scale = float(min(candidates, key=lambda f: abs(np.log(f))))
    share_07, share_05 = shares(best_iou)
    sizes = np.sqrt(w * h)
    return AnchorFit(
        anchor_sizes=tuple(float(s) for s in anchor_sizes), anchor_ratios=tuple(anchor_ratios),
        num_images=len(samples), best_iou=best_iou, object_sizes=sizes,
        aspect_ratios=h / w if n else np.zeros(0), share_07=share_07, share_05=share_05,
        histogram=np.histogram(best_iou, bins=bins, range=(0, 1)), scale_factors=factors,
        share_07_by_scale=by_scale[:, 0], share_05_by_scale=by_scale[:, 1], best_scale=best_scale,
        suggested_sizes=tuple(round(float(s) * best_scale, 1) for s in anchor_sizes),
        size_quantiles={q: float(np.percentile(sizes, q)) if n else float("nan")
                        for q in (5, 25, 50, 75, 95)})


def anchor_fit_figure(fit):
    """Three panels: the best-IoU histogram, object sizes against anchor sizes, the factor search.

    Built on matplotlib.figure.Figure (no pyplot, no display backend), so it works under Agg and
    in worker processes; the caller saves it (`fig.savefig(path)`).

    Inputs: fit, an AnchorFit
    Returns: matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_iou, ax_size, ax_scale = fig.subplots(1, 3)
    counts, edges = fit.histogram
    ax_iou.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0")
    for t in (0.5, 0.7):
        ax_iou.axvline(t, color="k", ls="--", lw=1)
    ax_iou.text(0.02, 0.97, f"IoU >= 0.5: {100 * fit.share_05:.1f}%\nIoU >= 0.7: {100 * fit.share_07:.1f}%",
                transform=ax_iou.transAxes, va="top", fontsize=9)
    ax_iou.set(xlabel="best anchor IoU of each object", ylabel="objects", xlim=(0, 1),
               title=f"{len(fit.best_iou)} objects, {fit.num_images} images")
    if len(fit.object_sizes):
        lo = max(min(fit.object_sizes.min(), min(fit.anchor_sizes)) / 1.5, 0.5)
        hi = max(fit.object_sizes.max(), max(fit.anchor_sizes)) * 1.5
        ax_size.hist(fit.object_sizes, bins=np.geomspace(lo, hi, 40), color="#55a868")
    for k, s in enumerate(fit.anchor_sizes):
        ax_size.axvline(s, color="k", lw=1, label="anchor sizes" if k == 0 else None)
    if fit.best_scale != 1.0:
        for k, s in enumerate(fit.suggested_sizes):
            ax_size.axvline(s, color="#c44e52", ls="--", lw=1, label="suggested" if k == 0 else None)
    ax_size.set(xscale="log", xlabel="object size sqrt(w*h), px after the transform", ylabel="objects",
                title="object sizes and anchor sizes")
    ax_size.legend(fontsize=8)
    ax_scale.plot(fit.scale_factors, 100 * fit.share_07_by_scale, "o-", label="IoU >= 0.7")
    ax_scale.plot(fit.scale_factors, 100 * fit.share_05_by_scale, "s-", label="IoU >= 0.5")
    ax_scale.axvline(fit.best_scale, color="#c44e52", ls="--", lw=1)
    ax_scale.set(xscale="log", xlabel="factor on all anchor sizes", ylabel="% of objects",
                 ylim=(0, 100), title=f"search: best x {fit.best_scale:.3g}")
    ticks = [f for f in (0.125, 0.25, 0.5, 1, 2, 4, 8)
             if fit.scale_factors.min() <= f <= fit.scale_factors.max()]
    ax_scale.set_xticks(ticks, [f"{f:g}" for f in ticks])
    ax_scale.set_xticks([], minor=True)
    ax_scale.legend(fontsize=8)
    return fig

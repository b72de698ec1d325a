"""How hard a shapes dataset is: per-instance contrast, visibility and border cuts.

`instance_statistics` regenerates images with `ShapesDataset.describe` (which also returns each
instance's colour, full area and the noise-free background) and measures every instance; the
arrays it returns are what walkthrough 00 draws as histograms, and `summarize_statistics` turns
them into the few numbers of a report. Contrast is measured as the generator enforces it:
Euclidean RGB distance between noise-free colours.

Shape shorthand:
    N   instances over all the images measured     I   images measured

Naming:
    background contrast  the smallest distance between an instance's colour and the background
                         at its visible pixels (the background is not plain when graded/textured)
    shape contrast       the smallest distance between an instance's colour and the colours of
                         the instances it touches (4-neighbour adjacency of the visible masks)
    visible fraction     visible pixels / full area (outside the image counts as hidden)
    border cut           part of the shape lies outside the image
"""

import numpy as np


def _touching(masks):
    """(M, M) bool: instance a touches instance b (a 4-neighbour of a pixel of a lies in b)."""
    grown = masks.copy()  # (M, H, W)
    grown[:, 1:] |= masks[:, :-1]
    grown[:, :-1] |= masks[:, 1:]
    grown[:, :, 1:] |= masks[:, :, :-1]
    grown[:, :, :-1] |= masks[:, :, 1:]
    flat_grown = grown.reshape(len(masks), -1).astype(np.float32)
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    touch = flat_grown @ flat.T > 0
    np.fill_diagonal(touch, False)
    return touch


def instance_statistics(dataset, indices=None):
    """Measure every instance of some images of a `ShapesDataset`.

    Inputs:
    - dataset: a ShapesDataset (anything with `describe(i)` -> (image, target, info))
    - indices: image indices to measure; default all of them
    Returns:
    - stats: dict of arrays, one entry per instance unless said otherwise:
      "image" (N,) int64 image index, "label" (N,) int64, "size" (N,) float64 longer side of
      the visible box, "background_contrast" (N,) float64, "shape_contrast" (N,) float64 (nan
      when the instance touches no other), "visible_fraction" (N,) float64, "border_cut" (N,)
      bool, and per image "instances_per_image" (I,) int64
    """
    indices = range(len(dataset)) if indices is None else indices
    rows = {k: [] for k in ("image", "label", "size", "background_contrast", "shape_contrast",
                            "visible_fraction", "border_cut")}
    counts = []
    for i in indices:
        _, target, info = dataset.describe(i)
        masks, boxes = target["masks"], target["boxes"]
        colors = info["colors"].astype(np.float64)  # (M, 3)
        background = info["background"].astype(np.float64)  # (H, W, 3)
        touch = _touching(masks)
        for k, mask in enumerate(masks):
            to_background = np.linalg.norm(background[mask] - colors[k], axis=1).min()
            neighbours = colors[touch[k]]
            to_shapes = (np.linalg.norm(neighbours - colors[k], axis=1).min()
                         if len(neighbours) else np.nan)
            rows["image"].append(i)
            rows["label"].append(target["labels"][k])
            rows["size"].append(max(boxes[k, 2] - boxes[k, 0], boxes[k, 3] - boxes[k, 1]))
            rows["background_contrast"].append(to_background)
            rows["shape_contrast"].append(to_shapes)
            rows["visible_fraction"].append(mask.sum() / info["full_area"][k])
            rows["border_cut"].append(info["inside_area"][k] < info["full_area"][k])
        counts.append(len(masks))
    dtypes = {"image": np.int64, "label": np.int64, "border_cut": bool}
    stats = {k: np.array(v, dtype=dtypes.get(k, np.float64)) for k, v in rows.items()}
    stats["instances_per_image"] = np.array(counts, dtype=np.int64)
    return stats


def summarize_statistics(stats):
    """The numbers of a report from `instance_statistics`' arrays.

    Inputs:
    - stats: dict as `instance_statistics` returns
    Returns:
    - summary: dict of floats: "images", "instances", "instances_per_image" (mean),
      "empty_images" (share), "min_background_contrast", "min_shape_contrast" (over touching
      pairs), "low_contrast_share" (instances with either contrast below 40),
      "visible_fraction_q01" / "_q10" / "_q50" and "min_visible_fraction", "border_cut_share",
      "max_size"
    """
    bg, sh, vis = stats["background_contrast"], stats["shape_contrast"], stats["visible_fraction"]
    low = (bg < 40) | (np.nan_to_num(sh, nan=np.inf) < 40)
    return {
        "images": float(len(stats["instances_per_image"])),
        "instances": float(len(bg)),
        "instances_per_image": float(stats["instances_per_image"].mean()),
        "empty_images": float((stats["instances_per_image"] == 0).mean()),
        "min_background_contrast": float(bg.min()),
        "min_shape_contrast": float(np.nanmin(sh)) if np.isfinite(sh).any() else float("nan"),
        "low_contrast_share": float(low.mean()),
        "visible_fraction_q01": float(np.quantile(vis, 0.01)),
        "visible_fraction_q10": float(np.quantile(vis, 0.10)),
        "visible_fraction_q50": float(np.quantile(vis, 0.50)),
        "min_visible_fraction": float(vis.min()),
        "border_cut_share": float(stats["border_cut"].mean()),
        "max_size": float(stats["size"].max()),
    }

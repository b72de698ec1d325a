# %% [markdown]
# # 00 — The shapes dataset
#
# The model learns on synthetic images: a plain background with 1–4 solid squares, circles and
# triangles that may hide each other. Everything about an image is known exactly, so the masks are
# perfect and a model can be trained from scratch on a CPU. What you will see:
#
# 1. a grid of images with their masks, boxes and class names — `ShapesDataset`, `viz.draw_instances`;
# 2. one image taken apart into its per-instance masks (an occluded shape keeps only its visible part);
# 3. class, size and count statistics over a few hundred images;
# 4. the COCO export: `coco.save_coco` writes PNGs + an instances JSON, `coco.load_coco` reads it
#    back; one annotation's JSON entry, and a check that the round trip gives equal masks;
# 5. harder data: each option of `ShapesDataset` on a few images (low contrast, border cuts, heavy
#    occlusion, large and axis-aligned shapes, graded backgrounds, noise), and the held-out
#    statistics of the gentle defaults (`GENTLE`) against `HARD` — `shapes_stats.instance_statistics`.

# %%
import json
import os
import tempfile

import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.coco import load_coco, save_coco
from npmaskrcnn.shapes import CLASS_NAMES, ShapesDataset
from npmaskrcnn.shapes_stats import instance_statistics, summarize_statistics
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

# %% [markdown]
# ## 1. A grid of images
#
# `ShapesDataset(n, seed)` is random-access and deterministic: image i always comes from the
# random generator seeded with `[seed, i]`. `ds[i]` returns the image and a target dict.

# %%
ds = ShapesDataset(300, seed=0)
image, target = ds[0]
log("image", image)
log("boxes", target["boxes"])
log("labels", target["labels"])
log("masks", target["masks"])

fig, axes = plt.subplots(3, 4, figsize=(13, 10))
for i, ax in enumerate(axes.flat):
    image, target = ds[i]
    viz.draw_instances(ax, image, target["boxes"], target["labels"], target["masks"],
                       title=f"image {i}: {len(target['labels'])} instance(s)")
fig.suptitle("ShapesDataset(300, seed=0): masks, boxes and class names", fontsize=13)
fig.tight_layout()
save_figure(fig, "00_shapes_grid")

# %% [markdown]
# ## 2. One image, instance by instance
#
# Shapes are painted in order, later ones on top. Each mask holds only the *visible* pixels, so
# the masks never overlap, and a box is the extent of its visible mask.

# %%
i = next(k for k in range(len(ds)) if len(ds[k][1]["labels"]) >= 3)   # an image with 3+ shapes
image, target = ds[i]
log(f"image {i} masks", target["masks"])
print("pixels per mask:", target["masks"].sum(axis=(1, 2)).tolist(),
      "| any pixel in two masks:", bool((target["masks"].sum(axis=0) > 1).any()))

n = len(target["labels"])
fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * (n + 1), 3.6))
axes[0].imshow(image)
axes[0].set_title(f"image {i}")
for k in range(n):
    axes[k + 1].imshow(target["masks"][k], cmap="gray", interpolation="nearest")
    viz.draw_boxes(axes[k + 1], target["boxes"][k:k + 1], viz.color(k))
    name = CLASS_NAMES[target["labels"][k] - 1]
    axes[k + 1].set_title(f"mask {k}: {name}\n{int(target['masks'][k].sum())} px")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
save_figure(fig, "00_one_image_masks")

# %% [markdown]
# ## 3. Statistics
#
# Classes are drawn uniformly; sizes (the longer side of a shape's full box) uniformly in 16–64 px,
# but occlusion removes or shrinks some instances, so the *visible* boxes lean smaller.

# %%
n_stats = 100 if args.fast else len(ds)
labels, sizes, counts = [], [], []
for k in range(n_stats):
    _, t = ds[k]
    labels.append(t["labels"])
    w, h = t["boxes"][:, 2] - t["boxes"][:, 0], t["boxes"][:, 3] - t["boxes"][:, 1]
    sizes.append(np.maximum(w, h))
    counts.append(len(t["labels"]))
labels, sizes, counts = np.concatenate(labels), np.concatenate(sizes), np.array(counts)
log("labels (all instances)", labels)
log("visible box size (px)", sizes)
log("instances per image", counts)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
axes[0].bar(CLASS_NAMES, np.bincount(labels, minlength=4)[1:], color=[viz.color(k) for k in range(3)])
axes[0].set_ylabel("instances")
axes[0].set_title(f"instances per class ({n_stats} images)")
bins = np.arange(0, 72, 4)
for k, name in enumerate(CLASS_NAMES):
    axes[1].hist(sizes[labels == k + 1], bins=bins, histtype="step", linewidth=2,
                 color=viz.color(k), label=name)
axes[1].set_xlabel("longer side of the visible box (px)")
axes[1].set_ylabel("instances")
axes[1].set_title("instance size by class")
axes[1].legend()
axes[2].bar(*np.unique(counts, return_counts=True), color="grey")
axes[2].set_xticks(np.unique(counts))
axes[2].set_xlabel("instances in the image")
axes[2].set_ylabel("images")
axes[2].set_title("instances per image (after occlusion)")
fig.tight_layout()
save_figure(fig, "00_statistics")

# %% [markdown]
# ## 4. COCO export and round trip
#
# `save_coco` writes `images/000001.png …` and `instances.json` with one annotation per
# instance: the mask as compressed RLE (pycocotools), its area, its box as [x, y, w, h].
# `load_coco` reads it back into the same `(image, target)` form.

# %%
small = ShapesDataset(4 if args.fast else 8, seed=0)
with tempfile.TemporaryDirectory() as tmp:
    json_path = save_coco(small, os.path.join(tmp, "shapes_coco"))
    print("wrote", os.path.relpath(json_path, tmp), "and",
          len(os.listdir(os.path.join(tmp, "shapes_coco", "images"))), "PNGs")
    with open(json_path) as f:
        coco = json.load(f)
    print("images:", len(coco["images"]), "annotations:", len(coco["annotations"]),
          "categories:", [c["name"] for c in coco["categories"]])
    print("first annotation:")
    for key, value in coco["annotations"][0].items():
        print(f"  {key!r}: {json.dumps(value)}")
    back = load_coco(json_path)
    equal = []
    for k in range(len(small)):
        (im_a, t_a), (im_b, t_b) = small[k], back[k]
        equal.append(np.array_equal(im_a, im_b) and np.array_equal(t_a["masks"], t_b["masks"])
                     and np.array_equal(t_a["labels"], t_b["labels"])
                     and np.allclose(t_a["boxes"], t_b["boxes"]))
    image_back, target_back = back[0]
print("round trip gives equal images, masks, labels and boxes:", all(equal))
assert all(equal), "COCO round trip changed the data"
log("masks (read back)", target_back["masks"])

image, target = small[0]
fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
viz.draw_instances(axes[0], image, target["boxes"], target["labels"], target["masks"],
                   title="ShapesDataset[0] (in memory)")
viz.draw_instances(axes[1], image_back, target_back["boxes"], target_back["labels"],
                   target_back["masks"], title="load_coco(save_coco(...))[0] (read back)")
fig.tight_layout()
save_figure(fig, "00_coco_round_trip")

# %% [markdown]
# ## 5. Harder data: the options
#
# The defaults above are gentle: every shape at least 100 RGB levels (Euclidean distance) from the
# background and 60 from the other shapes, wholly inside the image, at least half visible, at
# most 64 px, rotated at random. A model trained only on them misses what they leave out. Each
# option below is off by default (and then draws no random number, so the default images stay
# bit-identical); one row per option, the same seeds in every row:
#
# - `min_background_contrast=15, min_shape_contrast=15, low_contrast_prob=1`: colours aimed at
#   15–45 levels from the background or from a shape they overlap (panel titles: the lowest);
# - `border_cut_prob=1`: the centre anywhere in the image, so the border cuts shapes; the visible
#   part is the instance (titles: instances cut);
# - `min_visible_fraction=0.15, overlap_prob=1`, 4–6 shapes: heavy occlusion, every shape after
#   the first centred near an earlier one (titles: the least visible fraction);
# - `min_size=56, max_size=80`: large shapes; `axis_aligned_prob=1`: squares axis-aligned,
#   triangles upright;
# - `background_gradient=40, background_texture=12`: a ramp and smooth blotches behind the shapes;
#   `noise_std=8` (HARD uses 3): Gaussian pixel noise; neither changes a mask;
# - `HARD`: all of them at once, at the strengths the next model is to be trained with.
#
# Masks are drawn as outlines only here (no colour wash), so the contrasts are the image's own.

# %%
options = [
    ("gentle (defaults)", {}),
    ("low contrast", dict(min_background_contrast=15.0, min_shape_contrast=15.0,
                          low_contrast_prob=1.0, strict_contrast=True)),
    ("border cuts", dict(border_cut_prob=1.0, min_visible_fraction=0.15)),
    ("heavy occlusion", dict(min_visible_fraction=0.15, overlap_prob=1.0, min_shapes=4,
                             max_shapes=6)),
    ("large, axis-aligned", dict(min_size=56, max_size=80, axis_aligned_prob=1.0)),
    ("gradient + texture", dict(background_gradient=40.0, background_texture=12.0)),
    ("pixel noise", dict(noise_std=8.0)),
    ("HARD", ShapesDataset.hard_settings()),
]


def panel_title(name, stats):
    """The number that says what the option did to this image."""
    if name == "low contrast":
        low = np.fmin(stats["background_contrast"], stats["shape_contrast"])
        return f"lowest contrast {low.min():.0f}"
    if name == "border cuts":
        return f"{int(stats['border_cut'].sum())} of {len(stats['label'])} cut"
    if name in ("heavy occlusion", "HARD"):
        return f"least visible {stats['visible_fraction'].min():.2f}"
    if name == "large, axis-aligned":
        return f"largest {stats['size'].max():.0f} px"
    return f"{len(stats['label'])} instance(s)"


n_cols = 3 if args.fast else 5
fig, axes = plt.subplots(len(options), n_cols, figsize=(2.5 * n_cols + 0.8, 2.65 * len(options)))
for row, (name, kwargs) in enumerate(options):
    ds_option = ShapesDataset(n_cols, seed=1, **kwargs)
    for col in range(n_cols):
        image, target = ds_option[col]
        stats = instance_statistics(ds_option, indices=[col])
        viz.draw_instances(axes[row, col], image, target["boxes"], target["labels"],
                           target["masks"], alpha=0.0, title=panel_title(name, stats))
    axes[row, 0].set_ylabel(name, fontsize=11)
fig.suptitle(f"ShapesDataset options, one per row (seed 1, images 0..{n_cols - 1})", fontsize=13)
fig.tight_layout(rect=(0, 0, 1, 0.985))
save_figure(fig, "00_hard_options")

# %% [markdown]
# ## 6. Held-out statistics: gentle against hard
#
# `instance_statistics(ds)` measures every instance: its contrast against the (noise-free)
# background at its visible pixels and against the shapes it touches, its visible fraction (the
# part outside the image counts as hidden) and whether the border cuts it. The held-out images of
# seed 10 000 (the evaluation seed) under `GENTLE` and `HARD`:

# %%
n_held_out = 60 if args.fast else 500
held_out = {name: instance_statistics(ShapesDataset(n_held_out, seed=10_000, **settings))
            for name, settings in (("gentle", ShapesDataset.gentle_settings()),
                                   ("hard", ShapesDataset.hard_settings()))}
for name, st in held_out.items():
    log(f"{name}: background contrast", st["background_contrast"])
    log(f"{name}: visible fraction", st["visible_fraction"])
summaries = {name: summarize_statistics(st) for name, st in held_out.items()}
print(f"{'':28s}{'gentle':>10s}{'hard':>10s}")
for key in summaries["gentle"]:
    print(f"{key:28s}{summaries['gentle'][key]:10.3f}{summaries['hard'][key]:10.3f}")

fig, axes = plt.subplots(2, 3, figsize=(16, 9))
axes = axes.flat
style = {"gentle": dict(color="grey", linewidth=2), "hard": dict(color=viz.color(3), linewidth=2)}
panels = [("background_contrast", "contrast against the background", np.arange(0, 452, 15), ""),
          ("shape_contrast", "contrast against touching shapes", np.arange(0, 452, 15), ""),
          ("visible_fraction", "visible fraction", np.linspace(0, 1, 21), " (log scale)"),
          ("size", "longer side of the visible box (px)", np.arange(0, 88, 4), "")]
for ax, (key, name, bins, scale) in zip(axes, panels):
    for which, st in held_out.items():
        values = st[key][np.isfinite(st[key])]
        ax.hist(values, bins=bins, histtype="step", label=f"{which} ({len(values)})",
                **style[which])
    ax.set_xlabel(name + (" (RGB distance)" if "contrast" in key else ""))
    ax.set_ylabel("instances" + scale)
    ax.set_title(name)
    if scale:
        ax.set_yscale("log")
for ax, floors in zip(axes[:3], [(100, 15), (60, 15), (0.5, 0.15)]):
    for which, floor in zip(held_out, floors):
        ax.axvline(floor, color=style[which]["color"], linestyle=":", linewidth=1.5,
                   label=f"{which} floor {floor:g}")
for ax in axes[:4]:
    ax.legend(fontsize=9, loc="upper left" if ax is axes[2] else "upper right")
names = list(held_out)
shares = [held_out[n]["border_cut"].mean() * 100 for n in names]
axes[4].bar(names, shares, color=[style[n]["color"] for n in names])
for k, share in enumerate(shares):
    axes[4].text(k, share + 0.5, f"{share:.1f} %", ha="center", va="bottom")
axes[4].set_ylim(0, max(shares) * 1.2 + 1)
axes[4].set_ylabel("% of instances")
axes[4].set_title("cut by the image border")
width = 0.4
for k, which in enumerate(names):
    values, counts = np.unique(held_out[which]["instances_per_image"], return_counts=True)
    axes[5].bar(values + (k - 0.5) * width, counts, width=width, label=which,
                color=style[which]["color"])
axes[5].set_xticks(range(0, 7))
axes[5].set_xlabel("instances in the image (after occlusion)")
axes[5].set_ylabel("images")
axes[5].set_title("instances per image")
axes[5].legend(fontsize=9)
fig.suptitle(f"{n_held_out} held-out images (seed 10 000): GENTLE vs HARD", fontsize=13)
fig.tight_layout()
save_figure(fig, "00_hard_statistics")

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
#    back; one annotation's JSON entry, and a check that the round trip gives equal masks.

# %%
import json
import os
import sys
import tempfile

import numpy as np

try:
    import npmaskrcnn  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the repo this file lives in
    _here = os.path.abspath(globals().get("__file__", os.path.join(os.getcwd(), "_")))
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))

from npmaskrcnn import viz
from npmaskrcnn.coco import load_coco, save_coco
from npmaskrcnn.shapes import CLASS_NAMES, ShapesDataset
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz has selected the Agg backend)

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

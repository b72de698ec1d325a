# %% [markdown]
# # 02 — The backbone: ResNet stages C2..C5 and the FPN levels P2..P6
#
# One 128×128 shapes image goes through the trained model's backbone. The ResNet halves the
# resolution stage after stage while it widens the channels; the Feature Pyramid Network then
# gives every level the same width and mixes the coarse, semantic levels back into the fine ones.
# What you will see:
#
# 1. the shapes and strides of C2..C5 and P2..P6 — `model.preprocess`, `model.backbone.body`
#    (the ResNet) and `model.backbone.fpn` (the FPN);
# 2. every level drawn: its channel mean and its 4 most varied channels — `viz.show_feature_maps`;
# 3. what the top-down path adds: P_k's input is `inner_k(C_k)` (lateral, 1×1 conv) plus the
#    upsampled level above (top-down); both parts drawn side by side, with their share.
#
# 4. on a real photo, with a COCO model (`--model coco.npz`): P2..P6 of ResNet-50 + FPN.
#
# The model is `data/shapes_maskrcnn.npz` (override with the environment variable
# `NPMASKRCNN_MODEL`); without it an untrained model is used and the pictures say so.

# %%
import numpy as np

from npmaskrcnn import layers, viz
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

model, trained = viz.load_shipped_model()
print(f"{trained} model, config: image_size {model.config.image_size}, stage_channels "
      f"{model.config.stage_channels}, fpn_channels {model.config.fpn_channels}")

# %% [markdown]
# ## 1. Through the ResNet and the FPN
#
# `preprocess` subtracts the mean and divides by the std (and pads to a multiple of 32). The
# stem (7×7 stride-2 conv, 3×3 stride-2 max-pool) brings the image to stride 4; stages 2..5 give
# C2..C5 at strides 4, 8, 16, 32. The FPN turns them into P2..P5 of `fpn_channels` each, and P6
# is P5 subsampled by 2 (the RPN alone uses it, for the largest anchors).

# %%
ds = ShapesDataset(50, seed=10_000, image_size=model.config.image_size)
index = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 3)
image, target = ds[index]
x, image_size = model.preprocess([image])
log("image", image)
log("x (normalised)", x)
cs = model.backbone.body(x)                                 # [c2, c3, c4, c5]
ps = model.backbone.fpn(cs)                                 # [p2, p3, p4, p5, p6]
names = [f"C{k}" for k in range(2, 6)] + [f"P{k}" for k in range(2, 7)]
maps = cs + ps
for name, m in zip(names, maps):
    log(f"{name} (stride {x.shape[-1] // m.shape[-1]})", m)

# %% [markdown]
# ## 2. Every level, drawn
#
# Each row is one level: first the mean over channels, then the 4 channels with the largest
# spatial variance (the ones that "see" something in this image). Colour scales are per panel.
# Early stages respond to edges and colours; deeper ones are coarse blobs where the shapes are.

# %%
def level_panels(name, fmap, input_width, n_channels=4):
    """Panels of one level: (maps, titles) — the channel mean and the most varied channels."""
    f = fmap[0]
    top = np.argsort(-f.reshape(f.shape[0], -1).var(axis=1))[:n_channels]
    stride = input_width // f.shape[-1]
    panels = [f.mean(axis=0)] + [f[c] for c in top]
    titles = [f"{name} mean of {f.shape[0]} ch\n{f.shape[1]}x{f.shape[2]}, stride {stride}"] + \
             [f"{name} channel {c}" for c in top]
    return panels, titles


fig, ax = plt.subplots(figsize=(3.4, 3.4))
viz.draw_instances(ax, image, target["boxes"], target["labels"], target["masks"],
                   title=f"input: held-out image {index}")
save_figure(fig, "02_input_image")

for group, title in ((range(0, 4), "ResNet stages C2..C5"), (range(4, 9), "FPN levels P2..P6")):
    panels, titles = [], []
    for k in group:
        p, t = level_panels(names[k], maps[k], x.shape[-1])
        panels += p
        titles += t
    fig = viz.show_feature_maps(panels, titles, ncols=5, size=2.0, colorbar=True,
                                suptitle=f"{title} of the {trained} model (first panel of each row: "
                                         f"channel mean)")
    save_figure(fig, "02_" + ("resnet_C2_C5" if group[0] == 0 else "fpn_P2_P6"))

# %% [markdown]
# ## 3. What the top-down path adds
#
# FPN computes `last_5 = inner_5(C5)` and, going down, `last_k = inner_k(C_k) + up2(last_{k+1})`,
# then `P_k = layer_k(last_k)` (a 3×3 conv). The lateral term carries the fine, local detail of
# C_k; the top-down term brings the meaning that only the deep, wide-field levels have, at the
# fine resolution. Below: the per-pixel norm (over channels) of each term at P2, P3, P4. Without
# the top-down path P2 would be built from C2 alone, one residual block away from the pixels.

# %%
fpn = model.backbone.fpn
last = fpn.inner[3](cs[3])
terms = {}
for k in (2, 1, 0):                                         # levels 4, 3, 2
    topdown, _ = layers.upsample_nearest_forward(last, scale=2)
    lateral = fpn.inner[k](cs[k])
    terms[k + 2] = (lateral, topdown)
    last = lateral + topdown
panels, titles = [], []
for level in (2, 3, 4):
    lateral, topdown = terms[level]
    n_lat = np.sqrt((lateral[0] ** 2).sum(axis=0))
    n_td = np.sqrt((topdown[0] ** 2).sum(axis=0))
    share = float((topdown ** 2).sum() / ((lateral ** 2).sum() + (topdown ** 2).sum()))
    log(f"lateral inner_{level}(C{level})", lateral)
    log(f"top-down up2(last_{level + 1})", topdown)
    print(f"  level {level}: the top-down term carries {100 * share:.0f}% of the energy of last_{level}")
    panels += [n_lat, n_td, np.sqrt(((lateral + topdown)[0] ** 2).sum(axis=0))]
    titles += [f"|lateral| level {level}", f"|top-down| level {level}\n({100 * share:.0f}% of energy)",
               f"|sum| = |last_{level}|"]
fig = viz.show_feature_maps(panels, titles, ncols=3, size=2.4, colorbar=True, cmap="magma",
                            suptitle="FPN: lateral (1x1 on C_k) vs top-down (upsampled level above)")
save_figure(fig, "02_fpn_topdown")

# %% [markdown]
# ## 4. On a real photo
#
# With a COCO model (`--model coco.npz`: torchvision's `maskrcnn_resnet50_fpn` weights, converted
# by `import-torchvision`) the same two calls run on matplotlib's sample photo. This backbone is
# ResNet-50 (Bottleneck blocks, frozen BatchNorm, C2..C5 of 256..2048 channels) and the FPN is 256
# wide; the photo's shorter side is resized to 800 pixels first (320 in fast mode). Below, as in
# section 2: each row one level P2..P6, its channel mean and its 4 most varied channels. What the
# channels respond to is the weights' doing: trained COCO weights respond to what is in the
# photo, random ones (as in this repository's tests) only give the same shapes and strides.

# %%
coco = viz.load_coco_model()
if coco is not None:
    coco_model, photo = coco
    photo_x, _ = coco_model.preprocess([photo])
    photo_cs = coco_model.backbone.body(photo_x)
    photo_ps = coco_model.backbone.fpn(photo_cs)
    log("photo x (normalised)", photo_x)
    for k, m in enumerate(photo_cs):
        log(f"photo C{k + 2} (stride {photo_x.shape[-1] // m.shape[-1]})", m)
    panels, titles = [], []
    for k, m in enumerate(photo_ps):
        log(f"photo P{k + 2} (stride {photo_x.shape[-1] // m.shape[-1]})", m)
        p, t = level_panels(f"P{k + 2}", m, photo_x.shape[-1])
        panels += p
        titles += t
    fig = viz.show_feature_maps(panels, titles, ncols=5, size=2.4, colorbar=True,
                                suptitle=f"FPN levels P2..P6 of the photo ({photo_x.shape[3]} x "
                                         f"{photo_x.shape[2]} padded input), ResNet-50 + FPN of "
                                         f"{coco_model.config.fpn_channels} channels")
    save_figure(fig, "02_photo_fpn")

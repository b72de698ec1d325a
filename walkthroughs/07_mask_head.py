# %% [markdown]
# # 07 — The mask head: 28×28 masks inside each RoI
#
# The mask branch pools each positive RoI at 14×14, the mask head runs 4 convs and a 2×
# transposed conv, and the mask predictor, a 1×1 conv, gives K channels of 28×28 logits: one mask
# per class (`mask_head.py`). What you will see:
#
# 1. the training targets: the ground-truth mask resampled into a positive RoI at 28×28 —
#    `mask_head.project_masks_on_boxes` (RoIAlign on the mask, then ≥ 0.5);
# 2. the predicted 28×28 probabilities for the same RoIs — `RoIHeads.pool`, `mask_head`,
#    `mask_predictor`, `mask_head.mask_probs`;
# 3. the paste back into the image (bilinear, threshold 0.5) and its IoU with the ground-truth
#    mask — `mask_head.paste_masks`;
# 4. the K sigmoid channels of one RoI: no softmax across classes; only the channel of the
#    predicted (at training: the ground-truth) class is used, the others are never compared;
# 5. beyond the paper: the score of a detection multiplied by its mask confidence (the shipped
#    recipe's `mask_rescore`) — `beyond_paper.mask_confidence`;
# 6. on a real photo, with a COCO model (`--model coco.npz`): its 28×28 masks and their paste.
#
# The model is `data/shapes_maskrcnn.npz` (or `$NPMASKRCNN_MODEL`); without it an untrained one.

# %%
import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.beyond_paper import mask_confidence
from npmaskrcnn.boxes import boxes_to_rois
from npmaskrcnn.mask_head import mask_probs, paste_masks, project_masks_on_boxes
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

model, trained = viz.load_shipped_model()
cfg, heads = model.config, model.roi_heads

ds = ShapesDataset(100, seed=10_000, image_size=cfg.image_size)
index = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 3)
image, target = ds[index]
x, image_size = model.preprocess([image])
features = model.backbone(x)
proposals = model.rpn(features, image_size)[0]

# %% [markdown]
# ## 1. Mask targets
#
# As in training, proposals are matched to the ground truth and sampled; the positives' matched
# masks are resampled into each RoI. We take one positive *proposal* per ground-truth instance
# (not the gt box itself, so the RoI is slightly off, as it is in training).

# %%
rois, labels, _, matched = heads.sample_proposals(proposals, [target], np.random.default_rng(0))
n_gt = len(target["labels"])
pos = np.flatnonzero(labels > 0)
is_gt_box = np.array([np.any(np.all(np.isclose(rois[r, 1:], target["boxes"]), axis=1)) for r in pos])
chosen = []
for g in range(n_gt):                                      # a proposal per instance, else its gt box
    cand = [r for r, gtb in zip(pos, is_gt_box) if matched[r] == g and not gtb] or \
           [r for r in pos if matched[r] == g]
    chosen += cand[:1]
chosen = np.array(chosen[:4])
boxes, roi_labels, roi_gt = rois[chosen, 1:], labels[chosen], matched[chosen]
m = 2 * cfg.mask_pool_size
mask_targets = project_masks_on_boxes(target["masks"], boxes, roi_gt, m)
log("positive RoI boxes", boxes)
log("mask targets (P, 28, 28)", mask_targets)

# %% [markdown]
# ## 2. Predicted probabilities and 3. the paste back
#
# The predictor's output for a RoI is (K, 28, 28) logits; `mask_probs` takes the sigmoid of the
# channel of the RoI's class. `paste_masks` interpolates the 28×28 grid onto the image pixels
# inside the box and thresholds at 0.5; pixels outside the box stay 0.

# %%
mask_feats, _ = heads.pool(features[:4], boxes_to_rois([boxes]), cfg.mask_pool_size)   # (P, F, 14, 14)
mask_logits = heads.mask_predictor(heads.mask_head(mask_feats))                         # (P, K, 28, 28)
probs = mask_probs(mask_logits, roi_labels)                                             # (P, 28, 28)
pasted = paste_masks(probs, boxes, image_size, cfg.mask_threshold)   # (P, H, W)
log("pooled 14x14 features", mask_feats)
log("mask logits (P, K, 28, 28)", mask_logits)
log("mask probabilities", probs)
log("pasted masks", pasted)
gt_masks = target["masks"][roi_gt]
ious = (pasted & gt_masks).sum(axis=(1, 2)) / np.maximum((pasted | gt_masks).sum(axis=(1, 2)), 1)
target_iou = ((probs >= 0.5) & (mask_targets > 0.5)).sum(axis=(1, 2)) / np.maximum(
    ((probs >= 0.5) | (mask_targets > 0.5)).sum(axis=(1, 2)), 1)
for j in range(len(chosen)):
    print(f"RoI {chosen[j]} ({model.class_names[roi_labels[j] - 1]}): 28x28 IoU with the target "
          f"{target_iou[j]:.3f}, pasted mask IoU with the gt mask {ious[j]:.3f}")

fig, axes = plt.subplots(len(chosen), 4, figsize=(12.5, 3.2 * len(chosen)), squeeze=False)
for j in range(len(chosen)):
    name = model.class_names[roi_labels[j] - 1]
    axes[j, 0].imshow(image)
    viz.draw_boxes(axes[j, 0], boxes[j:j + 1], "yellow")
    axes[j, 0].set_title(f"RoI {chosen[j]}: a {name}", fontsize=9)
    axes[j, 1].imshow(mask_targets[j], cmap="gray", vmin=0, vmax=1)
    axes[j, 1].set_title("target: gt mask resampled, 28x28", fontsize=9)
    im = axes[j, 2].imshow(probs[j], cmap="viridis", vmin=0, vmax=1)
    axes[j, 2].contour(mask_targets[j], levels=[0.5], colors="red", linewidths=1)
    axes[j, 2].set_title(f"predicted sigmoid, '{name}' channel\n(red: target outline)", fontsize=9)
    fig.colorbar(im, ax=axes[j, 2], fraction=0.046)
    overlay = np.zeros(image.shape[:2] + (3,))
    overlay[..., 1] = pasted[j]
    overlay[..., 0] = gt_masks[j]
    axes[j, 3].imshow(overlay)
    viz.draw_boxes(axes[j, 3], boxes[j:j + 1], "white", linewidth=1)
    axes[j, 3].set_title(f"pasted (green) vs gt (red), yellow = both\nmask IoU {ious[j]:.3f}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"mask head of the {trained} model: target, prediction, paste", fontsize=12)
fig.tight_layout()
save_figure(fig, "07_targets_predictions_paste")

# %% [markdown]
# ## 4. K independent sigmoids, one channel used
#
# The mask head predicts a mask for *every* class at once. With the paper's per-class sigmoid
# loss, only the ground-truth class's channel gets a gradient during training, and at test time
# only the channel of the class the box head predicted is read. The other channels are never
# trained on this object, so nothing forces them to agree: classification and segmentation are
# decoupled. (On shapes they often look alike — the head learns "the object in the box" — but
# only one is read; the printed differences show how far they are apart.)

# %%
j = 0
if cfg.mask_loss != "sigmoid" or cfg.class_agnostic_masks:
    print(f"note: this model uses mask_loss={cfg.mask_loss!r}, class_agnostic_masks="
          f"{cfg.class_agnostic_masks}; the channels below are shown as plain sigmoids")
used_channel = 0 if cfg.class_agnostic_masks else roi_labels[j] - 1 + (cfg.mask_loss == "softmax")
all_probs = 1 / (1 + np.exp(-np.clip(mask_logits[j], -50, 50)))   # (K, 28, 28)
log(f"RoI {chosen[j]}: all K sigmoid channels", all_probs)
for k in range(len(all_probs)):
    print(f"  channel {k}: mean |p_k - p_used| = {np.abs(all_probs[k] - all_probs[used_channel]).mean():.3f}")
fig, axes = plt.subplots(1, len(all_probs), figsize=(3.4 * len(all_probs), 3.7), squeeze=False)
for k, ax in enumerate(axes[0]):
    used = k == used_channel
    ax.imshow(all_probs[k], cmap="viridis", vmin=0, vmax=1)
    name = model.class_names[k] if len(all_probs) == cfg.num_classes else f"{k}"
    ax.set_title(f"channel {k}: {name}\n" + ("USED (the RoI's class)" if used else
                                                             "ignored"),
                 fontsize=10, color="green" if used else "grey", fontweight="bold" if used else None)
    for side in ax.spines.values():
        side.set_color("green" if used else "lightgrey")
        side.set_linewidth(3 if used else 1)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"RoI {chosen[j]} (a {model.class_names[roi_labels[j] - 1]}): sigmoid of each of the "
             f"K={len(all_probs)} mask channels", fontsize=11, y=1.02)
fig.tight_layout()
save_figure(fig, "07_per_class_channels")

# %% [markdown]
# ## 5. Rescoring by mask confidence
#
# The class score says how sure the box head is that the box holds a square, say; it says
# nothing about whether the mask head could outline it. With `mask_rescore` (on in the shapes
# recipe; not in the paper) each detection's score is multiplied by its mask confidence, the mean
# probability over the cells of its own mask. A crisp mask keeps its score (confidence ~0.95);
# a detection whose mask hovers near 0.5 — a fragment of a half-hidden shape, a box on two
# objects — drops down the ranking, which is what AP rewards. Mask Scoring R-CNN (Huang et al.,
# CVPR 2019) learns a mask-IoU head for the same multiplication; this needs no training. On
# the shipped model it adds about 0.7 mask AP and 0.2 mask AP50 (500 held-out images).

# %%
image_dets = model.predict([image])[0]
det_probs = heads.predict_mask_probs(features[:4], boxes_to_rois([image_dets["boxes"]]),
                                     image_dets["labels"])                     # (D, 28, 28)
confidence = mask_confidence(det_probs, cfg.mask_threshold)
log("mask confidence of each detection", confidence)
print("   final score  mask confidence  class  (score = box-head score x mask confidence)")
for k in range(min(len(confidence), 8)):
    print(f"   {image_dets['scores'][k]:10.3f}  {confidence[k]:15.3f}  "
          f"{model.class_names[image_dets['labels'][k] - 1]}")
if len(confidence):
    order = np.argsort(-confidence)
    picks = [order[0], order[-1]] if len(order) > 1 else [order[0]]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.6 * len(picks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], picks):
        ax.imshow(det_probs[k], cmap="viridis", vmin=0, vmax=1)
        ax.contour(det_probs[k], levels=[cfg.mask_threshold], colors="red", linewidths=1)
        ax.set_title(f"{model.class_names[image_dets['labels'][k] - 1]}, score "
                     f"{image_dets['scores'][k]:.2f}\nmask confidence {confidence[k]:.3f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("most and least confident mask of one image (red: the 0.5 outline)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, "07_mask_confidence")

# %% [markdown]
# ## 6. On a real photo
#
# With a COCO model (`--model coco.npz`, torchvision's weights through `import-torchvision`) the
# mask branch runs on the detections of matplotlib's sample photo: 14×14 pooled features (from
# the photo resized to a shorter side of 800, 320 in fast mode), 4 convs of 256 channels, the
# transposed conv, and 90 channels of 28×28 logits, of which the detected class's is read. The
# paste is torchvision's (`mask_paste="torchvision"`: the 28×28 grid padded to 30×30, bilinear
# into the box in the photo's own pixels, threshold 0.5). Drawn: the best four detections, each
# with its box, its 28×28 probabilities and its pasted mask; then the detections scoring ≥ 0.5
# (the best 20 of them; the best 3 if none does) with their pasted masks. The masks are only as
# meaningful as the weights: random ones (as in this repository's tests) run the same code on
# meaningless detections.

# %%
coco = viz.load_coco_model()
if coco is not None:
    coco_model, photo = coco
    coco_heads = coco_model.roi_heads
    photo_x, photo_size = coco_model.preprocess([photo])
    photo_features = coco_model.backbone(photo_x)
    photo_props = coco_model.rpn(photo_features, photo_size)[0]
    d_boxes, d_labels, d_scores = coco_heads.detect(photo_features[:4], photo_props, [photo_size])[0]
    order = np.argsort(-d_scores, kind="stable")             # best first, as predict sorts them
    d_boxes, d_labels, d_scores = d_boxes[order], d_labels[order], d_scores[order]
    d_rois = boxes_to_rois([d_boxes])
    m = 2 * coco_model.config.mask_pool_size
    d_probs = (coco_heads.predict_mask_probs(photo_features[:4], d_rois, d_labels) if len(d_rois)
               else np.zeros((0, m, m), photo_x.dtype))      # (D, 28, 28)
    photo_pred = coco_heads.assemble_image(d_rois, d_labels, d_scores, d_probs, photo_size, 0,
                                           photo.shape[:2])
    log("photo: detections", photo_pred["boxes"])
    log("photo: 28x28 mask probs", d_probs)
    log("photo: pasted masks", photo_pred["masks"])
    coco_names = coco_model.class_names
    if len(d_scores) == 0:
        fig, ax = plt.subplots(figsize=(4.4, 5))
        viz.draw_prediction(ax, photo, photo_pred, coco_names, "no detections: no masks to draw")
        save_figure(fig, "07_photo_masks")
    else:
        n = min(4, len(d_scores))
        fig, axes = plt.subplots(n, 3, figsize=(10, 3.4 * n), squeeze=False)
        for j in range(n):
            name = coco_names[photo_pred["labels"][j] - 1]
            x1, y1, x2, y2 = photo_pred["boxes"][j]
            pad = 0.25 * max(x2 - x1, y2 - y1, 8)            # the box and some of its surroundings
            for ax in (axes[j, 0], axes[j, 2]):
                ax.imshow(photo)
                ax.set_xlim(max(x1 - pad, 0) - 0.5, min(x2 + pad, photo.shape[1]) - 0.5)
                ax.set_ylim(min(y2 + pad, photo.shape[0]) - 0.5, max(y1 - pad, 0) - 0.5)
            viz.draw_boxes(axes[j, 0], photo_pred["boxes"][j:j + 1], "yellow")
            axes[j, 0].set_title(f"detection {j}: {name} {photo_pred['scores'][j]:.2f}", fontsize=9)
            im = axes[j, 1].imshow(d_probs[j], cmap="viridis", vmin=0, vmax=1)
            axes[j, 1].set_title(f"28x28 sigmoid, '{name}' channel", fontsize=9)
            fig.colorbar(im, ax=axes[j, 1], fraction=0.046)
            overlay = np.zeros(photo.shape[:2] + (4,))
            overlay[photo_pred["masks"][j]] = (0.0, 1.0, 0.0, 0.5)
            axes[j, 2].imshow(overlay, interpolation="nearest")
            viz.draw_boxes(axes[j, 2], photo_pred["boxes"][j:j + 1], "white", linewidth=1)
            axes[j, 2].set_title(f"pasted into the photo (green), {int(photo_pred['masks'][j].sum())} px",
                                 fontsize=9)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("mask head of the COCO model on the photo: box, 28x28 probabilities, paste",
                     fontsize=11)
        fig.tight_layout()
        save_figure(fig, "07_photo_masks")
    keep = np.flatnonzero(photo_pred["scores"] >= 0.5)[:20]   # at most 20, to stay readable
    keep = keep if keep.size else np.arange(min(3, len(d_scores)))
    fig, ax = plt.subplots(figsize=(5.2, 6))
    viz.draw_prediction(ax, photo, {k: v[keep] for k, v in photo_pred.items()}, coco_names,
                        f"the best {len(keep)} of {len(d_scores)} detections, pasted masks"
                        if len(d_scores) else "no detections")
    save_figure(fig, "07_photo_pasted")

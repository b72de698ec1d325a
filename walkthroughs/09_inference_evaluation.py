# %% [markdown]
# # 09 — Inference and COCO evaluation of the shipped model
#
# `model.predict(images)` runs the whole network in eval mode: backbone, RPN proposals, box
# head, per-class NMS, mask head, paste. We run it on held-out images (a `ShapesDataset` with a
# seed the training never used) and score it as the paper does, with COCO AP. What you will see:
#
# 1. detections next to the ground truth — `evaluate.predict_dataset` (batches of `predict`);
# 2. the COCO table: box and mask AP, AP50, AP75, by size, and per class —
#    `evaluate.evaluate_predictions` (pycocotools' COCOeval) and `evaluate.format_metrics`;
# 3. precision–recall curves per class at IoU 0.5 and 0.75 — `metrics[...]["pr_curves"]`;
# 4. failure cases: the images whose instances are matched worst (lowest mask IoU);
# 5. where the mask AP50 goes: false positives by type and what each costs —
#    `evaluate.error_breakdown`;
# 6. on a real photo, with a COCO model (`--model coco.npz`): `predict` and its COCO names.
#
# The model is `data/shapes_maskrcnn.npz` (or `$NPMASKRCNN_MODEL`); without it an untrained one.

# %%
import time

import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.evaluate import (error_breakdown, evaluate_predictions, format_errors, format_metrics,
                                 predict_dataset)
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

model, trained = viz.load_shipped_model()
SHOW_SCORE = 0.5                                            # detections drawn in the pictures

# %% [markdown]
# ## 1. Detections on held-out images
#
# Seed 10 000 is never used in training (training uses `Config().seed` = 0). `predict` returns,
# per image, boxes, labels, scores and full-image boolean masks; the pictures show the
# detections scoring ≥ 0.5 (all of them, down to 0.05, are kept for the AP).

# %%
n_images = 20 if args.fast else 50
ds = ShapesDataset(n_images, seed=10_000, image_size=model.config.image_size)
start = time.perf_counter()
predictions = predict_dataset(model, ds, batch_size=8)
print(f"predicted {n_images} images in {time.perf_counter() - start:.1f} s")
log("image 0: boxes", predictions[0]["boxes"])
log("image 0: scores", predictions[0]["scores"])
log("image 0: labels", predictions[0]["labels"])
log("image 0: masks", predictions[0]["masks"])
log("detections per image", [len(p["scores"]) for p in predictions])


def shown(pred):
    """Indices of the detections drawn: score >= SHOW_SCORE (the best 3 if none reaches it)."""
    keep = np.flatnonzero(pred["scores"] >= SHOW_SCORE)
    return keep if keep.size else np.argsort(-pred["scores"])[:3]


n_show = 4 if args.fast else 6
fig, axes = plt.subplots(2, n_show, figsize=(3.2 * n_show, 7.4))
for j in range(n_show):
    image, target = ds[j]
    p, k = predictions[j], shown(predictions[j])
    viz.draw_instances(axes[0, j], image, target["boxes"], target["labels"], target["masks"],
                       title=f"image {j}: ground truth")
    viz.draw_instances(axes[1, j], image, p["boxes"][k], p["labels"][k], p["masks"][k],
                       scores=p["scores"][k], title=f"{len(k)} of {len(p['scores'])} detections"
                       + ("" if p["scores"][k].min() >= SHOW_SCORE else f" (none >= {SHOW_SCORE}: best 3)"))
axes[0, 0].set_ylabel("ground truth")
axes[1, 0].set_ylabel(f"predicted (score >= {SHOW_SCORE})")
fig.suptitle(f"the {trained} model on held-out images (ShapesDataset seed 10000)", fontsize=12)
fig.tight_layout(h_pad=2.0)                                 # room for the second row's titles
save_figure(fig, "09_detections")

# %% [markdown]
# ## 2. COCO AP
#
# AP averages the precision over recall and over IoU thresholds 0.50:0.05:0.95; AP50 and AP75
# use one threshold; APs/APm/APl split the objects by area (< 32², 32²–96², > 96² pixels).
# "bbox" matches boxes by box IoU, "segm" matches masks by mask IoU.

# %%
metrics = evaluate_predictions(predictions, ds)
print(f"COCO metrics on {n_images} held-out images (percent):")
print(format_metrics(metrics))
for t in ("bbox", "segm"):
    log(f"{t} stats (12 COCOeval numbers)", metrics[t]["stats"])

# %% [markdown]
# ## 3. Precision–recall curves
#
# COCOeval sorts a class's detections by score and walks down the list: recall grows as ground
# truth gets matched, precision falls as false positives pile up. The curves are read at 101
# recall points (`pr_curves["recall"]`); AP50 is the area under the IoU-0.5 curve. Where a
# curve stops, no detection reaches that recall (precision 0); a missing curve means no ground
# truth of that class.

# %%
curves = {t: metrics[t]["pr_curves"] for t in ("bbox", "segm")}
fig, axes = plt.subplots(2, 2, figsize=(11, 8.4), sharex=True, sharey=True)
for row, t in enumerate(("bbox", "segm")):
    recall = curves[t]["recall"]
    for col, (key, thr) in enumerate((("precision_50", 0.5), ("precision_75", 0.75))):
        ax = axes[row, col]
        for k, name in enumerate(model.class_names):
            prec = curves[t][key][name]
            if np.all(prec < 0):
                continue
            prec = np.where(prec < 0, np.nan, prec)
            ax.plot(recall, prec, color=viz.color(k), lw=2,
                    label=f"{name} (AP {np.nanmean(np.maximum(prec, 0)) * 100:.1f})")
        ax.set_title(f"{t}, IoU {thr}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        if row == 1:
            ax.set_xlabel("recall")
        if col == 0:
            ax.set_ylabel("precision")
    log(f"{t} precision at IoU 0.5 ({model.class_names[0]})", curves[t]["precision_50"][model.class_names[0]])
fig.suptitle(f"precision-recall per class ({n_images} held-out images, up to 100 detections each)",
             fontsize=12)
fig.tight_layout()
save_figure(fig, "09_pr_curves")

# %% [markdown]
# ## 4. Failure cases
#
# For every ground-truth instance: the best mask IoU with a detection of its own class scoring
# ≥ 0.5 (0 if there is none, a miss). The images with the lowest mean are drawn: what does the
# model get wrong? Typical answers: heavily occluded shapes, two touching shapes of one class
# merged, a triangle called a square.

# %%
def best_mask_iou(target, pred):
    """(M,) best mask IoU of each gt instance with a same-class detection scoring >= SHOW_SCORE."""
    gt = target["masks"].reshape(len(target["labels"]), -1).astype(np.float64)
    keep = np.flatnonzero(pred["scores"] >= SHOW_SCORE)
    if keep.size == 0:
        return np.zeros(len(gt))
    dt = pred["masks"][keep].reshape(keep.size, -1).astype(np.float64)
    inter = gt @ dt.T
    union = gt.sum(1)[:, None] + dt.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    iou[target["labels"][:, None] != pred["labels"][keep][None, :]] = 0
    return iou.max(axis=1)


per_image = [best_mask_iou(ds[i][1], predictions[i]) for i in range(n_images)]
all_ious = np.concatenate(per_image)
log("best mask IoU per gt instance", all_ious)
print(f"instances matched at mask IoU >= 0.5: {(all_ious >= 0.5).mean():.3f}, "
      f">= 0.75: {(all_ious >= 0.75).mean():.3f}")
worst = np.argsort([iou.mean() for iou in per_image])[:3 if args.fast else 4]
fig, axes = plt.subplots(2, len(worst), figsize=(3.6 * len(worst), 7.2), squeeze=False)
for j, i in enumerate(worst):
    image, target = ds[i]
    p, k = predictions[i], shown(predictions[i])
    ious = ", ".join(f"{v:.2f}" for v in per_image[i])
    viz.draw_instances(axes[0, j], image, target["boxes"], target["labels"], target["masks"],
                       title=f"image {i}: ground truth\nbest mask IoU per instance: {ious}")
    viz.draw_instances(axes[1, j], image, p["boxes"][k], p["labels"][k], p["masks"][k],
                       scores=p["scores"][k], title=f"prediction (mean IoU {per_image[i].mean():.2f})")
fig.suptitle("failure cases: the held-out images with the lowest mean mask IoU", fontsize=12)
fig.tight_layout()
save_figure(fig, "09_failure_cases")

# %% [markdown]
# ## 5. Where the AP50 goes
#
# COCOeval walks down the detections by score and matches each to an unmatched ground truth of
# its class at mask IoU >= 0.5. A detection left unmatched is a false positive, typed by its best
# IoU with any ground truth: *class* (the right place, the wrong class), *duplicate* (a second
# detection of a found object), *localization* (IoU 0.1-0.5: a fragment of a half-hidden shape,
# a mask over two shapes) or *background*. Taking out each type and scoring again shows what it
# costs; with every false positive out, what is missing from 100 is the objects never found.
# On the 500 held-out images of the README the shipped model loses most of its AP50 to
# localization and class errors, in cluttered images with shapes half hidden under others
# (`python -m npmaskrcnn evaluate --errors`).

# %%
report = error_breakdown(predictions, ds, "segm", 0.5, min_score=0.3)
print(format_errors(report))

# %% [markdown]
# ## 6. On a real photo
#
# With a COCO model (`--model coco.npz`, torchvision's weights through `import-torchvision`)
# `predict` runs on matplotlib's sample photo as it does on the shapes: one call, the photo at its
# own size in, detections in its own pixels out (the transform resizes it to a shorter side of
# 800, 320 in fast mode, and the boxes and masks are mapped back). Labels are COCO category ids;
# `model.class_names[label - 1]` is the name. Printed: of the detections scoring ≥ 0.5,
# the best 10; drawn: the best 20 (the best 3 if none reaches 0.5) with names, scores and masks.
# The names are COCO's whatever the weights: with random ones (as in this repository's tests)
# the detections mean nothing.

# %%
coco = viz.load_coco_model()
if coco is not None:
    coco_model, photo = coco
    start = time.perf_counter()
    photo_pred = coco_model.predict([photo])[0]
    print(f"predicted the photo in {time.perf_counter() - start:.1f} s: {len(photo_pred['scores'])} "
          f"detections (score > {coco_model.config.box_score_thresh})")
    log("photo: boxes", photo_pred["boxes"])
    log("photo: scores", photo_pred["scores"])
    log("photo: labels (COCO ids)", photo_pred["labels"])
    log("photo: masks", photo_pred["masks"])
    confident = viz.keep_confident(photo_pred, SHOW_SCORE)
    n_confident = len(confident["scores"])
    print(f"{n_confident} score >= {SHOW_SCORE}" + (", the best 10:" if n_confident > 10 else ":"))
    best10 = {key: v[:10] for key, v in confident.items()}
    for line in viz.describe(best10, coco_model.class_names).split("; "):
        print("  " + line)
    k = shown(photo_pred)[:20]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 6.4))
    axes[0].imshow(photo)
    axes[0].set_title(f"the photo, {photo.shape[1]} x {photo.shape[0]}", fontsize=10)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    n_photo = len(photo_pred["scores"])
    title = "no detections" if n_photo == 0 else f"the best {len(k)} of {n_photo} detections" + (
        "" if photo_pred["scores"][k].min() >= SHOW_SCORE else f" (none >= {SHOW_SCORE})")
    viz.draw_prediction(axes[1], photo, {key: v[k] for key, v in photo_pred.items()},
                        coco_model.class_names, title)
    fig.tight_layout()
    save_figure(fig, "09_photo_predictions")

# %% [markdown]
# # 06 — The box head: from proposals to detections
#
# Each proposal is pooled to a fixed 7×7 grid of FPN features, two FC layers turn it into a
# vector, and the predictor gives K+1 class scores (background first) and one box refinement per
# class. What you will see:
#
# 1. in training: the proposals (plus the ground truth) matched at IoU 0.5 and sampled, 25 %
#    positives at most — `RoIHeads.sample_proposals`;
# 2. the 7×7 pooled features of a few RoIs, each from the FPN level its size selects —
#    `RoIHeads.pool` (`roi_ops.multilevel_roi_forward`, RoIAlign);
# 3. class probabilities of the proposals — `box_head`, `box_predictor`, softmax;
# 4. the class-specific refinement: the proposal and the box decoded with its best class's deltas
#    — `BoxCoder.decode` (weights 10, 10, 5, 5);
# 5. score threshold, per-class NMS, top 100: the final detections — the steps of
#    `box_head.postprocess_detections`, checked against the paper's `MaskRCNN.predict`;
# 6. beyond the paper (`beyond_paper.py`): the shipped recipe's IoU-balanced negatives and the
#    box head's second look at its own detections, each beside the paper's way;
# 7. on a real photo, with a COCO model (`--model coco.npz`): its box head's class scores and
#    detections before and after NMS.
#
# The model is `data/shapes_maskrcnn.npz` (or `$NPMASKRCNN_MODEL`); without it an untrained one.

# %%
import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.beyond_paper import second_look
from npmaskrcnn.boxes import batched_nms, box_iou, boxes_to_rois, clip_boxes, remove_small_boxes
from npmaskrcnn.roi_heads import RoIHeads
from npmaskrcnn.roi_ops import assign_fpn_levels
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.transform import resize_boxes
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

model, trained = viz.load_shipped_model()    # the shipped recipe: the paper's network, wrapped
network = model.model                         # ... the paper's network itself (MaskRCNN)
cfg, heads = model.config, model.roi_heads
names = ("background",) + model.class_names

ds = ShapesDataset(100, seed=10_000, image_size=cfg.image_size)
index = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 3)
image, target = ds[index]
x, image_size = model.preprocess([image])
features = model.backbone(x)
proposals = model.rpn(features, image_size)[0]              # list of 1 (P, 4)
log("proposals", proposals[0])

# %% [markdown]
# ## 1. Sampling RoIs for training
#
# In training the ground-truth boxes join the proposals (so there is always a perfect positive).
# Every RoI takes the class of the ground truth it overlaps at IoU ≥ 0.5, or background, and a
# sample of `box_batch_size_per_image` = 128 RoIs with at most 25 % positives is drawn, the
# background at random. `paper_heads` below is the paper's RoIHeads with this model's config
# (sampling needs no weights); section 6 shows what the shipped recipe samples instead.

# %%
model.train()                                               # training keeps 300 proposals, not 100
train_proposals, _ = model.rpn(features, image_size, [target["boxes"]], np.random.default_rng(0))
model.eval()
model.clear_caches()
paper_heads = RoIHeads(cfg, np.random.default_rng(0))      # the paper's sampler, no extra RoIs
rois, labels, reg_targets, matched = paper_heads.sample_proposals(train_proposals, [target],
                                                                  np.random.default_rng(0))
log("sampled rois", rois)
log("sampled labels", labels)
log("box regression targets", reg_targets[labels > 0])
n_pos = int((labels > 0).sum())
n_gt = len(target["boxes"])
print(f"{len(train_proposals[0])} proposals + {n_gt} gt -> sampled {len(rois)} RoIs: "
      f"{n_pos} positive, {len(rois) - n_pos} background")

fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
for ax, sel, title in ((axes[0], labels > 0, f"positives ({n_pos}), colour of their gt"),
                       (axes[1], labels == 0, f"background RoIs ({len(rois) - n_pos})")):
    ax.imshow(image)
    cols = [viz.color(int(m)) for m in matched[sel]] if title.startswith("pos") else "red"
    viz.draw_boxes(ax, rois[sel, 1:], cols, linewidth=1.0)
    viz.draw_boxes(ax, target["boxes"], "white", linestyle="--", linewidth=2, label="ground truth")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("RoI sampling: IoU >= 0.5 with a gt box is foreground (its class), else background",
             fontsize=11, y=1.0)
fig.tight_layout()
save_figure(fig, "06_sampled_rois")

# %% [markdown]
# ## 2. 7×7 pooled features
#
# A RoI of side s goes to level k = floor(4 + log2(s / 112)) clamped to P2..P5 (FPN eq. 1 with
# the shapes preset's canonical size 112), and RoIAlign reads a 7×7 grid of bins from it. Below:
# four RoIs of different sizes and their pooled features (mean over the 64 channels, and the
# channel that varies most over these RoIs).

# %%
pos = np.flatnonzero(labels > 0)
sizes = np.sqrt((rois[pos, 3] - rois[pos, 1]) * (rois[pos, 4] - rois[pos, 2]))
pick = pos[np.argsort(sizes)[np.linspace(0, len(pos) - 1, min(4, len(pos))).astype(int)]]
pooled, _ = heads.pool(features[:4], rois[pick], cfg.box_pool_size)   # (4, F, 7, 7)
level = assign_fpn_levels(rois[pick, 1:], min(cfg.pooler_levels), max(cfg.pooler_levels),
                          cfg.canonical_size, cfg.canonical_level)
log("pooled 7x7 features", pooled)
ch = int(np.argmax(pooled.var(axis=(0, 2, 3))))
fig, axes = plt.subplots(3, len(pick), figsize=(3 * len(pick), 9), squeeze=False)
for j, r in enumerate(pick):
    axes[0, j].imshow(image)
    x1, y1, x2, y2 = rois[r, 1:]
    viz.draw_boxes(axes[0, j], rois[r:r + 1, 1:], "yellow")
    viz.draw_grid(axes[0, j], x1, y1, x2, y2, cfg.box_pool_size, cfg.box_pool_size,
                  color="yellow", linewidth=0.5, offset=-0.5)
    axes[0, j].set_title(f"RoI {r}: {x2 - x1:.0f}x{y2 - y1:.0f} px -> P{level[j]}\n"
                         f"label {names[labels[r]]}", fontsize=9)
    axes[1, j].imshow(pooled[j].mean(axis=0), cmap="viridis")
    axes[1, j].set_title("pooled, mean over channels", fontsize=9)
    axes[2, j].imshow(pooled[j, ch], cmap="viridis")
    axes[2, j].set_title(f"pooled, channel {ch}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("RoIAlign: every RoI becomes a 64 x 7 x 7 feature, whatever its size", fontsize=11)
fig.tight_layout()
save_figure(fig, "06_pooled_7x7")

# %% [markdown]
# ## 3. Class probabilities of the proposals
#
# At test time all proposals go through the head. The softmax over K+1 classes gives each one a
# background probability and one per class; most proposals are background or a duplicate.

# %%
props = proposals[0]
prop_rois = np.concatenate([np.zeros((len(props), 1), props.dtype), props], axis=1)
box_feats, _ = heads.pool(features[:4], prop_rois, cfg.box_pool_size)
class_logits, box_deltas = heads.box_predictor(heads.box_head(box_feats))


def softmax(logits):
    """Row-wise softmax (R, K+1) -> (R, K+1)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


probs = softmax(class_logits)                               # (P, K+1)
log("class logits", class_logits)
log("class probabilities", probs)
log("box deltas (P, 4(K+1))", box_deltas)
top = np.argsort(-probs[:, 1:].max(axis=1))[:12]

fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1, 1.1]})
axes[0].imshow(image)
viz.draw_boxes(axes[0], props[top], [viz.color(i) for i in range(len(top))], linewidth=1.2,
               captions=[str(i) for i in range(len(top))])
axes[0].set_title("the 12 proposals with the highest class score")
axes[0].set_xticks([])
axes[0].set_yticks([])
im = axes[1].imshow(probs[top], cmap="Blues", vmin=0, vmax=1, aspect="auto")
for a in range(len(top)):
    for c in range(probs.shape[1]):
        axes[1].text(c, a, f"{probs[top[a], c]:.2f}", ha="center", va="center", fontsize=8,
                     color="white" if probs[top[a], c] > 0.6 else "black")
axes[1].set_xticks(range(len(names)), names)
axes[1].set_yticks(range(len(top)), [f"proposal {i}" for i in range(len(top))])
axes[1].set_xlabel("class")
axes[1].set_title("softmax class probabilities")
fig.colorbar(im, ax=axes[1], fraction=0.04)
fig.tight_layout()
save_figure(fig, "06_class_probabilities")

# %% [markdown]
# ## 4. Class-specific box refinement
#
# The predictor outputs 4 deltas per class; a proposal is refined with the deltas of the class
# being scored. Dashed: the proposal; solid: the refined box for its best class; white: the
# ground truth. The IoU with the ground truth before → after is in each caption.

# %%
boxes_all = heads.box_coder.decode(box_deltas, props).reshape(len(props), -1, 4)
boxes_all = clip_boxes(boxes_all.reshape(-1, 4), image_size).reshape(boxes_all.shape)
best_class = probs[:, 1:].argmax(axis=1) + 1
refined = boxes_all[np.arange(len(props)), best_class]
log("refined boxes (best class)", refined)
show = top[:6]
iou_before = box_iou(props[show], target["boxes"]).max(axis=1)
iou_after = box_iou(refined[show], target["boxes"]).max(axis=1)
print("IoU with the best gt, proposal -> refined:",
      ", ".join(f"{a:.2f}->{b:.2f}" for a, b in zip(iou_before, iou_after)))

fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.6))
for j, ax in enumerate(axes.flat):
    if j >= len(show):
        ax.axis("off")
        continue
    i = show[j]
    ax.imshow(image)
    viz.draw_boxes(ax, target["boxes"], "white", linewidth=1, label="ground truth")
    viz.draw_boxes(ax, props[i:i + 1], "red", linestyle="--", label="proposal")
    viz.draw_boxes(ax, refined[i:i + 1], "lime", label="refined")
    ax.set_title(f"{names[best_class[i]]} {probs[i, best_class[i]]:.2f}: "
                 f"IoU {iou_before[j]:.2f} -> {iou_after[j]:.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
axes.flat[0].legend(fontsize=7, loc="lower left")
fig.suptitle("proposal (dashed) vs class-specific refined box (solid)", fontsize=11)
fig.tight_layout()
save_figure(fig, "06_box_refinement")

# %% [markdown]
# ## 5. Score threshold, per-class NMS, final detections
#
# Every (proposal, class) pair is a candidate: P × K boxes. Keep those scoring above
# `box_score_thresh` = 0.05, drop empty boxes, run NMS at IoU 0.5 separately for each class,
# keep the top 100. The paper's `MaskRCNN.predict` does exactly this, then runs the mask head on
# the detections (walkthrough 07): the assert below checks it, box for box.

# %%
def final_detections(probs, boxes_all, cfg):
    """Candidates (proposal, class) scoring > box_score_thresh, then per-class NMS, top 100.

    probs (P, K+1), boxes_all (P, K+1, 4). Returns (candidate boxes, their labels, detected
    boxes, their scores, their labels)."""
    cand_boxes = boxes_all[:, 1:].reshape(-1, 4)
    cand_scores = probs[:, 1:].reshape(-1)
    cand_labels = np.tile(np.arange(1, cfg.num_classes + 1), len(probs))
    keep = np.flatnonzero(cand_scores > cfg.box_score_thresh)
    b, s, lab = cand_boxes[keep], cand_scores[keep], cand_labels[keep]
    keep = remove_small_boxes(b, 1e-2)
    b, s, lab = b[keep], s[keep], lab[keep]
    keep = batched_nms(b, s, lab, cfg.box_nms_thresh)[:cfg.detections_per_img]
    log("final boxes", b[keep])
    log("final scores", s[keep])
    print(f"{len(cand_boxes)} (proposal, class) candidates -> score > {cfg.box_score_thresh}: "
          f"{len(b)} -> after per-class NMS: {len(keep)}")
    return b, lab, b[keep], s[keep], lab[keep]


def draw_final_detections(image, cand_boxes, cand_labels, det_boxes, det_scores, det_labels,
                          det_masks, class_names, score_thresh):
    """Three panels: the candidates (colour = class), the detections after NMS, and those scoring
    >= 0.5 (at most 20; the best 3 if none does) with their masks."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    axes[0].imshow(image)
    viz.draw_boxes(axes[0], cand_boxes, [viz.color(int(v) - 1) for v in cand_labels], linewidth=0.8)
    axes[0].set_title(f"{len(cand_boxes)} candidates scoring > {score_thresh}\n(colour = class)")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    strong = det_scores >= 0.5
    shown = f"the {int(strong.sum())} scoring >= 0.5"
    if strong.sum() > 20:                                   # the best 20, to stay readable
        shown = f"the best 20 of {int(strong.sum())} scoring >= 0.5"
        strong &= np.arange(len(det_scores)) < 20
    if len(det_scores) == 0:
        shown = "no detections"
    elif strong.sum() == 0:                                 # a weak model: show its best 3
        strong = np.arange(len(det_scores)) < 3
        shown = f"none scores >= 0.5: the best {int(strong.sum())}"
    viz.draw_instances(axes[1], image, det_boxes, det_labels, scores=det_scores,
                       class_names=class_names, title=f"after per-class NMS: {len(det_boxes)} detections")
    viz.draw_instances(axes[2], image, det_boxes[strong], det_labels[strong], det_masks[strong],
                       scores=det_scores[strong], class_names=class_names,
                       title=f"{shown}, with their masks" if len(det_scores) else shown)
    fig.tight_layout()
    return fig


b, lab, det_boxes, det_scores, det_labels = final_detections(probs, boxes_all, cfg)
paper_pred = network.predict([image])[0]                    # the paper's path, in eval mode
assert np.array_equal(paper_pred["boxes"], det_boxes.astype(np.float32)) and np.array_equal(
    paper_pred["labels"], det_labels), "step-by-step detections differ from MaskRCNN.predict"
pred = paper_pred
save_figure(draw_final_detections(image, b, lab, det_boxes, det_scores, det_labels, pred["masks"],
                                  model.class_names, cfg.box_score_thresh), "06_final_detections")

# %% [markdown]
# ## 6. Beyond the paper: what the shipped recipe changes here
#
# Two additions of the shipped recipe act on the box branch (`beyond_paper.py`; their measured
# effects are in docs/results.md):
#
# - **IoU-balanced negatives** (Libra R-CNN, Pang et al. 2019), through the RoI heads' `sampler`
#   seam. Most proposals are plain background (IoU ~0 with every object), so the rare ones that
#   cover *part* of an object — the hard negatives, what a fragment of a half-hidden shape looks
#   like — seldom make it into a randomly drawn batch. With `box_neg_iou_bins` = 3 the range
#   [0, 0.5) is cut into 3 IoU bins and each bin supplies a third of the negatives. The recipe
#   also adds `box_jitter_per_gt` jittered copies of each ground-truth box as extra candidates.
# - **A second look of the box head** (`box_refine`): at test time the head pools its own
#   detections again — they sit closer to the objects than the proposals did — and the two box
#   estimates and the two probabilities of the detected class are averaged ("iterative box
#   regression"; Cascade R-CNN averages its stages' class scores the same way).

# %%
recipe_rois, recipe_labels, _, _ = heads.sample_proposals(train_proposals, [target], np.random.default_rng(0))


def negative_iou_counts(sampled_rois, sampled_labels):
    """How many sampled negatives fall in IoU [0, 1/6), [1/6, 1/3), [1/3, 1/2) with a gt box."""
    iou = box_iou(target["boxes"], sampled_rois[sampled_labels == 0, 1:]).max(axis=0)
    return np.histogram(iou, bins=[0, 1 / 6, 1 / 3, 0.5])[0]


print(f"{'negatives by IoU with their nearest object':<44}"
      f"{'[0, 1/6)':>10}{'[1/6, 1/3)':>12}{'[1/3, 1/2)':>12}")
for name, counts in (("random (paper)", negative_iou_counts(rois, labels)),
                     (f"IoU-balanced, {cfg.box_neg_iou_bins} bins (recipe)",
                      negative_iou_counts(recipe_rois, recipe_labels))):
    print(f"  {name:<42}{counts[0]:>10}{counts[1]:>12}{counts[2]:>12}")
print(f"positives: {int((labels > 0).sum())} (paper) vs {int((recipe_labels > 0).sum())} "
      f"(recipe, with {cfg.box_jitter_per_gt} jittered copies of each gt box)")

if len(det_boxes):
    again, again_probs = second_look(heads, features[:4], boxes_to_rois([det_boxes]), det_labels,
                                     image_size)
    moved = np.abs(again - det_boxes).max(axis=1)
    print(f"second look: the box head moves its own boxes by {np.median(moved):.2f} px (median "
          f"of the largest side shift); final box = average of both looks")
    log("second-look probability of the detected class", again_probs)

# %% [markdown]
# ## 7. On a real photo
#
# With a COCO model (`--model coco.npz`, torchvision's weights through `import-torchvision`) the
# same steps run on matplotlib's sample photo: its 1000 proposals are pooled (unaligned RoIAlign,
# s0 = 224), go through two FC layers of 1024, and the predictor scores 90 COCO classes plus
# background. Printed: the best classes of the proposals the head is surest of; drawn, in the
# photo's own pixels: the candidates, the detections after per-class NMS, and those scoring
# >= 0.5 (the best 20 of them) with their masks (the mask branch of walkthrough 07). The class
# names are COCO's; they mean something only with trained COCO weights (with random ones, as in
# this repository's tests, the same code runs and its detections are noise).

# %%
coco = viz.load_coco_model()
if coco is not None:
    coco_model, photo = coco
    coco_cfg, coco_heads = coco_model.config, coco_model.roi_heads
    photo_x, photo_size = coco_model.preprocess([photo])
    photo_features = coco_model.backbone(photo_x)
    photo_props = coco_model.rpn(photo_features, photo_size)[0]
    photo_rois = boxes_to_rois(photo_props)
    photo_logits, photo_deltas = coco_heads.box_predictor(coco_heads.box_head(
        coco_heads.pool(photo_features[:4], photo_rois, coco_cfg.box_pool_size)[0]))
    photo_probs = softmax(photo_logits)                     # (P, 91)
    log("photo: proposals", photo_props[0])
    log("photo: class probabilities", photo_probs)
    photo_all = coco_heads.box_coder.decode(photo_deltas, photo_props[0])
    photo_all = clip_boxes(photo_all.reshape(-1, 4), photo_size).reshape(len(photo_props[0]), -1, 4)
    coco_names = ("background",) + coco_model.class_names
    for r in np.argsort(-photo_probs[:, 1:].max(axis=1))[:5]:
        best = np.argsort(-photo_probs[r])[:3]
        print(f"  proposal {r}: " + ", ".join(f"{coco_names[c]} {photo_probs[r, c]:.2f}" for c in best))
    cb, cl, db, ds_, dl = final_detections(photo_probs, photo_all, coco_cfg)
    photo_pred = coco_heads.predict(photo_features[:4], photo_props, [photo_size], [photo.shape[:2]])[0]
    back = [resize_boxes(v, photo_size, photo.shape[:2]) for v in (cb, db)]      # photo pixels
    assert np.allclose(photo_pred["boxes"], back[1], atol=1e-3), "differs from RoIHeads.predict"
    save_figure(draw_final_detections(photo, back[0], cl, back[1], ds_, dl, photo_pred["masks"],
                                      coco_model.class_names, coco_cfg.box_score_thresh),
                "06_photo_detections")

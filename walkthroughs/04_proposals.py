# %% [markdown]
# # 04 — Region proposals from the trained RPN
#
# The RPN head slides over P2..P6 and gives, for each of the 3 anchors at every location, an
# objectness logit and 4 deltas. Proposals are the best-scoring anchors, moved by their deltas,
# with duplicates removed by NMS. What you will see:
#
# 1. objectness heat maps of each level (sigmoid, max over the 3 anchors) — `model.rpn.head`,
#    `rpn.flatten_head_outputs`;
# 2. the top-scoring decoded boxes before NMS and the proposals after it, with the counts at
#    each step — the steps of `RPN.propose` (top-k per level, `BoxCoder.decode`, `clip_boxes`,
#    `remove_small_boxes`, `batched_nms` per level);
# 3. recall: the fraction of ground-truth boxes that some proposal overlaps at IoU ≥ 0.5 / 0.7,
#    against the number of proposals kept — `box_iou` over held-out images;
# 4. on a real photo, with a COCO model (`--model coco.npz`): objectness and proposals of
#    ResNet-50 + FPN.
#
# The model is `data/shapes_maskrcnn.npz` (or `$NPMASKRCNN_MODEL`); without it an untrained one.

# %%
import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.boxes import batched_nms, box_iou, clip_boxes, remove_small_boxes
from npmaskrcnn.rpn import flatten_head_outputs
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.transform import resize_boxes
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

model, trained = viz.load_shipped_model()
cfg, rpn = model.config, model.rpn
print(f"{trained} model; test-time RPN: top {cfg.rpn_pre_nms_top_n_test} per level before NMS "
      f"(IoU {cfg.rpn_nms_thresh}), {cfg.rpn_post_nms_top_n_test} proposals kept per image")

# %% [markdown]
# ## 1. Objectness per level
#
# Each level's head output is (1, 3, H, W) logits; the map below is the sigmoid of the best of
# the 3 anchors at each location, over the image (ground truth dashed). Each shape lights up the
# level whose anchor size matches it; levels without shapes of their size stay dark.

# %%
def rpn_outputs(model, features):
    """The RPN head on every level, flattened: objectness (T,) logits, deltas (T, 4), each level's
    (h, w), the anchors (T, 4) and the number of anchors of each level."""
    logits_l, deltas_l, shapes = [], [], []
    for k, p in enumerate(features):
        logits, deltas = model.rpn.head(p)                 # (1, A, H, W), (1, 4A, H, W)
        log(f"P{k + 2} objectness logits", logits)
        fl, fd = flatten_head_outputs(logits, deltas)
        logits_l.append(fl[0])
        deltas_l.append(fd[0])
        shapes.append(logits.shape[2:])
    anchors_per_level = model.rpn.anchors(shapes)
    return (np.concatenate(logits_l), np.concatenate(deltas_l), shapes,
            np.concatenate(anchors_per_level), [a.shape[0] for a in anchors_per_level])


def draw_objectness(axes, image, objectness, shapes, counts, padded_size, image_size, anchor_sizes,
                    gt_boxes=None):
    """One panel per level: the sigmoid of the best of the anchors at each location over `image`.

    padded_size: the network input's (Hp, Wp); image_size: the (h, w) it was resized to (the
    maps are stretched from that frame onto `image`'s pixels). Returns the last colour image."""
    sy, sx = image.shape[0] / image_size[0], image.shape[1] / image_size[1]
    start = 0
    for k, ax in enumerate(axes):
        h, w = shapes[k]
        prob = 1 / (1 + np.exp(-objectness[start:start + counts[k]].reshape(h, w, -1).max(axis=2)))
        start += counts[k]
        ax.imshow(image)
        im = ax.imshow(prob, cmap="inferno", vmin=0, vmax=1, alpha=0.75, interpolation="nearest",
                       extent=(-0.5, padded_size[1] * sx - 0.5, padded_size[0] * sy - 0.5, -0.5))
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        if gt_boxes is not None:
            viz.draw_boxes(ax, gt_boxes, "white", linestyle="--", linewidth=1)
        ax.set_title(f"P{k + 2} ({h}x{w}, stride {padded_size[1] // w}, anchor {anchor_sizes[k]})\n"
                     f"max objectness {prob.max():.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return im


ds = ShapesDataset(100, seed=10_000, image_size=cfg.image_size)
index = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 3)
image, target = ds[index]
x, image_size = model.preprocess([image])
features = model.backbone(x)
objectness, rpn_deltas, shapes, anchors, counts = rpn_outputs(model, features)
log("objectness (all anchors)", objectness)
log("rpn deltas (all anchors)", rpn_deltas)

fig, axes = plt.subplots(1, 6, figsize=(19, 3.6))
viz.draw_instances(axes[0], image, target["boxes"], target["labels"], target["masks"],
                   title=f"held-out image {index}")
im = draw_objectness(axes[1:], image, objectness, shapes, counts, x.shape[2:], image_size,
                     cfg.anchor_sizes, target["boxes"])
fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.015, pad=0.01, label="sigmoid(objectness)")
save_figure(fig, "04_objectness_per_level")

# %% [markdown]
# ## 2. Before and after NMS
#
# `RPN.propose`, step by step: keep the `rpn_pre_nms_top_n_test` best anchors of each level,
# decode their deltas, clip to the image, drop boxes under 1 px, then NMS (IoU 0.7) *within each
# level* and keep the best `rpn_post_nms_top_n_test` overall. Many anchors near one shape decode
# to almost the same box; NMS keeps one of each cluster.

# %%
def proposals_step_by_step(rpn, objectness, rpn_deltas, anchors, counts, image_size):
    """`RPN.propose` one step at a time: (boxes before NMS, their scores, proposals after NMS)."""
    c = rpn.cfg
    idx, level, start = [], [], 0
    for k, n_level in enumerate(counts):
        n = min(c.rpn_pre_nms_top_n_test, n_level)
        idx.append(start + np.argsort(-objectness[start:start + n_level])[:n])
        level.append(np.full(n, k))
        start += n_level
    idx, level = np.concatenate(idx), np.concatenate(level)
    pre_boxes = clip_boxes(rpn.box_coder.decode(rpn_deltas[idx], anchors[idx]), image_size)
    pre_scores = objectness[idx]
    keep = remove_small_boxes(pre_boxes, c.rpn_min_size)
    pre_boxes, pre_scores, level = pre_boxes[keep], pre_scores[keep], level[keep]
    keep = batched_nms(pre_boxes, pre_scores, level, c.rpn_nms_thresh)
    post_boxes = pre_boxes[keep][:c.rpn_post_nms_top_n_test]
    log("boxes before NMS", pre_boxes)
    log("proposals after NMS", post_boxes)
    print(f"anchors {anchors.shape[0]} -> top-k per level {idx.size} -> not tiny {len(pre_boxes)} "
          f"-> after NMS {len(keep)} -> kept {len(post_boxes)}")
    return pre_boxes, pre_scores, post_boxes


def draw_before_after(image, pre_boxes, pre_scores, post_boxes, nms_thresh, gt_boxes=None, n_show=20):
    """Two panels: the n_show best boxes before NMS and the first n_show proposals after it."""
    order = np.argsort(-pre_scores)[:n_show]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    for ax, boxes, title in ((axes[0], pre_boxes[order], f"top {n_show} decoded boxes BEFORE NMS"),
                             (axes[1], post_boxes[:n_show], f"top {n_show} proposals AFTER NMS")):
        ax.imshow(image)
        viz.draw_boxes(ax, boxes, [viz.color(i) for i in range(len(boxes))], linewidth=1.2)
        if gt_boxes is not None:
            viz.draw_boxes(ax, gt_boxes, "white", linestyle="--", linewidth=2, label="ground truth")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{len(pre_boxes)} boxes before NMS, {len(post_boxes)} proposals after "
                 f"(NMS at IoU {nms_thresh} per level)", fontsize=12, y=1.02)
    fig.tight_layout()
    return fig


pre_boxes, pre_scores, post_boxes = proposals_step_by_step(rpn, objectness, rpn_deltas, anchors,
                                                           counts, image_size)
proposals = rpn.propose(objectness, rpn_deltas, anchors, counts, image_size)
assert np.allclose(post_boxes, proposals), "the step-by-step proposals differ from RPN.propose"
save_figure(draw_before_after(image, pre_boxes, pre_scores, post_boxes, cfg.rpn_nms_thresh,
                              target["boxes"]), "04_before_after_nms")

# %% [markdown]
# ## 3. Recall of the ground truth
#
# A detection can only be as good as the proposal it starts from. For each held-out image we
# take the first n proposals (they are sorted by objectness) and ask which ground-truth boxes
# have a proposal at IoU ≥ 0.5 (enough for the box head to call it foreground) or ≥ 0.7.

# %%
n_images = 10 if args.fast else 50
ns = np.array([1, 2, 5, 10, 20, 50, cfg.rpn_post_nms_top_n_test])
best = []                                                   # per gt box: best IoU with the first n
for i in range(n_images):
    im, tgt = ds[i]
    feats = model.backbone(model.preprocess([im])[0])
    props = rpn(feats, image_size)[0][0]
    iou = box_iou(tgt["boxes"], props)                      # (M, P)
    best.append(np.stack([iou[:, :n].max(axis=1, initial=0.0) for n in ns], axis=1))
best = np.concatenate(best)                                 # (all gt, len(ns))
log("best IoU per gt box", best[:, -1])
recall50, recall70 = (best >= 0.5).mean(axis=0), (best >= 0.7).mean(axis=0)
for n, r5, r7 in zip(ns, recall50, recall70):
    print(f"first {n:>3} proposals: recall@0.5 {r5:.3f}  recall@0.7 {r7:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(ns, recall50, "o-", label="IoU >= 0.5")
axes[0].plot(ns, recall70, "s-", label="IoU >= 0.7")
axes[0].set_xscale("log")
axes[0].set_xticks(ns, [str(n) for n in ns])
axes[0].set_ylim(0, 1.02)
axes[0].set_xlabel("proposals kept per image (best first)")
axes[0].set_ylabel("recall of ground-truth boxes")
axes[0].set_title(f"proposal recall ({len(best)} boxes, {n_images} images)")
axes[0].legend()
axes[0].grid(alpha=0.3)
axes[1].hist(best[:, -1], bins=np.linspace(0, 1, 21), color="grey")
for t in (0.5, 0.7):
    axes[1].axvline(t, color="red", linestyle="--")
axes[1].set_xlabel(f"best IoU with any of the {ns[-1]} proposals")
axes[1].set_ylabel("ground-truth boxes")
axes[1].set_title("how well each ground-truth box is covered")
fig.tight_layout()
save_figure(fig, "04_recall")

# %% [markdown]
# ## 4. On a real photo
#
# With a COCO model (`--model coco.npz`, torchvision's weights through `import-torchvision`) the
# same steps run on matplotlib's sample photo, resized to a shorter side of 800 (320 in fast
# mode). torchvision's RPN keeps 1000 boxes per level before NMS and 1000 proposals per image,
# from anchors of 32..512 pixels (of the resized image). The maps and boxes are drawn back on the
# photo's own pixels. They show what the weights score: with trained COCO weights, objects of the
# photo; with random ones (as in this repository's tests) the same code runs and draws noise.

# %%
coco = viz.load_coco_model()
if coco is not None:
    coco_model, photo = coco
    photo_x, photo_size = coco_model.preprocess([photo])
    photo_features = coco_model.backbone(photo_x)
    photo_obj, photo_deltas, photo_shapes, photo_anchors, photo_counts = rpn_outputs(coco_model,
                                                                                   photo_features)
    fig, axes = plt.subplots(1, 6, figsize=(19, 4.2))
    axes[0].imshow(photo)
    axes[0].set_title(f"the photo, {photo.shape[1]} x {photo.shape[0]}\n(network input "
                      f"{photo_size[1]} x {photo_size[0]})", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    im = draw_objectness(axes[1:], photo, photo_obj, photo_shapes, photo_counts, photo_x.shape[2:],
                         photo_size, coco_model.config.anchor_sizes)
    fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.015, pad=0.01, label="sigmoid(objectness)")
    save_figure(fig, "04_photo_objectness")

    pre, pre_s, post = proposals_step_by_step(coco_model.rpn, photo_obj, photo_deltas,
                                              photo_anchors, photo_counts, photo_size)
    assert np.allclose(post, coco_model.rpn.propose(photo_obj, photo_deltas, photo_anchors,
                                                    photo_counts, photo_size))
    back = [resize_boxes(b, photo_size, photo.shape[:2]) for b in (pre, post)]   # photo pixels
    save_figure(draw_before_after(photo, back[0], pre_s, back[1], coco_model.config.rpn_nms_thresh),
                "04_photo_proposals")

# %% [markdown]
# # 03 — Anchors and the RPN's training targets
#
# The RPN does not predict boxes from nothing: it scores and nudges a fixed set of **anchors**,
# 3 per location on every FPN level (one size per level, ratios h/w = 0.5, 1, 2). Training tells
# each anchor what it should have said. What you will see:
#
# 1. the anchors of each level: their centres (one per feature cell) and the 3 shapes at one
#    location — `AnchorGenerator.grid_anchors`, `cell_anchors`;
# 2. IoU matching for one image: positives (IoU ≥ 0.7, or the best anchor of a ground-truth box),
#    negatives (IoU < 0.3) and ignored anchors, counted per level and drawn — `RPN.assign_targets`
#    (a `Matcher` over `box_iou`);
# 3. the balanced sample of 256 anchors (at most half positive) that the loss sees —
#    `BalancedPositiveNegativeSampler`;
# 4. the regression targets (dx, dy, dw, dh) of a few positives, decoded back onto the ground
#    truth: a round trip — `BoxCoder.encode` / `decode`.
#
# No trained weights are needed here: targets depend only on the anchors and the ground truth.

# %%
import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.boxes import box_iou
from npmaskrcnn.config import Config
from npmaskrcnn.rpn import RPN, STRIDES
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.viz import log, save_figure

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

cfg = Config()
rpn = RPN(cfg, np.random.default_rng(0))
size = cfg.image_size
feature_shapes = [(size // s, size // s) for s in STRIDES]
anchors_per_level = rpn.anchors(feature_shapes)
counts = [a.shape[0] for a in anchors_per_level]
anchors = np.concatenate(anchors_per_level)
level_of = np.repeat(np.arange(5), counts)                  # level index (0 = P2) of each anchor
for k, a in enumerate(anchors_per_level):
    log(f"anchors P{k + 2} ({feature_shapes[k][0]}x{feature_shapes[k][1]}x3)", a)
log("anchors (all levels)", anchors)

# %% [markdown]
# ## 1. Anchors of every level
#
# Level P_k has stride s = 2^k: one location per s×s pixels, centred at ((x + ½)s, (y + ½)s).
# Its 3 anchors share one area (size², sizes `cfg.anchor_sizes` = 8, 16, 32, 64, 128 for
# 128×128 images) and differ in shape. Anchors may stick out of the image; they are kept.

# %%
ds = ShapesDataset(30, seed=3, image_size=size)
n_pos = [int((rpn.assign_targets(anchors, ds[i][1]["boxes"])[0] == 1).sum())
         if len(ds[i][1]["labels"]) >= 3 else -1 for i in range(len(ds))]
index = int(np.argmax(n_pos))                               # 3+ shapes, many positive anchors
image, target = ds[index]
gt = target["boxes"]
log("gt boxes", gt)

fig, axes = plt.subplots(1, 5, figsize=(18, 4.2))
for k, ax in enumerate(axes):
    ax.imshow(image, alpha=0.5)
    a = anchors_per_level[k]
    centres = (a[:, :2] + a[:, 2:]) / 2
    ax.plot(centres[::3, 0] - 0.5, centres[::3, 1] - 0.5, ".", color="black",
            markersize=max(1.0, 6 - 1.2 * (5 - k)), label="anchor centres")
    h, w = feature_shapes[k]
    mid = ((h // 2) * w + w // 2) * 3                       # first anchor of the central cell
    for j, ratio in enumerate(cfg.anchor_ratios):
        viz.draw_boxes(ax, a[mid + j:mid + j + 1], viz.color(j), linewidth=2,
                       label=f"h/w = {ratio:g}")
    ax.set_xlim(-70, size + 70)
    ax.set_ylim(size + 70, -70)
    ax.set_title(f"P{k + 2}: stride {STRIDES[k]}, size {cfg.anchor_sizes[k]}\n"
                 f"{h}x{w} locations x 3 = {counts[k]} anchors", fontsize=10)
    ax.set_xlabel("x (px)")
axes[0].set_ylabel("y (px)")
axes[0].legend(fontsize=7, loc="lower left")
fig.suptitle(f"anchors per FPN level ({anchors.shape[0]} in all); the grey square is the image",
             fontsize=12)
fig.tight_layout()
save_figure(fig, "03_anchors_per_level")

# %% [markdown]
# ## 2. IoU matching: positive, negative, ignored
#
# `box_iou(gt, anchors)` gives an (M, T) matrix. The `Matcher` takes each anchor's best ground
# truth: IoU ≥ 0.7 → positive, < 0.3 → negative, in between → ignored (label −1, no loss). Then
# the *low-quality matches*: each ground-truth box's best anchor(s) become positive whatever
# their IoU, so a small or oddly shaped object still gets an anchor (Faster R-CNN §3.1.2).
# With one anchor size per level, doubling from level to level, few shapes reach IoU 0.7 with
# any anchor: on these images most positives are such low-quality matches (counted below).

# %%
iou = box_iou(gt, anchors)                                  # (M, T)
labels, reg_targets = rpn.assign_targets(anchors, gt)
log("iou (gt x anchors)", iou)
log("rpn labels (1/0/-1)", labels)
log("regression targets", reg_targets[labels == 1])
best_iou = iou.max(axis=0)
low_quality = (labels == 1) & (best_iou < cfg.rpn_fg_iou)
print(f"{'level':<6}{'positive':>10}{'ignored':>10}{'negative':>10}  (low-quality positives)")
for k in range(5):
    sel = level_of == k
    print(f"P{k + 2:<5}{int((labels[sel] == 1).sum()):>10}{int((labels[sel] == -1).sum()):>10}"
          f"{int((labels[sel] == 0).sum()):>10}  ({int(low_quality[sel].sum())})")
print(f"{'all':<6}{int((labels == 1).sum()):>10}{int((labels == -1).sum()):>10}{int((labels == 0).sum()):>10}")

fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1, 1, 1.1]})
viz.draw_instances(axes[0], image, gt, target["labels"], target["masks"], title="ground truth")
axes[1].imshow(image, alpha=0.6)
ign = np.flatnonzero(labels == -1)
viz.draw_boxes(axes[1], anchors[ign], "orange", linestyle="--", linewidth=0.8,
               label=f"ignored, 0.3 <= IoU < 0.7 ({ign.size})")
pos = np.flatnonzero(labels == 1)
viz.draw_boxes(axes[1], anchors[pos], [viz.color(int(iou[:, i].argmax())) for i in pos],
               linewidth=1.5)
axes[1].plot([], [], color="grey", lw=1.5, label=f"positive ({pos.size}), colour of its gt")
axes[1].set_xlim(-0.5, size - 0.5)
axes[1].set_ylim(size - 0.5, -0.5)
axes[1].legend(fontsize=8, loc="lower right")
axes[1].set_title("positive and ignored anchors")
axes[1].set_xticks([])
axes[1].set_yticks([])
x = np.arange(5)
for j, (name, val, col) in enumerate((("positive", 1, "tab:green"), ("ignored", -1, "orange"),
                                     ("negative", 0, "grey"))):
    n = [int((labels[level_of == k] == val).sum()) for k in range(5)]
    bars = axes[2].bar(x + (j - 1) * 0.27, n, width=0.27, color=col, label=name)
    axes[2].bar_label(bars, fontsize=7)
axes[2].set_yscale("log")
axes[2].set_xticks(x, [f"P{k + 2}" for k in range(5)])
axes[2].set_xlabel("FPN level")
axes[2].set_ylabel("anchors (log scale)")
axes[2].set_title("anchor labels per level")
axes[2].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "03_matching")

# %% [markdown]
# ## 3. The balanced sample of 256
#
# Almost every anchor is a negative. The loss therefore sees a sample per image: up to 128
# positives (here there are fewer, so all are taken) and negatives to fill 256. The objectness
# BCE averages over these 256; the box loss uses the positives only.

# %%
sampler = rpn.sampler
pos_mask, neg_mask = sampler([labels], np.random.default_rng(0))
pos_mask, neg_mask = pos_mask[0], neg_mask[0]
log("sampled positives (bool)", pos_mask)
log("sampled negatives (bool)", neg_mask)
print(f"sampled {int(pos_mask.sum())} positives + {int(neg_mask.sum())} negatives = "
      f"{int((pos_mask | neg_mask).sum())} (budget {sampler.batch_size_per_image}, "
      f"at most {int(sampler.batch_size_per_image * sampler.positive_fraction)} positive)")
print("sampled negatives per level:", [int(neg_mask[level_of == k].sum()) for k in range(5)])

fig, ax = plt.subplots(figsize=(6.5, 6.5))
ax.imshow(image, alpha=0.6)
neg_centres = (anchors[neg_mask, :2] + anchors[neg_mask, 2:]) / 2
for k in range(5):
    sel = level_of[neg_mask] == k
    ax.plot(neg_centres[sel, 0] - 0.5, neg_centres[sel, 1] - 0.5, "x", color=viz.color(k),
            markersize=3 + k, label=f"negative on P{k + 2} ({int(sel.sum())}), centre")
viz.draw_boxes(ax, anchors[pos_mask], "tab:green", linewidth=1.5,
               label=f"positive ({int(pos_mask.sum())})")
ax.set_xlim(-0.5, size - 0.5)
ax.set_ylim(size - 0.5, -0.5)
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
ax.set_title("the sample of 256 anchors the RPN loss sees")
save_figure(fig, "03_balanced_sample")

# %% [markdown]
# ## 4. Regression targets and the round trip
#
# A positive anchor (centre x_a, y_a, size w_a, h_a) learns to move onto its ground truth:
# dx = (x − x_a)/w_a, dy = (y − y_a)/h_a, dw = log(w/w_a), dh = log(h/h_a) (RPN weights 1).
# Decoding the target from the anchor must give the ground-truth box back.

# %%
rng = np.random.default_rng(1)
show = rng.choice(pos, size=min(4, pos.size), replace=False)
matched = iou[:, show].argmax(axis=0)
decoded = rpn.box_coder.decode(reg_targets[show], anchors[show])
log("chosen positives' targets", reg_targets[show])
log("decoded boxes", decoded)
err = float(np.abs(decoded - gt[matched]).max())
print(f"max |decode(encode(gt, anchor), anchor) - gt| = {err:.2e} px")
assert err < 1e-3, "the box coder does not round-trip"

fig, axes = plt.subplots(1, len(show), figsize=(4.2 * len(show), 4.6), squeeze=False)
for ax, i, m, d in zip(axes[0], show, matched, decoded):
    ax.imshow(image)
    viz.draw_boxes(ax, anchors[i:i + 1], "white", linestyle="--", label="anchor")
    viz.draw_boxes(ax, gt[m:m + 1], "lime", linewidth=3, label="ground truth")
    viz.draw_boxes(ax, d[None], "magenta", linestyle=":", linewidth=2.5,
                   label="decode(target, anchor)")
    dx, dy, dw, dh = reg_targets[i]
    ax.set_title(f"P{level_of[i] + 2} anchor, IoU {iou[m, i]:.2f}\n"
                 f"dx {dx:+.2f} dy {dy:+.2f} dw {dw:+.2f} dh {dh:+.2f}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].legend(fontsize=7, loc="lower left")
fig.suptitle("regression targets of 4 positives, decoded back onto the ground truth", fontsize=11,
             y=1.04)
fig.tight_layout()
save_figure(fig, "03_round_trip")

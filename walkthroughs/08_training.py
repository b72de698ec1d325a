# %% [markdown]
# # 08 — Training: a short run from scratch, and the shipped model's log
#
# Training is a loop of `forward` (five losses), `backward` (every gradient, by hand), gradient
# clipping and an AdamW step, with a warmup + cosine learning-rate schedule. What you will see:
#
# 1. one batch, as the loop sees it, with random horizontal flips — `batches.get_batch`;
# 2. the training loop itself, six lines, for three steps;
# 3. a short run from scratch with the real loop, in this process, into the figure folder
#    (`08_run/`: log.csv, checkpoint.npz, model.npz, loss_curve.png) — `train.train`; fast mode:
#    10 steps of a tiny 32×32 config, normal mode: 60 steps of `Config()` (the paper's model at
#    128×128), two images per step (the full run takes 4);
# 4. its losses, learning rate and gradient norm per step — `viz.draw_loss_curves`;
# 5. if `data/train_log.csv` exists (the shipped model's log), the same curves for the real run.
#
# Sixty steps teach the RPN where objects are (its losses fall first); the classifier and the
# mask head need thousands (`Config().train_steps` = 4500). The full run is
# `python -m npmaskrcnn train`.

# %%
from npmaskrcnn.runtime import as_the_cli_trains

as_the_cli_trains()                # one BLAS thread per process, as the CLI trains (runtime.py)

import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from npmaskrcnn import viz  # noqa: E402
from npmaskrcnn.batches import default_dataset, get_batch  # noqa: E402
from npmaskrcnn.beyond_paper import build_model  # noqa: E402
from npmaskrcnn.config import Config  # noqa: E402
from npmaskrcnn.optim import clip_grad_norm, lr_at  # noqa: E402
from npmaskrcnn.train import LOSS_KEYS, make_optimizer, read_log, train  # noqa: E402
from npmaskrcnn.viz import log, save_figure  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

if args.fast:
    cfg = Config.tiny(train_steps=10, batch_size=2, warmup_steps=2, lr=2e-3)
else:
    cfg = Config(train_steps=60, batch_size=2, warmup_steps=10, lr=2e-3)   # ~20 s on 2 idle cores
print(f"config: {cfg.image_size}x{cfg.image_size} images, {cfg.train_steps} steps of "
      f"{cfg.batch_size} images, {cfg.optimizer} lr {cfg.lr} ({cfg.schedule}, {cfg.warmup_steps} "
      f"warmup steps)")

# %% [markdown]
# ## 1. One batch
#
# The images of step s are the dataset items of a per-epoch permutation, and each is flipped
# left-right with probability 1/2 (`cfg.hflip`); the targets flip with them. Shapes images are
# generated on the fly, so a run never sees an image twice.

# %%
s = cfg.image_size
dataset = default_dataset(cfg)                              # as `train` builds it
images, targets = get_batch(dataset, 0, cfg)
log("batch images", np.stack(images))
log("batch boxes (image 0)", targets[0]["boxes"])
fig, axes = plt.subplots(1, len(images), figsize=(3.3 * len(images), 3.6), squeeze=False)
for k, (ax, im, t) in enumerate(zip(axes[0], images, targets)):
    viz.draw_instances(ax, im, t["boxes"], t["labels"], t["masks"], title=f"step 0, image {k}")
fig.suptitle(f"the batch of step 0 ({s}x{s} images, random flips)", fontsize=11, y=1.02)
fig.tight_layout()
save_figure(fig, "08_batch")

# %% [markdown]
# ## 2. The loop
#
# This is all of training: a batch, the five losses forward, every gradient backward, the global
# gradient norm clipped, the learning rate of the schedule, one AdamW step.

# %%
net = build_model(cfg)                                      # the network the config describes
opt = make_optimizer(net, cfg)
net.train()
for step in range(3):
    images, targets = get_batch(dataset, step, cfg)
    net.zero_grad()
    losses = net.forward(images, targets)                   # five losses
    net.backward()                                          # every parameter's gradient
    clip_grad_norm(net, cfg.grad_clip)
    opt.lr = lr_at(step, cfg.lr, cfg.train_steps, cfg.warmup_steps, cfg.schedule)
    opt.step()
    print(f"step {step}: loss {sum(losses.values()):.3f}, lr {opt.lr:.2e}")

# %% [markdown]
# ## 3. A short run from scratch, with the real loop
#
# `train(cfg, out_dir)` runs the same loop and adds what a real run needs: one row of log.csv
# per step, checkpoints, resume, periodic evaluation, a progress bar. Everything random is
# seeded by (seed, step): the run is reproducible. The batch is cut into `cfg.grad_shards`
# shards whose gradients are averaged (`parallel.py`); `workers=2` computes the second shard in
# another process (one per core), with the same result as `workers=1`.

# %%
run_dir = os.path.join(args.out, "08_run")
start = time.perf_counter()
model, rows = train(cfg, run_dir, progress=False, workers=min(os.cpu_count() or 1, cfg.grad_shards))
elapsed = time.perf_counter() - start
print(f"{len(rows)} steps in {elapsed:.1f} s ({elapsed / len(rows):.2f} s per step); files in "
      f"{run_dir}: {sorted(os.listdir(run_dir))}")
for key in ("loss",) + LOSS_KEYS:
    v = np.array([r[key] for r in rows])
    log(key, v)
    print(f"  {key:<18} first 5 steps {v[:5].mean():.3f} -> last 5 steps {v[-5:].mean():.3f}")

# %% [markdown]
# ## 4. Its curves
#
# Grey: each step; blue: a moving average. The RPN objectness loss drops first (most anchors are
# easy negatives); the learning rate warms up linearly, then follows the cosine.

# %%
fig = viz.draw_loss_curves(rows, title=f"this run: {len(rows)} steps of a {s}x{s} config, "
                                       f"batch {cfg.batch_size}", window=5)
save_figure(fig, "08_loss_curves_this_run")

# %% [markdown]
# ## 5. The shipped model's run
#
# `data/train_log.csv` is the log of the run that produced `data/shapes_maskrcnn.npz` (if it is
# there). The same curves over thousands of steps: every loss keeps falling, the mask loss last.

# %%
shipped_log = os.path.join(viz.REPO_ROOT, "data", "train_log.csv")
if os.path.exists(shipped_log):
    shipped = read_log(shipped_log)
    log("shipped run: loss", [r["loss"] for r in shipped])
    fig = viz.draw_loss_curves(shipped, title=f"the shipped model's run: {len(shipped)} steps "
                                              f"(data/train_log.csv)")
    save_figure(fig, "08_loss_curves_shipped_model")
else:
    print(f"no {shipped_log}: the shipped model's curves are skipped")

"""Reproduce the paper's ablations on shapes: one switch at a time, same budget, same seed.

Mask R-CNN, Table 2: (b) sigmoid vs softmax mask loss, class-specific vs class-agnostic masks,
(c) RoIPool vs RoIWarp vs RoIAlign (max vs average aggregation), (d) RoIPool vs RoIAlign at a
coarse stride, where misalignment bites, (e) the MLP mask head vs the FCN. We also train RoIAlign without the half-pixel shift (aligned=False,
the original implementation; detectron2's note on `aligned`). Every variant pools from a single
coarse level (stride 16 by default, like the paper's C4 models; `--stride 32` for C5), and
trains from the same seed for the same number of steps; held-out images give box and mask AP.

    python -m npmaskrcnn ablate --steps 600 --stride 16

Writes `OUT/results.json`, `OUT/results.md` (the table, beside the paper's numbers) and, for
walkthrough 05, the RoIAlign and RoIPool models to `OUT/roi_align.npz` / `roi_pool.npz` (and all
of it to `--save-dir` if given: the committed `data/ablation/` is made with `--save-dir data/ablation`).
"""

import dataclasses
import json
import os
import time

from .checkpoint import save_model
from .config import Config
from .evaluate import evaluate_model
from .config import VAL_SEED
from .shapes import ShapesDataset
from .train import train

VARIANTS = {                        # name -> the one switch that differs from the baseline
    "roi_align": {},
    "roi_align_unaligned": {"pooler": "roi_align_unaligned"},
    "roi_align_max": {"pooler": "roi_align_max"},
    "roi_pool": {"pooler": "roi_pool"},
    "roi_warp": {"pooler": "roi_warp"},
    "roi_warp_max": {"pooler": "roi_warp_max"},
    "mlp_mask_head": {"mask_head": "mlp"},
    "softmax_masks": {"mask_loss": "softmax"},
    "class_agnostic_masks": {"class_agnostic_masks": True},
}

# Mask R-CNN (He et al. 2017) Table 2, COCO minival mask AP / AP50 / AP75.
PAPER = {
    16: {"roi_align": "30.3 / 51.2 / 31.5 (2c, C4)", "roi_pool": "26.9 / 48.8 / 26.4 (2c, C4)",
         "roi_align_max": "30.2 / 51.0 / 31.8 (2c, C4)", "softmax_masks": "24.8 / 44.1 / 25.1 (2b)",
         "class_agnostic_masks": "29.7 AP (2b)", "roi_warp": "27.1 AP (2c, C4)",
         "roi_warp_max": "27.2 AP (2c, C4)", "mlp_mask_head": "31.5 AP vs FCN 33.6 (2e, FPN)"},
    32: {"roi_align": "30.9 / 51.8 / 32.1 (2d, C5)", "roi_pool": "23.6 / 46.5 / 21.6 (2d, C5)"},
}


def base_config(steps, stride, seed):
    """The ablation network: the paper's Mask R-CNN on shapes (Config.paper()) with one block per
    stage (to fit six runs in the budget of one), RoI features from the single level of the
    given stride, and the whole batch as one gradient shard."""
    level = {4: 2, 8: 3, 16: 4, 32: 5}[stride]
    return Config.paper(stage_blocks=(1, 1, 1, 1), train_steps=steps, seed=seed, pooler_levels=(level,),
                        warmup_steps=min(200, steps // 4), grad_shards=1)


def results_table(results, stride):
    """Markdown table of the results beside the paper's numbers."""
    paper = PAPER.get(stride, {})
    lines = ["| variant | box AP | box AP50 | box AP75 | mask AP | mask AP50 | mask AP75 | train s | "
             "paper mask AP / AP50 / AP75 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        b, s = r["bbox"], r["segm"]
        lines.append(f"| {name} | {100 * b['AP']:.1f} | {100 * b['AP50']:.1f} | {100 * b['AP75']:.1f} | "
                     f"{100 * s['AP']:.1f} | {100 * s['AP50']:.1f} | {100 * s['AP75']:.1f} | "
                     f"{r['train_seconds']:.0f} | {paper.get(name, '—')} |")
    return "\n".join(lines)


def run(args, log):
    """The `ablate` command: train and score each variant, write the table. `log` prints progress."""
    names = [n.strip() for n in (args.variants or ",".join(VARIANTS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; expected names from {list(VARIANTS)}")
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive number, got {args.steps}")
    os.makedirs(args.out, exist_ok=True)
    save_dir = args.save_dir or args.out
    os.makedirs(save_dir, exist_ok=True)
    base = base_config(args.steps, args.stride, args.seed)
    val = ShapesDataset(args.eval_images, seed=VAL_SEED, image_size=base.image_size)
    results = {}
    for name in names:
        cfg = dataclasses.replace(base, **VARIANTS[name])
        t0 = time.perf_counter()
        model, _ = train(cfg, os.path.join(args.out, name), checkpoint_every=0, progress=False)
        seconds = time.perf_counter() - t0
        metrics = evaluate_model(model, val)
        results[name] = {"config": VARIANTS[name], "train_seconds": seconds,
                         **{t: {k: metrics[t][k] for k in ("AP", "AP50", "AP75")} for t in ("bbox", "segm")}}
        log(f"{name}: box AP {100 * metrics['bbox']['AP']:.1f}, mask AP {100 * metrics['segm']['AP']:.1f} "
              f"/ {100 * metrics['segm']['AP50']:.1f} / {100 * metrics['segm']['AP75']:.1f} "
              f"({seconds:.0f} s)")
        if name in ("roi_align", "roi_pool"):
            save_model(model, os.path.join(save_dir, f"{name}.npz"))
    table = results_table(results, args.stride)
    header = (f"Ablation on shapes: {args.steps} steps per variant, seed {args.seed}, RoI features at "
              f"stride {args.stride}, {args.eval_images} held-out images (seed {VAL_SEED}).\n"
              f"Command: python -m npmaskrcnn ablate --steps {args.steps} --stride {args.stride}\n\n")
    for folder in {args.out, save_dir}:
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "stride": args.stride, "seed": args.seed,
                       "eval_images": args.eval_images, "results": results}, f, indent=1)
        with open(os.path.join(folder, "results.md"), "w") as f:
            f.write(header + table + "\n")
    log(table)
    return 0

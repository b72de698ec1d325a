"""Reproduce the paper's ablations (Mask R-CNN, Table 2) on shapes: one switch at a time, several
seeds, the mean and spread of every row beside the paper's number.

The rows, each a model trained from scratch with one switch changed from the baseline (the
paper's Mask R-CNN on shapes, `Config.paper()`, with one block per ResNet stage and RoI features
pooled from one level):
- 2b: sigmoid vs softmax mask loss; class-specific vs class-agnostic masks (stride 16)
- 2c: RoIPool, RoIWarp (max, avg), RoIAlign (max, avg) at stride 16, the paper's C4 models
- 2d: RoIPool vs RoIAlign at stride 32 (the C5 models, where misalignment bites), box and mask AP
- 2e: the MLP mask head vs the FCN, pooling from every FPN level as the paper's FPN models
- aligned: RoIAlign without and with the half-pixel shift (`aligned=False` is the original
  implementation; torchvision's and detectron2's later versions added the shift)
Every row is trained with each of `--seeds` for `--steps` steps and scored on `--eval-images`
held-out images; the table shows mean +- standard deviation over the seeds (per-seed values in
results.json). `--workers` processes (default one per core, each on one core) train at once.

    python -m npmaskrcnn ablate                          # the whole table, into runs/ablation/
    python -m npmaskrcnn ablate --variants roi_pool,roi_align --seeds 0

`--pretrain-steps N` follows the paper's protocol more closely: the paper's models start from a
ResNet pretrained on ImageNet, and here every row's ResNet body can start from the body of the FPN
baseline trained first for N steps on other shapes images (seed PRETRAIN_SEED, two processes, in
OUT/pretrain/); the FPN, RPN and heads still start from scratch. `--body-from MODEL.npz` starts
every body from the body of a given model instead (e.g. an earlier table's pretraining, reused for a
table with other `--set` fields). Without either (the default) every model starts from scratch.

Each finished model leaves its scores in OUT/<variant>@<stride>/seed<k>/result.json, so the same
command run again after an interruption trains only the models that were not finished
(`--overwrite` retrains them all).

`--set KEY=VALUE` (repeatable) changes a field of the baseline for every row and the pretraining,
e.g. `--set box_batch_size_per_image=64` for a cheaper table; the fields the table sets itself
(TABLE_FIELDS) are refused.

`--stride S` instead trains each chosen variant once per seed at the one stride S (the earlier,
flat table). Writes OUT/results.json, OUT/results.md, OUT/ablation.png and, for walkthrough 05,
the first seed's RoIAlign and RoIPool models at stride 16 (OUT/roi_align.npz, roi_pool.npz); all of
it also to `--save-dir` (the committed data/ablation/ is made with `--save-dir data/ablation`).
"""

import dataclasses
import os
import time

from .checkpoint import save_model
from .config import VAL_SEED, Config
from .ablate_table import METRICS, ablation_figure, plan, results_markdown, run_key, summarize
from .files import copy_atomic, save_figure_atomic, write_json_atomic, write_text_atomic

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
PRETRAIN_SEED = 100                 # the pretraining images: disjoint from the rows' (seeds 0, 1, ...)
#                                     and from the held-out ones (config.VAL_SEED)
BODY = "backbone.body."             # the parameters a pretrained model passes on: the ResNet body
RESULT_NAME = "result.json"         # a finished run's scores, in its run folder
LEVELS = {4: (2,), 8: (3,), 16: (4,), 32: (5,), "fpn": (2, 3, 4, 5)}   # stride -> pooler levels

def base_config(steps, stride, seed):
    """The ablation network: the paper's Mask R-CNN on shapes (Config.paper()) with one block per
    stage (to fit many runs in the budget of one), RoI features from the level(s) of `stride`
    (4, 8, 16, 32 or "fpn"), and the whole batch as one gradient shard."""
    return Config.paper(stage_blocks=(1, 1, 1, 1), train_steps=steps, seed=seed,
                        pooler_levels=LEVELS[stride], warmup_steps=min(200, steps // 4),
                        grad_shards=1)


# fields the table sets itself, which `--set` may not change
TABLE_FIELDS = ("train_steps", "seed", "pooler_levels", "grad_shards",
                *sorted({k for switch in VARIANTS.values() for k in switch}))


def check_overrides(overrides):
    """The "key=value" strings of `--set`, checked: ValueError naming a malformed item, an unknown
    field, a bad value, or a field the table sets itself (TABLE_FIELDS)."""
    try:
        keys = Config.parse_overrides(overrides)
        base_config(1, 16, 0).with_overrides(overrides)
    except ValueError as e:
        raise ValueError(f"--set: {e}") from None
    clash = [k for k in keys if k in TABLE_FIELDS]
    if clash:
        raise ValueError(f"--set: the table sets {clash} itself (by row, seed, stride or --steps); "
                         f"--set may change any other field")
    return tuple(overrides)


def run_config(variant, stride, seed, steps, overrides=()):
    """The Config of one row trained with one seed: the baseline, with the `--set` overrides
    ("key=value" strings) applied to it, and the variant's switch."""
    base = base_config(steps, stride, seed).with_overrides(overrides)
    return dataclasses.replace(base, **VARIANTS[variant])


def pretrain_config(steps, overrides=()):
    """The model the ResNet body is pretrained in: the ablation's FPN baseline (2e's FCN row, with
    the same overrides as the rows) trained on shapes of seed PRETRAIN_SEED, as the CLI trains (two
    gradient shards)."""
    base = base_config(steps, "fpn", PRETRAIN_SEED).with_overrides(overrides)
    return dataclasses.replace(base, grad_shards=2)


def pretrain(steps, folder, workers, log, reuse=True, overrides=()):
    """Train the pretraining model into `folder` with `workers` processes; with `reuse`, reuse it
    when it is there (finished, with the same config) or resume it from its checkpoint. Returns
    (path of its model.npz, seconds spent)."""
    from .checkpoint import load_checkpoint
    from .train import train

    cfg = pretrain_config(steps, overrides)
    path, ckpt = os.path.join(folder, "model.npz"), os.path.join(folder, "checkpoint.npz")
    if reuse and os.path.isfile(path) and load_checkpoint(path, arrays=False)["config"] == cfg:
        log(f"pretrained ResNet body: reusing {path}")
        return path, 0.0
    resume = reuse and os.path.isfile(ckpt) and load_checkpoint(ckpt, arrays=False)["config"] == cfg
    log(f"pretraining the ResNet body: {steps} steps of the FPN baseline on shapes of seed "
        f"{PRETRAIN_SEED}, into {folder}")
    t0 = time.perf_counter()
    train(cfg, folder, checkpoint_every=500, resume=resume, progress=False, workers=workers)
    return path, time.perf_counter() - t0


def check_body_from(path, overrides=()):
    """The SHA-256 of the model file `path` whose ResNet body every row is to start from; ValueError
    naming --body-from when it is not a readable model or its body does not fit the rows' (the
    baseline with the `--set` overrides)."""
    import hashlib
    import zipfile

    from .beyond_paper import build_model

    if not os.path.isfile(path):
        raise ValueError(f"--body-from: no such file {path!r}")
    try:
        body = pretrained_body(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:   # not a model of this project
        raise ValueError(f"--body-from: {path!r} is not a model file: {e}") from None
    own = {k: v.shape for k, v in build_model(run_config("roi_align", 16, 0, 1, overrides))
           .state_dict().items() if k.startswith(BODY)}
    if {k: v.shape for k, v in body.items()} != own:
        raise ValueError(f"--body-from: the ResNet body of {path!r} does not fit the rows' (its "
                         f"parameters' names or shapes differ from base_config's)")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def pretrained_body(path):
    """{name: array} of the ResNet body of the model at `path` (what every row starts from)."""
    from .checkpoint import load_checkpoint

    return {k: v for k, v in load_checkpoint(path)["params"].items() if k.startswith(BODY)}


def train_and_score(variant, stride, seed, steps, eval_images, run_dir, body_path=None, overrides=()):
    """Train one row with one seed and score it; returns {"bbox"/"segm": {AP, AP50, AP75},
    "train_seconds"} and the model. The ResNet body starts from the model at `body_path` if it is
    given, else from its random initialisation. Runs in a worker process of `run`."""
    from .batches import default_dataset
    from .evaluate import evaluate_model
    from .train import train

    cfg = run_config(variant, stride, seed, steps, overrides)
    init = pretrained_body(body_path) if body_path else None
    t0 = time.perf_counter()
    model, _ = train(cfg, run_dir, checkpoint_every=0, progress=False, init=init)
    seconds = time.perf_counter() - t0
    metrics = evaluate_model(model, default_dataset(cfg, eval_images, VAL_SEED))
    out = {t: {k: float(metrics[t][k]) for k in METRICS} for t in ("bbox", "segm")}
    return dict(out, train_seconds=seconds, eval_seconds=time.perf_counter() - t0 - seconds), model


def finished_run(run_dir, cfg, eval_images, pretrain_steps=0, body_sha256=None):
    """The result a finished run left in run_dir/result.json, if it was trained with `cfg` from a
    body pretrained for `pretrain_steps` (0: none) or taken from the model file of SHA-256
    `body_sha256` (None: none), and scored on `eval_images` images; None otherwise. This is what
    lets an interrupted table resume."""
    import json

    path = os.path.join(run_dir, RESULT_NAME)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(run_dir, "model.npz"))):
        return None
    with open(path) as f:
        saved = json.load(f)
    same = (Config.from_dict(saved["config"]) == cfg and saved["eval_images"] == eval_images
            and saved.get("pretrain_steps", 0) == pretrain_steps
            and saved.get("body_sha256") == body_sha256)
    return saved["result"] if same else None


def _job(variant, stride, seed, steps, eval_images, run_dir, model_path, reuse=True, body_path=None,
         pretrain_steps=0, overrides=(), body_sha256=None, parent_pid=None):
    """One row with one seed, in a worker process: with `reuse`, the result of the run already in
    run_dir when it was trained and scored the same way (marked "reused"); else train and score it
    and leave run_dir/result.json. Saves the model to `model_path` when it is given. The worker
    ends when the process `parent_pid` (the command) is gone."""
    if parent_pid is not None:
        from .runtime import exit_with_parent
        exit_with_parent(parent_pid)
    cfg = run_config(variant, stride, seed, steps, overrides)
    result = finished_run(run_dir, cfg, eval_images, pretrain_steps, body_sha256) if reuse else None
    if result is not None:
        if model_path is not None:
            copy_atomic(os.path.join(run_dir, "model.npz"), model_path)
        return dict(result, reused=True)
    result, model = train_and_score(variant, stride, seed, steps, eval_images, run_dir, body_path,
                                    overrides)
    write_json_atomic({"config": cfg.to_dict(), "eval_images": eval_images,
                       "pretrain_steps": pretrain_steps, "body_sha256": body_sha256, "result": result},
                      os.path.join(run_dir, RESULT_NAME))
    if model_path is not None:
        save_model(model, model_path)
    return result


def run(args, log):
    """The `ablate` command: train and score every row with every seed, write the table. `log`
    prints progress."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .parallel import _main_module_hidden
    from .runtime import single_threaded_children

    names = [n.strip() for n in (args.variants or ",".join(VARIANTS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; expected names from {list(VARIANTS)}")
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive number, got {args.steps}")
    if args.eval_images < 1:
        raise ValueError(f"--eval-images: expected a positive number, got {args.eval_images}")
    if args.pretrain_steps < 0:
        raise ValueError(f"--pretrain-steps: expected 0 (no pretraining) or a positive number, "
                         f"got {args.pretrain_steps}")
    overrides = check_overrides(args.set or [])
    body_from, body_sha256 = getattr(args, "body_from", None), None
    if body_from is not None:
        if args.pretrain_steps:
            raise ValueError("--body-from: give either --body-from or --pretrain-steps, not both")
        body_sha256 = check_body_from(body_from, overrides)
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if not seeds or seeds[0] < 0:
        raise ValueError(f"--seeds: expected integers >= 0, got {args.seeds!r}")
    rows = plan(names, args.stride)
    if not rows:
        raise ValueError(f"--variants: {names} are in no row of the table (see ablate_table.TABLE)")
    save_dir = args.save_dir or args.out
    for folder in {args.out, save_dir}:
        if os.path.exists(os.path.join(folder, "results.json")) and not args.overwrite:
            raise ValueError(f"--out/--save-dir: {folder} already holds an ablation table; "
                             f"choose another folder or replace it with --overwrite")
        os.makedirs(folder, exist_ok=True)
    keys = list(dict.fromkeys((v, st) for _, v, st, _ in rows))
    t0 = time.perf_counter()
    workers = max(1, min(args.workers or os.cpu_count() or 1, len(keys) * len(seeds)))
    body_path, pretrain_seconds = body_from, 0.0
    if args.pretrain_steps:
        body_path, pretrain_seconds = pretrain(args.pretrain_steps, os.path.join(args.out, "pretrain"),
                                               max(1, args.workers or os.cpu_count() or 1), log,
                                               reuse=not args.overwrite, overrides=overrides)
    jobs = {}
    with single_threaded_children(), _main_module_hidden(), \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for v, st in keys:                 # each worker process trains on one core
            for seed in seeds:
                keep = (st == (args.stride or 16) and v in ("roi_align", "roi_pool")
                        and seed == seeds[0])   # the models walkthrough 05 compares
                jobs[v, st, seed] = pool.submit(
                    _job, v, st, seed, args.steps, args.eval_images,
                    os.path.join(args.out, run_key(v, st), f"seed{seed}"),
                    os.path.join(args.out, f"{v}.npz") if keep else None, not args.overwrite,
                    body_path, args.pretrain_steps, overrides, body_sha256, os.getpid())
        runs = {}
        for v, st in keys:
            per_seed = {}
            for seed in seeds:
                per_seed[str(seed)] = r = jobs[v, st, seed].result()
                log(f"{run_key(v, st)} seed {seed}: box AP {100 * r['bbox']['AP']:.1f}, mask AP "
                    f"{100 * r['segm']['AP']:.1f} / {100 * r['segm']['AP50']:.1f} / "
                    f"{100 * r['segm']['AP75']:.1f} ({r['train_seconds']:.0f} s"
                    + (", reused from an earlier run)" if r.get("reused") else ")"))
            mean, std = summarize(per_seed)
            runs[run_key(v, st)] = {"variant": v, "stride": st, "config": VARIANTS[v],
                                    "per_seed": per_seed, "mean": mean, "std": std}
    command = ("python -m npmaskrcnn ablate" + f" --steps {args.steps} --seeds {','.join(map(str, seeds))}"
               f" --eval-images {args.eval_images}"
               + (f" --pretrain-steps {args.pretrain_steps}" if args.pretrain_steps else "")
               + (f" --body-from {body_from}" if body_from else "")
               + "".join(f" --set {o}" for o in overrides)
               + (f" --stride {args.stride}" if args.stride else "")
               + (f" --variants {','.join(names)}" if args.variants else "")
               + (f" --save-dir {args.save_dir}" if args.save_dir else ""))
    wall = time.perf_counter() - t0
    reused = sum(bool(r.get("reused")) for run_ in runs.values() for r in run_["per_seed"].values())
    header = (f"Ablation on shapes: {args.steps} steps per model, seeds {seeds}, "
              f"{args.eval_images} held-out images (seed {VAL_SEED}); mean ± std over the seeds.\n"
              + (f"Every model's ResNet body starts from the FPN baseline trained for "
                 f"{args.pretrain_steps} steps on shapes of seed {PRETRAIN_SEED} (the paper's models "
                 f"start from ImageNet); the FPN, RPN and heads start from scratch "
                 f"({pretrain_seconds / 60:.1f} min of the wall time).\n"
                 if args.pretrain_steps else
                 f"Every model's ResNet body starts from the body of {body_from} (SHA-256 "
                 f"{body_sha256[:16]}...); the FPN, RPN and heads start from scratch.\n"
                 if body_from else "Every model is trained from scratch.\n")
              + (f"The baseline with {', '.join(overrides)}.\n" if overrides else "")
              + f"Command: {command}\n"
              f"Wall time: {wall / 60:.1f} min for {len(jobs)} models, {workers} at once"
              + (f" ({reused} of them reused from an earlier, interrupted run)" if reused else "") + ".")
    table = results_markdown(rows, runs, header)
    fig = ablation_figure(rows, runs)
    result = {"command": command, "steps": args.steps, "seeds": seeds, "wall_seconds": wall,
              "pretrain_steps": args.pretrain_steps, "pretrain_seconds": pretrain_seconds,
              "body_from": body_from, "body_sha256": body_sha256,
              "workers": workers, "reused_runs": reused, "overrides": list(overrides),
              "eval_images": args.eval_images, "rows": [list(r) for r in rows], "runs": runs}
    for folder in dict.fromkeys([args.out, save_dir]):
        write_json_atomic(result, os.path.join(folder, "results.json"))
        write_text_atomic(table, os.path.join(folder, "results.md"))
        save_figure_atomic(fig, os.path.join(folder, "ablation.png"))
        if folder != args.out:
            for v in ("roi_align", "roi_pool"):
                src = os.path.join(args.out, f"{v}.npz")
                if os.path.isfile(src):
                    copy_atomic(src, os.path.join(folder, f"{v}.npz"))
    log(table)
    return 0

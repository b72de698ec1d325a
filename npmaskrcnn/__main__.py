"""Command line: `python -m npmaskrcnn {train,evaluate,predict,demo,summary,ablate,anchors} --help`.

    python -m npmaskrcnn demo                                   # the shipped model on 6 images
    python -m npmaskrcnn train --out runs/shapes --steps 3000   # train from scratch on shapes
    python -m npmaskrcnn evaluate --model runs/shapes/model.npz # COCO box and mask AP
    python -m npmaskrcnn predict --model runs/shapes/model.npz photo.png --out preds/
    python -m npmaskrcnn summary                                # parameters and FLOPs per stage
    python -m npmaskrcnn ablate --steps 500                     # the paper's Table 2 on shapes
    python -m npmaskrcnn anchors --data instances.json          # do the anchors fit the objects?

This file declares the arguments and dispatches: each subcommand is `add_<name>_args(parser)`
and `cmd_<name>(args) -> exit code`, composing library calls. Arguments are checked by
`checks.py` before any output is written; a user error (`checks.UsageError`) becomes one line on
stderr naming the argument, and exit code 2. Heavy imports happen inside the commands, so
`--help` needs only the standard library. This module and `viz.log` are all that print.
"""

import os
import sys

if len(sys.argv) > 1 and sys.argv[1] in ("train", "ablate"):
    from npmaskrcnn.runtime import single_threaded_env   # before numpy loads (runtime.py says why)

    single_threaded_env()

import argparse  # noqa: E402
import time  # noqa: E402

from npmaskrcnn import checks  # noqa: E402
from npmaskrcnn.checks import UsageError  # noqa: E402
from npmaskrcnn.config import ADDITION_INFERENCE_FIELDS, PAPER_INFERENCE_FIELDS, VAL_SEED  # noqa: E402

DEFAULT_MODEL = checks.shipped_model_path()
VAL_IMAGES_DURING_TRAINING = 50
# `predict` with a model that does not resize (min_size None, the shapes preset) shrinks a larger
# image to this longer side (the paper's max_size): an 800 x 1333 image predicts in ~0.5 GB, a
# 4000 x 3000 photo unresized would need ~6 GB
MAX_UNRESIZED_SIDE = 1333
CLIError = UsageError                                      # the name earlier versions used


def load_predictor(args):
    """The --model checkpoint, wrapped for inference additions, with --set options applied."""
    from .beyond_paper import WithInferenceAdditions

    model = checks.load_model_arg(args.model, default=DEFAULT_MODEL)
    if not isinstance(model, WithInferenceAdditions):
        model = WithInferenceAdditions(model)            # so --set may turn an addition on
    try:
        model.set_inference(**checks.inference_options_arg(args.set))
    except (ValueError, TypeError) as e:
        raise UsageError(f"--set: {e}") from None
    return model


# ---- train ------------------------------------------------------------------------------------
def add_train_args(p):
    p.add_argument("--out", default=os.path.join("runs", "shapes"),
                   help="run folder: checkpoint.npz, model.npz, log.csv, loss_curve.png, eval.jsonl "
                        "(default: %(default)s)")
    p.add_argument("--config", metavar="JSON_FILE", help="a Config as JSON (Config.to_json); the "
                   "other options override it. Default: Config.shipped(), the shipped model's "
                   "recipe (or, with --resume, the checkpoint's config)")
    p.add_argument("--paper", action="store_true",
                   help="start from Config.paper() (the paper's algorithm, no additions) instead")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any Config field, value parsed as JSON when possible "
                        "(repeatable), e.g. --set pooler=roi_pool --set 'pooler_levels=[4]'")
    p.add_argument("--steps", type=int, help="optimizer steps (Config.train_steps)")
    p.add_argument("--batch-size", type=int, help="images per step (Config.batch_size)")
    p.add_argument("--lr", type=float, help="peak learning rate (Config.lr)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data and sampling (Config.seed)")
    p.add_argument("--data", metavar="INSTANCES_JSON",
                   help="train on a COCO-format dataset instead of shapes (images of any sizes, "
                        "resized as the config's min_size / max_size say); its categories set the "
                        "class names and num_classes")
    p.add_argument("--images", metavar="DIR", help="image folder of --data (default: beside the JSON)")
    add_skip_bad_images_arg(p)
    p.add_argument("--val-data", metavar="INSTANCES_JSON",
                   help="COCO-format validation set for --eval-every (without it, --data runs skip the "
                        "periodic evaluation; default with shapes: "
                        f"{VAL_IMAGES_DURING_TRAINING} shapes images of seed {VAL_SEED})")
    p.add_argument("--val-images", metavar="DIR", help="image folder of --val-data")
    p.add_argument("--eval-every", type=int, default=500, metavar="N",
                   help="COCO AP on the validation set every N steps, to OUT/eval.jsonl (0 = never)")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="N",
                   help="write OUT/checkpoint.npz every N steps (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds a run (its files are replaced)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes computing the gradient shards (config grad_shards) in parallel; "
                        "the result does not depend on it (default: one per core, at most "
                        "grad_shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_skip_bad_images_arg(p):
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images of --data that are missing or cannot be read (one "
                        "warning), instead of stopping at the first")


def train_config(args, base):
    """The Config of a `train` run: base (or --config / --paper) < --set < dedicated flags."""
    from .config import Config

    if args.config is not None:
        cfg = checks.config_arg(args.config)
    elif base is not None:
        cfg = base
    else:
        cfg = Config.paper() if args.paper else Config.shipped()
    cfg = checks.overrides_arg(cfg, args.set)
    flags = (("--steps", "train_steps", args.steps), ("--batch-size", "batch_size", args.batch_size),
             ("--lr", "lr", args.lr), ("--seed", "seed", args.seed))
    for flag, field, value in flags:
        if value is not None:
            cfg = checks.overrides_arg(cfg, [f"{field}={value}"], flag)
    return cfg


def cmd_train(args):
    """Train (or resume) a model into --out. Returns the exit code."""
    from .batches import default_dataset
    from .checkpoint import load_checkpoint
    from .files import write_text_atomic
    from .runtime import keep_freed_memory
    from .parallel import WorkerFailed
    from .train import RunInProgress, TrainingDiverged, TrainingInterrupted, running_pid, train

    for name, least in (("steps", 1), ("batch_size", 1), ("workers", 1), ("eval_every", 0),
                        ("checkpoint_every", 0)):
        checks.at_least(getattr(args, name), least, "--" + name.replace("_", "-"))
    checks.only_with(args.images, "--images", "--data", args.data)
    checks.only_with(args.val_images, "--val-images", "--val-data", args.val_data)
    base = None
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    pid = running_pid(args.out) if os.path.isdir(args.out) else None
    if pid is not None:
        raise UsageError(f"--out: process {pid} is training into {args.out!r}; wait for it or "
                         f"choose another folder")
    held = [f for f in ("model.npz", "checkpoint.npz") if os.path.exists(os.path.join(args.out, f))]
    if held and not (args.resume or args.overwrite):
        raise UsageError(f"--out: {args.out!r} holds a run ({', '.join(held)}); continue it with "
                         f"--resume, replace it with --overwrite, or choose another folder")
    if args.resume and args.overwrite:
        raise UsageError("--overwrite: not with --resume (one continues a run, the other replaces it)")
    if args.resume:
        checks.input_file(ckpt_path, "--resume (OUT/checkpoint.npz)")
        try:
            base = load_checkpoint(ckpt_path)["config"]
        except (ValueError, OSError) as e:
            raise UsageError(f"--resume: {e}") from None
    cfg = train_config(args, base)

    class_names = None
    if args.data is not None:
        dataset = checks.load_coco_arg(args.data, args.images, "--data", "--images",
                                       args.skip_bad_images)
        class_names = dataset.class_names
        if cfg.num_classes != len(class_names):
            cfg = cfg.with_overrides([f"num_classes={len(class_names)}"])
    else:
        dataset = default_dataset(cfg)
    val = None
    if args.val_data is not None:
        val = checks.load_coco_arg(args.val_data, args.val_images, "--val-data", "--val-images",
                                   args.skip_bad_images)
        if class_names is not None and tuple(val.class_names) != tuple(class_names):
            raise UsageError(f"--val-data: its classes {val.class_names} differ from --data's "
                             f"{class_names}")
    elif args.eval_every and args.data is None:
        val = default_dataset(cfg, VAL_IMAGES_DURING_TRAINING, VAL_SEED)
    if args.resume and base != cfg:
        raise UsageError("--resume: the options change the checkpoint's config; resume with the "
                         "same config (drop --config / --set / --steps ..., or use a new --out)")

    if cfg.warmup_steps >= cfg.train_steps and not args.resume:
        short = cfg.train_steps // 5
        print(f"note: warmup_steps {cfg.warmup_steps} >= train_steps {cfg.train_steps}: the run would "
              f"never reach its learning rate; warmup shortened to {short} steps")
        cfg = cfg.with_overrides([f"warmup_steps={short}"])
    out = checks.output_dir(args.out, "--out")
    write_text_atomic(cfg.to_json(), os.path.join(out, "config.json"))
    print(f"training {cfg.train_steps} steps of {cfg.batch_size} images "
          f"({'COCO data ' + args.data if args.data else 'shapes'}) into {out}")
    keep_freed_memory()
    t0 = time.perf_counter()
    try:
        train(cfg, out, dataset=dataset, val_dataset=val, class_names=class_names,
              eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
              resume=args.resume, progress=not args.no_progress, log=print,
              workers=args.workers or min(os.cpu_count() or 1, cfg.grad_shards))
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 2
    except RunInProgress as e:
        raise UsageError(f"--out: {e}") from None
    except WorkerFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:                                     # a full disk, a folder made read-only
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"\n{e}: continue with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:                                # a second Ctrl-C: stopped at once
        last = (f"the last checkpoint is {ckpt_path} (step {int(load_checkpoint(ckpt_path)['extra']['step'])}): "
                f"continue with --resume") if os.path.exists(ckpt_path) else "no checkpoint was written"
        print(f"\nstopped at once; {last}", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - t0
    print(f"wall time {seconds:.1f} s ({seconds / 60:.1f} min)")
    print(f"model written to {os.path.join(out, 'model.npz')}")
    return 0


# ---- evaluate, predict, demo ------------------------------------------------------------------
def add_model_args(p):
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (default: the shipped model, "
                   "data/shapes_maskrcnn.npz)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an inference option (repeatable): "
                        + ", ".join(PAPER_INFERENCE_FIELDS + ADDITION_INFERENCE_FIELDS)
                        + "; e.g. --set test_flip=true")


def add_evaluate_args(p):
    add_model_args(p)
    p.add_argument("--data", metavar="INSTANCES_JSON", help="a COCO-format dataset (default: shapes)")
    p.add_argument("--images", metavar="DIR", help="image folder of --data (default: beside the JSON)")
    add_skip_bad_images_arg(p)
    p.add_argument("--num-images", type=int, default=500, help="shapes images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED,
                   help="seed of the shapes images (default: %(default)s, disjoint from training's 0)")
    p.add_argument("--batch-size", type=int, default=8, help="images per predict call")
    p.add_argument("--results", metavar="PATH", help="write the COCO results JSON here")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON here")
    p.add_argument("--errors", action="store_true",
                   help="also break the mask AP50 down by error type (evaluate.error_breakdown)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_evaluate(args):
    """COCO box and mask AP of --model. Returns the exit code."""
    from .batches import default_dataset
    from .evaluate import (error_breakdown, evaluate_predictions, format_errors, format_metrics,
                           predict_dataset, to_jsonable)
    from .files import write_json_atomic

    checks.at_least(args.num_images, 1, "--num-images")
    checks.at_least(args.batch_size, 1, "--batch-size")
    checks.at_least(args.seed, 0, "--seed")
    checks.only_with(args.images, "--images", "--data", args.data)
    model = load_predictor(args)
    for path, arg in ((args.results, "--results"), (args.json, "--json")):
        if path is not None:
            checks.output_file(path, arg)
    if args.data is not None:
        dataset = checks.load_coco_arg(args.data, args.images, "--data", "--images",
                                       args.skip_bad_images)
        if len(dataset.class_names) != model.config.num_classes:
            raise UsageError(f"--data: {len(dataset.class_names)} classes {dataset.class_names}, but "
                             f"the model has {model.config.num_classes} {model.class_names}")
        source = args.data
    else:
        dataset = default_dataset(model.config, args.num_images, args.seed)
        source = f"{args.num_images} shapes images, seed {args.seed}"
    print(f"evaluating {args.model} on {source}")
    t0 = time.perf_counter()
    predictions = predict_dataset(model, dataset, batch_size=args.batch_size,
                                  progress=not args.no_progress)
    metrics = evaluate_predictions(predictions, dataset, results_path=args.results)
    print(format_metrics(metrics))
    print(f"({len(dataset)} images in {time.perf_counter() - t0:.1f} s)")
    if args.errors:
        print()
        print(format_errors(error_breakdown(predictions, dataset, "segm", 0.5, min_score=0.3)))
    if args.results:
        print(f"COCO results written to {args.results}")
    if args.json:
        write_json_atomic(to_jsonable(metrics), args.json)
        print(f"metrics written to {args.json}")
    return 0


def add_predict_args(p):
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...; any size; grayscale, RGBA, palette and 16-bit "
                        "are converted to 8-bit RGB, each conversion stated)")
    add_model_args(p)
    p.add_argument("--out", default=os.path.join("runs", "predict"),
                   help="folder for <name>.png figures and detections.json (default: %(default)s)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")


def cmd_predict(args):
    """Detect instances in image files; one figure per image and one detections JSON."""
    from .viz import describe, draw_prediction, keep_confident  # first: it picks the backend

    import matplotlib.pyplot as plt

    from .coco import detections_to_json
    from .files import save_figure_atomic, write_json_atomic

    checks.fraction(args.score_thresh, "--score-thresh")
    read = [checks.read_image_arg(path, "IMAGE") for path in args.images]
    model = load_predictor(args)
    out = checks.output_dir(args.out, "--out")
    images = [image for image, _ in read]
    for path, (image, conversions) in zip(args.images, read):
        if conversions:
            print(f"{path}: converted: {'; '.join(conversions)}")
    warnings = [w for w in (checks.far_from_training(im.shape, model.config) for im in images) if w]
    if warnings:                                             # once, for the first such image
        print(warnings[0] + (f" ({len(warnings)} of the {len(images)} inputs)"
                             if len(images) > 1 else ""), file=sys.stderr)
    names, used, entries = model.class_names, set(), []
    for path, image in zip(args.images, images):
        pred = keep_confident(predict_within_memory(model, image, path), args.score_thresh)
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem, 1
        while name in used:                                  # two inputs a/x.png and b/x.png
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1]))
        draw_prediction(ax, image, pred, names, f"{os.path.basename(path)}: "
                        f"{len(pred['scores'])} detections (score >= {args.score_thresh})")
        figure = save_figure_atomic(fig, os.path.join(out, name + ".png"))
        entries.append({"file": path, "figure": figure, "image": image, "pred": pred})
        print(f"{path}: {describe(pred, names)}")
    detections = os.path.join(out, "detections.json")
    write_json_atomic(detections_to_json(entries, names, args.model, args.score_thresh), detections)
    print(f"figures and {detections} written to {out}")
    return 0


def predict_within_memory(model, image, path):
    """model.predict(image)[0]; an image larger than MAX_UNRESIZED_SIDE for a model that does
    not resize is seen at that longer side (said in one line), its detections mapped back."""
    h, w = image.shape[:2]
    cfg = model.config
    if cfg.min_size is not None or max(h, w) <= MAX_UNRESIZED_SIDE:
        return model.predict(image)[0]
    from .transform import resized_size

    short = max(1, round(min(h, w) * MAX_UNRESIZED_SIDE / max(h, w)))
    nh, nw = resized_size(h, w, short, MAX_UNRESIZED_SIDE)
    print(f"{path}: {w}x{h} is larger than {MAX_UNRESIZED_SIDE} px and this model does not resize "
          f"(min_size None); seen at {nw}x{nh}, detections mapped back to {w}x{h}")
    fields = ("min_size", "max_size")
    try:
        model.update_config(fields, min_size=(short,), max_size=MAX_UNRESIZED_SIDE)
        return model.predict(image)[0]
    finally:
        model.update_config(fields, min_size=None, max_size=None)


def add_demo_args(p):
    add_model_args(p)
    p.add_argument("--num-images", type=int, default=6, help="shapes images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED, help="seed of the images (default: %(default)s)")
    p.add_argument("--out", default=os.path.join("runs", "demo.png"),
                   help="the figure (default: %(default)s, under the current folder)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")


def cmd_demo(args):
    """The model on a few fresh shapes images: a figure grid and the detections, printed."""
    from .viz import describe, draw_prediction, keep_confident  # first: it picks the backend

    import matplotlib.pyplot as plt

    from .batches import default_dataset
    from .files import save_figure_atomic

    checks.at_least(args.num_images, 1, "--num-images")
    checks.at_least(args.seed, 0, "--seed")
    checks.fraction(args.score_thresh, "--score-thresh")
    model = load_predictor(args)
    checks.output_file(args.out, "--out")
    dataset = default_dataset(model.config, args.num_images, args.seed)
    images = [dataset[i][0] for i in range(len(dataset))]
    t0 = time.perf_counter()
    preds = [keep_confident(p, args.score_thresh) for p in model.predict(images)]
    seconds = time.perf_counter() - t0
    ncols = min(3, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for i, (ax, image, pred) in enumerate(zip(axes.flat, images, preds)):
        draw_prediction(ax, image, pred, model.class_names, f"image {i}")
        print(f"image {i}: {describe(pred, model.class_names)}")
    fig.suptitle(f"{os.path.basename(args.model)}: shapes seed {args.seed}, score >= {args.score_thresh}")
    save_figure_atomic(fig, args.out)
    print(f"{len(images)} images in {seconds:.2f} s; figure written to {args.out}")
    return 0


# ---- summary, ablate --------------------------------------------------------------------------
def add_summary_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="a checkpoint to describe")
    g.add_argument("--config", metavar="JSON_FILE", help="a Config JSON (default: the shapes preset)")


def cmd_summary(args):
    """Print parameters and FLOPs per stage. Returns the exit code."""
    from .config import Config
    from .model import MaskRCNN
    from .summary import format_summary

    if args.model is not None:
        model = checks.load_model_arg(args.model)
    else:
        model = MaskRCNN(checks.config_arg(args.config) if args.config is not None else Config())
    print(format_summary(model))
    return 0


def add_ablate_args(p):
    p.add_argument("--steps", type=int, default=600, help="training steps per variant (default: %(default)s)")
    p.add_argument("--stride", type=int, default=16, choices=(4, 8, 16, 32),
                   help="the single feature stride the RoI heads pool from (default: %(default)s)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of the variants (default: all; see ablate.VARIANTS)")
    p.add_argument("--eval-images", type=int, default=200, help="held-out shapes images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed, the same for every variant")
    p.add_argument("--out", default=os.path.join("runs", "ablation"), help="run folder (default: %(default)s)")
    p.add_argument("--save-dir", default=None,
                   help="also write the table and the RoIAlign / RoIPool models here (the committed "
                        "data/ablation/ is made with --save-dir data/ablation; default: only --out)")


def cmd_ablate(args):
    """The paper's Table 2 on shapes (ablate.py). Returns the exit code."""
    from . import ablate

    try:
        return ablate.run(args, print)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        raise UsageError(str(e)) from None


def add_anchors_args(p):
    p.add_argument("--data", metavar="INSTANCES_JSON", help="a COCO-format dataset (default: "
                   "held-out shapes images at the config's image_size)")
    p.add_argument("--images", metavar="DIR", help="image folder of --data (not read: the sizes "
                   "and boxes come from the JSON)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="a checkpoint whose anchors and transform to measure")
    g.add_argument("--config", metavar="JSON_FILE", help="a Config JSON (default: Config.shipped())")
    p.add_argument("--num-images", type=int, default=200, help="shapes images without --data "
                   "(default: %(default)s)")
    p.add_argument("--out", metavar="FIG.png", help="also draw the fit (histogram, sizes, search)")


def cmd_anchors(args):
    """How the anchors fit a dataset's objects after the transform (anchor_fit.py)."""
    from .anchor_fit import anchor_fit_figure, dataset_samples, fit_anchors
    from .batches import default_dataset
    from .config import Config
    from .model import transform_of

    checks.at_least(args.num_images, 1, "--num-images")
    checks.only_with(args.images, "--images", "--data", args.data)
    if args.out is not None:
        checks.output_file(args.out, "--out")
    if args.model is not None:
        cfg = checks.load_model_arg(args.model).config
    else:
        cfg = checks.config_arg(args.config) if args.config is not None else Config.shipped()
    if args.data is not None:
        checks.input_file(args.data, "--data")
        from .coco import load_coco
        try:
            dataset = load_coco(args.data, args.images)
        except (ValueError, OSError) as e:
            raise UsageError(f"--data: {e}") from None
    else:
        dataset = default_dataset(cfg, args.num_images, VAL_SEED)
    fit = fit_anchors(dataset_samples(dataset, transform_of(cfg)), cfg.anchor_sizes, cfg.anchor_ratios)
    print("\n".join(fit.describe()))
    if args.out is not None:
        from .files import save_figure_atomic

        print(f"figure written to {save_figure_atomic(anchor_fit_figure(fit), args.out)}")
    return 0


# ---- dispatch ---------------------------------------------------------------------------------
COMMANDS = (
    ("train", "train a model from scratch (or resume)", add_train_args, cmd_train),
    ("evaluate", "COCO box and mask AP of a model", add_evaluate_args, cmd_evaluate),
    ("predict", "detect instances in image files", add_predict_args, cmd_predict),
    ("demo", "the shipped model on a few shapes images", add_demo_args, cmd_demo),
    ("summary", "parameters and FLOPs per stage", add_summary_args, cmd_summary),
    ("ablate", "the paper's ablations (Table 2) on shapes", add_ablate_args, cmd_ablate),
    ("anchors", "how the anchors fit a dataset's objects", add_anchors_args, cmd_anchors),
)


def build_parser():
    """Returns: the argparse parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m npmaskrcnn",
        description="Mask R-CNN from scratch in NumPy: " + ", ".join(c[0] for c in COMMANDS) + ".",
        epilog="Outputs go under runs/ of the current folder unless --out says otherwise; the "
               "shipped model is found wherever the command runs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None):
    """Run the command line. Returns the exit code: 0 success, 2 user error (bad argument,
    missing file, diverged training), 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                                  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:                                  # `... | head` closed the pipe
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())

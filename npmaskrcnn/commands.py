"""What each command of the command line does: `cmd_<name>(args) -> exit code`.

Each composes library calls on the options `__main__.py` declared; arguments are checked with
`checks.py` before any output is written, and a user error raises `checks.UsageError` (one line
on stderr, exit code 2). Heavy modules are imported inside the commands, so importing this module
needs only the standard library. This module, `__main__.py` and `viz.log` are all that print.

Naming:
    cfg         a Config
    out         an output folder (created); --out
    dataset     ShapesDataset or CocoDataset: dataset[i] -> (image, target)
"""

import dataclasses
import os
import sys
import time

from npmaskrcnn import checks
from npmaskrcnn.checks import UsageError
from npmaskrcnn.config import VAL_SEED

VAL_IMAGES_DURING_TRAINING = 50
# `predict` with a model that does not resize (min_size None, the shapes preset) shrinks a larger
# image to this longer side (the paper's max_size): an 800 x 1333 image predicts in ~0.5 GB, a
# 4000 x 3000 photo unresized would need ~6 GB
MAX_UNRESIZED_SIDE = 1333


def load_predictor(args):
    """The --model checkpoint, wrapped for inference additions, with --set options applied."""
    from .beyond_paper import WithInferenceAdditions

    model = checks.load_model_arg(args.model, default=getattr(args, "default_model", None))
    if not isinstance(model, WithInferenceAdditions):
        model = WithInferenceAdditions(model)            # so --set may turn an addition on
    try:
        model.set_inference(**checks.inference_options_arg(args.set))
    except (ValueError, TypeError) as e:
        raise UsageError(f"--set: {e}") from None
    return model


# ---- train ------------------------------------------------------------------------------------


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


def cmd_evaluate(args):
    """COCO box and mask AP of --model. Returns the exit code."""
    from .batches import default_dataset
    from .class_map import describe_mapping, label_mapping, relabel
    from .evaluate import (error_breakdown, evaluate_predictions, format_errors, format_metrics,
                           predict_dataset, to_jsonable)
    from .files import write_json_atomic

    if args.num_images is not None:
        checks.at_least(args.num_images, 1, "--num-images")
    checks.at_least(args.batch_size, 1, "--batch-size")
    checks.at_least(args.seed, 0, "--seed")
    checks.only_with(args.images, "--images", "--data", args.data)
    if args.data is not None and args.shapes is not None:
        raise UsageError("--shapes: only meaningful without --data (it sets the shapes generator)")
    model = load_predictor(args)
    for path, arg in ((args.results, "--results"), (args.json, "--json")):
        if path is not None:
            checks.output_file(path, arg)
    if args.data is not None:
        dataset = checks.load_coco_arg(args.data, args.images, "--data", "--images",
                                       args.skip_bad_images)
        try:
            mapping, how = label_mapping(model.class_names, dataset.class_names)
        except ValueError as e:
            raise UsageError(f"--data: {e}") from None
        if args.num_images is not None:
            dataset = dataset.head(args.num_images)
        source = f"{args.data} ({len(dataset)} images)"
    else:
        shapes, n = args.shapes or model.config.shapes, args.num_images or 500
        dataset = default_dataset(dataclasses.replace(model.config, shapes=shapes), n, args.seed)
        source = f"{n} shapes images ({shapes} settings), seed {args.seed}"
        mapping, how = None, "same"
    print(f"evaluating {args.model} on {source}")
    if how != "same":
        print(describe_mapping(mapping, how, model.class_names, dataset.class_names))
    t0 = time.perf_counter()
    predictions = predict_dataset(model, dataset, batch_size=args.batch_size,
                                  progress=not args.no_progress)
    if how != "same":
        predictions = relabel(predictions, mapping)
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


def cmd_ablate(args):
    """The paper's Table 2 on shapes (ablate.py). Returns the exit code."""
    from . import ablate

    try:
        return ablate.run(args, print)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        raise UsageError(str(e)) from None


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

"""Command line: `python -m npmaskrcnn {train,evaluate,predict,demo,summary} --help`.

    python -m npmaskrcnn demo                                   # the shipped model on 6 images
    python -m npmaskrcnn train --out runs/shapes --steps 3000   # train from scratch on shapes
    python -m npmaskrcnn evaluate --model runs/shapes/model.npz # COCO box and mask AP
    python -m npmaskrcnn predict --model runs/shapes/model.npz photo.png --out preds/
    python -m npmaskrcnn summary                                # parameters and FLOPs per stage

Each subcommand is a pair: `add_<name>_args(parser)` declares its options and `cmd_<name>(args)`
runs it and returns the exit code. Inputs are checked before any output folder is created. `main(argv)` parses, dispatches and turns a user error
(`CLIError`: a missing file, an unreadable checkpoint, an invalid config value) into one line on
stderr naming the argument, and exit code 2, without a traceback. This is the only module of the
package (besides `viz.log`) that prints. Heavy imports happen inside the commands, so `--help`
is fast.

Subcommands that live in their own module plug in through PLUGIN_COMMANDS: `ablate` is one.
Its module `npmaskrcnn/ablate.py` defines `add_arguments(parser)` and `run(args, log) -> exit code`
(`log` is the CLI's print: the library itself never prints),
raising ValueError / FileNotFoundError / PermissionError with a message naming the argument for
user errors (printed as one line, exit code 2); once that file exists, `python -m npmaskrcnn
ablate` works without editing this file.

Naming:
    cfg         a Config
    out         an output folder (created); --out
    dataset     ShapesDataset or CocoDataset: dataset[i] -> (image, target)
"""

import os
import sys

if len(sys.argv) > 1 and sys.argv[1] in ("train", "ablate"):
    # Training runs BLAS on one thread (set before numpy loads) and uses the other cores through
    # data-parallel worker processes (parallel.py), which do 1.85x the steps of one process on 2
    # cores; a second OpenBLAS thread gains only ~10% on an idle machine and loses 3-10x as soon
    # as anything else runs, because its threads spin-wait for each other (docs/performance.md).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

DEFAULT_MODEL = os.path.join("data", "shapes_maskrcnn.npz")
VAL_SEED = 10_000                 # evaluation and demo images; training uses seed 0, so disjoint
VAL_IMAGES_DURING_TRAINING = 50
PLUGIN_COMMANDS = ("ablate",)     # subcommands defined by their own module (see the docstring)


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


# ---- argument checks --------------------------------------------------------------------------
def input_file(path, arg):
    """Check that an input file exists.

    Inputs:
    - path: str; arg: the option's name for the message ("--model")
    Returns:
    - path, unchanged; raises CLIError naming `arg` otherwise
    """
    if not os.path.exists(path):
        raise CLIError(f"{arg}: no such file: {path!r}")
    if not os.path.isfile(path):
        raise CLIError(f"{arg}: {path!r} is not a file")
    return path


def input_dir(path, arg):
    """Inputs: a folder path and the option's name. Returns: the path if it is a folder."""
    if not os.path.isdir(path):
        raise CLIError(f"{arg}: no such folder: {path!r}")
    return path


def output_dir(path, arg):
    """Create an output folder (and its parents) and check that it is writable.

    Inputs:
    - path: str; arg: the option's name for the message
    Returns:
    - path; raises CLIError naming `arg` when it cannot be created or written
    """
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise CLIError(f"{arg}: {path!r} exists and is not a folder") from None
    except OSError as e:
        raise CLIError(f"{arg}: cannot create the folder {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"{arg}: the folder {path!r} is not writable")
    return path


def output_file(path, arg):
    """Check an output file's path: its folder is created, and the path is not a folder.

    Inputs:
    - path: str; arg: the option's name for the message
    Returns:
    - path; raises CLIError naming `arg` otherwise
    """
    if os.path.isdir(path):
        raise CLIError(f"{arg}: {path!r} is a folder; expected a file name")
    output_dir(os.path.dirname(os.path.abspath(path)), arg)
    return path


def load_model_arg(path, arg="--model"):
    """Load a checkpoint named on the command line.

    Inputs:
    - path: str; arg: the option's name
    Returns:
    - model: MaskRCNN; CLIError (with how to make the default model) when the file is missing
      or not a valid checkpoint
    """
    from .checkpoint import load_model

    if not os.path.exists(path) and os.path.normpath(path) == os.path.normpath(DEFAULT_MODEL):
        raise CLIError(f"{arg}: the shipped model {path!r} is missing. Make it with "
                       f"`python -m npmaskrcnn train --out runs/shapes` and copy "
                       f"runs/shapes/model.npz to {path}, or pass --model PATH of a trained model "
                       f"(run from the repository root to find data/)")
    input_file(path, arg)
    if not zipfile.is_zipfile(path):
        raise CLIError(f"{arg}: {path!r} is not an .npz checkpoint (not a zip archive; truncated?)")
    try:
        return load_model(path)
    except (ValueError, OSError) as e:
        raise CLIError(f"{arg}: {e}") from None


def load_coco_arg(json_path, image_dir, arg, images_arg):
    """Read a COCO dataset named on the command line.

    Inputs:
    - json_path: instances JSON; image_dir: its image folder or None
    - arg, images_arg: the two options' names for the messages
    Returns:
    - dataset: CocoDataset; CLIError when a file is missing or the JSON is malformed
    """
    from .coco import load_coco

    input_file(json_path, arg)
    if image_dir is not None:
        input_dir(image_dir, images_arg)
    try:
        dataset = load_coco(json_path, image_dir)
    except (ValueError, OSError) as e:
        raise CLIError(f"{arg}: {e}") from None
    if len(dataset) == 0:
        raise CLIError(f"{arg}: {json_path!r} lists no images")
    missing = [dataset.image_path(i) for i in range(len(dataset))
               if not os.path.isfile(dataset.image_path(i))]
    if missing:
        raise CLIError(f"{images_arg}: {len(missing)} image file(s) of {json_path!r} are missing, "
                       f"e.g. {missing[0]!r}; pass the image folder with {images_arg}")
    return dataset


def single_image_size(dataset, arg):
    """Inputs: a CocoDataset and the option's name. Returns: (H, W) shared by all its images."""
    sizes = {}
    for img in dataset.images:
        sizes.setdefault((img["height"], img["width"]), img["file_name"])
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise CLIError(f"{arg}: the images must all have one size (a batch is one array), but "
                       f"{f1!r} is {s1[1]}x{s1[0]} and {f2!r} is {s2[1]}x{s2[0]} (width x height); "
                       f"resize or pad them to one size first")
    return next(iter(sizes))


def shapes_dataset(num_images, seed, image_size):
    """Shapes images at any size: shape sizes scale with the image (16..64 px at 128 px).

    Inputs:
    - num_images, seed, image_size: as ShapesDataset
    Returns:
    - dataset: ShapesDataset
    """
    from .shapes import ShapesDataset

    return ShapesDataset(num_images, seed=seed, image_size=image_size,
                         min_size=max(8, image_size // 8), max_size=image_size // 2)


def read_image(path, arg="images"):
    """Read a PNG/JPEG (or any format PIL reads) as RGB.

    Inputs:
    - path: str; arg: the argument's name for the message
    Returns:
    - image: (H, W, 3) uint8
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    input_file(path, arg)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{arg}: cannot read {path!r} as an image: {e}") from None


def score_thresh_arg(value, arg="--score-thresh"):
    """Inputs: the value of --score-thresh. Returns: it if in [0, 1], else raises CLIError."""
    if not 0 <= value <= 1:                                  # also refuses NaN
        raise CLIError(f"{arg}: expected a number in [0, 1], got {value}")
    return value


def parse_value(text):
    """Inputs: the value of --set key=value. Returns: it parsed as JSON, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args, base=None):
    """The Config of a `train` run: base (or --config, or the default) < --set < dedicated flags.

    Inputs:
    - args: the parsed `train` options
    - base: Config to start from when --config is not given (a resumed checkpoint's), or None
    Returns:
    - cfg: Config; CLIError naming the option for an unknown field or invalid value
    """
    from .config import Config

    if args.config is not None:
        input_file(args.config, "--config")
        try:
            with open(args.config) as f:
                cfg = Config.from_json(f.read())
        except (ValueError, TypeError, AttributeError) as e:
            raise CLIError(f"--config: {args.config!r} is not a valid Config JSON: {e}") from None
    else:
        cfg = base if base is not None else Config()
    d = cfg.to_dict()
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set: expected key=value, got {item!r}")
        d[key.strip()] = parse_value(value)
    try:
        cfg = Config.from_dict(d)
    except (ValueError, TypeError) as e:
        raise CLIError(f"--set: {e}") from None
    flags = (("--steps", "train_steps", args.steps), ("--batch-size", "batch_size", args.batch_size),
             ("--lr", "lr", args.lr), ("--seed", "seed", args.seed))
    for flag, field, value in flags:
        if value is None:
            continue
        d[field] = value
        try:
            cfg = Config.from_dict(d)
        except (ValueError, TypeError) as e:
            raise CLIError(f"{flag}: {e}") from None
    return cfg


def to_jsonable(x):
    """Inputs: metrics (dicts, lists, numpy arrays, floats). Returns: plain JSON, NaN -> null."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def save_figure_atomic(fig, path):
    """Write a matplotlib figure to `path` as PNG (temporary file + rename), then close it."""
    import matplotlib.pyplot as plt

    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    except OSError as e:
        raise CLIError(f"cannot write the figure {path!r}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)


def draw_prediction(ax, image, pred, class_names, title):
    """Draw one image with its detections (viz.draw_instances), or the bare image if none.

    Inputs:
    - ax: matplotlib Axes; image: (H, W, 3) uint8; pred: prediction dict; class_names: K names
    - title: axis title
    Returns: nothing
    """
    from .viz import draw_instances

    if len(pred["scores"]) == 0:                  # viz.draw_boxes cannot take zero boxes yet
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        return
    draw_instances(ax, image, pred["boxes"], pred["labels"], pred["masks"], pred["scores"],
                   class_names=class_names, title=title)


def keep_confident(pred, score_thresh):
    """Inputs: one prediction dict and a threshold. Returns: the detections scoring >= it."""
    keep = pred["scores"] >= score_thresh
    return {k: v[keep] for k, v in pred.items()}


def describe(pred, class_names):
    """Inputs: one prediction dict and the class names. Returns: a one-line text of it."""
    if len(pred["scores"]) == 0:
        return "no detections"
    parts = []
    for box, label, score in zip(pred["boxes"], pred["labels"], pred["scores"]):
        x1, y1, x2, y2 = (float(v) for v in box)
        parts.append(f"{class_names[int(label) - 1]} {float(score):.2f} "
                     f"[{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    return "; ".join(parts)


# ---- train ------------------------------------------------------------------------------------
def add_train_args(p):
    p.add_argument("--out", default=os.path.join("runs", "shapes"),
                   help="run folder: checkpoint.npz, model.npz, log.csv, loss_curve.png, eval.jsonl "
                        "(default: %(default)s)")
    p.add_argument("--config", metavar="JSON_FILE", help="a Config as JSON (Config.to_json); the "
                   "other options override it. Default: the shapes preset (or, with --resume, "
                   "the checkpoint's config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any Config field, value parsed as JSON when possible "
                        "(repeatable), e.g. --set pooler=roi_pool --set 'pooler_levels=[4]'")
    p.add_argument("--steps", type=int, help="optimizer steps (Config.train_steps)")
    p.add_argument("--batch-size", type=int, help="images per step (Config.batch_size)")
    p.add_argument("--lr", type=float, help="peak learning rate (Config.lr)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data and sampling (Config.seed)")
    p.add_argument("--data", metavar="INSTANCES_JSON",
                   help="train on a COCO-format dataset instead of shapes (all images one size); "
                        "its categories set the class names and num_classes")
    p.add_argument("--images", metavar="DIR", help="image folder of --data (default: beside the JSON)")
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
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes computing the gradient shards (config grad_shards) in parallel; "
                        "the result does not depend on it (default: one per core, at most "
                        "grad_shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_train(args):
    """Train (or resume) a model into --out. Returns the exit code."""
    from .checkpoint import load_checkpoint
    from .train import TrainingDiverged, train

    for name in ("steps", "batch_size", "workers", "eval_every", "checkpoint_every"):
        v = getattr(args, name)
        positive = name in ("steps", "batch_size", "workers")
        if v is not None and v < (1 if positive else 0):
            raise CLIError(f"--{name.replace('_', '-')}: expected a "
                           f"{'positive' if positive else 'non-negative'} "
                           f"integer, got {v}")
    if args.images is not None and args.data is None:
        raise CLIError("--images: only meaningful with --data")
    if args.val_images is not None and args.val_data is None:
        raise CLIError("--val-images: only meaningful with --val-data")
    base = None
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    if args.resume:
        input_file(ckpt_path, "--resume (OUT/checkpoint.npz)")
        try:
            base = load_checkpoint(ckpt_path)["config"]
        except (ValueError, OSError) as e:
            raise CLIError(f"--resume: {e}") from None
    cfg = build_config(args, base)

    dataset, class_names = None, None
    if args.data is not None:
        dataset = load_coco_arg(args.data, args.images, "--data", "--images")
        single_image_size(dataset, "--data")
        class_names = dataset.class_names
        if cfg.num_classes != len(class_names):
            cfg = type(cfg).from_dict({**cfg.to_dict(), "num_classes": len(class_names)})
    else:
        dataset = shapes_dataset(cfg.train_steps * cfg.batch_size, cfg.seed, cfg.image_size)
    val = None
    if args.val_data is not None:
        val = load_coco_arg(args.val_data, args.val_images, "--val-data", "--val-images")
        if class_names is not None and tuple(val.class_names) != tuple(class_names):
            raise CLIError(f"--val-data: its classes {val.class_names} differ from --data's "
                           f"{class_names}")
    elif args.eval_every and args.data is None:
        val = shapes_dataset(VAL_IMAGES_DURING_TRAINING, VAL_SEED, cfg.image_size)
    if args.resume and base != cfg:
        raise CLIError("--resume: the options change the checkpoint's config; resume with the "
                       "same config (drop --config / --set / --steps ..., or use a new --out)")

    out = output_dir(args.out, "--out")
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(cfg.to_json())
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
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last checkpoint is {ckpt_path} (every "
              f"{args.checkpoint_every} steps): continue with --resume", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - t0
    print(f"wall time {seconds:.1f} s ({seconds / 60:.1f} min)")
    print(f"model written to {os.path.join(out, 'model.npz')}")
    return 0


# ---- evaluate ---------------------------------------------------------------------------------
def add_evaluate_args(p):
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (default: %(default)s)")
    p.add_argument("--data", metavar="INSTANCES_JSON", help="a COCO-format dataset (default: shapes)")
    p.add_argument("--images", metavar="DIR", help="image folder of --data (default: beside the JSON)")
    p.add_argument("--num-images", type=int, default=500, help="shapes images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED,
                   help="seed of the shapes images (default: %(default)s, disjoint from training's 0)")
    p.add_argument("--batch-size", type=int, default=8, help="images per predict call")
    p.add_argument("--results", metavar="PATH", help="write the COCO results JSON here")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON here")
    add_inference_set_arg(p)
    p.add_argument("--errors", action="store_true",
                   help="also break the mask AP50 down by error type (evaluate.error_breakdown)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_inference_set_arg(p):
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an inference option of the model's config (repeatable): "
                        + ", ".join(INFERENCE_FIELDS) + "; e.g. --set test_flip=true")


INFERENCE_FIELDS = ("box_refine", "mask_rescore", "test_flip", "box_from_mask", "box_score_thresh",
                    "box_nms_thresh",
                    "detections_per_img", "mask_threshold", "rpn_pre_nms_top_n_test",
                    "rpn_post_nms_top_n_test", "rpn_nms_thresh")


def set_inference_options(model, items):
    """Apply `--set key=value` items (inference fields only) to a loaded model's config."""
    from .config import Config

    d = model.config.to_dict()
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--set: expected key=value, got {item!r}")
        if key not in INFERENCE_FIELDS:
            raise CLIError(f"--set: {key!r} is not an inference option; expected one of "
                           f"{', '.join(INFERENCE_FIELDS)}")
        d[key] = parse_value(value)
    try:
        cfg = Config.from_dict(d)
    except (ValueError, TypeError) as e:
        raise CLIError(f"--set: {e}") from None
    old = model.config
    for m in model.modules():
        if getattr(m, "cfg", None) is old:
            m.cfg = cfg
    model.config = cfg


def cmd_evaluate(args):
    """COCO box and mask AP of --model. Returns the exit code."""
    from .coco import write_json_atomic
    from .evaluate import (error_breakdown, evaluate_predictions, format_errors, format_metrics,
                           predict_dataset)

    if args.num_images < 1 or args.batch_size < 1:
        raise CLIError(f"--{'num-images' if args.num_images < 1 else 'batch-size'}: expected a "
                       f"positive integer")
    if args.images is not None and args.data is None:
        raise CLIError("--images: only meaningful with --data")
    if args.seed < 0:
        raise CLIError(f"--seed: expected a non-negative integer, got {args.seed}")
    model = load_model_arg(args.model)
    set_inference_options(model, args.set)
    for path, arg in ((args.results, "--results"), (args.json, "--json")):
        if path is not None:
            output_file(path, arg)
    if args.data is not None:
        dataset = load_coco_arg(args.data, args.images, "--data", "--images")
        if len(dataset.class_names) != model.config.num_classes:
            raise CLIError(f"--data: {len(dataset.class_names)} classes {dataset.class_names}, but "
                           f"the model has {model.config.num_classes} {model.class_names}")
        single_image_size(dataset, "--data")
        source = args.data
    else:
        dataset = shapes_dataset(args.num_images, args.seed, model.config.image_size)
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


# ---- predict ----------------------------------------------------------------------------------
def add_predict_args(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG / JPEG files")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (default: %(default)s)")
    p.add_argument("--out", default=os.path.join("runs", "predict"),
                   help="folder for <name>.png figures and detections.json (default: %(default)s)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")
    add_inference_set_arg(p)


def cmd_predict(args):
    """Detect instances in image files; one figure per image and one detections JSON."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .coco import encode_masks, write_json_atomic
    score_thresh_arg(args.score_thresh)
    images = [read_image(path, "IMAGE") for path in args.images]
    model = load_model_arg(args.model)
    set_inference_options(model, args.set)
    out = output_dir(args.out, "--out")
    names, used, entries = model.class_names, set(), []
    for path, image in zip(args.images, images):
        pred = keep_confident(model.predict(image)[0], args.score_thresh)
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem, 1
        while name in used:                                  # two inputs a/x.png and b/x.png
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        fig, ax = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1]))
        draw_prediction(ax, image, pred, names, f"{os.path.basename(path)}: "
                        f"{len(pred['scores'])} detections (score >= {args.score_thresh})")
        figure = os.path.join(out, name + ".png")
        save_figure_atomic(fig, figure)
        rles = encode_masks(pred["masks"])
        entries.append({
            "file": path, "figure": figure, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "detections": [{"box": [float(v) for v in box], "label": int(label),
                            "class_name": names[int(label) - 1], "score": float(score), "mask": rle}
                           for box, label, score, rle in zip(pred["boxes"], pred["labels"],
                                                             pred["scores"], rles)]})
        print(f"{path}: {describe(pred, names)}")
    detections = os.path.join(out, "detections.json")
    write_json_atomic({"model": args.model, "class_names": list(names),
                       "score_thresh": args.score_thresh, "box_format": "x1, y1, x2, y2 pixels",
                       "mask_format": "COCO compressed RLE", "images": entries}, detections)
    print(f"figures and {detections} written to {out}")
    return 0


# ---- demo -------------------------------------------------------------------------------------
def add_demo_args(p):
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=6, help="shapes images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED, help="seed of the images (default: %(default)s)")
    p.add_argument("--out", default=os.path.join("walkthroughs", "out", "demo.png"),
                   help="the figure (default: %(default)s)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")
    add_inference_set_arg(p)


def cmd_demo(args):
    """The model on a few fresh shapes images: a figure grid and the detections, printed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.num_images < 1:
        raise CLIError(f"--num-images: expected a positive integer, got {args.num_images}")
    if args.seed < 0:
        raise CLIError(f"--seed: expected a non-negative integer, got {args.seed}")
    score_thresh_arg(args.score_thresh)
    model = load_model_arg(args.model)
    set_inference_options(model, args.set)
    output_file(args.out, "--out")
    dataset = shapes_dataset(args.num_images, args.seed, model.config.image_size)
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


# ---- summary ----------------------------------------------------------------------------------
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
        model = load_model_arg(args.model)
    else:
        cfg = Config()
        if args.config is not None:
            input_file(args.config, "--config")
            try:
                with open(args.config) as f:
                    cfg = Config.from_json(f.read())
            except (ValueError, TypeError, AttributeError) as e:
                raise CLIError(f"--config: {args.config!r} is not a valid Config JSON: {e}") from None
        model = MaskRCNN(cfg)
    print(format_summary(model))
    return 0


# ---- dispatch ---------------------------------------------------------------------------------
COMMANDS = (
    ("train", "train a model from scratch (or resume)", add_train_args, cmd_train),
    ("evaluate", "COCO box and mask AP of a model", add_evaluate_args, cmd_evaluate),
    ("predict", "detect instances in image files", add_predict_args, cmd_predict),
    ("demo", "the shipped model on a few shapes images", add_demo_args, cmd_demo),
    ("summary", "parameters and FLOPs per stage", add_summary_args, cmd_summary),
)


def plugin_commands():
    """Subcommands of PLUGIN_COMMANDS whose module exists and defines add_arguments and run.

    Returns:
    - list of (name, help, add_arguments, run)
    """
    found = []
    for name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(f"{__package__ or 'npmaskrcnn'}.{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f".{name}"):
                continue
            raise
        if hasattr(module, "add_arguments") and hasattr(module, "run"):
            doc = (module.__doc__ or name).strip().splitlines()[0]
            found.append((name, doc, module.add_arguments, _user_errors_to_cli(module.run)))
    return found


def _user_errors_to_cli(run):
    """Inputs: a plugin's run(args, log). Returns: run(args) printing through `print`, with
    ValueError / OSError raised as CLIError."""
    def wrapped(args):
        try:
            return run(args, print)
        except (ValueError, FileNotFoundError, PermissionError) as e:
            raise CLIError(str(e)) from None
    return wrapped


def build_parser():
    """Returns: the argparse parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m npmaskrcnn",
        description="Mask R-CNN from scratch in NumPy: train, evaluate, predict, demo, summary.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, add_args, run in COMMANDS + tuple(plugin_commands()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv=None):
    """Run the command line.

    Inputs:
    - argv: list of str (default sys.argv[1:])
    Returns:
    - exit code: 0 success, 2 user error (bad argument, missing file, diverged training)
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                                  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.run(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:                                  # `... | head` closed the pipe
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())

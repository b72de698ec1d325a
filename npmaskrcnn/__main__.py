"""Command line: `python -m npmaskrcnn {train,evaluate,predict,demo,summary,ablate,anchors} --help`.

    python -m npmaskrcnn demo                                   # the shipped model on 6 images
    python -m npmaskrcnn train --out runs/shapes --steps 3000   # train from scratch on shapes
    python -m npmaskrcnn evaluate --model runs/shapes/model.npz # COCO box and mask AP
    python -m npmaskrcnn predict --model runs/shapes/model.npz photo.png --out preds/
    python -m npmaskrcnn summary                                # parameters and FLOPs per stage
    python -m npmaskrcnn ablate --steps 500                     # the paper's Table 2 on shapes
    python -m npmaskrcnn anchors --data instances.json          # do the anchors fit the objects?
    python -m npmaskrcnn import-torchvision coco.pth --out coco.npz   # torchvision's COCO weights
    python -m npmaskrcnn export-torchvision coco.npz --out coco.pth  # ... and back

This file declares the arguments and dispatches: each subcommand is `add_<name>_args(parser)`
here and `cmd_<name>(args) -> exit code` in `commands.py` (`torchvision_cli.py` for the two
torchvision commands). A user error (`checks.UsageError`)
becomes one line on stderr naming the argument, and exit code 2. Heavy imports happen inside the
commands, so `--help` needs only the standard library.
"""

import os
import sys

if len(sys.argv) > 1 and sys.argv[1] in ("train", "ablate"):
    from npmaskrcnn.runtime import single_threaded_env   # before numpy loads (runtime.py says why)

    single_threaded_env()

import argparse  # noqa: E402

from npmaskrcnn import checks  # noqa: E402
from npmaskrcnn.commands import (VAL_IMAGES_DURING_TRAINING, cmd_ablate, cmd_anchors,  # noqa: E402
                                 cmd_demo, cmd_evaluate, cmd_predict, cmd_summary, cmd_train)
from npmaskrcnn.checks import UsageError  # noqa: E402
from npmaskrcnn.config import ADDITION_INFERENCE_FIELDS, PAPER_INFERENCE_FIELDS, VAL_SEED  # noqa: E402
from npmaskrcnn.torchvision_cli import cmd_export_torchvision, cmd_import_torchvision  # noqa: E402

DEFAULT_MODEL = checks.shipped_model_path()
CLIError = UsageError                                      # the name earlier versions used


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


def add_model_args(p):
    p.set_defaults(default_model=DEFAULT_MODEL)
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
    p.add_argument("--num-images", type=int, default=None,
                   help="shapes images (default: 500); with --data, its first N images (default: all)")
    p.add_argument("--seed", type=int, default=VAL_SEED,
                   help="seed of the shapes images (default: %(default)s, disjoint from training's 0)")
    p.add_argument("--shapes", choices=("gentle", "hard", "large"),
                   help="generator settings of the shapes images (default: those the model was "
                        "trained on, its Config.shapes; shapes.GENTLE / HARD / LARGE)")
    p.add_argument("--batch-size", type=int, default=8, help="images per predict call")
    p.add_argument("--results", metavar="PATH", help="write the COCO results JSON here")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON here")
    p.add_argument("--errors", action="store_true",
                   help="also break the mask AP50 down by error type (evaluate.error_breakdown)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_predict_args(p):
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...; any size; grayscale, RGBA, palette and 16-bit "
                        "are converted to 8-bit RGB, each conversion stated)")
    add_model_args(p)
    p.add_argument("--out", default=os.path.join("runs", "predict"),
                   help="folder for <name>.png figures and detections.json (default: %(default)s)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")


def add_demo_args(p):
    add_model_args(p)
    p.add_argument("--num-images", type=int, default=6, help="shapes images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=VAL_SEED, help="seed of the images (default: %(default)s)")
    p.add_argument("--out", default=os.path.join("runs", "demo.png"),
                   help="the figure (default: %(default)s, under the current folder)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")


def add_summary_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="a checkpoint to describe")
    g.add_argument("--config", metavar="JSON_FILE", help="a Config JSON (default: the shapes preset)")


def add_ablate_args(p):
    p.add_argument("--steps", type=int, default=600, help="training steps per model (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2",
                   help="comma-separated training seeds, each row trained once per seed (default: "
                        "%(default)s); the table shows mean +- std")
    p.add_argument("--stride", type=int, default=None, choices=(4, 8, 16, 32),
                   help="train every chosen variant at this one RoI feature stride (a flat table) "
                        "instead of the paper's sections (2b, 2c, aligned at 16; 2d at 32; 2e FPN)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of the variants (default: all; see ablate.VARIANTS)")
    p.add_argument("--eval-images", type=int, default=300, help="held-out shapes images (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a Config field of the baseline for every row (repeatable), e.g. --set "
                        "box_batch_size_per_image=64; not the fields the table sets (ablate.TABLE_FIELDS)")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="first train the FPN baseline this many steps on other shapes images and start "
                        "every model's ResNet body from its body, as the paper's models start from "
                        "ImageNet (default: %(default)s, every model from scratch)")
    p.add_argument("--body-from", metavar="MODEL.npz", default=None,
                   help="start every model's ResNet body from the body of this model instead (e.g. an "
                        "earlier table's OUT/pretrain/model.npz); not with --pretrain-steps")
    p.add_argument("--workers", type=int, default=None,
                   help="models trained at once, one process each on one core (default: the cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the table in --out / --save-dir if there is one, and retrain the "
                        "models an interrupted run had finished")
    p.add_argument("--out", default=os.path.join("runs", "ablation"), help="run folder (default: %(default)s)")
    p.add_argument("--save-dir", default=None,
                   help="also write the table and the RoIAlign / RoIPool models here (the committed "
                        "data/ablation/ is made with --save-dir data/ablation; default: only --out)")


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


def add_import_torchvision_args(p):
    p.add_argument("weights", metavar="WEIGHTS", help="a torchvision maskrcnn_resnet50_fpn state dict "
                   "(.pth, e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth; loaded with weights_only=True)")
    p.add_argument("--out", required=True, metavar="MODEL.npz", help="the checkpoint to write")
    p.add_argument("--bn-eps", type=float, default=None,
                   help="the BatchNorm eps the weights run with (default: 0 for a file without "
                        "num_batches_tracked, as torchvision's COCO weights; 1e-5 with them)")


def add_export_torchvision_args(p):
    p.add_argument("model", metavar="MODEL.npz", help="a checkpoint of torchvision's architecture "
                   "(Config.torchvision_r50_fpn, e.g. made by import-torchvision)")
    p.add_argument("--out", required=True, metavar="WEIGHTS.pth", help="the state dict to write")


COMMANDS = (
    ("train", "train a model from scratch (or resume)", add_train_args, cmd_train),
    ("evaluate", "COCO box and mask AP of a model", add_evaluate_args, cmd_evaluate),
    ("predict", "detect instances in image files", add_predict_args, cmd_predict),
    ("demo", "the shipped model on a few shapes images", add_demo_args, cmd_demo),
    ("summary", "parameters and FLOPs per stage", add_summary_args, cmd_summary),
    ("ablate", "the paper's ablations (Table 2) on shapes", add_ablate_args, cmd_ablate),
    ("anchors", "how the anchors fit a dataset's objects", add_anchors_args, cmd_anchors),
    ("import-torchvision", "torchvision Mask R-CNN weights -> a checkpoint (needs torch)",
     add_import_torchvision_args, cmd_import_torchvision),
    ("export-torchvision", "a checkpoint -> torchvision Mask R-CNN weights (needs torch)",
     add_export_torchvision_args, cmd_export_torchvision),
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

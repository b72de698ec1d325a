"""Looking inside: `log(name, array)` and the pictures the walkthroughs draw.

The walkthroughs (`walkthroughs/NN_stage.py`) run one stage of Mask R-CNN at a time and show
every intermediate twice: as one `log` line (name, shape, dtype, min, max, in the spirit of
matterport's inspect notebooks) and as a PNG. This module holds what they share: where the PNGs
go, how they are written, and the drawing helpers (instances with masks, boxes, bin grids,
feature maps). Run as a script, matplotlib uses the Agg backend (no screen needed) and every
figure is saved as PNG; run as a notebook (Jupyter or VS Code, any IPython kernel), each figure
is also displayed inline where `save_figure` is called. `log` is the only function of the
library that prints.

Shape shorthand:
    H, W    image (or feature map) height and width     M   instances     C   channels

Naming:
    out_dir     the folder the figures go to: `--out DIR` on a walkthrough's command line, else
                the environment variable NPMASKRCNN_OUT, else `walkthroughs/out/` in the repo
    fast        `--fast` (or NPMASKRCNN_FAST=1): smaller sizes so a walkthrough runs in seconds
    model       `--model coco.npz` (or NPMASKRCNN_COCO_MODEL): a COCO model (real_photo.py) for
                the "on a real photo" sections of walkthroughs 02, 04, 06, 07 and 09
    boxes       (M, 4) x1, y1, x2, y2 in pixels (image coordinates: pixel (r, c) covers
                [c, c+1) x [r, r+1), so a box edge drawn at x lies on a pixel boundary)
"""

import argparse
import os
import sys

import matplotlib


def in_notebook():
    """True inside an IPython kernel (Jupyter, VS Code's interactive window, nbclient)."""
    return "ipykernel" in sys.modules


if not in_notebook():
    matplotlib.use("Agg")                       # scripts and tests: no screen; a kernel keeps inline
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .files import save_figure_atomic  # noqa: E402
from .real_photo import COCO_MODEL_ENV, HINT, coco_model_path, load_photo_model  # noqa: E402
from .shapes import CLASS_NAMES  # noqa: E402

OUT_ENV = "NPMASKRCNN_OUT"
FAST_ENV = "NPMASKRCNN_FAST"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "walkthroughs", "out")

# distinct, readable on light and dark backgrounds (matplotlib's tab10 without grey)
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                    (148, 103, 189), (140, 86, 75), (227, 119, 194), (188, 189, 34),
                    (23, 190, 207)], dtype=np.float64) / 255.0


def log(name, array):
    """Print one line describing an array: name, shape, dtype, min, max.

    Inputs:
    - name: str
    - array: anything np.asarray accepts (an empty array prints no min/max)
    Returns: nothing
    """
    a = np.asarray(array)
    if a.size == 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        stats = ""
    else:
        lo, hi = a.min(), a.max()
        if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
            stats = f"min: {int(lo):>10d}  max: {int(hi):>10d}"
        else:
            stats = f"min: {float(lo):>10.5g}  max: {float(hi):>10.5g}"
    print(f"{name:<28s} shape: {str(a.shape):<20s} {str(a.dtype):<8s} {stats}".rstrip())


def parse_walkthrough_args(argv=None):
    """Read a walkthrough's command line: `--out DIR`, `--fast` and `--model PATH`.

    `--out` sets NPMASKRCNN_OUT (so `out_dir()` and any child process see it), `--fast` sets
    NPMASKRCNN_FAST=1, `--model` sets NPMASKRCNN_COCO_MODEL (checked here, before the walkthrough
    runs: `real_photo.coco_model_path`). Unknown arguments are ignored, so the same cell also runs inside
    Jupyter (whose kernel gets `-f kernel.json`) or under pytest.

    Inputs:
    - argv: list of str, default sys.argv[1:]
    Returns:
    - args: namespace with `out` (str, the figure folder), `fast` (bool) and `model` (str, the
      COCO model's checkpoint, or None)
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--out", default=None, help="folder for the figures")
    parser.add_argument("--fast", action="store_true", help="smaller sizes, runs in seconds")
    parser.add_argument("--model", default=None, help="a COCO model (torchvision preset) checkpoint")
    args, _ = parser.parse_known_args(argv)
    if args.out is not None:
        os.environ[OUT_ENV] = os.path.abspath(args.out)
    if args.fast:
        os.environ[FAST_ENV] = "1"
    if args.model is not None:
        os.environ[COCO_MODEL_ENV] = os.path.abspath(args.model)
    args.fast = is_fast()
    args.out = out_dir()
    args.model = coco_model_path(os.environ.get(COCO_MODEL_ENV))
    return args


def is_fast():
    """True when the walkthrough should run in fast mode (`--fast` or NPMASKRCNN_FAST=1)."""
    return os.environ.get(FAST_ENV, "") not in ("", "0")


def out_dir():
    """The figure folder (see Naming), created on demand. Returns its absolute path."""
    path = os.path.abspath(os.environ.get(OUT_ENV) or DEFAULT_OUT)
    os.makedirs(path, exist_ok=True)
    return path


def save_figure(fig, name, dpi=100):
    """Write `fig` as `<out_dir>/<name>.png` atomically (displayed inline first in a notebook),
    then close it.

    Inputs:
    - fig: matplotlib Figure
    - name: file name, with or without ".png"
    - dpi: resolution
    Returns:
    - path: str, where the PNG is
    """
    if not name.endswith(".png"):
        name += ".png"
    if in_notebook():                                        # show it in the cell's output
        from IPython.display import display
        display(fig)
    return save_figure_atomic(fig, os.path.join(out_dir(), name), dpi=dpi)


def color(i):
    """RGB floats in [0, 1] of instance (or series) i, cycling through PALETTE."""
    return PALETTE[i % len(PALETTE)]


def class_color(label):
    """The colour of class `label` (1..K) in every figure: PALETTE[label - 1]."""
    return color(int(label) - 1)


def draw_boxes(ax, boxes, color="red", linestyle="-", linewidth=2.0, label=None, captions=None,
               fontsize=8):
    """Outline boxes on an axis in pixel coordinates.

    Inputs:
    - ax: matplotlib Axes showing an image with imshow's default extent (pixel centres at
      integers), so a box edge at x is drawn at x - 0.5
    - boxes: (M, 4) x1, y1, x2, y2
    - color: one colour for all boxes, or a list of M colours
    - linestyle, linewidth: of the outlines
    - label: legend entry (given to the first box only)
    - captions: optional list of M strings written at each box's top-left corner
    Returns: nothing
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    colors = color if isinstance(color, (list, tuple)) and len(boxes) and len(color) == len(boxes) \
        and not isinstance(color[0], (int, float)) else [color] * len(boxes)
    height = abs(np.diff(ax.get_ylim())[0])
    texts = []
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                               edgecolor=colors[k], linestyle=linestyle, linewidth=linewidth,
                               label=label if k == 0 else None))
        if captions is not None:
            inside = y1 < 0.08 * height          # no room above the box: write inside it
            texts.append(ax.text(x1 - 0.5, y1 + 0.5 if inside else y1 - 1.5, captions[k],
                                 color="white", fontsize=fontsize, va="top" if inside else "bottom",
                                 ha="left", clip_on=True,
                                 bbox=dict(facecolor=colors[k], edgecolor="none", alpha=0.8, pad=1.0)))
    separate_labels(ax, texts)


def separate_labels(ax, texts, rounds=20):
    """Move text labels down (in steps of their own height) until no two overlap on screen."""
    if len(texts) < 2:
        return
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for t in sorted(texts, key=lambda t: t.get_position()[1]):
        for _ in range(rounds):
            box = t.get_window_extent(renderer).expanded(1.05, 1.1)
            hit = next((b for b in placed if box.overlaps(b)), None)
            if hit is None:
                break
            x, y = t.get_position()                      # data coordinates; y grows downwards
            (_, y0), (_, y1) = ax.transData.inverted().transform([(0, box.y0), (0, box.y1)])
            t.set_position((x, y + abs(y1 - y0)))
        placed.append(t.get_window_extent(renderer))


def draw_instances(ax, image, boxes, labels, masks=None, scores=None, class_names=CLASS_NAMES,
                   title=None, alpha=0.45, legend=True):
    """Draw an image with its instances: translucent coloured masks, box outlines, captions.

    Inputs:
    - ax: matplotlib Axes
    - image: (H, W, 3) uint8
    - boxes: (M, 4) x1, y1, x2, y2 pixels
    - labels: (M,) int in 1..K
    - masks: optional (M, H, W) bool (or probabilities, thresholded at 0.5)
    - scores: optional (M,) float, appended to the captions ("circle 0.97")
    - class_names: names of labels 1..K
    - title: optional axis title
    - alpha: opacity of the mask colours
    - legend: a legend of the class colours (one colour per class, the same in every figure)
    Returns: nothing
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    canvas = np.asarray(image, dtype=np.float64) / 255.0
    colors = [class_color(lab) for lab in labels]
    if masks is not None:
        for k, mask in enumerate(np.asarray(masks)):
            m = mask >= 0.5 if mask.dtype != bool else mask
            canvas[m] = (1 - alpha) * canvas[m] + alpha * colors[k]
    ax.imshow(canvas, interpolation="nearest")
    if masks is not None:
        for k, mask in enumerate(np.asarray(masks)):
            if np.any(mask):
                ax.contour(np.asarray(mask, dtype=np.float64), levels=[0.5], colors=[colors[k]],
                           linewidths=1.0)
    captions = []
    for k, lab in enumerate(labels):
        name = class_names[lab - 1] if 1 <= lab <= len(class_names) else str(lab)
        captions.append(name if scores is None else f"{name} {float(scores[k]):.2f}")
    draw_boxes(ax, boxes, colors, captions=captions)
    if legend and len(labels):
        from matplotlib.patches import Patch

        present = sorted(set(int(v) for v in labels))
        ax.legend(handles=[Patch(color=class_color(v), label=class_names[v - 1] if 1 <= v <= len(class_names)
                                 else str(v)) for v in present],
                  fontsize=6, loc="lower right", framealpha=0.7, handlelength=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=10)


def draw_grid(ax, x1, y1, x2, y2, rows, cols, color="white", linestyle="-", linewidth=1.0,
              label=None, offset=0.0):
    """Draw a rectangle divided into rows x cols equal bins (e.g. the bins of an RoI).

    Inputs:
    - ax: matplotlib Axes
    - x1, y1, x2, y2: the rectangle, in the axis' coordinates
    - rows, cols: bins along y and x
    - color, linestyle, linewidth: of the lines
    - label: legend entry
    - offset: added to every coordinate (-0.5 to draw continuous cell coordinates, where cell
      i covers [i, i+1), over an imshow whose cell centres are at integers)
    Returns: nothing
    """
    xs = np.linspace(x1, x2, cols + 1) + offset
    ys = np.linspace(y1, y2, rows + 1) + offset
    for k, x in enumerate(xs):
        ax.plot([x, x], [ys[0], ys[-1]], color=color, linestyle=linestyle, linewidth=linewidth,
                label=label if k == 0 else None)
    for y in ys:
        ax.plot([xs[0], xs[-1]], [y, y], color=color, linestyle=linestyle, linewidth=linewidth)


def show_feature_maps(maps, titles=None, ncols=8, cmap="viridis", symmetric=False, suptitle=None,
                      size=1.6, colorbar=False):
    """A grid of 2-D maps (feature maps, filters, gradients), one small panel each.

    Inputs:
    - maps: (C, H, W) array or a list of 2-D arrays
    - titles: optional list of C panel titles
    - ncols: panels per row
    - cmap: colour map; symmetric=True centres it at 0 (for gradients and filters, with "RdBu_r")
    - suptitle: figure title
    - size: inches per panel
    - colorbar: add one colour bar per panel
    Returns:
    - fig: the matplotlib Figure (save it with save_figure)
    """
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    ncols = max(1, min(ncols, len(maps)))
    nrows = -(-len(maps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.4 * colorbar * ncols,
                                                    size * nrows + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(maps):
            ax.axis("off")
            continue
        m = maps[k]
        if symmetric:
            v = float(np.abs(m).max()) or 1.0
            im = ax.imshow(m, cmap=cmap, vmin=-v, vmax=v, interpolation="nearest")
        else:
            im = ax.imshow(m, cmap=cmap, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[k], fontsize=8)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def draw_loss_curves(rows, title="training losses", window=None):
    """The losses of a training log, one panel each, plus the learning rate and gradient norm.

    Inputs:
    - rows: list of dicts (the rows of `train`'s log.csv, as `train.read_log` returns them or as
      `train.train` returns them) with "step", "loss", the five loss_* keys, "lr", "grad_norm"
    - title: figure title
    - window: moving-average width drawn over the raw values; default len(rows) // 20 (none if < 3)
    Returns:
    - fig: the matplotlib Figure (save it with save_figure)
    """
    keys = ["loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
            "loss_mask"]
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    window = max(len(rows) // 20, 1) if window is None else int(window)
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.6))
    panels = [(k, k) for k in keys] + [("lr", "learning rate"), ("grad_norm", "gradient norm")]
    for ax, (key, name) in zip(axes.flat, panels):
        v = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
        smooth = window >= 3 and len(v) > window and key != "lr"
        ax.plot(steps, v, color="lightgrey" if smooth else "tab:blue", lw=1, label="per step")
        if smooth:
            avg = np.convolve(v, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], avg, color="tab:blue", lw=2, label=f"mean of {window}")
            ax.legend(fontsize=7)
        finite = v[np.isfinite(v)]
        if key != "lr" and finite.size and finite.min() > 0:
            ax.set_yscale("log")                           # every loss (and the norm) on a log axis
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(name if key in ("lr", "grad_norm") else "loss")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def draw_prediction(ax, image, pred, class_names, title):
    """Draw one image with its detections (draw_instances), or the bare image if there are none."""
    if len(pred["scores"]) == 0:
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        return
    draw_instances(ax, image, pred["boxes"], pred["labels"], pred["masks"], pred["scores"],
                   class_names=class_names, title=title)


def keep_confident(pred, score_thresh):
    """The detections of one prediction dict scoring >= score_thresh."""
    keep = pred["scores"] >= score_thresh
    return {k: v[keep] for k, v in pred.items()}


def describe(pred, class_names, limit=10):
    """A one-line text of one prediction dict: "circle 0.98 [x1, y1, x2, y2]; ..." (the first
    `limit` detections, then how many more)."""
    if len(pred["scores"]) == 0:
        return "no detections"
    parts = []
    for box, label, score in list(zip(pred["boxes"], pred["labels"], pred["scores"]))[:limit]:
        x1, y1, x2, y2 = (float(v) for v in box)
        parts.append(f"{class_names[int(label) - 1]} {float(score):.2f} "
                     f"[{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    more = len(pred["scores"]) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def load_shipped_model():
    """The model the walkthroughs explain, in eval mode, and the word "trained" or "untrained".

    `$NPMASKRCNN_MODEL` or `data/shapes_maskrcnn.npz`; when the file is missing, an untrained
    `MaskRCNN(Config())` (the figures then say so).
    """
    from .beyond_paper import build_model, for_inference
    from .checkpoint import load_model
    from .config import Config

    from .checks import shipped_model_path

    path = os.environ.get("NPMASKRCNN_MODEL") or shipped_model_path()
    if os.path.exists(path):
        model, trained = load_model(path), "trained"
    else:
        print(f"no model at {path}: using an untrained model of the shipped recipe")
        model, trained = for_inference(build_model(Config.shipped())), "untrained"
    return model.eval(), trained



def load_coco_model():
    """(model, photo) for a walkthrough's "on a real photo" section (`real_photo.load_photo_model`
    of `--model`, smaller in fast mode), or None without one: it then prints how to make one."""
    loaded = load_photo_model(os.environ.get(COCO_MODEL_ENV), is_fast())
    if loaded is None:
        print(HINT)
        return None
    model, photo = loaded
    (h, w), fast = model.transform.target_size(*photo.shape[:2], model.config.min_size[-1]), is_fast()
    print(f"COCO model {os.environ[COCO_MODEL_ENV]}: the photo ({photo.shape[1]} x {photo.shape[0]}) "
          f"goes in at {w} x {h}" + (" (fast mode)" if fast else ""))
    return loaded

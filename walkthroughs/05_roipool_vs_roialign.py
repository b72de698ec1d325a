# %% [markdown]
# # 05 — RoIPool vs RoIAlign: why Mask R-CNN stopped rounding
#
# Every proposal, whatever its size, has to become a fixed 7×7 (box head) or 14×14 (mask head)
# feature map. Fast R-CNN's **RoIPool** rounds twice on the way: the box onto the feature grid,
# then the bins onto whole cells. Mask R-CNN's **RoIAlign** (§3 of the paper) keeps the floats and
# reads each bin at a few points by bilinear interpolation. **RoIWarp** (the paper's Table 2c,
# from MNC) sits in between: it rounds the box as RoIPool does, then samples it bilinearly as
# RoIAlign does — so it tells which of the two roundings matters. What you will see:
#
# 1. the seed's worked example in numbers (800×800 image, stride 32, 665×665 proposal) and the
#    misalignment it causes, in feature cells and in image pixels — `worked_example()`;
# 2. the bin grids drawn over a feature map, with RoIAlign's and RoIWarp's sampling points;
# 3. a box slid by 1/8 of a cell at a time: RoIPool's and RoIWarp's outputs jump in steps,
#    RoIAlign's moves smoothly — `shift_experiment()`;
# 4. max vs average aggregation (and where each sends its gradient), and `aligned=False` vs
#    `aligned=True` (the half-pixel shift);
# 5. masks from a RoIPool-trained and a RoIAlign-trained model side by side (if they exist).
#
# Functions: `npmaskrcnn.roi_ops.roi_pool_forward/backward`,
# `roi_align_forward/backward(features, rois, output_size, spatial_scale, sampling_ratio,
# aligned, mode, impl)`, `roi_warp_forward/backward` (same arguments). RoIs are `(R, 5)` rows
# `[batch_index, x1, y1, x2, y2]` in image pixels. We call RoIAlign with `impl="readable"`: the
# kernels in `npmaskrcnn/roi_align.py`, one loop over RoIs, channels, bins and sample points, as
# the paper describes it. The model runs `impl="separable"` (`roi_align_fast.py`), an
# optimisation that gives the same numbers faster (the tests hold the two equal).
#
# The first two code cells only define functions (no side effects), so a test can import
# `worked_example` and `shift_experiment` from this file; the rest draws and prints, and is cheap.

# %%
import math
import os

import numpy as np

from npmaskrcnn.roi_ops import (roi_align_backward, roi_align_forward, roi_pool_backward,
                                roi_pool_forward, roi_warp_forward)

READABLE = dict(impl="readable")      # RoIAlign's readable kernels (roi_align.py), not the optimisation


def worked_example(image_size=800, stride=32, proposal=665, pooled=7, sampling_ratio=2):
    """The seed's RoIPool/RoIAlign arithmetic for one square proposal at the image's corner.

    Returns a dict of floats (cells are feature-map cells, px are image pixels):
    roi_cells, pool_cells (1st quantization), pool_bin, pool_bin_int (2nd quantization),
    align_bin, samples_per_bin, lost_cells/px (what the 1st rounding drops), bin_error_cells/px
    (per bin, 2.97 exact vs 2 used), last_edge_pool/align_cells and last_edge_error_cells/px
    (where the last bin's far edge lands).
    """
    feature_size = image_size // stride                     # 25
    roi_cells = proposal / stride                           # 20.78
    pool_cells = math.floor(roi_cells)                      # 1st quantization: 20
    pool_bin = pool_cells / pooled                          # 2.86
    pool_bin_int = math.floor(pool_bin)                     # 2nd quantization: 2
    align_bin = roi_cells / pooled                          # 2.97, kept as a float
    last_edge_pool = pooled * pool_bin_int                  # 14: the 20x20 region shrinks to 14x14
    return {
        "image_size": image_size, "stride": stride, "feature_size": feature_size,
        "proposal": proposal, "pooled": pooled,
        "roi_cells": roi_cells, "pool_cells": pool_cells, "pool_bin": pool_bin,
        "pool_bin_int": pool_bin_int, "align_bin": align_bin,
        "samples_per_bin": sampling_ratio ** 2,
        "lost_cells": roi_cells - pool_cells, "lost_px": (roi_cells - pool_cells) * stride,
        "bin_error_cells": align_bin - pool_bin_int, "bin_error_px": (align_bin - pool_bin_int) * stride,
        "last_edge_pool_cells": last_edge_pool, "last_edge_align_cells": roi_cells,
        "last_edge_error_cells": roi_cells - last_edge_pool,
        "last_edge_error_px": (roi_cells - last_edge_pool) * stride,
    }


# %%
def smooth_map(height, width):
    """A smooth test feature map, (1, 1, H, W) float64: two slow waves on a gentle ramp in x."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return (np.sin(0.45 * x + 0.3) + 0.8 * np.cos(0.35 * y) + 0.12 * x)[None, None]


def shift_experiment(step=1 / 8, max_shift=2.0, box=(2.2, 2.4, 8.2, 8.4), output_size=3,
                     map_size=16, sampling_ratio=2, track=(1, 1)):
    """Slide a box right by sub-cell steps and pool it with RoIPool, RoIWarp and RoIAlign each time.

    Two maps (scale 1, so box coordinates are cells): `smooth_map` (what the outputs look like)
    and the ramp f(y, x) = x, where an output's value *is* an x position, so the change of the
    mean output is how far the pooled features moved.

    Inputs:
    - step, max_shift: shifts 0, step, ..., max_shift in cells
    - box: (x1, y1, x2, y2) at shift 0; output_size: bins per side; map_size: H = W
    - sampling_ratio: RoIAlign and RoIWarp samples per bin side (both aligned=True)
    - track: the (ph, pw) bin whose value is returned
    Returns a dict of arrays, S = number of shifts, op in pool, warp, align:
    - shifts (S,); {op}_out (S, OH, OW) on the smooth map;
    - {op}_bin (S,): the tracked bin; {op}_shift (S,): on the ramp, mean output minus its value
      at shift 0 (the ideal is the shift itself)
    """
    shifts = np.arange(0.0, max_shift + step / 2, step)
    rois = np.array([[0, box[0] + s, box[1], box[2] + s, box[3]] for s in shifts])
    smooth = smooth_map(map_size, map_size)
    ramp = np.broadcast_to(np.arange(map_size, dtype=np.float64), (1, 1, map_size, map_size)).copy()
    out = {"shifts": shifts}
    for name, fmap in (("", smooth), ("ramp_", ramp)):
        out[name + "pool_out"] = roi_pool_forward(fmap, rois, output_size, 1.0)[0][:, 0]
        out[name + "warp_out"] = roi_warp_forward(fmap, rois, output_size, 1.0, sampling_ratio,
                                                  aligned=True, **READABLE)[0][:, 0]
        out[name + "align_out"] = roi_align_forward(fmap, rois, output_size, 1.0, sampling_ratio,
                                                    aligned=True, **READABLE)[0][:, 0]
    for op in ("pool", "warp", "align"):
        out[op + "_bin"] = out[op + "_out"][:, track[0], track[1]]
        mean = out.pop("ramp_" + op + "_out").mean(axis=(1, 2))
        out[op + "_shift"] = mean - mean[0]
    return out


# %%
from npmaskrcnn import viz  # noqa: E402
from npmaskrcnn.viz import log, save_figure  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")

# %% [markdown]
# ## 1. The worked example
#
# An 800×800 image through a stride-32 backbone gives a 25×25 map. A 665×665 proposal covers
# 665/32 = 20.78 cells. RoIPool rounds that to 20 (first quantization), cuts it into 7 bins of
# 20/7 = 2.86 cells and rounds again to 2 (second quantization), so it really pools a 14×14-cell
# region. RoIAlign keeps 20.78 and bins of 2.97 cells, each read at 2×2 = 4 bilinear points.

# %%
ex = worked_example()
print(f"feature map: {ex['image_size']}/{ex['stride']} = {ex['feature_size']} x {ex['feature_size']} cells")
print(f"proposal:    {ex['proposal']}/{ex['stride']} = {ex['roi_cells']:.2f} cells")
print(f"RoIPool:     1st quantization {ex['roi_cells']:.2f} -> {ex['pool_cells']:d} cells; "
      f"bin {ex['pool_cells']}/{ex['pooled']} = {ex['pool_bin']:.2f} -> 2nd quantization "
      f"{ex['pool_bin_int']:d} cells")
print(f"RoIAlign:    bin {ex['roi_cells']:.2f}/{ex['pooled']} = {ex['align_bin']:.2f} cells, "
      f"{ex['samples_per_bin']} bilinear samples per bin (sampling_ratio=2)")
print("misalignment (one cell = 32 image pixels):")
print(f"  dropped by the 1st rounding:   {ex['lost_cells']:.2f} cells = {ex['lost_px']:.0f} px")
print(f"  bin size error (2.97 vs 2):    {ex['bin_error_cells']:.2f} cells = {ex['bin_error_px']:.0f} px per bin")
print(f"  far edge of the last bin:      {ex['last_edge_pool_cells']} vs {ex['last_edge_align_cells']:.2f} "
      f"cells -> off by {ex['last_edge_error_cells']:.2f} cells = {ex['last_edge_error_px']:.0f} px")

# %% [markdown]
# Bin by bin: the far edge of bin k sits at 2k cells for the seed's RoIPool and at 2.97k for
# RoIAlign. The error grows linearly across the box.

# %%
k = np.arange(1, ex["pooled"] + 1)
edges_pool = k * ex["pool_bin_int"]
edges_align = k * ex["align_bin"]
log("edges_pool (cells)", edges_pool)
log("edges_align (cells)", edges_align)
log("edge error (px)", (edges_align - edges_pool) * ex["stride"])

fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.plot(k, (edges_align - edges_pool) * ex["stride"], "o-", color="tab:red")
ax.set_xlabel("bin k (1 = first bin, 7 = last bin)")
ax.set_ylabel("far-edge error of bin k (image px)")
ax.set_title("Seed's RoIPool (2-cell bins) vs RoIAlign (2.97-cell bins)\n665 px proposal, stride 32")
ax.grid(alpha=0.3)
save_figure(fig, "05_worked_example_edge_error")

# %% [markdown]
# The seed follows Caffe's arithmetic (floor). The `roi_pool_forward` we ship follows Fast R-CNN
# and torchvision: it *rounds* the box edges (20.78 → 21), counts the end cell inclusively
# (21 − 0 + 1 = 22 cells), and gives bin ph the cells floor(ph·22/7) … ceil((ph+1)·22/7) − 1, so
# neighbouring bins may share a cell. We read the bins off the op itself: on the map f(y, x) = x,
# the max of a bin is its last column, and on f = −x it is minus its first column.

# %%
fs = ex["feature_size"]
ramp_x = np.broadcast_to(np.arange(fs, dtype=np.float64), (1, 1, fs, fs)).copy()
roi = np.array([[0, 0, 0, ex["proposal"], ex["proposal"]]], dtype=np.float64)
last_col = roi_pool_forward(ramp_x, roi, 7, 1 / ex["stride"])[0][0, 0, 0]
first_col = -roi_pool_forward(-ramp_x, roi, 7, 1 / ex["stride"])[0][0, 0, 0]
log("roi_pool bin first cell", first_col)
log("roi_pool bin last cell", last_col)
print("roi_pool bins (first..last cell):", [f"{int(a)}..{int(b)}" for a, b in zip(first_col, last_col)])

# %% [markdown]
# ## 2. The bins, drawn
#
# Left: the seed's RoIPool — the 20×20 quantized region cut into 2-cell bins, of which only 14×14
# cells are used. Middle: `roi_pool_forward`'s actual bins (round, inclusive end, overlapping
# floor/ceil bins). Right: RoIAlign's exact 2.97-cell bins and their 2×2 sampling points.
# Coordinates are feature cells: cell i covers [i, i+1); the map is the 25×25 map zoomed to the RoI.

# %%
def draw_map(ax, fmap, lim=None, title=None):
    """Show a 2-D map with cell i covering [i, i+1) on both axes."""
    h, w = fmap.shape
    ax.imshow(fmap, cmap="Greys", extent=(0, w, h, 0), interpolation="nearest", alpha=0.55)
    if lim is not None:
        ax.set_xlim(lim[0], lim[1])
        ax.set_ylim(lim[1], lim[0])
    ax.set_xlabel("x (feature cells)")
    ax.set_ylabel("y (feature cells)")
    if title:
        ax.set_title(title, fontsize=10)


def align_points(x1, x2, bins, g):
    """RoIAlign's sample coordinates along one axis: (bins*g,) in the same units as x1, x2."""
    b = (x2 - x1) / bins
    return x1 + (np.arange(bins)[:, None] * b + (np.arange(g)[None, :] + 0.5) * b / g).ravel()


def draw_pool_bins(ax, x_first, x_last, y_first, y_last, label):
    """Outline RoIPool's bins (inclusive first..last cells), inset and in alternating colours so
    that bins sharing a cell stay visible."""
    for i, (c, d) in enumerate(zip(y_first, y_last)):
        for j, (a, b) in enumerate(zip(x_first, x_last)):
            ax.add_patch(plt.Rectangle((a + 0.12, c + 0.12), b - a + 0.76, d - c + 0.76, fill=False,
                                       edgecolor=("tab:red", "tab:purple")[(i + j) % 2], linewidth=1.5))
    ax.plot([], [], color="tab:red", label=label)


fmap25 = smooth_map(fs, fs)[0, 0]
log("feature map 25x25", fmap25)
lim = (-0.5, 23)
fig, axes = plt.subplots(1, 3, figsize=(17, 6))
draw_map(axes[0], fmap25, lim, "Seed's RoIPool: 20.78 → 20 cells, bins 2.86 → 2")
viz.draw_grid(axes[0], 0, 0, 20, 20, 10, 10, color="tab:orange", linestyle=":", linewidth=1,
              label="20×20 quantized region")
viz.draw_grid(axes[0], 0, 0, 14, 14, 7, 7, color="tab:red", linewidth=2, label="7×7 bins of 2 cells")
draw_map(axes[1], fmap25, lim, "roi_pool_forward: round(20.78) = 21, +1 → 22 cells")
draw_pool_bins(axes[1], first_col, last_col, first_col, last_col, "7×7 bins (neighbours share a cell)")
draw_map(axes[2], fmap25, lim, "RoIAlign: 20.78 cells, bins of 2.97, 2×2 points each")
viz.draw_grid(axes[2], 0, 0, ex["roi_cells"], ex["roi_cells"], 7, 7, color="tab:blue", linewidth=2,
              label="7×7 exact bins")
pts = align_points(0.0, ex["roi_cells"], 7, 2)
px, py = np.meshgrid(pts, pts)
axes[2].plot(px.ravel(), py.ravel(), ".", color="tab:green", markersize=6, label="bilinear sample points")
log("roialign sample x (cells)", pts)
for ax in axes:
    ax.plot([0, ex["roi_cells"], ex["roi_cells"], 0, 0], [0, 0, ex["roi_cells"], ex["roi_cells"], 0],
            color="black", linestyle="--", linewidth=1.5, label="proposal: 665/32 = 20.78 cells")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
fig.tight_layout()
save_figure(fig, "05_bins_worked_example")

# %% [markdown]
# The same on a 10×10 map with a box that does not start on the grid, pooled to 3×3: RoIPool also
# moves the *start* of the box (2.6 → 3), RoIAlign samples exactly inside the box. RoIWarp (middle)
# rounds the box's corners as RoIPool does — (1.4, 2.6, 8.3, 8.9) → (1, 3, 8, 9) — and then
# samples *that* box as RoIAlign would: exact bins of a box that is already wrong. (No "+1": the
# rounded corners are a box edge to edge, as MNC's warping layer measures it; see
# `roi_warp_forward`'s docstring.)

# %%
fmap10 = smooth_map(10, 10)[0, 0]
box10 = (1.4, 2.6, 8.3, 8.9)                                  # x1, y1, x2, y2 in cells
r10 = np.array([[0, *box10]])
x_first = -roi_pool_forward(-np.broadcast_to(np.arange(10.0), (1, 1, 10, 10)).copy(), r10, 3, 1.0)[0][0, 0, 0]
x_last = roi_pool_forward(np.broadcast_to(np.arange(10.0), (1, 1, 10, 10)).copy(), r10, 3, 1.0)[0][0, 0, 0]
y_first = -roi_pool_forward(-np.broadcast_to(np.arange(10.0)[:, None], (1, 1, 10, 10)).copy(), r10, 3, 1.0)[0][0, 0, :, 0]
y_last = roi_pool_forward(np.broadcast_to(np.arange(10.0)[:, None], (1, 1, 10, 10)).copy(), r10, 3, 1.0)[0][0, 0, :, 0]
log("10x10 roi_pool x bins first", x_first)
log("10x10 roi_pool y bins first", y_first)
warp10 = tuple(float(np.sign(v) * np.floor(abs(v) + 0.5)) for v in box10)   # RoIPool's C round
log("10x10 roi_warp rounded box (cells)", np.array(warp10))
fig, axes = plt.subplots(1, 3, figsize=(18, 6.4))
draw_map(axes[0], fmap10, (0, 10), "RoIPool: box rounded to whole cells, integer bins")
draw_pool_bins(axes[0], x_first, x_last, y_first, y_last, "3×3 RoIPool bins (may share cells)")
draw_map(axes[1], fmap10, (0, 10), "RoIWarp: box rounded, then exact bins, 2×2 points each")
viz.draw_grid(axes[1], *warp10, 3, 3, color="tab:orange", linewidth=2,
              label=f"3×3 bins of the rounded box {tuple(int(v) for v in warp10)}")
px, py = np.meshgrid(align_points(warp10[0], warp10[2], 3, 2), align_points(warp10[1], warp10[3], 3, 2))
axes[1].plot(px.ravel(), py.ravel(), "o", color="tab:green", markersize=6, label="sample points")
draw_map(axes[2], fmap10, (0, 10), "RoIAlign: exact bins, 2×2 bilinear points each")
viz.draw_grid(axes[2], *box10, 3, 3, color="tab:blue", linewidth=2, label="3×3 RoIAlign bins")
px, py = np.meshgrid(align_points(box10[0], box10[2], 3, 2), align_points(box10[1], box10[3], 3, 2))
axes[2].plot(px.ravel(), py.ravel(), "o", color="tab:green", markersize=6, label="sample points")
for ax in axes:
    ax.plot([box10[0], box10[2], box10[2], box10[0], box10[0]],
            [box10[1], box10[1], box10[3], box10[3], box10[1]],
            color="black", linestyle="--", linewidth=1.5, label=f"box {box10}")
    ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
fig.tight_layout()
save_figure(fig, "05_bins_10x10")

# %% [markdown]
# ## 3. Slide the box by 1/8 of a cell
#
# `shift_experiment` moves a 6×6-cell box right from 0 to 2 cells in steps of 1/8 and pools it
# into 3×3 each time (RoIAlign and RoIWarp with `aligned=True`, 2×2 samples). Left: one bin's value
# on the smooth map. Right: how far the pooled output moved, measured on the map f(y, x) = x; the
# ideal is the diagonal. RoIPool only notices the move when a rounding flips — and so does
# RoIWarp, although it samples bilinearly: its staircase is the box's rounding, not the bins'.
# That is the paper's reading of Table 2c: RoIWarp (27.2 / 27.1 mask AP, max / avg) is barely
# better than RoIPool (26.9), RoIAlign (30.2 / 30.3) is far ahead — "proper alignment is the only
# factor that contributes to the large gap".

# %%
sx = shift_experiment()
log("shifts (cells)", sx["shifts"])
for op in ("pool", "warp", "align"):
    log(f"{op}_bin", sx[op + "_bin"])
    log(f"{op}_shift (cells)", sx[op + "_shift"])
print(f"distinct values over {len(sx['shifts'])} shifts: RoIPool {len(np.unique(sx['pool_bin']))}, "
      f"RoIWarp {len(np.unique(sx['warp_bin']))}, RoIAlign {len(np.unique(sx['align_bin']))}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
axes[0].step(sx["shifts"], sx["pool_bin"], "o-", where="post", color="tab:red", label="RoIPool")
axes[0].step(sx["shifts"], sx["warp_bin"], "^-", where="post", color="tab:orange", label="RoIWarp")
axes[0].plot(sx["shifts"], sx["align_bin"], "s-", color="tab:blue", label="RoIAlign")
axes[0].set_xlabel("box shift (feature cells)")
axes[0].set_ylabel("value of the centre bin (1, 1)")
axes[0].set_title("One output bin as the box slides")
axes[1].plot(sx["shifts"], sx["shifts"], color="grey", linestyle=":", label="ideal: moves with the box")
axes[1].step(sx["shifts"], sx["pool_shift"], "o-", where="post", color="tab:red", markersize=8,
             label="RoIPool")
axes[1].step(sx["shifts"], sx["warp_shift"], "^--", where="post", color="tab:orange",
             label="RoIWarp (same steps: the box's rounding)")
axes[1].plot(sx["shifts"], sx["align_shift"], "s-", color="tab:blue", label="RoIAlign")
axes[1].set_xlabel("box shift (feature cells)")
axes[1].set_ylabel("shift of the pooled output (cells)")
axes[1].set_title("Whole 3×3 output, measured on f(y, x) = x")
for ax in axes:
    ax.set_xticks(np.arange(0, 2.01, 0.25))
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
save_figure(fig, "05_shift_experiment")

# %% [markdown]
# The 3×3 outputs themselves at a few shifts: RoIPool's and RoIWarp's repeat, RoIAlign's drift.

# %%
show = [0, 2, 4, 8, 12, 16]
names = {"pool": "RoIPool", "warp": "RoIWarp", "align": "RoIAlign"}
maps = [sx[op + "_out"][i] for op in names for i in show]
titles = [f"{name}, +{sx['shifts'][i]:.2f}" for name in names.values() for i in show]
vmin, vmax = min(m.min() for m in maps), max(m.max() for m in maps)
fig, axes = plt.subplots(len(names), len(show), figsize=(2.1 * len(show), 6.9))
for ax, m, t in zip(axes.flat, maps, titles):
    im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_title(t, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, fraction=0.02, label="pooled value")
fig.suptitle("Pooled 3×3 outputs as the box slides right (shift in cells)")
save_figure(fig, "05_shift_outputs")

# %% [markdown]
# ## 3b. The same, moving
#
# The box slides right by 1/8 of a cell per frame. Left: RoIPool's bins, read off `roi_pool`
# itself — they stay put, then jump by a whole cell when a rounding flips. Middle: RoIAlign's
# 2×2 sample points per bin glide with the box. Right: both outputs' shift (as in section 3),
# drawn up to the current frame. Written as `05_shift_animation.gif` (the README shows it); in a
# notebook with ipywidgets installed, a slider below draws any frame.

# %%
def pool_bin_cells(box, size, n):
    """RoIPool's first and last cell of each bin along x and along y, from roi_pool on ramps."""
    r = np.array([[0, *box]])
    ramp_x = np.broadcast_to(np.arange(float(n)), (1, 1, n, n)).copy()
    ramp_y = np.ascontiguousarray(ramp_x.transpose(0, 1, 3, 2))
    xf = -roi_pool_forward(-ramp_x, r, size, 1.0)[0][0, 0, 0]
    xl = roi_pool_forward(ramp_x, r, size, 1.0)[0][0, 0, 0]
    yf = -roi_pool_forward(-ramp_y, r, size, 1.0)[0][0, 0, :, 0]
    yl = roi_pool_forward(ramp_y, r, size, 1.0)[0][0, 0, :, 0]
    return xf, xl, yf, yl


def draw_shift_frame(k, sx=sx, box=(2.2, 2.4, 8.2, 8.4), size=3, fig=None):
    """Frame k of the shift animation: RoIPool's bins, RoIAlign's points, the two shift curves."""
    fig = fig or plt.figure(figsize=(13.5, 4.4))
    fig.clear()
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.25]})
    s = sx["shifts"][k]
    b = (box[0] + s, box[1], box[2] + s, box[3])
    fmap = smooth_map(16, 16)[0, 0]
    for ax, title in ((axes[0], "RoIPool: bins of whole cells"),
                      (axes[1], "RoIAlign: 2×2 bilinear points per bin")):
        draw_map(ax, fmap, (1, 12), title)
        ax.plot([b[0], b[2], b[2], b[0], b[0]], [b[1], b[1], b[3], b[3], b[1]], color="black",
                linestyle="--", linewidth=1.5, label=f"box, shifted +{s:.3f}")
    draw_pool_bins(axes[0], *pool_bin_cells(b, size, 16), "3×3 RoIPool bins")
    viz.draw_grid(axes[1], *b, size, size, color="tab:blue", linewidth=2, label="3×3 exact bins")
    px, py = np.meshgrid(align_points(b[0], b[2], size, 2), align_points(b[1], b[3], size, 2))
    axes[1].plot(px.ravel(), py.ravel(), "o", color="tab:green", markersize=5, label="sample points")
    for ax in axes[:2]:
        ax.legend(loc="lower right", fontsize=7, framealpha=0.9)
    ax = axes[2]
    ax.plot(sx["shifts"], sx["shifts"], color="grey", linestyle=":", label="ideal: moves with the box")
    ax.step(sx["shifts"][:k + 1], sx["pool_shift"][:k + 1], "o-", where="post", color="tab:red",
            label="RoIPool")
    ax.plot(sx["shifts"][:k + 1], sx["align_shift"][:k + 1], "s-", color="tab:blue", label="RoIAlign")
    ax.set_xlim(-0.05, sx["shifts"][-1] + 0.05)
    ax.set_ylim(-0.1, max(sx["shifts"][-1], sx["pool_shift"].max()) + 0.2)
    ax.set_xlabel("box shift (feature cells)")
    ax.set_ylabel("shift of the pooled output (cells)")
    ax.set_title("the outputs follow the box?", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def save_shift_animation(path, sx=sx, ms_per_frame=350, every=1):
    """Every `every`-th frame of the shift experiment (and the last) as an animated GIF
    (matplotlib frames -> Pillow)."""
    from PIL import Image

    from npmaskrcnn.files import atomic_write

    fig = plt.figure(figsize=(13.5, 4.4))
    frames = []
    n = len(sx["shifts"])
    for k in sorted(set(range(0, n, every)) | {n - 1}):
        draw_shift_frame(k, sx, fig=fig)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).quantize(64))
    plt.close(fig)
    frames += [frames[-1]] * 3                                   # pause on the last frame
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True,
                                                append_images=frames[1:],
                                                duration=ms_per_frame * every, loop=0))
    return path


gif = save_shift_animation(os.path.join(viz.out_dir(), "05_shift_animation.gif"),
                           every=6 if args.fast else 1)          # fast mode: 4 frames of 18
print("animation written to", gif)
try:
    if not viz.in_notebook():
        raise ImportError
    import ipywidgets

    ipywidgets.interact(lambda k: plt.show(draw_shift_frame(k)),
                        k=ipywidgets.IntSlider(0, 0, len(sx["shifts"]) - 1, description="frame"))
except ImportError:
    save_figure(draw_shift_frame(len(sx["shifts"]) // 2), "05_shift_frame")

# %% [markdown]
# ## 4a. Max or average?
#
# The seed (and the first version of the paper's text) max-pools RoIAlign's samples; the
# released Detectron code, torchvision and our default average them (`mode="avg"`). Both are
# continuous in the box; the difference shows in the backward pass: RoIPool sends each bin's
# gradient to one cell, RoIAlign-max to the 4 bilinear taps of one sample, RoIAlign-avg to the
# taps of all 4 samples, so every cell under the box learns.

# %%
fmap16 = smooth_map(16, 16)
roi16 = np.array([[0, 2.2, 2.4, 8.2, 8.4]])
ops = {
    "RoIPool (max over cells)": (roi_pool_forward, roi_pool_backward, {}),
    "RoIAlign, mode='max'": (roi_align_forward, roi_align_backward,
                             dict(sampling_ratio=2, aligned=True, mode="max", **READABLE)),
    "RoIAlign, mode='avg'": (roi_align_forward, roi_align_backward,
                             dict(sampling_ratio=2, aligned=True, mode="avg", **READABLE)),
}
outs, grads = {}, {}
for name, (fwd, bwd, kw) in ops.items():
    out, cache = fwd(fmap16, roi16, 3, 1.0, **kw)
    outs[name] = out[0, 0]
    grads[name] = bwd(np.ones_like(out), cache)[0, 0]       # d(sum of outputs) / d(features)
    log(f"out {name}", out)
    log(f"dfeatures {name}", grads[name])
    print(f"  cells that receive gradient: {int(np.count_nonzero(grads[name]))}")

fig, axes = plt.subplots(2, 3, figsize=(14, 9))
for j, name in enumerate(ops):
    im = axes[0, j].imshow(outs[name], cmap="viridis", vmin=min(o.min() for o in outs.values()),
                           vmax=max(o.max() for o in outs.values()))
    axes[0, j].set_title(f"{name}\n3×3 output", fontsize=10)
    axes[0, j].set_xticks(range(3))
    axes[0, j].set_yticks(range(3))
    for (i, jj), v in np.ndenumerate(outs[name]):
        axes[0, j].text(jj, i, f"{v:.2f}", ha="center", va="center", color="white", fontsize=9)
    g = grads[name]
    axes[1, j].imshow(g, cmap="magma", extent=(0, 16, 16, 0), interpolation="nearest")
    axes[1, j].plot([2.2, 8.2, 8.2, 2.2, 2.2], [2.4, 2.4, 8.4, 8.4, 2.4], "--", color="cyan",
                    linewidth=1.5, label="box")
    axes[1, j].set_title(f"gradient of sum(output) w.r.t. the map\n"
                         f"{np.count_nonzero(g)} cells receive gradient", fontsize=10)
    axes[1, j].set_xlabel("x (cells)")
    axes[1, j].set_ylabel("y (cells)")
    axes[1, j].legend(loc="lower right", fontsize=8)
fig.tight_layout()
save_figure(fig, "05_max_vs_avg")

# %% [markdown]
# ## 4b. `aligned=False` vs `aligned=True`: the half-pixel shift
#
# Inside the op, cell i's value sits at coordinate i (its centre), but a box edge at x = 0 is the
# cell's *left border*. The original RoIAlign (`aligned=False`) ignores this, so its samples land
# half a cell down and to the right of where they should be. detectron2's fix (`aligned=True`)
# subtracts 0.5 from the box first. Box [0, 0, 4, 4] on a 4×4 map at scale 1, pooled to 2×2 with
# 2×2 samples per bin: each bin should average exactly one 2×2 quadrant of cells.

# %%
fmap4 = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
box4 = np.array([[0, 0, 0, 4, 4]], dtype=np.float64)
out_false = roi_align_forward(fmap4, box4, 2, 1.0, 2, aligned=False, **READABLE)[0][0, 0]
out_true = roi_align_forward(fmap4, box4, 2, 1.0, 2, aligned=True, **READABLE)[0][0, 0]
quadrants = fmap4[0, 0].reshape(2, 2, 2, 2).mean(axis=(1, 3))
log("feature map 4x4", fmap4)
log("aligned=False out", out_false)
log("aligned=True out", out_true)
log("quadrant means (ideal)", quadrants)

fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
for ax, aligned, out in ((axes[0], False, out_false), (axes[1], True, out_true)):
    ax.imshow(fmap4[0, 0], cmap="Greys", extent=(0, 4, 4, 0), alpha=0.5)
    for (i, j), v in np.ndenumerate(fmap4[0, 0]):
        ax.text(j + 0.08, i + 0.08, f"{int(v)}", ha="left", va="top", fontsize=11, color="black")
        ax.plot(j + 0.5, i + 0.5, "+", color="grey", markersize=8)
    # sample coordinates in the op's index space (cell centre = integer), drawn at +0.5
    p = align_points(-0.5 if aligned else 0.0, 3.5 if aligned else 4.0, 2, 2) + 0.5
    px, py = np.meshgrid(p, p)
    ax.plot(px.ravel(), py.ravel(), "o", color="tab:red", markersize=9, label="sample points")
    ax.plot([0, 4, 4, 0, 0], [0, 0, 4, 4, 0], "--", color="tab:blue", linewidth=2, label="box [0, 0, 4, 4]")
    ax.set_xlim(-0.3, 4.6)
    ax.set_ylim(4.6, -0.3)
    ax.set_xlabel("x (pixels; cell i covers [i, i+1), + marks its centre)")
    ax.set_ylabel("y (pixels)")
    ax.set_title(f"aligned={aligned}: output {np.round(out, 2).tolist()}\n"
                 f"ideal (quadrant means) {np.round(quadrants, 2).tolist()}", fontsize=10)
    ax.legend(loc="lower left", fontsize=9, framealpha=0.9)
fig.tight_layout()
save_figure(fig, "05_aligned_half_pixel")

# %% [markdown]
# ## 5. Does it matter for masks?
#
# The paper's ablation (Table 2c, stride 16): RoIPool 26.9 mask AP / 26.4 AP75, RoIWarp 27.2 / 27.1
# (max) and 27.1 / 27.1 (avg), RoIAlign 30.2 / 31.8 (max) and 30.3 / 31.5 (avg); at stride 32
# (Table 2d) the gap grows: 23.6 / 21.6 against 30.9 / 32.1. Here: two shapes models that differ
# only in `Config.pooler`, trained by
# `python -m npmaskrcnn ablate --steps 500 --stride 16 --seeds 0 --eval-images 200 --save-dir
# data/ablation` (RoI features at stride 16, 500 steps: short runs, so both are rough). Their best detections (as many as there are objects) on the same
# images — look at how RoIPool's masks leak past the shapes' edges:

# %%
ABLATION = {"RoIPool-trained": os.path.join(viz.REPO_ROOT, "data", "ablation", "roi_pool.npz"),
            "RoIAlign-trained": os.path.join(viz.REPO_ROOT, "data", "ablation", "roi_align.npz")}


def compare_models(paths, n_images=3, seed=2024):
    """Predict with each checkpoint on the same shapes images; draw a column per model.

    Inputs: paths, dict title -> checkpoint; n_images; seed of the ShapesDataset.
    Returns: the figure path, or None (with a note printed) when a checkpoint is missing.
    """
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        print("skipping the model comparison: missing", ", ".join(missing))
        print("make the two models with:  python -m npmaskrcnn ablate --steps 500 --variants "
              "roi_align,roi_pool "
              "--stride 16 --seeds 0 --save-dir data/ablation")
        return None
    from npmaskrcnn.checkpoint import load_model
    from npmaskrcnn.shapes import ShapesDataset

    ds = ShapesDataset(n_images, seed=seed)
    images = [ds[i][0] for i in range(n_images)]
    fig, axes = plt.subplots(n_images, len(paths) + 1, figsize=(4 * (len(paths) + 1), 4 * n_images),
                             squeeze=False)
    for i in range(n_images):
        t = ds[i][1]
        viz.draw_instances(axes[i, 0], images[i], t["boxes"], t["labels"], t["masks"],
                           title="ground truth" if i == 0 else None)
    for j, (title, path) in enumerate(paths.items(), start=1):
        model = load_model(path)
        for i, det in enumerate(model.predict(images)):
            keep = np.argsort(-det["scores"])[:len(ds[i][1]["labels"])]   # the best, one per object
            log(f"{title} masks[{i}]", det["masks"][keep])
            viz.draw_instances(axes[i, j], images[i], det["boxes"][keep], det["labels"][keep],
                               det["masks"][keep], det["scores"][keep], class_names=model.class_names,
                               title=title if i == 0 else None)
    fig.suptitle("Two weak models (500 steps from scratch, RoI features at stride 16 only; mask AP 10 "
                 "and 16, see docs/results.md): wrong classes are expected —\nlook at how well each mask "
                 "fits its object, the one thing the pooler changes", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, "05_ablation_masks")


compare_models(ABLATION)

# %% [markdown]
# ## 6. The RoI layers with statistics
#
# One pair of models is one draw. `data/ablation_stride16/` holds Table 2c at stride 16 with
# three seeds per row, and the two switches of Table 2b (each row trained from the same
# pretrained ResNet body for 1800 steps and scored on 300 held-out images; the command and its
# wall time are in its `results.md`). The bars are the mean mask AP, the error bars the standard
# deviation over the seeds, and beside each bar its difference from RoIAlign (avg) next to the
# paper's. Read it for the paper's claims: if alignment is what matters, RoIWarp (bilinear
# sampling, but on RoIPool's rounded box) stays with RoIPool, and max vs average barely matters;
# a softmax over classes (masks competing) loses to per-class sigmoids, and one mask for all
# classes costs little.

# %%
def ablation_table(folder=os.path.join(viz.REPO_ROOT, "data", "ablation_stride16")):
    """Draw and print the committed table of `folder` (results.json of `npmaskrcnn ablate`).
    Returns the figure path, or None when the table is not there."""
    import json

    from npmaskrcnn.ablate_table import ablation_figure

    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        print("no table at", path)
        return None
    with open(path) as f:
        table = json.load(f)
    rows = [tuple(r) for r in table["rows"]]
    for _, variant, stride, label in rows:
        run = table["runs"][f"{variant}@{stride}"]
        seeds = run["per_seed"]
        print(f"{label:<14} mask AP {100 * run['mean']['segm']['AP']:5.1f} ± "
              f"{100 * run['std']['segm']['AP']:.1f}  (seeds: "
              + ", ".join(f"{100 * r['segm']['AP']:.1f}" for r in seeds.values())
              + f"; box AP {100 * run['mean']['bbox']['AP']:.1f})")
    return save_figure(ablation_figure(rows, table["runs"]), "05_ablation_table")


ablation_table()

# %% [markdown]
# # 01 — One convolution, forward and backward, checked numerically
#
# Every layer in npmaskrcnn is a pair `out, cache = op_forward(...)`, `grads = op_backward(dout,
# cache)`, and every backward is checked against a numerical gradient. Here, step by step, for one
# 3×3 convolution on a small shapes image:
#
# 1. forward: **im2col** copies every 3×3×C window into a column (`layers.conv2d_forward` keeps
#    that matrix in its cache), one **matmul** with the filters gives all outputs at once;
# 2. backward: dW = dout · colsᵀ, and dx = **col2im**(Wᵀ · dout) — col2im adds each column back
#    where im2col copied it from (`layers.conv2d_backward`);
# 3. the numerical gradient (central differences, `tests/gradcheck.py`) against the analytic one,
#    as a relative error; the same for GroupNorm and ReLU;
# 4. pictures of the untrained filters and of the gradient maps.

# %%
import os
import sys

import numpy as np

from npmaskrcnn import viz
from npmaskrcnn.layers import (conv2d_backward, conv2d_forward, group_norm_backward,
                               group_norm_forward, relu_backward, relu_forward)
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.viz import log, save_figure

sys.path.insert(0, os.path.join(viz.REPO_ROOT, "tests"))
from gradcheck import numerical_gradient_array, rel_error  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (viz chooses the backend first)

args = viz.parse_walkthrough_args()
print("figures go to", args.out, "(fast mode)" if args.fast else "")
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The input and the filters
#
# A shapes image, shrunk to 16×16 and normalised, as a (N=1, C=3, 16, 16) float64 array; four
# random 3×3 filters w of shape (F=4, C=3, 3, 3), as a network starts before any training.

# %%
size = 16
image, _ = ShapesDataset(1, seed=3)[0]
step = image.shape[0] // size
x = image[::step, ::step].transpose(2, 0, 1)[None].astype(np.float64)      # (1, 3, 16, 16)
x = (x - x.mean()) / x.std()
w = rng.standard_normal((4, 3, 3, 3)) * np.sqrt(2.0 / 27)                 # He init, fan-in 27
b = np.zeros(4)
log("x", x)
log("w", w)

fig = viz.show_feature_maps([w[f, c] for f in range(4) for c in range(3)],
                            titles=[f"filter {f}, {'RGB'[c]}" for f in range(4) for c in range(3)],
                            ncols=6, cmap="RdBu_r", symmetric=True, size=1.8, colorbar=True,
                            suptitle="Untrained 3×3 filters w (F=4 filters × C=3 channels), red > 0 > blue")
save_figure(fig, "01_filters")

# %% [markdown]
# ## 2. Forward: im2col, then one matmul
#
# With stride 1 and padding 1 there are 16·16 = 256 output positions; im2col turns the input into
# a (C·3·3 = 27, 256) matrix whose column l is the window under output position l. The
# convolution is then W (4, 27) @ cols (27, 256) → (4, 256), reshaped to (1, 4, 16, 16).

# %%
out, cache = conv2d_forward(x, w, b, stride=1, pad=1)
cols = cache[5]                                   # (27, 256): what the backward pass will reuse
out_matmul = (w.reshape(4, -1) @ cols).reshape(4, 16, 16)
log("cols (im2col)", cols)
log("out", out)
print("matmul reshaped == conv2d_forward:", np.allclose(out_matmul, out[0]))

fig, axes = plt.subplots(2, 1, figsize=(13, 7.5), gridspec_kw={"height_ratios": [27, 4]})
im = axes[0].imshow(cols, aspect="auto", cmap="viridis", interpolation="nearest")
axes[0].set_yticks(range(0, 27, 3))
axes[0].set_yticklabels([f"{'RGB'[r // 9]}, row {r % 9 // 3}" for r in range(0, 27, 3)])
axes[0].set_ylabel("(channel, kernel row, kernel col)")
axes[0].set_title("im2col matrix cols (27 × 256): column l = the 3×3×3 window under output position l")
fig.colorbar(im, ax=axes[0], fraction=0.02)
im = axes[1].imshow(w.reshape(4, -1) @ cols, aspect="auto", cmap="RdBu_r", interpolation="nearest")
axes[1].set_title("W (4 × 27) @ cols = the output, one row per filter (4 × 256)")
axes[1].set_xlabel("output position l = oy·16 + ox")
axes[1].set_ylabel("filter")
fig.colorbar(im, ax=axes[1], fraction=0.02)
fig.tight_layout()
save_figure(fig, "01_im2col_matmul")

fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
axes[0].imshow(image[::step, ::step], interpolation="nearest")
axes[0].set_title("input (16×16)")
for f in range(4):
    im = axes[f + 1].imshow(out[0, f], cmap="RdBu_r", interpolation="nearest",
                            vmin=-np.abs(out).max(), vmax=np.abs(out).max())
    axes[f + 1].set_title(f"output channel {f}")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes, fraction=0.015)
save_figure(fig, "01_conv_output")

# %% [markdown]
# ## 3. Backward
#
# Take a random upstream gradient dout (as if a loss sat on top). Since out = W·cols + b:
# dW = dout·colsᵀ, db = Σ dout, dcols = Wᵀ·dout; and because each entry of cols was *copied* from
# one input pixel, dx = col2im(dcols) adds every entry back onto its pixel (a pixel appears in up
# to 9 columns, so it collects up to 9 contributions).

# %%
dout = rng.standard_normal(out.shape)
dx, dw, db = conv2d_backward(dout, cache)
dout_fl = dout.reshape(4, -1)                                          # (F, N*L), N = 1
dcols = w.reshape(4, -1).T @ dout_fl                                   # (27, 256)
log("dout", dout)
log("dcols = W^T dout", dcols)
log("dx (col2im)", dx)
log("dw", dw)
log("db", db)
print("dW == dout @ cols^T:", np.allclose(dw.reshape(4, -1), dout_fl @ cols.T))

# %% [markdown]
# ## 4. Numerical gradient check
#
# Perturb each entry of x (and of w, b) by ±h, h = 1e-5, and read the change of sum(out · dout):
# the central difference approximates the gradient to O(h²). In float64 the relative error
# max|a − n| / max(|a| + |n|) should be around 1e-10; anything above 1e-7 is a bug.

# %%
def conv_out():
    return conv2d_forward(x, w, b, stride=1, pad=1)[0]


checks = {"conv dx": (dx, numerical_gradient_array(conv_out, x, dout)),
          "conv dw": (dw, numerical_gradient_array(conv_out, w, dout)),
          "conv db": (db, numerical_gradient_array(conv_out, b, dout))}
for name, (analytic, numeric) in checks.items():
    print(f"{name:8s} rel error {rel_error(analytic, numeric):.2e}")

# %% [markdown]
# GroupNorm (8 channels in 2 groups, on the conv output's shape) and ReLU, the same way. ReLU has
# a kink at 0; random inputs almost surely stay away from it.

# %%
xg = rng.standard_normal((1, 8, 6, 6))
gamma, beta = rng.standard_normal(8), rng.standard_normal(8)
gout, gcache = group_norm_forward(xg, gamma, beta, num_groups=2)
dgout = rng.standard_normal(gout.shape)
dxg, dgamma, dbeta = group_norm_backward(dgout, gcache)
log("group_norm out", gout)
for name, arr, analytic in (("gn dx", xg, dxg), ("gn dgamma", gamma, dgamma), ("gn dbeta", beta, dbeta)):
    numeric = numerical_gradient_array(lambda: group_norm_forward(xg, gamma, beta, 2)[0], arr, dgout)
    checks[name] = (analytic, numeric)
    print(f"{name:9s} rel error {rel_error(analytic, numeric):.2e}")

xr = rng.standard_normal((1, 4, 6, 6))
rout, rcache = relu_forward(xr)
drout = rng.standard_normal(rout.shape)
dxr = relu_backward(drout, rcache)
checks["relu dx"] = (dxr, numerical_gradient_array(lambda: relu_forward(xr)[0], xr, drout))
log("relu out", rout)
print(f"relu dx   rel error {rel_error(*checks['relu dx']):.2e}")
errors = {name: rel_error(a, n) for name, (a, n) in checks.items()}
assert max(errors.values()) < 1e-7, errors

fig, ax = plt.subplots(figsize=(8, 3.8))
ax.bar(list(errors), list(errors.values()), color="tab:green")
ax.axhline(1e-7, color="tab:red", linestyle="--", label="tolerance 1e-7")
ax.set_yscale("log")
ax.set_ylabel("relative error (analytic vs numerical)")
ax.set_title("Gradient checks, float64, h = 1e-5")
ax.tick_params(axis="x", rotation=30)
ax.legend()
fig.tight_layout()
save_figure(fig, "01_gradcheck_errors")

# %% [markdown]
# ## 5. The gradient maps
#
# dx per input channel, and dW per filter: analytic and numerical side by side (they are the same
# picture), plus their difference, scaled up to be visible at all.

# %%
num_dx = checks["conv dx"][1]
maps = [dx[0, c] for c in range(3)] + [num_dx[0, c] for c in range(3)] + [(dx - num_dx)[0, c] for c in range(3)]
titles = ([f"dx analytic, {'RGB'[c]}" for c in range(3)] + [f"dx numerical, {'RGB'[c]}" for c in range(3)]
          + [f"difference, {'RGB'[c]}\nmax {np.abs(dx - num_dx)[0, c].max():.1e}" for c in range(3)])
fig = viz.show_feature_maps(maps, titles, ncols=3, cmap="RdBu_r", symmetric=True, size=2.6,
                            colorbar=True, suptitle="dx = col2im(Wᵀ · dout), per input channel")
save_figure(fig, "01_dx_maps")

fig = viz.show_feature_maps([dw[f, c] for f in range(4) for c in range(3)],
                            titles=[f"dW filter {f}, {'RGB'[c]}" for f in range(4) for c in range(3)],
                            ncols=6, cmap="RdBu_r", symmetric=True, size=1.8, colorbar=True,
                            suptitle="dW = dout · colsᵀ (the step a gradient-descent update would take, negated)")
save_figure(fig, "01_dw_maps")

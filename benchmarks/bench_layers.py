"""Time conv2d forward and forward+backward at the shapes of a small ResNet-FPN on 128x128 images.

For each conv: forward ms, forward+backward ms, and GFLOP/s of both, beside the GFLOP/s of one
plain np.matmul of the forward's size, (F, C*KH*KW) @ (C*KH*KW, N*OH*OW), measured in the same run.
Run: python benchmarks/bench_layers.py [--repeats 20]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npmaskrcnn.layers import (
    conv2d_backward,
    conv2d_forward,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
    group_norm_backward,
    group_norm_forward,
)

BATCH = 4
# (name, C, F, map size H=W, kernel, stride, pad, need_dx)
CONVS = [
    ("stem 7x7/2", 3, 32, 128, 7, 2, 3, False),
    ("3x3 32@32", 32, 32, 32, 3, 1, 1, True),
    ("3x3/2 32->64@32", 32, 64, 32, 3, 2, 1, True),
    ("3x3 64@16", 64, 64, 16, 3, 1, 1, True),
    ("3x3 128@8", 128, 128, 8, 3, 1, 1, True),
    ("3x3 256@4", 256, 256, 4, 3, 1, 1, True),
    ("1x1 64->64@32", 64, 64, 32, 1, 1, 0, True),
    ("1x1 256->64@4", 256, 64, 4, 1, 1, 0, True),
    ("1x1/2 32->64@32", 32, 64, 32, 1, 2, 0, True),
    ("3x3 64@32 (FPN)", 64, 64, 32, 3, 1, 1, True),
]


def best_ms(fn, repeats):
    """Median wall time of fn() in milliseconds, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def bench_conv(c_in, n_filt, size, k, stride, pad, need_dx, repeats, rng):
    x = rng.standard_normal((BATCH, c_in, size, size), dtype=np.float32)
    w = rng.standard_normal((n_filt, c_in, k, k), dtype=np.float32)
    b = rng.standard_normal(n_filt, dtype=np.float32)
    out, cache = conv2d_forward(x, w, b, stride=stride, pad=pad)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    l_out = out.shape[2] * out.shape[3]
    flops_fwd = 2.0 * BATCH * n_filt * c_in * k * k * l_out
    flops_all = flops_fwd * (3 if need_dx else 2)

    def fwd():
        conv2d_forward(x, w, b, stride=stride, pad=pad)

    def fwd_bwd():
        _, cache = conv2d_forward(x, w, b, stride=stride, pad=pad)
        conv2d_backward(dout, cache, need_dx=need_dx)

    a = rng.standard_normal((n_filt, c_in * k * k), dtype=np.float32)
    bm = rng.standard_normal((c_in * k * k, BATCH * l_out), dtype=np.float32)
    t_mm = best_ms(lambda: np.matmul(a, bm), repeats)
    t_f = best_ms(fwd, repeats)
    t_fb = best_ms(fwd_bwd, repeats)
    return t_f, t_fb, flops_fwd / t_f / 1e6, flops_all / t_fb / 1e6, flops_fwd / t_mm / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"batch {BATCH}, float32, median of {args.repeats} runs")
    head = f"{'conv':18s} {'fwd ms':>8s} {'f+b ms':>8s} {'fwd GF/s':>9s} {'f+b GF/s':>9s} {'matmul GF/s':>11s} {'f+b/mm':>7s}"
    print(head)
    print("-" * len(head))
    for name, c_in, n_filt, size, k, stride, pad, need_dx in CONVS:
        t_f, t_fb, g_f, g_fb, g_mm = bench_conv(c_in, n_filt, size, k, stride, pad, need_dx, args.repeats, rng)
        print(f"{name:18s} {t_f:8.3f} {t_fb:8.3f} {g_f:9.1f} {g_fb:9.1f} {g_mm:11.1f} {g_fb / g_mm:7.2f}")

    print()
    x = rng.standard_normal((BATCH, 64, 16, 16), dtype=np.float32)
    w = rng.standard_normal((64, 32, 2, 2), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    out, _ = conv_transpose2d_forward(x, w, b, stride=2)
    dout = rng.standard_normal(out.shape, dtype=np.float32)

    def tfb():
        _, cache = conv_transpose2d_forward(x, w, b, stride=2)
        conv_transpose2d_backward(dout, cache)

    print(f"conv_transpose 2x2/2 64->32 @16: fwd+bwd {best_ms(tfb, args.repeats):.3f} ms")

    x = rng.standard_normal((BATCH, 64, 32, 32), dtype=np.float32)
    gamma = rng.standard_normal(64, dtype=np.float32)
    beta = rng.standard_normal(64, dtype=np.float32)

    def gfb():
        out, cache = group_norm_forward(x, gamma, beta, 32)
        group_norm_backward(out, cache)

    t_gf = best_ms(lambda: group_norm_forward(x, gamma, beta, 32), args.repeats)
    print(f"group_norm (4, 64, 32, 32) G=32: fwd {t_gf:.3f} ms, fwd+bwd {best_ms(gfb, args.repeats):.3f} ms")


if __name__ == "__main__":
    main()

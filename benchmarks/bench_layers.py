"""Time conv2d forward and forward+backward at the shapes of a small ResNet-FPN on 128x128 images.

For each conv: forward ms, forward+backward ms, and GFLOP/s of both, beside the GFLOP/s of one
plain np.matmul of the forward's size, (F, C*KH*KW) @ (C*KH*KW, N*OH*OW), measured in the same run.

The table is printed for three ways of using the machine's cores, each measured in fresh
subprocesses (the BLAS thread count is fixed when numpy loads):
- one process, one BLAS thread;
- one process, one BLAS thread per core (the matmul uses every core; im2col/col2im use one);
- one single-threaded process per core, all running the benchmark at once (how `python -m
  npmaskrcnn train` uses the machine: one data-parallel worker per core); the GFLOP/s columns
  are then the sums over the processes, i.e. the machine's throughput for convs and for matmul.
Run: python benchmarks/bench_layers.py [--repeats 20]
"""

import argparse
import json
import os
import subprocess
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


def conv_rows(repeats):
    """[(name, fwd ms, f+b ms, fwd GF/s, f+b GF/s, matmul GF/s)] of every conv in CONVS."""
    rng = np.random.default_rng(0)
    return [(name, *bench_conv(c_in, n_filt, size, k, stride, pad, need_dx, repeats, rng))
            for name, c_in, n_filt, size, k, stride, pad, need_dx in CONVS]


def run_workers(n_proc, threads, repeats):
    """conv_rows in n_proc concurrent subprocesses with `threads` BLAS threads each."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--repeats", str(repeats)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n_proc)]
    outs = [json.loads(p.communicate()[0]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a benchmark subprocess failed")
    return outs


def print_table(title, outs):
    """One row per conv; times of the first process, GFLOP/s summed over the processes."""
    print(title)
    head = (f"{'conv':18s} {'fwd ms':>8s} {'f+b ms':>8s} {'fwd GF/s':>9s} {'f+b GF/s':>9s} "
            f"{'matmul GF/s':>11s} {'f+b/mm':>7s}")
    print(head)
    print("-" * len(head))
    for rows in zip(*outs):
        name, t_f, t_fb = rows[0][:3]
        g_f, g_fb, g_mm = (sum(r[i] for r in rows) for i in (3, 4, 5))
        print(f"{name:18s} {t_f:8.3f} {t_fb:8.3f} {g_f:9.1f} {g_fb:9.1f} {g_mm:11.1f} {g_fb / g_mm:7.2f}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(conv_rows(args.repeats)))
        return
    cores = os.cpu_count() or 1
    print(f"batch {BATCH}, float32, median of {args.repeats} runs, {cores} cores, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print_table("one process, 1 BLAS thread", run_workers(1, 1, args.repeats))
    if cores > 1:
        print_table(f"one process, {cores} BLAS threads", run_workers(1, cores, args.repeats))
        print_table(f"{cores} single-threaded processes at once (as training runs); GFLOP/s summed",
                    run_workers(cores, 1, args.repeats))
    rng = np.random.default_rng(0)
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

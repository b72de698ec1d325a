"""Time conv2d forward and forward+backward at the shapes of a small ResNet-FPN on 128x128 images.

For each conv: forward ms, forward+backward ms, and GFLOP/s of both, beside the GFLOP/s of one
plain np.matmul of the forward's size, (F, C*KH*KW) @ (C*KH*KW, N*OH*OW), measured in the same run,
and the ratio of forward+backward to the three np.matmul of im2col's formulation of the conv:
forward W @ cols, dW = dout @ cols^T, dcols = W^T @ dout (two without dx), same shapes and layouts.
A ratio above 1 means the conv beats its own GEMMs: the stride-1 3x3 convs with enough channels
go through Winograd F(2x2, 3x3) (npmaskrcnn/conv_fast.py), which does 2.25x fewer multiplications.

The table is printed for three ways of using the machine's cores, each measured in fresh
subprocesses (the BLAS thread count is fixed when numpy loads):
- one process, one BLAS thread;
- one process at the default thread setting (one BLAS and one numba thread per core: what
  `predict`, `evaluate` and the walkthroughs run; the kernels themselves run on one core);
- one single-threaded process per core, all running the benchmark at once (how `python -m
  npmaskrcnn train` uses the machine: one data-parallel worker per core); the GFLOP/s columns
  are then the sums over the processes, i.e. the machine's throughput for convs and for matmul.
The 3x3 conv (4, 64, 32, 32) -> 64 ("3x3 64@32 (FPN)") is summarised at the end: its ratio to
its three GEMMs at the default thread setting and at one thread (issue #17: >= 0.6 and >= 0.8).
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
    """Shortest wall time of fn() in milliseconds over `repeats` calls, after two warm-up calls
    (the least disturbed run: the machine may be shared)."""
    return interleaved_best_ms([fn], repeats)[0]


def interleaved_best_ms(fns, repeats):
    """best_ms of each of fns, their calls interleaved so that a disturbance hits all of them."""
    for fn in fns:
        fn()
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [1e3 * b for b in best]


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
    dm = rng.standard_normal((n_filt, BATCH * l_out), dtype=np.float32)

    def three_gemms():  # im2col's products: out = W cols, dW = dout cols^T, dcols = W^T dout
        np.matmul(a, bm)
        np.matmul(dm, bm.T)
        if need_dx:
            np.matmul(a.T, dm)

    t_mm, t_3mm, t_f, t_fb = interleaved_best_ms([lambda: np.matmul(a, bm), three_gemms, fwd, fwd_bwd], repeats)
    return t_f, t_fb, flops_fwd / t_f / 1e6, flops_all / t_fb / 1e6, flops_fwd / t_mm / 1e6, t_3mm


def conv_rows(repeats):
    """[(name, fwd ms, f+b ms, fwd GF/s, f+b GF/s, matmul GF/s, 3-GEMM ms)] of every conv in CONVS."""
    rng = np.random.default_rng(0)
    return [(name, *bench_conv(c_in, n_filt, size, k, stride, pad, need_dx, repeats, rng))
            for name, c_in, n_filt, size, k, stride, pad, need_dx in CONVS]


def run_workers(n_proc, threads, repeats):
    """conv_rows in n_proc concurrent subprocesses with `threads` BLAS and numba threads each
    (None: the libraries' defaults, one per core)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    if threads is not None:
        env.update({k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                              "NUMBA_NUM_THREADS")})
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
            f"{'matmul GF/s':>11s} {'f+b/mm':>7s} {'3 GEMMs ms':>10s} {'vs GEMMs':>8s}")
    print(head)
    print("-" * len(head))
    ratios = {}
    for rows in zip(*outs):
        name, t_f, t_fb = rows[0][:3]
        g_f, g_fb, g_mm = (sum(r[i] for r in rows) for i in (3, 4, 5))
        t_3mm = rows[0][6]
        ratios[name] = t_3mm / t_fb
        print(f"{name:18s} {t_f:8.3f} {t_fb:8.3f} {g_f:9.1f} {g_fb:9.1f} {g_mm:11.1f} {g_fb / g_mm:7.2f} "
              f"{t_3mm:10.3f} {t_3mm / t_fb:8.2f}")
    print()
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(conv_rows(args.repeats)))
        return
    cores = os.cpu_count() or 1
    print(f"batch {BATCH}, float32, best of {args.repeats} runs, {cores} cores, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    one = print_table("one process, 1 BLAS thread, 1 numba thread", run_workers(1, 1, args.repeats))
    default = one
    if cores > 1:
        default = print_table(f"one process, default threads ({cores} BLAS, {cores} numba)",
                              run_workers(1, None, args.repeats))
        print_table(f"{cores} single-threaded processes at once (as training runs); GFLOP/s summed",
                    run_workers(cores, 1, args.repeats))
    key = "3x3 64@32 (FPN)"
    print(f"3x3 conv (4, 64, 32, 32) -> 64, forward + backward against np.matmul of its three GEMMs "
          f"(time of the GEMMs / time of the conv): {default[key]:.2f}x at the default thread setting, "
          f"{one[key]:.2f}x at one thread\n")
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

"""Time one training iteration of the shapes preset, stage by stage, plus inference, memory, startup.

One iteration is `npmaskrcnn.train.train_step` (forward, backward, gradient clipping, AdamW step)
on a batch of `Config().batch_size` images of `ShapesDataset(..., seed=0)`. The stage breakdown
wraps the modules' forward/backward methods (and the loss / target / proposal functions) with
timers for the duration of the benchmark; the package is not modified. Times are *exclusive*: a
stage's time does not include the stages it calls (the RPN's forward calls its head, its
targets and its proposals, each counted on its own row). "other" is the rest of the iteration
(preprocessing, target checks, flattening and concatenation glue).

Also: `model.predict` on one image, the peak memory (ru_maxrss of the process, and the
tracemalloc peak of one iteration, which counts NumPy's buffers), and the startup cost measured
in a fresh subprocess: `import npmaskrcnn.train`, building the model, the first training step
(warm numba cache; `--cold` also measures it with NUMBA_CACHE_DIR pointing at an empty directory,
i.e. every kernel compiled from scratch); and, the same two ways, what a user meets first: import,
`load_model` of the shipped model and the first `predict` of one image, in a fresh process.

As the CLI trains (`python -m npmaskrcnn train`: the batch in `grad_shards` shards, one spawned
worker, one BLAS and one numba thread per process): the step time of `train(..., workers=2)` in a
fresh subprocess, the model FLOPs of one such step (the multiply-adds of every convolution,
transposed convolution and linear layer, forward and backward, counted as im2col's three GEMMs
would do them, x2; Winograd's saving shows as speed, not as fewer FLOPs), and the ratio of the
step's FLOP rate to the machine's peak: a square 1024 float32 np.matmul measured in the same run,
both ways of using the cores (one single-threaded process per core at once, summed; one process
with the default threads), the better of the two taken as the peak. Peak and step alternate
`--rounds` times; `--baseline DIR` times another checkout of the package (e.g. `git worktree add
/tmp/base <commit>`) in the same rounds, for before/after ratios measured side by side.

Run: nice -n 19 python benchmarks/bench_train.py [--iters 10] [--warmup 2] [--cold] [--no-startup]
     python benchmarks/bench_train.py --cli-only [--rounds 3] [--cli-steps 40] [--baseline DIR]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from npmaskrcnn import roi_heads as roi_heads_mod  # noqa: E402
from npmaskrcnn import rpn as rpn_mod  # noqa: E402
from npmaskrcnn import batches as batches_mod  # noqa: E402
from npmaskrcnn import train as train_mod  # noqa: E402
from npmaskrcnn.config import Config  # noqa: E402
from npmaskrcnn.model import MaskRCNN  # noqa: E402
from npmaskrcnn.shapes import ShapesDataset  # noqa: E402

# Rows of the table, in the order a training iteration meets them.
STAGES = [
    "backbone fwd", "fpn fwd", "rpn head fwd", "rpn targets", "rpn proposals",
    "roi sampling", "box pool fwd", "box head fwd", "mask pool fwd", "mask head fwd",
    "mask targets", "losses",
    "mask head bwd", "mask pool bwd", "box head bwd", "box pool bwd", "rpn head bwd",
    "fpn bwd", "backbone bwd", "grad clip", "optimizer step",
]


class StageTimer:
    """Exclusive wall time per stage: a call's time minus the time of the timed calls inside it."""

    def __init__(self):
        self.times = defaultdict(float)
        self._stack = []
        self.enabled = True

    def wrap(self, fn, stage):
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                inner = self._stack.pop()
                self.times[stage] += dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed

    def reset(self):
        self.times = defaultdict(float)


def pool_stage(size_to_name, fn, timer, direction):
    """RoIHeads.pool / unpool serve both branches; tell them apart by the pooled size."""
    def pool(features, rois, size):
        return timer.wrap(fn, f"{size_to_name[size]} pool {direction}")(features, rois, size)

    def unpool(dout, cache, dfeatures):
        return timer.wrap(fn, f"{size_to_name[dout.shape[-1]]} pool {direction}")(dout, cache, dfeatures)
    return pool if direction == "fwd" else unpool


def instrument(model, opt, timer):
    """Wrap the model's stages (instance attributes shadow the class methods) and the loss functions."""
    cfg = model.config
    body, fpn, rpn, rh = model.backbone.body, model.backbone.fpn, model.rpn, model.roi_heads
    for mod, name in [(body, "backbone"), (fpn, "fpn"), (rpn.head, "rpn head"),
                      (rh.box_head, "box head"), (rh.box_predictor, "box head"),
                      (rh.mask_head, "mask head")]:
        mod.forward = timer.wrap(mod.forward, f"{name} fwd")
        mod.backward = timer.wrap(mod.backward, f"{name} bwd")
    rpn.assign_targets = timer.wrap(rpn.assign_targets, "rpn targets")
    rpn.sampler = timer.wrap(rpn.sampler, "rpn targets")
    rpn.propose = timer.wrap(rpn.propose, "rpn proposals")
    rh.sample_proposals = timer.wrap(rh.sample_proposals, "roi sampling")
    rh.select_mask_rois = timer.wrap(rh.select_mask_rois, "roi sampling")
    roi_heads_mod.mask_targets = timer.wrap(roi_heads_mod.mask_targets, "mask targets")
    sizes = {cfg.box_pool_size: "box", cfg.mask_pool_size: "mask"}
    if len(sizes) < 2:
        sizes = {cfg.box_pool_size: "box+mask"}
    rh.pool = pool_stage(sizes, rh.pool, timer, "fwd")
    rh.unpool = pool_stage(sizes, rh.unpool, timer, "bwd")
    for mod in (rpn_mod, roi_heads_mod):   # the names each module imported (a loss per branch)
        for fname in ("sigmoid_binary_cross_entropy", "smooth_l1", "fastrcnn_loss", "maskrcnn_loss"):
            if hasattr(mod, fname):
                setattr(mod, fname, timer.wrap(getattr(mod, fname), "losses"))
    train_mod.clip_grad_norm = timer.wrap(train_mod.clip_grad_norm, "grad clip")
    opt.step = timer.wrap(opt.step, "optimizer step")


def make_batch(cfg, seed=0):
    """The batch train() would draw at step 0 (same dataset parameters as `train`)."""
    s = cfg.image_size
    ds = ShapesDataset(1000, seed=seed, image_size=s, min_size=max(8, s // 8), max_size=s // 2)
    return ds, batches_mod.get_batch(ds, 0, cfg)


def bench_training(cfg, iters, warmup):
    ds, (images, targets) = make_batch(cfg)
    model = MaskRCNN(cfg, ds.class_names)
    model.train()
    opt = train_mod.make_optimizer(model, cfg)
    timer = StageTimer()
    instrument(model, opt, timer)
    step = 0
    for _ in range(warmup):
        train_mod.train_step(model, opt, images, targets, step, cfg)
        step += 1
    per_iter, totals = [], []
    for _ in range(iters):
        timer.reset()
        t0 = time.perf_counter()
        train_mod.train_step(model, opt, images, targets, step, cfg)
        total = time.perf_counter() - t0
        step += 1
        row = dict(timer.times)
        row["other"] = total - sum(row.values())
        per_iter.append(row)
        totals.append(total)
    # one more iteration under tracemalloc for the NumPy peak (slower; not timed)
    tracemalloc.start()
    train_mod.train_step(model, opt, images, targets, step, cfg)
    _, np_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return model, ds, per_iter, totals, np_peak


def bench_predict(model, ds, iters, warmup):
    ims = [ds[100 + i][0] for i in range(warmup + iters)]
    for im in ims[:warmup]:
        model.predict(im)
    times = []
    for im in ims[warmup:]:
        t0 = time.perf_counter()
        model.predict(im)
        times.append(time.perf_counter() - t0)
    return times


STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import npmaskrcnn.batches as B
import npmaskrcnn.train as T
from npmaskrcnn.config import Config
from npmaskrcnn.model import MaskRCNN
from npmaskrcnn.shapes import ShapesDataset
t1 = time.perf_counter()
cfg = Config.shipped()
s = cfg.image_size
ds = ShapesDataset(100, seed=0, image_size=s, min_size=max(8, s // 8), max_size=s // 2)
model = MaskRCNN(cfg, ds.class_names)
opt = T.make_optimizer(model, cfg)
t2 = time.perf_counter()
images, targets = B.get_batch(ds, 0, cfg)
T.train_step(model, opt, images, targets, 0, cfg)
t3 = time.perf_counter()
T.train_step(model, opt, images, targets, 1, cfg)
t4 = time.perf_counter()
model.predict(images[0])
t5 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, build_s=t2 - t1, first_step_s=t3 - t2, second_step_s=t4 - t3,
                      first_predict_s=t5 - t4)))
"""

# What a user meets first: a fresh process that imports the package, loads the shipped model and
# predicts one image (every inference kernel compiled then, or read from numba's cache).
PREDICT_STARTUP_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from npmaskrcnn.checkpoint import load_model
from npmaskrcnn.checks import shipped_model_path
from npmaskrcnn.shapes import ShapesDataset
t1 = time.perf_counter()
model = load_model(shipped_model_path())
image = ShapesDataset(1, seed=10_000, image_size=model.config.image_size)[0][0]
t2 = time.perf_counter()
model.predict(image)
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, first_predict_s=t3 - t2, total_s=t3 - t0)))
"""


def bench_startup(cold, script=STARTUP_SCRIPT):
    env = dict(os.environ)
    tmp = None
    if cold:
        tmp = tempfile.TemporaryDirectory(prefix="numba_cold_")
        env["NUMBA_CACHE_DIR"] = tmp.name
    try:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", script.format(root=os.path.abspath(ROOT))],
                             env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


# ---- as the CLI trains: model FLOPs, step time, and the matmul peak of the same run --------------

def count_step_flops(cfg, steps=(0, 1, 2)):
    """Model FLOPs of one training step as `train` computes it (every shard), averaged over `steps`:
    2 x the multiply-adds of conv2d, conv_transpose2d and linear, forward and backward."""
    from npmaskrcnn import layers, parallel
    ds = ShapesDataset(len(steps) * cfg.batch_size + 100, seed=0)
    model = MaskRCNN(cfg, ds.class_names)
    model.train()
    total = [0.0]
    fwd_flops = {}
    originals = {name: getattr(layers, name) for name in (
        "conv2d_forward", "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward",
        "linear_forward", "linear_backward")}

    def conv_fwd(x, w, b=None, stride=1, pad=0):
        out, cache = originals["conv2d_forward"](x, w, b, stride=stride, pad=pad)
        fwd_flops[id(cache)] = 2.0 * out.size * w[0].size
        total[0] += fwd_flops[id(cache)]
        return out, cache

    def conv_bwd(dout, cache, need_dx=True):
        total[0] += fwd_flops.pop(id(cache)) * (2 if need_dx else 1)  # dW, and dx unless skipped
        return originals["conv2d_backward"](dout, cache, need_dx=need_dx)

    def convt_fwd(x, w, b=None, stride=2, pad=0):
        out, cache = originals["conv_transpose2d_forward"](x, w, b, stride=stride, pad=pad)
        fwd_flops[id(cache)] = 2.0 * x.size * w[0].size
        total[0] += fwd_flops[id(cache)]
        return out, cache

    def convt_bwd(dout, cache):
        total[0] += 2 * fwd_flops.pop(id(cache))
        return originals["conv_transpose2d_backward"](dout, cache)

    def lin_fwd(x, w, b):
        out, cache = originals["linear_forward"](x, w, b)
        fwd_flops[id(cache)] = 2.0 * out.size * w.shape[1]
        total[0] += fwd_flops[id(cache)]
        return out, cache

    def lin_bwd(dout, cache):
        total[0] += 2 * fwd_flops.pop(id(cache))
        return originals["linear_backward"](dout, cache)

    wrappers = {"conv2d_forward": conv_fwd, "conv2d_backward": conv_bwd, "conv_transpose2d_forward": convt_fwd,
                "conv_transpose2d_backward": convt_bwd, "linear_forward": lin_fwd, "linear_backward": lin_bwd}
    try:
        for name, fn in wrappers.items():
            setattr(layers, name, fn)
        for step in steps:
            for shard in range(cfg.grad_shards):
                parallel.shard_forward_backward(model, ds, step, shard, cfg)
    finally:
        for name, fn in originals.items():
            setattr(layers, name, fn)
    return total[0] / len(steps)


PEAK_SCRIPT = r"""
import json, sys, time
import numpy as np
a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32)
out = np.empty_like(a)
np.matmul(a, b, out=out)
best, t_end = float("inf"), time.perf_counter() + {seconds}
while time.perf_counter() < t_end:
    t0 = time.perf_counter()
    np.matmul(a, b, out=out)
    best = min(best, time.perf_counter() - t0)
print(json.dumps(2.0 * 1024 ** 3 / best / 1e9))
"""

CLI_SCRIPT = r"""
import json, sys, tempfile
sys.path.insert(0, {root!r})
try:
    from npmaskrcnn.runtime import as_the_cli_trains     # the CLI's allocator setting (the threads
    as_the_cli_trains()                                  # are set by the environment)
except ImportError:                                      # an older tree (--baseline)
    pass
import numpy as np
from npmaskrcnn.config import Config
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.train import train
cfg = getattr(Config, 'shipped', Config)(train_steps={steps})   # the CLI's default recipe in either tree
with tempfile.TemporaryDirectory() as out:
    model, rows = train(cfg, out, dataset=ShapesDataset({steps} * cfg.batch_size, seed=0), progress=False,
                        workers={workers}, checkpoint_every=0)
sec = [r["seconds"] for r in rows[10:]]
print(json.dumps(dict(median=float(np.median(sec)), best=float(min(sec)))))
"""

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _env(threads):
    """os.environ with the thread counts set to `threads` (None: the libraries' defaults)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if threads is not None:
        env.update({k: str(threads) for k in THREAD_VARS})
    return env


def matmul_peak(n_proc, threads, seconds=1.5):
    """GFLOP/s of a square 1024 float32 np.matmul (best call), n_proc processes at once, summed."""
    procs = [subprocess.Popen([sys.executable, "-c", PEAK_SCRIPT.format(seconds=seconds)], env=_env(threads),
                              stdout=subprocess.PIPE, text=True) for _ in range(n_proc)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a matmul peak subprocess failed")
    return sum(json.loads(o) for o in outs)


def cli_step(root, steps, workers):
    """(median, best) seconds per step of train(Config(), workers=workers) run from the package in
    `root`, as the CLI runs it: one BLAS and one numba thread per process."""
    out = subprocess.run([sys.executable, "-c", CLI_SCRIPT.format(root=os.path.abspath(root), steps=steps,
                                                                   workers=workers)],
                         env=_env(1), capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["median"], res["best"]


def bench_cli(cfg, rounds, steps, baseline):
    """Print the model FLOPs of a step, the CLI step time and its ratio to the matmul peak."""
    cores = os.cpu_count() or 1
    flops = count_step_flops(cfg)
    print(f"\nas the CLI trains: the shipped recipe, batch {cfg.batch_size} in {cfg.grad_shards} shards, "
          f"{min(cores, cfg.grad_shards)} processes x 1 thread, {steps} steps (median after 10)")
    print(f"model FLOPs of one training step: {flops / 1e9:.2f} GFLOP")
    trees = [("this tree", ROOT)] + ([("baseline", baseline)] if baseline else [])
    results = {name: [] for name, _ in trees}
    peaks = []
    for r in range(rounds):
        p_proc = matmul_peak(cores, 1)
        p_one = matmul_peak(1, None)
        peak = max(p_proc, p_one)
        peaks.append(peak)
        line = (f"round {r + 1}: matmul 1024 peak {p_proc:.1f} GFLOP/s ({cores} x 1 thread, summed), "
                f"{p_one:.1f} (1 process, default threads)")
        for name, root in trees:
            med, best = cli_step(root, steps, min(cores, cfg.grad_shards))
            results[name].append(med)
            line += (f"; {name}: step {1e3 * med:.1f} ms = {flops / med / 1e9:.1f} GFLOP/s = "
                     f"{flops / med / 1e9 / peak:.1%} of peak")
        print(line + f" (load avg {os.getloadavg()[0]:.2f})")
    peak = max(peaks)
    out = {"flops": flops, "peak_gflops": peak}
    for name, _ in trees:
        step = min(results[name])
        out[name] = step
        print(f"{name}: best median step {1e3 * step:.1f} ms -> {flops / step / 1e9:.1f} GFLOP/s, "
              f"{flops / step / 1e9 / peak:.1%} of the best peak {peak:.1f} GFLOP/s")
    if baseline:
        ratios = [b / t for t, b in zip(results["this tree"], results["baseline"])]
        print("baseline step / this tree's step, per round: " + ", ".join(f"{x:.2f}" for x in ratios))
    return out


def print_startup(cold, results):
    """The two startup tables (warm numba cache; with `cold` also an empty one), into `results`."""
    modes = [("warm numba cache", False)] + ([("cold (empty NUMBA_CACHE_DIR)", True)] if cold else [])
    print("\nstartup in a fresh process (s)")
    print(f"{'':<30}{'import':>8}{'build':>8}{'step 1':>8}{'step 2':>8}{'predict':>8}{'process':>9}")
    for name, cold in modes:
        r = bench_startup(cold)
        results["startup_cold" if cold else "startup_warm"] = r
        print(f"{name:<30}{r['import_s']:8.2f}{r['build_s']:8.2f}{r['first_step_s']:8.2f}"
              f"{r['second_step_s']:8.2f}{r['first_predict_s']:8.2f}{r['process_wall_s']:9.2f}")
    print("\nimport + load the shipped model + first predict, in a fresh process (s)")
    print(f"{'':<30}{'import':>8}{'load':>8}{'predict':>8}{'total':>8}{'process':>9}")
    for name, cold in modes:
        r = bench_startup(cold, PREDICT_STARTUP_SCRIPT)
        results["predict_startup_cold" if cold else "predict_startup_warm"] = r
        print(f"{name:<30}{r['import_s']:8.2f}{r['load_s']:8.2f}{r['first_predict_s']:8.2f}"
              f"{r['total_s']:8.2f}{r['process_wall_s']:9.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10, help="timed iterations (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="also measure startup with an empty numba cache")
    ap.add_argument("--no-startup", action="store_true", help="skip the subprocess startup measurement")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of matmul peak + CLI step")
    ap.add_argument("--cli-steps", type=int, default=40, help="training steps per CLI-step measurement")
    ap.add_argument("--cli-only", action="store_true", help="only the as-the-CLI-trains measurement")
    ap.add_argument("--no-cli", action="store_true", help="skip the as-the-CLI-trains measurement")
    ap.add_argument("--baseline", help="another checkout of the repository to time in the same rounds")
    ap.add_argument("--startup-only", action="store_true", help="only the fresh-process startup tables")
    args = ap.parse_args()
    if args.cli_only:
        bench_cli(Config.shipped(), args.rounds, args.cli_steps, args.baseline)
        return

    import numba
    from npmaskrcnn.runtime import keep_freed_memory
    # as the CLI's train and every load_model run: freed memory kept for reuse, no page faults of
    # fresh mmaps at every layer (the in-process iteration and predict below; startup runs apart)
    keep_freed_memory()
    cfg = Config.shipped()
    print(f"config: shapes preset, {cfg.image_size}x{cfg.image_size}, batch {cfg.batch_size}; "
          f"numba threads {numba.get_num_threads()}, cpus {os.cpu_count()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print("warning: the machine is busy; multi-threaded BLAS spin-waits under contention and can "
              "inflate times many-fold (try OPENBLAS_NUM_THREADS=1)")
    if args.startup_only:
        print_startup(args.cold, {})
        return
    model, ds, per_iter, totals, np_peak = bench_training(cfg, args.iters, args.warmup)
    total = float(np.median(totals))
    stages = STAGES + sorted(k for r in per_iter for k in r if k not in STAGES and k != "other") + ["other"]
    med = {s: 1e3 * float(np.median([r.get(s, 0.0) for r in per_iter])) for s in stages}
    print(f"\ntraining iteration (median of {args.iters}, {args.warmup} warm-up), exclusive times")
    print(f"{'stage':<18}{'ms':>9}{'%':>7}")
    for s in stages:
        print(f"{s:<18}{med[s]:9.2f}{100 * med[s] / (1e3 * total):7.1f}")
    print(f"{'TOTAL':<18}{1e3 * total:9.2f}{'':>7}   (min {1e3 * min(totals):.1f}, max {1e3 * max(totals):.1f}; "
          f"{cfg.batch_size / total:.2f} images/s)")
    groups = {"forward": [s for s in stages if s.endswith("fwd")],
              "targets/proposals/sampling/losses": ["rpn targets", "rpn proposals", "roi sampling",
                                                    "mask targets", "losses"],
              "backward": [s for s in stages if s.endswith("bwd")],
              "grad clip + optimizer": ["grad clip", "optimizer step"], "other": ["other"]}
    print("\ngroups: " + ", ".join(f"{g} {sum(med[s] for s in ss):.1f} ms" for g, ss in groups.items()))

    ptimes = bench_predict(model, ds, args.iters, args.warmup)
    print(f"\ninference: model.predict(one image) median {1e3 * np.median(ptimes):.2f} ms "
          f"(min {1e3 * min(ptimes):.1f}, max {1e3 * max(ptimes):.1f})")
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"memory: peak RSS {rss_kib / 1024:.0f} MiB (process, incl. numba/LLVM); "
          f"tracemalloc peak of one training iteration {np_peak / 2**20:.1f} MiB")

    results = {"stages_ms": med, "total_ms": 1e3 * total, "predict_ms": 1e3 * float(np.median(ptimes)),
               "peak_rss_mib": rss_kib / 1024, "tracemalloc_peak_mib": np_peak / 2**20}
    if not args.no_startup:
        print_startup(args.cold, results)
    if not args.no_cli:
        results["cli"] = bench_cli(cfg, args.rounds, args.cli_steps, args.baseline)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""Data-parallel training: steps per second with one process and with one process per core.

Trains `Config()` (batch 4, `grad_shards` 2) for `--steps` steps on fresh shapes images, once
with `workers=1` (both shards in turn in this process) and once with `workers=2` (the second
shard in a spawned worker), alternating `--rounds` times in this one run, each process with one
BLAS and one numba thread as the CLI runs training. Both give the same weights (checked here
too, bit for bit); only the wall time differs. The step time includes the image generation, the
forward and backward of every shard, the shard average, clipping and the AdamW step.

Run: python benchmarks/bench_parallel.py [--steps 60] [--rounds 2]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from npmaskrcnn.runtime import as_the_cli_trains  # noqa: E402

as_the_cli_trains()            # before numpy loads: the CLI's thread counts and allocator setting

import numpy as np  # noqa: E402

from npmaskrcnn.config import Config  # noqa: E402
from npmaskrcnn.shapes import ShapesDataset  # noqa: E402
from npmaskrcnn.train import train  # noqa: E402


def run(workers, steps):
    """(median step seconds after 10 warm-up steps, whole wall seconds, final parameters)."""
    cfg = Config(train_steps=steps)
    data = ShapesDataset(steps * cfg.batch_size, seed=0)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        model, rows = train(cfg, out, dataset=data, progress=False, workers=workers,
                            checkpoint_every=0)
        wall = time.perf_counter() - t0
    step = float(np.median([r["seconds"] for r in rows[10:]]))
    return step, wall, {k: v.copy() for k, v in model.named_params()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"Config(): batch 4 in 2 shards, {args.steps} steps, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    times = {1: [], 2: []}
    params = {}
    for _ in range(args.rounds):
        for w in (1, 2):
            step, wall, params[w] = run(w, args.steps)
            times[w].append((step, wall))
            print(f"  workers={w}: median step {1e3 * step:.1f} ms, {args.steps} steps in {wall:.1f} s")
    same = all(np.array_equal(params[1][k], params[2][k]) for k in params[1])
    s1 = min(t[0] for t in times[1])
    s2 = min(t[0] for t in times[2])
    print(f"best median step: 1 process {1e3 * s1:.1f} ms, 2 processes {1e3 * s2:.1f} ms -> "
          f"{s1 / s2:.2f}x the steps per second; same weights: {same}")


if __name__ == "__main__":
    main()

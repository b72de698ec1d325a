"""Training on a busy machine: walkthrough 08 and the CLI's `train`, alone and beside a CPU hog.

A second OpenBLAS thread spin-waits for its partner, so a process with two BLAS threads slows
down many-fold as soon as anything else wants a core (runtime.py). The CLI trains with one BLAS
and one numba thread per process and one process per core; walkthrough 08 trains in its own
process with the same settings (`runtime.as_the_cli_trains`). This benchmark checks that they
behave alike: each runs the same 60 steps of `Config()` at batch 2 (what walkthrough 08 trains in
normal mode), alone and with one busy-looping Python process beside it, alternating `--rounds`
times in this one run. It prints the median seconds per step (from each run's log.csv, after 5
warm-up steps) and the slowdown beside the hog; the two slowdowns should agree within 20 %.

Run: python benchmarks/bench_busy.py [--rounds 1]
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def step_seconds(log_csv):
    """Median seconds per step of a run's log.csv, after 5 warm-up steps."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return statistics.median(float(r["seconds"]) for r in rows[5:])


def run(kind, out):
    """Run walkthrough 08 or the CLI's train into `out`; returns (median step s, wall s)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}   # as a user starts them
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env else []))
    if kind == "walkthrough 08":
        cmd = [sys.executable, os.path.join(ROOT, "walkthroughs", "08_training.py"), "--out", out]
        log_csv = os.path.join(out, "08_run", "log.csv")
    else:
        cmd = [sys.executable, "-m", "npmaskrcnn", "train", "--paper", "--steps", "60",
               "--batch-size", "2", "--set", "warmup_steps=10", "--eval-every", "0",
               "--no-progress", "--out", os.path.join(out, "run")]
        log_csv = os.path.join(out, "run", "log.csv")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return step_seconds(log_csv), time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1, help="alternations of the four runs")
    args = p.parse_args()
    kinds = ("walkthrough 08", "npmaskrcnn train")
    times = {(k, busy): [] for k in kinds for busy in (False, True)}
    for _ in range(args.rounds):
        for kind in kinds:
            for busy in (False, True):
                hog = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                       if busy else None)
                try:
                    with tempfile.TemporaryDirectory() as out:
                        step, wall = run(kind, out)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                times[kind, busy].append(step)
                print(f"{kind:<17} {'beside a CPU hog' if busy else 'alone':<17} "
                      f"{step * 1000:7.0f} ms per step   (whole run {wall:5.1f} s)", flush=True)
    print()
    slow = {}
    for kind in kinds:
        quiet, busy = (min(times[kind, b]) for b in (False, True))
        slow[kind] = busy / quiet
        print(f"{kind:<17} alone {quiet * 1000:5.0f} ms, beside a hog {busy * 1000:5.0f} ms per "
              f"step: slowdown {slow[kind]:.2f}x")
    ratio = slow[kinds[0]] / slow[kinds[1]]
    print(f"walkthrough 08's slowdown / the CLI's: {ratio:.2f} "
          f"({'within' if abs(ratio - 1) <= 0.2 else 'outside'} +-20 %)")


if __name__ == "__main__":
    main()

"""Run every walkthrough (`walkthroughs/NN_*.py`) in order, each in its own `python` process.

    python walkthroughs/run_all.py [--fast] [--out DIR] [--model coco.npz]

`--fast`, `--out` and `--model` (a COCO model for the "on a real photo" sections of 02, 04, 06,
07 and 09; docs/torchvision.md) are passed through to each walkthrough. Prints each one's wall time; the exit
status is non-zero if any walkthrough failed (the others still run).
"""

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)


def walkthrough_files():
    """The walkthrough scripts, sorted by their number: [.../00_shapes_data.py, ...]."""
    return sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fast mode: smaller sizes")
    parser.add_argument("--out", default=None, help="folder for the figures")
    parser.add_argument("--model", default=None, help="a COCO model (import-torchvision's .npz)")
    args = parser.parse_args(argv)
    extra = (["--fast"] if args.fast else []) + (["--out", os.path.abspath(args.out)] if args.out else []) \
        + (["--model", os.path.abspath(args.model)] if args.model else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("MPLBACKEND", "Agg")
    failed, total = [], time.perf_counter()
    for path in walkthrough_files():
        name = os.path.basename(path)
        print(f"=== {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, path] + extra, cwd=REPO_ROOT, env=env)
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        if code != 0:
            failed.append(name)
    print(f"{len(walkthrough_files()) - len(failed)} passed, {len(failed)} failed "
          f"in {time.perf_counter() - total:.1f} s" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

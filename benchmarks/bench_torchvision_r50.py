"""R50-FPN inference on an 800 x 1067 photo: npmaskrcnn against torchvision, same weights, same threads.

    python benchmarks/bench_torchvision_r50.py [--threads 2] [--rounds 3] [--malloc-defaults]
    (needs torch + torchvision)

The weights are torchvision's maskrcnn_resnet50_fpn with random weights and BN statistics calibrated
on the photo (tests/test_torchvision_r50.py's oracle: nothing is downloaded), so both detect about
100 instances and the mask branch and paste run at full cost. The parent writes them as a .pth and
imports them (`import-torchvision`). Each side then lives in its own process (so each peak RSS is
its own; the NumPy one never imports torch), warms up on a 320 x 427 image (numba's compiled
kernels, torch's allocator) and waits; the parent asks them in turn for one timed `predict` of the
800 x 1067 photo (resized 800 x 1067, padded 800 x 1088), `--rounds` times, so that both sides meet
the same machine load. Prints seconds per image of every round, the ratio per round, detections
and peak RSS (ru_maxrss) for each side.

`--malloc-defaults` adds a third process: npmaskrcnn with glibc's allocator left at its defaults
(`load_model` otherwise raises its thresholds, `runtime.keep_freed_memory`): what that setting
saves, measured in the same rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
SIZE = (800, 1067)

CHILD = r"""
import json, os, resource, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import numpy as np
from PIL import Image
import matplotlib.cbook
side, weights, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
    im = Image.open(f).convert("RGB")
    photo = np.asarray(im.resize(({w}, {h}), Image.BILINEAR)).copy()
    small = np.asarray(im.resize((427, 320), Image.BILINEAR)).copy()
if side == "torchvision":
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    torch.set_num_threads(threads)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    def run(image):
        with torch.no_grad():
            return len(model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]["boxes"])
else:
    import npmaskrcnn.runtime
    from npmaskrcnn.checkpoint import load_model
    if side.endswith("malloc defaults"):
        npmaskrcnn.runtime.keep_freed_memory = lambda: False    # load_model then leaves glibc as it is
    model = load_model(weights)
    def run(image):
        return len(model.predict(image)[0]["boxes"])
run(small)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    t0 = time.perf_counter()
    n = run(photo)
    print(json.dumps({{"seconds": time.perf_counter() - t0, "detections": n}}), flush=True)
print(json.dumps({{"torch_imported": "torch" in sys.modules,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}}), flush=True)
"""


class Child:
    """One side in its own process: `run()` times one predict of the photo, `close()` -> peak RSS."""

    def __init__(self, side, weights, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        code = CHILD.format(root=ROOT, tests=os.path.join(ROOT, "tests"), w=SIZE[1], h=SIZE[0])
        self.side = side
        self.proc = subprocess.Popen([sys.executable, "-c", code, side, weights, str(threads)],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("ready")
        self.seconds, self.detections = [], None

    def _expect(self, word=None):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} process ended early (exit {self.proc.wait()})")
        return line.strip() if word else json.loads(line)

    def run(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        r = self._expect()
        self.seconds.append(r["seconds"])
        self.detections = r["detections"]
        return r["seconds"]

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        r = self._expect()
        self.proc.wait()
        return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="also time npmaskrcnn with glibc's default allocator thresholds")
    args = parser.parse_args()
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import torch

    import test_torchvision_r50 as T
    from npmaskrcnn.__main__ import main as cli

    sides = ["torchvision", "npmaskrcnn"] + (["npmaskrcnn, malloc defaults"] if args.malloc_defaults else [])
    with tempfile.TemporaryDirectory() as tmp:
        pth, npz = os.path.join(tmp, "oracle.pth"), os.path.join(tmp, "oracle.npz")
        torch.save(T.build_oracle().state_dict(), pth)
        assert cli(["import-torchvision", pth, "--out", npz]) == 0
        children = [Child(s, pth if s == "torchvision" else npz, args.threads) for s in sides]
        print(f"R50-FPN inference, {SIZE[1]}x{SIZE[0]} photo, {args.threads} threads, "
              f"{args.rounds} rounds (one predict per side per round, in turn):")
        for r in range(args.rounds):
            times = [c.run() for c in children]
            ratio = times[1] / times[0]
            print(f"  round {r + 1}: " + ", ".join(f"{c.side} {t:.2f} s" for c, t in zip(children, times))
                  + f"; npmaskrcnn / torchvision {ratio:.2f}  (load avg {os.getloadavg()[0]:.2f})",
                  flush=True)
        for c in children:
            info = c.close()
            print(f"  {c.side:28s} median {statistics.median(c.seconds):6.2f} s/image  "
                  f"{c.detections:3d} detections  peak RSS {info['peak_rss_gb']:.2f} GB  "
                  f"(torch imported: {info['torch_imported']})")
        ratios = [b / a for a, b in zip(children[0].seconds, children[1].seconds)]
        print(f"  npmaskrcnn / torchvision per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()

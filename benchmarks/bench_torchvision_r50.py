"""R50-FPN inference on an 800 x 1067 photo: npmaskrcnn against torchvision, same weights, same threads.

    python benchmarks/bench_torchvision_r50.py [--threads 2]     # needs torch + torchvision

The weights are torchvision's maskrcnn_resnet50_fpn with random weights and BN statistics calibrated
on the photo (tests/test_torchvision_r50.py's oracle: nothing is downloaded), so both detect about
100 instances and the mask branch and paste run at full cost. The parent writes them as a .pth and
imports them (`import-torchvision`); then each side runs in its own fresh process (so each peak RSS
is its own; the NumPy one never imports torch): one warm-up on a 320 x 427 image (numba's compiled
kernels, torch's allocator), then one timed `predict` of the 800 x 1067 photo (resized 800 x 1067,
padded 800 x 1088). Prints seconds per image, detections and peak RSS (ru_maxrss) for each.
"""

import argparse
import json
import os
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
if side == "torch":
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    torch.set_num_threads(threads)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    def run(image):
        with torch.no_grad():
            return len(model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]["boxes"])
else:
    from npmaskrcnn.checkpoint import load_model
    model = load_model(weights)
    def run(image):
        return len(model.predict(image)[0]["boxes"])
run(small)
t0 = time.perf_counter()
n = run(photo)
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "detections": n, "torch_imported": "torch" in sys.modules,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}}))
"""


def child(side, weights, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    code = CHILD.format(root=ROOT, tests=os.path.join(ROOT, "tests"), w=SIZE[1], h=SIZE[0])
    out = subprocess.run([sys.executable, "-c", code, side, weights, str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import torch

    import test_torchvision_r50 as T
    from npmaskrcnn.__main__ import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        pth, npz = os.path.join(tmp, "oracle.pth"), os.path.join(tmp, "oracle.npz")
        torch.save(T.build_oracle().state_dict(), pth)
        assert cli(["import-torchvision", pth, "--out", npz]) == 0
        results = {"torchvision": child("torch", pth, args.threads),
                   "npmaskrcnn": child("numpy", npz, args.threads)}
    print(f"R50-FPN inference, {SIZE[1]}x{SIZE[0]} photo, {args.threads} threads, one timed run each:")
    for name, r in results.items():
        print(f"  {name:12s} {r['seconds']:6.2f} s/image  {r['detections']:3d} detections  "
              f"peak RSS {r['peak_rss_gb']:.2f} GB  (torch imported: {r['torch_imported']})")


if __name__ == "__main__":
    main()

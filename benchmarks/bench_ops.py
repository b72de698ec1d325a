"""Time RoIAlign, RoIWarp, RoIPool and NMS: python benchmarks/bench_ops.py

Prints the median (and the minimum, which is less sensitive to other processes on the machine)
wall time in milliseconds of each op, after one warm-up call that also compiles the numba
kernels. RoIAlign runs twice, with the readable kernels (impl="readable", roi_align.py) and with
the separable optimisation the model uses (impl="separable", roi_align_fast.py), and the ratio
readable / separable is printed (> 1 means the optimisation is faster). If torch and torchvision
import, their CPU kernels run on the same inputs in the same process and the ratio
torchvision / ours is printed (> 1 means we are faster).
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from npmaskrcnn.boxes import nms  # noqa: E402
from npmaskrcnn.roi_ops import (roi_align_backward, roi_align_forward,  # noqa: E402
                                roi_pool_backward, roi_pool_forward, roi_warp_backward,
                                roi_warp_forward)

try:
    import torchvision.ops as tvops     # first: without torchvision, skip the slow torch import
    import torch
except ImportError:
    torch = tvops = None


def timeit(fn, repeat=9):
    """(median, min) milliseconds of fn() over `repeat` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), 1000 * float(np.min(times))


def random_rois(rng, n, image=128, n_img=2, lo=8, hi=96):
    """n boxes inside an image x image picture, sides uniform in [lo, hi], random batch index."""
    wh = rng.uniform(lo, hi, (n, 2))
    xy = rng.uniform(0, 1, (n, 2)) * (image - wh)
    return np.concatenate([rng.integers(0, n_img, (n, 1)), xy, xy + wh], axis=1).astype(np.float32)


def random_boxes(rng, n, clustered):
    """n boxes in a 512 x 512 picture: uniform, or jittered copies of 20 objects."""
    if clustered:
        centres = rng.uniform(50, 462, (20, 2))[rng.integers(0, 20, n)] + rng.normal(0, 6, (n, 2))
        wh = rng.uniform(30, 80, (n, 2))
    else:
        centres, wh = rng.uniform(0, 512, (n, 2)), rng.uniform(10, 100, (n, 2))
    return np.concatenate([centres - wh / 2, centres + wh / 2], axis=1).astype(np.float32)


def report(name, ours, theirs_fn):
    line = f"{name:<40s} {ours[0]:8.2f} ms (min {ours[1]:7.2f})"
    if theirs_fn is not None and torch is not None:
        theirs = timeit(theirs_fn)
        line += (f"   torchvision {theirs[0]:8.2f} ms (min {theirs[1]:7.2f})"
                 f"   ratio {theirs[0] / ours[0]:5.2f}x")
    print(line)


def main():
    import numba
    print(f"numba threads: {numba.get_num_threads()}, load average: {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 64, 32, 32)).astype(np.float32)
    rois = random_rois(rng, 512)
    tv = torch is not None
    if tv:
        tf = torch.from_numpy(features).requires_grad_()
        tr = torch.from_numpy(rois)

    for size in (7, 14):
        for mode in ("avg", "max"):
            for what in ("forward", "forward+backward"):
                times = {}
                for impl in ("readable", "separable"):
                    def run(impl=impl, mode=mode, what=what):
                        out, cache = roi_align_forward(features, rois, size, 0.25, 2, True, mode,
                                                       impl)
                        if what != "forward":
                            roi_align_backward(np.ones_like(out), cache)
                    times[impl] = timeit(run)
                    report(f"roi_align {mode} {size}x{size} {what} {impl}", times[impl], None)
                print(f"{'':<40s} readable / separable: "
                      f"{times['readable'][0] / times['separable'][0]:5.2f}x")

        def warp_fwd_bwd():
            out, cache = roi_warp_forward(features, rois, size, 0.25, 2, True)
            return roi_warp_backward(np.ones_like(out), cache)

        report(f"roi_warp {size}x{size} forward+backward", timeit(warp_fwd_bwd), None)

        def align_fwd():
            return roi_align_forward(features, rois, size, 0.25, 2, True)

        def align_fwd_bwd():
            out, cache = roi_align_forward(features, rois, size, 0.25, 2, True)
            return roi_align_backward(np.ones_like(out), cache)

        def tv_align_fwd():
            with torch.no_grad():
                return tvops.roi_align(tf, tr, size, 0.25, 2, True)

        def tv_align_fwd_bwd():
            tf.grad = None
            tvops.roi_align(tf, tr, size, 0.25, 2, True).sum().backward()

        report(f"roi_align {size}x{size} forward", timeit(align_fwd), tv_align_fwd if tv else None)
        report(f"roi_align {size}x{size} forward+backward", timeit(align_fwd_bwd),
               tv_align_fwd_bwd if tv else None)

        def pool_fwd():
            return roi_pool_forward(features, rois, size, 0.25)

        def pool_fwd_bwd():
            out, cache = roi_pool_forward(features, rois, size, 0.25)
            return roi_pool_backward(np.ones_like(out), cache)

        def tv_pool_fwd():
            with torch.no_grad():
                return tvops.roi_pool(tf, tr, size, 0.25)

        def tv_pool_fwd_bwd():
            tf.grad = None
            tvops.roi_pool(tf, tr, size, 0.25).sum().backward()

        report(f"roi_pool {size}x{size} forward", timeit(pool_fwd), tv_pool_fwd if tv else None)
        report(f"roi_pool {size}x{size} forward+backward", timeit(pool_fwd_bwd),
               tv_pool_fwd_bwd if tv else None)

    for clustered in (False, True):
        for n in (1000, 2000, 6000):
            boxes = random_boxes(rng, n, clustered)
            scores = rng.uniform(0, 1, n).astype(np.float32)
            tb, ts = (torch.from_numpy(boxes), torch.from_numpy(scores)) if tv else (None, None)
            report(f"nms {n} {'clustered' if clustered else 'uniform'} boxes",
                   timeit(lambda: nms(boxes, scores, 0.7)),
                   (lambda: tvops.nms(tb, ts, 0.7)) if tv else None)


if __name__ == "__main__":
    main()

"""How close the imported R50-FPN comes to torchvision's own, stage by stage: the numbers behind
tests/test_torchvision_r50.py's gates (docs/torchvision.md quotes them).

    python benchmarks/torchvision_equivalence.py        # needs torch + torchvision; ~8 min on 2 cores

Same oracle and images as the test (random weights, BN statistics calibrated on the sample photo).
Prints, per image and dtype: the worst relative error of the transform, the FPN maps, the RPN head
outputs and the box and mask heads (given torchvision's proposals / detections), the share of
proposals and detections matched (IoU > 0.99, same label, score within 1e-3) and of mask pixels
that agree.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import test_torchvision_r50 as T  # noqa: E402


def main():
    T.torch.set_num_threads(2)
    tv32 = T.build_oracle()
    from npmaskrcnn.config import Config
    from npmaskrcnn.model import MaskRCNN

    state = {k: v.numpy() for k, v in tv32.state_dict().items()}
    ours = T.tw.from_torchvision(state, MaskRCNN(Config.torchvision_r50_fpn(bn_eps=1e-5))).eval()
    models = {np.float32: (tv32, ours)}
    for dtype in (np.float64, np.float32):
        for name in T.SIZES:
            t, o = T.results(models, name, dtype)
            feats = max(T.rel(a, b) for a, b in zip(o["features"], t["features"]))
            rpn = max(T.rel(a, b) for a, b in zip(o["rpn_logits"] + o["rpn_deltas"],
                                                  t["rpn_logits"] + t["rpn_deltas"]))
            heads = max(T.rel(o[k], t[k]) for k in ("box_feats", "class_logits", "box_reg"))
            mask = T.rel(o["mask_logits"], t["mask_logits"][:, 1:])
            props = (T.match(t["proposals"], o["proposals"]) >= 0).mean()
            same_props = (o["proposals"].shape == t["proposals"].shape
                          and np.abs(o["proposals"] - t["proposals"]).max())
            f, g = o["final"], t["final"]
            j = T.match(g["boxes"], f["boxes"], g["labels"], f["labels"])
            ok = (j >= 0) & (np.abs(f["scores"][np.maximum(j, 0)] - g["scores"]) <= 1e-3)
            agree = (f["masks"][j[ok]] == (g["masks"][ok, 0] >= 0.5)).mean() if ok.any() else float("nan")
            print(f"{np.dtype(dtype).name} {name:9s} {o['image'].shape[1]}x{o['image'].shape[0]} -> "
                  f"{t['image_size'][1]}x{t['image_size'][0]}: transform {T.rel(o['tensor'], t['tensor']):.1e}, "
                  f"FPN {feats:.1e}, RPN head {rpn:.1e}, box head {heads:.1e}, mask head {mask:.1e}; "
                  f"proposals {props:.3f} matched of {len(t['proposals'])} (rank by rank: max |d| "
                  f"{same_props if same_props is not False else float('nan'):.1e} px), detections {ok.mean():.3f} "
                  f"of {len(ok)} matched, mask pixels {agree:.5f} agree", flush=True)
            T.CACHE.clear()


if __name__ == "__main__":
    main()

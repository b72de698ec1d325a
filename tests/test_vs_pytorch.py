"""Cross-check against a PyTorch twin of the network (benchmarks/torch_twin.py), if torch is installed.

Same weights (copied by parameter name), same input, same RoIs: backbone, FPN, RPN head, RoIAlign,
box head and mask head outputs must agree to 1e-4 relative error in float32, and the five losses
and every parameter gradient of one training step (the twin replays the NumPy run's proposals and
samples) as well. torch is optional and never in requirements.txt: without it the module skips.
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import torch_twin as tt  # noqa: E402

from npmaskrcnn.config import Config  # noqa: E402
from npmaskrcnn.model import MaskRCNN  # noqa: E402
from npmaskrcnn.roi_ops import roi_align_forward  # noqa: E402
from npmaskrcnn.shapes import ShapesDataset  # noqa: E402

TOL = 1e-4


def rel_error(a, b):
    a = np.asarray(a, np.float64)
    b = b.detach().numpy().astype(np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if a.size else 0.0


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    cfg = Config(image_size=64, stem_channels=8, stage_channels=(8, 16, 16, 32), gn_groups=4,
                 fpn_channels=16, anchor_sizes=(8, 16, 32, 64, 128), rpn_pre_nms_top_n_train=200,
                 rpn_post_nms_top_n_train=50, box_batch_size_per_image=32, canonical_size=56.0,
                 box_fc_dim=32, mask_channels=16, mask_num_convs=2, max_mask_rois_per_image=4, batch_size=2)
    ds = ShapesDataset(4, seed=0, image_size=64, min_size=8, max_size=32)
    model = MaskRCNN(cfg, ds.class_names)
    rng = np.random.default_rng(5)
    for k, v in model.named_params():                        # no zero / tiny parameters
        if v.ndim == 1:
            v[...] = (1.0 if k.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(v.shape)
    twin = tt.load_from_numpy(tt.TwinMaskRCNN(cfg), model)
    images, targets = zip(*[ds[i] for i in range(2)])
    return cfg, model, twin, list(images), list(targets)


def test_roi_align_twin_matches_project():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    rois = np.array([[0, 1.3, 2.2, 30.7, 20.1], [1, -5, -3, 8, 6], [0, 40, 30, 47, 35.9],
                     [1, 10, 10, 10.5, 10.2]], np.float32)
    ours, _ = roi_align_forward(feats, rois, 5, 0.25, 2, aligned=True)
    theirs = tt.roi_align(torch.from_numpy(feats), torch.from_numpy(rois), 5, 0.25, 2, aligned=True)
    assert rel_error(ours, theirs) <= 1e-5


def test_features_and_heads_agree(setup):
    cfg, model, twin, images, targets = setup
    model.eval()
    x, _ = model.preprocess(images)
    ps = model.backbone(x)
    with torch.no_grad():
        ps_t = twin.backbone(torch.from_numpy(x))
        for k, (a, b) in enumerate(zip(ps, ps_t)):
            assert rel_error(a, b) <= TOL, f"P{k + 2}"
        for k, (p, pt) in enumerate(zip(ps, ps_t)):
            lg, dl = model.rpn.head(p)
            lgt, dlt = twin.rpn.head(pt)
            assert rel_error(lg, lgt) <= TOL and rel_error(dl, dlt) <= TOL, f"RPN head on P{k + 2}"
        rng = np.random.default_rng(1)
        boxes = np.sort(rng.uniform(-4, 68, (40, 2, 2)), axis=1).reshape(40, 4)[:, [0, 2, 1, 3]]
        rois = np.concatenate([rng.integers(0, 2, (40, 1)), boxes], 1).astype(np.float32)
        bf, _ = model.roi_heads.pool(list(ps[:4]), rois, cfg.box_pool_size)
        bft = twin.pool(list(ps_t[:4]), rois, cfg.box_pool_size)
        assert rel_error(bf, bft) <= TOL
        cl, bd = model.roi_heads.box_predictor(model.roi_heads.box_head(bf))
        clt, bdt = twin.roi_heads.box_predictor(twin.roi_heads.box_head(bft))
        assert rel_error(cl, clt) <= TOL and rel_error(bd, bdt) <= TOL
        mf, _ = model.roi_heads.pool(list(ps[:4]), rois[:8], cfg.mask_pool_size)
        mft = twin.pool(list(ps_t[:4]), rois[:8], cfg.mask_pool_size)
        assert rel_error(mf, mft) <= TOL
        assert rel_error(model.roi_heads.mask_predictor(model.roi_heads.mask_head(mf)),
                         twin.roi_heads.mask_predictor(twin.roi_heads.mask_head(mft))) <= TOL


def test_losses_and_gradients_agree(setup):
    cfg, model, twin, images, targets = setup
    model.train()
    model.zero_grad()
    rec, undo = tt.record_numpy_forward(model)
    model.rng = np.random.default_rng([cfg.seed, 2, 0])
    try:
        losses = model.forward(images, targets)
    finally:
        undo()
    model.backward()
    assert rec["roi"][-1].size > 0, "the mask branch must be exercised"
    twin.zero_grad()
    losses_t = tt.training_losses(twin, model, images, targets, None, replay=rec)
    sum(losses_t.values()).backward()
    for k, v in losses.items():
        lt = float(losses_t[k].detach())
        assert abs(v - lt) <= TOL * max(abs(lt), 1e-3), k
    params = dict(twin.named_parameters())
    for k, g in model.named_grads():
        assert params[k].grad is not None, k
        assert rel_error(g, params[k].grad) <= TOL, k

"""npmaskrcnn against its PyTorch twin (benchmarks/torch_twin.py): agreement, then speed.

1) Agreement, float32, same weights (copied by name), same input batch, same RoIs:
   backbone C2..C5, FPN P2..P6, RPN head outputs, pooled RoI features, box head outputs, mask
   logits; then the five losses and every parameter's gradient of one training forward/backward
   (the twin replays the NumPy run's proposals and samples). Relative error = max|np - torch| /
   max|torch|, required <= 1e-4. The gradients are judged against the twin run in float64 (the
   exact values both float32 runs approximate); their error against the float32 twin is printed
   beside it, since on long sums PyTorch's own float32 error can pass 1e-4.
2) Speed, alternating in one process (np, torch, np, torch, ...; median of N): a full training
   iteration of each (forward with all five losses, backward, gradient clipping, AdamW step; the
   non-differentiable steps use the project's NumPy code on both sides), one inference on one
   image, and per stage fwd+bwd in isolation. torch.set_num_threads = numba's thread count.

Run: nice -n 19 python benchmarks/vs_pytorch.py [--iters 10] [--skip-speed]
Needs torch (`pip install torch`); torchvision is not used.
"""

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numba  # noqa: E402
import torch  # noqa: E402

from npmaskrcnn.runtime import keep_freed_memory  # noqa: E402

import torch_twin as tt  # noqa: E402
from npmaskrcnn import batches as batches_mod  # noqa: E402
from npmaskrcnn import train as train_mod  # noqa: E402
from npmaskrcnn.config import Config  # noqa: E402
from npmaskrcnn.model import MaskRCNN  # noqa: E402
from npmaskrcnn.optim import lr_at  # noqa: E402
from npmaskrcnn.rpn import flatten_head_outputs  # noqa: E402
from npmaskrcnn.shapes import ShapesDataset  # noqa: E402

TOL = 1e-4


def rel_error(a, b):
    a = np.asarray(a, np.float64)
    b = b.detach().numpy().astype(np.float64) if isinstance(b, torch.Tensor) else np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def setup(cfg, seed=0):
    s = cfg.image_size
    ds = ShapesDataset(1000, seed=seed, image_size=s, min_size=max(8, s // 8), max_size=s // 2)
    model = MaskRCNN(cfg, ds.class_names)
    # perturb the zero-initialised / tiny parameters so every path carries signal
    prng = np.random.default_rng(123)
    for k, v in model.named_params():
        if k.endswith("gn2.weight"):
            v[...] = 1.0 + 0.1 * prng.standard_normal(v.shape)
        elif v.ndim == 1:
            v[...] += 0.05 * prng.standard_normal(v.shape)
    twin = tt.load_from_numpy(tt.TwinMaskRCNN(cfg), model)
    return ds, model, twin


def check_agreement(cfg, model, twin, images, targets, verbose=True):
    """Compare every intermediate and gradient; returns a list of (name, rel_error)."""
    results = []

    def report(name, a, b):
        e = rel_error(a, b)
        results.append((name, e))
        if verbose:
            print(f"  {name:<44}{e:10.2e}  {'ok' if e <= TOL else 'MISMATCH'}")

    # --- forward intermediates (training mode, to get the sampled RoIs; caches cleared after)
    model.train()
    x, image_size = model.preprocess(images)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        cs_t = twin.backbone.body(xt)
        ps_t = twin.backbone.fpn(cs_t)
    model.eval()
    cs = model.backbone.body(x)
    ps = model.backbone.fpn(cs)
    for k, (a, b) in enumerate(zip(cs, cs_t)):
        report(f"backbone C{k + 2} {tuple(a.shape)}", a, b)
    for k, (a, b) in enumerate(zip(ps, ps_t)):
        report(f"FPN P{k + 2} {tuple(a.shape)}", a, b)
    with torch.no_grad():
        for k, (p, pt) in enumerate(zip(ps, ps_t)):
            lg, dl = model.rpn.head(p)
            lgt, dlt = twin.rpn.head(pt)
            report(f"RPN objectness P{k + 2} {tuple(lg.shape)}", lg, lgt)
            report(f"RPN deltas P{k + 2} {tuple(dl.shape)}", dl, dlt)
        # RoIs from a real training forward of the NumPy model
        model.train()
        rec, undo = tt.record_numpy_forward(model)
        model.rng = np.random.default_rng([cfg.seed, 2, 0])
        model.forward(images, targets)
        undo()
        model.clear_caches()
        model.eval()
        rois, labels, _, _, mask_idx = rec["roi"]
        feats_np = list(ps[:4])
        bf, _ = model.roi_heads.pool(feats_np, rois, cfg.box_pool_size)
        bft = twin.pool(list(ps_t[:4]), rois, cfg.box_pool_size)
        report(f"box RoIAlign {tuple(bf.shape)}", bf, bft)
        h = model.roi_heads.box_head(bf)
        ht = twin.roi_heads.box_head(bft)
        report(f"box head fc7 {tuple(h.shape)}", h, ht)
        cl, bd = model.roi_heads.box_predictor(h)
        clt, bdt = twin.roi_heads.box_predictor(ht)
        report(f"class_logits {tuple(cl.shape)}", cl, clt)
        report(f"box_deltas {tuple(bd.shape)}", bd, bdt)
        mrois = rois[mask_idx] if mask_idx.size else rois[:8]
        mf, _ = model.roi_heads.pool(feats_np, mrois, cfg.mask_pool_size)
        mft = twin.pool(list(ps_t[:4]), mrois, cfg.mask_pool_size)
        report(f"mask RoIAlign {tuple(mf.shape)}", mf, mft)
        ml = model.roi_heads.mask_predictor(model.roi_heads.mask_head(mf))
        mlt = twin.roi_heads.mask_predictor(twin.roi_heads.mask_head(mft))
        report(f"mask_logits {tuple(ml.shape)}", ml, mlt)

    # --- losses and gradients: NumPy forward/backward recorded, the twin replays it
    model.train()
    model.zero_grad()
    rec, undo = tt.record_numpy_forward(model)
    model.rng = np.random.default_rng([cfg.seed, 2, 1])
    losses = model.forward(images, targets)
    undo()
    model.backward()
    twin.zero_grad()
    losses_t = tt.training_losses(twin, model, images, targets, None, replay=rec)
    sum(losses_t.values()).backward()
    for k in losses:
        report(f"{k} ({losses[k]:.4f})", np.float64(losses[k]), losses_t[k])
    # the same replay in float64: the exact gradients both float32 runs approximate
    twin64 = copy.deepcopy(twin).double()
    twin64.zero_grad()
    losses_64 = tt.training_losses(twin64, copy.deepcopy(model).astype(np.float64), images, targets,
                                   None, replay=rec)
    sum(losses_64.values()).backward()

    def grad(module, k):
        p = dict(module.named_parameters())[k]
        return p.grad if p.grad is not None else torch.zeros_like(p)

    grads = dict(model.named_grads())
    worst = sorted(((rel_error(g, grad(twin64, k)), k) for k, g in grads.items()), reverse=True)
    n_bad = sum(e > TOL for e, _ in worst)
    for e, k in worst[:5 if verbose else 0]:
        results.append((f"grad {k}", e))
        if verbose:
            print(f"  grad {k:<39}{e:10.2e}  {'ok' if e <= TOL else 'MISMATCH'}   (vs float32 torch "
                  f"{rel_error(grads[k], grad(twin, k)):.2e}; float32 torch vs float64 "
                  f"{rel_error(grad(twin, k).numpy(), grad(twin64, k)):.2e})")
    results.append(("all parameter gradients (worst)", worst[0][0]))
    worst_t = max(rel_error(grads[k], grad(twin, k)) for k in grads)
    if verbose:
        print(f"  parameter gradients against the float64 twin: {len(worst)} tensors, {n_bad} above "
              f"{TOL:g}; worst {worst[0][1]} {worst[0][0]:.2e} (against the float32 twin: worst "
              f"{worst_t:.2e})")
    return results


def torch_train_step(twin, model, opt, images, targets, step, cfg):
    model.rng = np.random.default_rng([cfg.seed, 2, step])
    for group in opt.param_groups:                         # the project's schedule
        group["lr"] = lr_at(step, cfg.lr, cfg.train_steps, cfg.warmup_steps, cfg.schedule)
    opt.zero_grad(set_to_none=False)
    losses = tt.training_losses(twin, model, images, targets, model.rng)
    total = sum(losses.values())
    total.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.grad_clip)
    opt.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def make_torch_opt(twin, cfg):
    decay = [p for p in twin.parameters() if p.ndim > 1]
    no_decay = [p for p in twin.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, foreach=True)


# One process of the whole-machine comparison: `steps` training steps of the twin (torch threads
# from the environment), or of ours as `python -m npmaskrcnn train` runs them (`train(...,
# workers=2)`: the batch in two shards, the second in a spawned worker); prints the median step.
THROUGHPUT_SCRIPT = r"""
import json, os, sys, time
sys.path[:0] = [{root!r}, {here!r}]
side, steps = sys.argv[1], int(sys.argv[2])
from npmaskrcnn.runtime import keep_freed_memory
keep_freed_memory()
import numpy as np
import torch
import vs_pytorch as V
from npmaskrcnn.config import Config
cfg = Config()
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
ds, model, twin = V.setup(cfg)
if side == "twin":
    from npmaskrcnn import batches
    opt = V.make_torch_opt(twin, cfg)
    model.train(); twin.train()
    sec = []
    for step in range(steps):
        images, targets = batches.get_batch(ds, step, cfg)
        t0 = time.perf_counter()
        V.torch_train_step(twin, model, opt, images, targets, step, cfg)
        sec.append(time.perf_counter() - t0)
else:
    import tempfile
    from npmaskrcnn.train import train
    with tempfile.TemporaryDirectory() as out:
        import dataclasses
        _, rows = train(dataclasses.replace(cfg, train_steps=steps), out, dataset=ds, progress=False,
                        workers=2, checkpoint_every=0)
    sec = [r["seconds"] for r in rows]
print(json.dumps(float(np.median(sec[max(2, steps // 4):]))))
"""


def throughput(steps, threads_and_processes):
    """Steps per second of the whole machine: {(side, threads, processes): (steps/s, median s)}."""
    out = {}
    for side, threads, n_proc in threads_and_processes:
        env = dict(os.environ, **{k: str(threads) for k in (
            "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
        code = THROUGHPUT_SCRIPT.format(root=os.path.join(HERE, ".."), here=HERE)
        procs = [subprocess.Popen([sys.executable, "-c", code, side, str(steps)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(n_proc)]
        med = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a {side} throughput process failed")
        out[(side, threads, n_proc)] = (sum(1.0 / m for m in med), float(np.median(med)))
    return out


def median_ms(ts):
    return 1e3 * float(np.median(ts))


def bench_stages(cfg, model, twin, images, iters):
    """Per-stage fwd+bwd in isolation, alternating np/torch. Returns rows (name, np_ms, torch_ms)."""
    rng = np.random.default_rng(0)
    model.train()
    x, _ = model.preprocess(images)
    cs = model.backbone.body(x)
    ps = model.backbone.fpn(cs)
    model.clear_caches()
    rec, undo = tt.record_numpy_forward(model)
    model.rng = np.random.default_rng([cfg.seed, 2, 0])
    model.forward(images, [dict(t) for t in batches_mod.get_batch(_ds_cache[0], 0, cfg)[1]])
    undo()
    model.clear_caches()
    rois, _, _, _, mask_idx = rec["roi"]
    mrois = rois[mask_idx]
    rh = model.roi_heads
    f4 = list(ps[:4])
    bf, _ = rh.pool(f4, rois, cfg.box_pool_size)
    mf, _ = rh.pool(f4, mrois, cfg.mask_pool_size)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True)

    def np_body():
        out = model.backbone.body(x)
        model.backbone.body.backward([np.ones_like(o) for o in out])

    def th_body():
        out = twin.backbone.body(torch.from_numpy(x))
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])

    def np_fpn():
        out = model.backbone.fpn(cs)
        model.backbone.fpn.backward([np.ones_like(o) for o in out])

    cst = [t(c) for c in cs]

    def th_fpn():
        out = twin.backbone.fpn(cst)
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])

    def np_rpn():
        outs = [model.rpn.head(p) for p in ps]
        for lg, dl in reversed(outs):
            model.rpn.head.backward(np.ones_like(lg), np.ones_like(dl))

    pst = [t(p) for p in ps]

    def th_rpn():
        outs = [twin.rpn.head(p) for p in pst]
        torch.autograd.backward([o for pair in outs for o in pair], [torch.ones_like(o) for pair in outs for o in pair])

    def np_pool(r, s):
        def f():
            out, cache = rh.pool(f4, r, s)
            rh.unpool(np.ones_like(out), cache, [None] * 4)
        return f

    f4t = [t(p) for p in ps[:4]]

    def th_pool(r, s):
        def f():
            out = twin.pool(f4t, r, s)
            out.backward(torch.ones_like(out))
        return f

    def np_box():
        cl, bd = rh.box_predictor(rh.box_head(bf))
        rh.box_head.backward(rh.box_predictor.backward(np.ones_like(cl), np.ones_like(bd)))

    bft = t(bf)

    def th_box():
        cl, bd = twin.roi_heads.box_predictor(twin.roi_heads.box_head(bft))
        torch.autograd.backward([cl, bd], [torch.ones_like(cl), torch.ones_like(bd)])

    def np_mask():
        out = rh.mask_head(mf)
        rh.mask_head.backward(np.ones_like(out))

    mft = t(mf)

    def th_mask():
        out = twin.roi_heads.mask_head(mft)
        out.backward(torch.ones_like(out))

    pairs = [("ResNet body", np_body, th_body), ("FPN", np_fpn, th_fpn), ("RPN head x5 levels", np_rpn, th_rpn),
             (f"box RoIAlign ({rois.shape[0]} RoIs)", np_pool(rois, cfg.box_pool_size), th_pool(rois, cfg.box_pool_size)),
             ("box head + predictor", np_box, th_box),
             (f"mask RoIAlign ({mrois.shape[0]} RoIs)", np_pool(mrois, cfg.mask_pool_size),
              th_pool(mrois, cfg.mask_pool_size)),
             ("mask head", np_mask, th_mask)]
    rows = []
    for name, fn_np, fn_th in pairs:
        tn, tt_ = [], []
        fn_np()
        fn_th()
        for _ in range(iters):
            t0 = time.perf_counter()
            fn_np()
            tn.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fn_th()
            tt_.append(time.perf_counter() - t0)
        rows.append((name, median_ms(tn), median_ms(tt_)))
    model.zero_grad()
    return rows


_ds_cache = []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--throughput", action="store_true",
                    help="only the whole-machine training throughput: ours as the CLI trains against "
                         "the twin with two threads in one process and in two single-threaded processes")
    ap.add_argument("--throughput-steps", type=int, default=30)
    args = ap.parse_args()
    if args.throughput:
        print(f"whole-machine training throughput, Config(), batch 4, {args.throughput_steps} steps per "
              f"process (median after the first quarter); load avg {os.getloadavg()[0]:.2f}")
        modes = [("ours", 1, 1), ("twin", 2, 1), ("twin", 1, 2)]
        names = {("ours", 1, 1): "ours as the CLI trains (2 processes x 1 thread, one batch in 2 shards)",
                 ("twin", 2, 1): "twin, 1 process x 2 threads",
                 ("twin", 1, 2): "twin, 2 processes x 1 thread, a batch each"}
        res = throughput(args.throughput_steps, modes)
        for k in modes:
            rate, med = res[k]
            print(f"  {names[k]:<72} {1e3 * med:7.1f} ms per step  {rate:5.2f} steps/s")
        best_twin = max(res[("twin", 2, 1)][0], res[("twin", 1, 2)][0])
        print(f"  ours / the twin at its best: {res[('ours', 1, 1)][0] / best_twin:.2f}x the steps per second")
        return

    # As every user of ours runs: `load_model` and `train` keep freed memory for reuse
    # (runtime.keep_freed_memory), so a forward pass does not page-fault fresh mmaps at every
    # layer. The setting is process-wide, so the twin, in the same process, gets it too (PyTorch's
    # CPU tensors come from the same allocator); without it both sides run slower.
    keep_freed_memory()
    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    cfg = Config()
    ds, model, twin = setup(cfg)
    _ds_cache.append(ds)
    images, targets = batches_mod.get_batch(ds, 0, cfg)
    print(f"torch {torch.__version__}, threads: numba {threads}, torch {torch.get_num_threads()}; "
          f"load avg {os.getloadavg()[0]:.2f}; {model.num_params()} parameters")
    print(f"\n1) agreement, float32, batch {len(images)} of {cfg.image_size}x{cfg.image_size} "
          f"(relative error max|np-torch|/max|torch|, tolerance {TOL:g})")
    results = check_agreement(cfg, model, twin, images, targets)
    bad = [n for n, e in results if not e <= TOL]
    print(f"  -> {'all agree' if not bad else 'MISMATCH in: ' + ', '.join(bad)}")
    if args.skip_speed:
        return

    # fresh copies with the preset's own initialisation for the speed runs
    model = MaskRCNN(cfg, ds.class_names)
    twin = tt.load_from_numpy(tt.TwinMaskRCNN(cfg), model)
    opt_np = train_mod.make_optimizer(model, cfg)
    opt_th = make_torch_opt(twin, cfg)
    model.train()
    twin.train()
    print(f"\n2) speed, alternating np/torch, median of {args.iters} after {args.warmup} warm-up")
    tn, tt_ = [], []
    step = 0
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        row = train_mod.train_step(model, opt_np, images, targets, step, cfg)
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        lt = torch_train_step(twin, model, opt_th, images, targets, step, cfg)
        b = time.perf_counter() - t0
        step += 1
        if i >= args.warmup:
            tn.append(a)
            tt_.append(b)
    print(f"   last losses np    {' '.join(f'{row[k]:.3f}' for k in train_mod.LOSS_KEYS)}")
    print(f"   last losses torch {' '.join(f'{lt[k]:.3f}' for k in train_mod.LOSS_KEYS)}")
    pn, pt = [], []
    ims = [ds[200 + i][0] for i in range(args.warmup + args.iters)]
    twin.eval()
    for i, im in enumerate(ims):
        t0 = time.perf_counter()
        model.predict(im)
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        tt.predict(twin, model, im)
        b = time.perf_counter() - t0
        if i >= args.warmup:
            pn.append(a)
            pt.append(b)
    twin.train()
    stage_rows = bench_stages(cfg, model, twin, images, args.iters)
    print(f"\n{'':<34}{'numpy ms':>10}{'torch ms':>10}{'np/torch':>10}")
    rows = [(f"training iteration (batch {cfg.batch_size})", median_ms(tn), median_ms(tt_)),
            ("inference, one image", median_ms(pn), median_ms(pt))]
    for name, a, b in rows:
        print(f"{name:<34}{a:10.1f}{b:10.1f}{a / b:10.2f}")
    print("per stage, fwd+bwd in isolation:")
    for name, a, b in stage_rows:
        print(f"  {name:<32}{a:10.1f}{b:10.1f}{a / b:10.2f}")
    ratio = median_ms(tn) / median_ms(tt_)
    if ratio > 1.5:
        worst = max(stage_rows, key=lambda r: r[1] - r[2])
        print(f"\nnumpy is {ratio:.2f}x slower per training iteration; the stage losing the most time is "
              f"'{worst[0]}' ({worst[1]:.1f} vs {worst[2]:.1f} ms, +{worst[1] - worst[2]:.1f} ms). "
              "See benchmarks/bench_train.py for the full breakdown.")
    if not math.isfinite(ratio):
        sys.exit(1)


if __name__ == "__main__":
    main()

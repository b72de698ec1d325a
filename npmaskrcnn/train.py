"""The training loop: a batch, forward, backward, clip, step, log, checkpoint — and resume.

The loop in `train` is the one every reader expects:

    for step in range(start, end):
        losses = engine.forward_backward(step)     # the step's batch: forward, backward
        opt.lr = lr_at(step, ...)                  # warmup, then cosine decay
        clip_grad_norm(model, cfg.grad_clip)       # the global gradient norm, at most grad_clip
        opt.step()                                 # AdamW (or SGD)
        log, checkpoint, evaluate

`engine` computes the step's gradient: in one process it is `batches.shard_forward_backward`
(`model.forward` then `model.backward` on the step's images); with cfg.grad_shards > 1 it is the
mean of the shards' gradients, computed by one or more processes (`parallel.ShardedGradients`),
the same bits whatever the number of processes. What a step sees is a pure function of (seed,
step) (`batches.py`), so resuming from a checkpoint replays exactly the run that was interrupted.

A run folder holds:
    checkpoint.npz   model + optimizer state + step, written atomically every N steps and at the end
    model.npz        the final model alone (what `load_model` reads)
    log.csv          one row per step: step, lr, losses, gradient norm, seconds
    loss_curve.png   the losses against the step
    eval.jsonl       periodic COCO metrics on the validation images (if requested)
    train.lock       the pid of the process training into the folder, while it runs

Ctrl-C or SIGTERM stops the loop after the step under way, writes a checkpoint of it and raises
TrainingInterrupted; `resume=True` then continues bit for bit. A worker that dies or hangs
raises WorkerFailed after the same checkpoint.

Naming:
    step        0-based optimizer step; B images per step
    model       the network being trained (beyond_paper.build_model(cfg): the paper's, plus the
                training seams the config turns on)
"""

import csv
import json
import math
import os
import signal
import threading
import time

import numpy as np

from .batches import default_dataset, forward_backward
from .beyond_paper import build_model, for_inference
from .checkpoint import load_checkpoint, save_model
from .files import atomic_write
from .optim import SGD, AdamW, clip_grad_norm, lr_at
from .parallel import ShardedGradients, WorkerFailed

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a whole step; a checkpoint of it was written."""

    def __init__(self, step, checkpoint):
        super().__init__(f"interrupted after step {step}; checkpoint of step {step} written to "
                         f"{checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class RunInProgress(RuntimeError):
    """Another process is training into the same folder."""


LOCK_NAME = "train.lock"


def running_pid(out_dir):
    """The pid of a live process training into out_dir (its lock file), or None."""
    try:
        with open(os.path.join(out_dir, LOCK_NAME)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


class _StopRequests:
    """While active (main thread only), SIGINT and SIGTERM ask the loop to stop after the step
    under way instead of killing it mid-update; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signum, self._saved = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._saved.items():
            signal.signal(sig, old)


def make_optimizer(model, cfg):
    if cfg.optimizer == "adamw":
        return AdamW(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return SGD(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def check_finite(losses, step):
    """Raise TrainingDiverged when a loss is NaN or infinite."""
    if not all(math.isfinite(v) for v in losses.values()):
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        raise TrainingDiverged(f"step {step}: loss is not finite ({bad}); stopping. The last "
                               "good checkpoint is kept; lower the learning rate or resume from it.")


def optimizer_step(model, opt, losses, step, cfg):
    """The schedule, the clip and the update, after the step's gradient is in the model's grads.
    Returns the gradient norm before clipping; raises TrainingDiverged."""
    check_finite(losses, step)
    opt.lr = lr_at(step, cfg.lr, cfg.train_steps, cfg.warmup_steps, cfg.schedule)
    gnorm = clip_grad_norm(model, cfg.grad_clip)
    if not math.isfinite(gnorm):
        raise TrainingDiverged(f"step {step}: gradient norm is not finite; stopping. The last "
                               "good checkpoint is kept.")
    opt.step()
    return gnorm


def train_step(model, opt, images, targets, step, cfg):
    """One whole optimizer step on the given batch (one process, one shard): forward, backward,
    clip, step. Returns the row of the log (dict) or raises TrainingDiverged."""
    t0 = time.perf_counter()
    losses = forward_backward(model, images, targets, [cfg.seed, 2, step])
    gnorm = optimizer_step(model, opt, losses, step, cfg)
    return log_row(step, opt, losses, gnorm, t0)


def log_row(step, opt, losses, gnorm, t0):
    """One row of log.csv."""
    return {"step": step, "lr": opt.lr, "loss": sum(losses.values()),
            **{k: losses.get(k, 0.0) for k in LOSS_KEYS}, "grad_norm": gnorm,
            "seconds": time.perf_counter() - t0}


def save_training_checkpoint(model, opt, step, path):
    extra = {"step": np.array(step)}
    extra.update({"optim/" + k: v for k, v in opt.state_dict().items()})
    return save_model(model, path, extra=extra)


def plot_loss_curve(rows, path):
    """Write the loss curves of `rows` (the log) to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in ("loss",) + LOSS_KEYS:
        v = np.array([r[k] for r in rows], dtype=float)
        if len(v) > 20:                                        # smooth for readability
            w = max(len(v) // 50, 5)
            v = np.convolve(v, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], v, label=k, lw=2 if k == "loss" else 1)
        else:
            ax.plot(steps, v, label=k, lw=2 if k == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title("training losses")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def read_log(path):
    with open(path, newline="") as f:
        return [{k: float(v) if k != "step" else int(v) for k, v in r.items()} for r in csv.DictReader(f)]


def train(cfg, out_dir, dataset=None, val_dataset=None, class_names=None, eval_every=0,
          checkpoint_every=500, resume=False, stop_at=None, progress=True, log=None, workers=1,
          hang_timeout=None, init=None):
    """Train a model from scratch (or resume) and return (model, rows of the log).

    Inputs:
    - cfg: Config (train_steps, batch_size, lr, ... are read from it)
    - out_dir: run folder (created); see the module docstring for its files
    - dataset: indexable (image, target) dataset; default: fresh shapes, batches.default_dataset
    - val_dataset: dataset for periodic evaluation every `eval_every` steps (0 = never)
    - resume: continue from out_dir/checkpoint.npz (same config required)
    - stop_at: stop (with a checkpoint) before this step, as if interrupted; for tests
    - log: callable for progress messages (the CLI passes print); None = silent
    - workers: processes computing the cfg.grad_shards gradient shards (see parallel.py); the
      result does not depend on it
    - hang_timeout: seconds after which a silent worker counts as hung (parallel.ShardedGradients)
    - init: {parameter name: array} to start from instead of those parameters' random
      initialisation, e.g. a pretrained ResNet body (`ablate.py`); not used on resume, where the
      checkpoint holds every parameter
    Returns: the trained model, ready for inference (beyond_paper.for_inference), and the log

    Also asks glibc's allocator to keep freed memory for reuse (`runtime.keep_freed_memory`, a
    process-wide setting, as `load_model` does): every step allocates and frees the same arrays,
    which would otherwise be fresh, page-faulted mmaps every time. The weights are bit for bit the
    same; an ablation row's step is 8-12 % faster (measured side by side, two processes at once).
    """
    from .runtime import keep_freed_memory

    keep_freed_memory()
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"out_dir: {out_dir!r} is not writable")
    pid = running_pid(out_dir)
    if pid is not None:
        raise RunInProgress(f"out_dir: process {pid} is training into {out_dir!r}")
    lock = os.path.join(out_dir, LOCK_NAME)
    with open(lock, "w") as f:
        f.write(str(os.getpid()))
    try:
        return _train(cfg, out_dir, dataset, val_dataset, class_names, eval_every, checkpoint_every,
                      resume, stop_at, progress, log, workers, hang_timeout, init)
    finally:
        os.remove(lock)


def start_from(model, init):
    """Copy the arrays of `init` ({name: array}) into the model's parameters of those names.
    Raises ValueError naming a name the model lacks or an array of another shape."""
    own = model.state_dict()
    for k, v in init.items():
        if k not in own:
            raise ValueError(f"init: {k!r} is not a parameter of the model")
        if np.shape(v) != own[k].shape:
            raise ValueError(f"init: {k!r} has shape {np.shape(v)}, the model's is {own[k].shape}")
    for k, v in init.items():
        own[k][...] = v


def _train(cfg, out_dir, dataset, val_dataset, class_names, eval_every, checkpoint_every, resume,
           stop_at, progress, log, workers, hang_timeout, init):
    say = log or (lambda *a: None)
    dataset = dataset if dataset is not None else default_dataset(cfg)
    model = build_model(cfg, class_names or getattr(dataset, "class_names", None))
    if init and not resume:
        start_from(model, init)
    opt = make_optimizer(model, cfg)
    ckpt_path = os.path.join(out_dir, "checkpoint.npz")
    log_path = os.path.join(out_dir, "log.csv")
    start, rows = 0, []
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["config"] != cfg:
            raise ValueError(f"resume: the checkpoint in {out_dir!r} was trained with another config")
        model.load_state_dict(ckpt["params"])
        opt.load_state_dict({k[len("optim/"):]: v for k, v in ckpt["extra"].items() if k.startswith("optim/")})
        start = int(ckpt["extra"]["step"])
        rows = [r for r in read_log(log_path) if r["step"] < start] if os.path.exists(log_path) else []
        say(f"resuming at step {start}")
    fields = ["step", "lr", "loss", *LOSS_KEYS, "grad_norm", "seconds"]
    with open(log_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    end = cfg.train_steps if stop_at is None else min(stop_at, cfg.train_steps)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.train_steps, initial=start, desc="train", dynamic_ncols=True)
    model.train()
    logf = open(log_path, "a", newline="")
    writer = csv.DictWriter(logf, fieldnames=fields)
    engine, done, stop = None, start, _StopRequests()
    try:
        stop.__enter__()
        engine = ShardedGradients(model, cfg, dataset, val_dataset if eval_every else None,
                                  workers=workers if start < end else 1, hang_timeout=hang_timeout)
        for step in range(start, end):
            t0 = time.perf_counter()
            losses = engine.forward_backward(step)     # 1) the step's batch: forward, backward
            gnorm = optimizer_step(model, opt, losses, step, cfg)   # 2) lr, 3) clip, 4) update
            row = log_row(step, opt, losses, gnorm, t0)
            rows.append(row)                           # 5) log
            writer.writerow(row)
            if (step + 1) % 50 == 0:
                logf.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k.replace("loss_", ""): f"{row[k]:.3f}" for k in ("loss",) + LOSS_KEYS})
            done = step + 1
            if checkpoint_every and done % checkpoint_every == 0 and done < end:
                logf.flush()                           # 6) checkpoint
                save_training_checkpoint(model, opt, done, ckpt_path)
            if eval_every and val_dataset is not None and done % eval_every == 0:
                evaluate_during_training(engine, val_dataset, rows, done, out_dir, say)
                model.train()
            if stop.signum is not None and done < end:
                break
    except WorkerFailed as e:                          # the weights of step `done` are intact
        logf.flush()
        save_training_checkpoint(model, opt, done, ckpt_path)
        raise WorkerFailed(f"{e}; training stopped after step {done}, whose checkpoint is "
                           f"{ckpt_path}: continue with --resume") from None
    finally:
        stop.__exit__()
        if engine is not None:
            engine.close()
        logf.close()
        if bar is not None:
            bar.close()
    if stop.signum is not None and done < end:
        save_training_checkpoint(model, opt, done, ckpt_path)
        if rows:
            plot_loss_curve(rows, os.path.join(out_dir, "loss_curve.png"))
        raise TrainingInterrupted(done, ckpt_path)
    save_training_checkpoint(model, opt, end, ckpt_path)
    if end == cfg.train_steps:
        save_model(model, os.path.join(out_dir, "model.npz"))
    if rows:
        plot_loss_curve(rows, os.path.join(out_dir, "loss_curve.png"))
    return for_inference(model), rows


def evaluate_during_training(engine, val_dataset, rows, step, out_dir, say):
    """COCO AP of the current weights on val_dataset, appended to out_dir/eval.jsonl."""
    from .evaluate import evaluate_predictions

    metrics = evaluate_predictions(engine.predict_dataset(val_dataset), val_dataset)
    summary = {"step": step, "train_seconds": sum(r["seconds"] for r in rows),
               **{f"{t}_{k}": metrics[t][k] for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75")}}
    with open(os.path.join(out_dir, "eval.jsonl"), "a") as ef:
        ef.write(json.dumps(summary) + "\n")
    say(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()
                                     if k not in ("step", "train_seconds")))

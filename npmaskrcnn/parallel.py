"""Data-parallel gradients: a step's batch split into shards, the shards spread over processes.

A training step's batch of B images is cut into S = `cfg.grad_shards` shards of B/S images. Each
shard's loss and gradient are computed on their own (its own loss normalisation, its own anchor
and RoI sampling generator seeded with [seed, 2, step, shard]) and the step's gradient is their
mean, summed in shard order:

    g = (((g_0 + g_1) + g_2) + ... ) / S

The result depends on S, never on how many processes compute it: `workers=1` computes the shards
one after the other, `workers=2` gives every other shard to a second process, and both give the
same bits (tests/test_parallel.py). With S = 1 the step is the plain one-batch step.

How the processes share work (no model is ever sent through a pipe):
- every parameter and every shard's gradient lives in one flat float32 buffer; the main process
  allocates it as shared memory and each module's `params[k]` / `grads[k]` become views into it
  (`bind`), in the main process and in each worker;
- the main process sends "grads, step" to the workers, computes its own shards, waits for theirs,
  averages the shard gradients into shard 0's slot (which is what its `grads` view) and runs the
  optimizer, which updates the shared parameters in place: the workers see the new weights at
  the next step without a copy;
- the workers are started with "spawn" (a fresh interpreter: no numba thread pool or BLAS state
  inherited through fork), with one BLAS and one numba thread unless the environment sets them,
  and without re-importing the parent's __main__ (so a script without a main guard, like the
  walkthroughs, can use them); each builds its own MaskRCNN from the config and binds it to the
  shared buffer. The datasets are pickled to the workers once: their classes must be importable
  (defined in a module, not in the script being run). Evaluation during training splits the
  images between the processes the same way.

Naming:
    S          number of shards (cfg.grad_shards); shard j holds images j*B/S .. (j+1)*B/S - 1
    P          number of processes (1 main + workers); shard j runs on process j % P
    layout     [(module, key, offset, shape)] of the flat buffer, in `named_params` order
"""

import contextlib
import ctypes
import multiprocessing as mp
import signal
import sys
import time
import traceback

import numpy as np

from .batches import shard_forward_backward
from .runtime import keep_freed_memory, single_threaded_children

class WorkerFailed(RuntimeError):
    """A data-parallel worker process died, raised an error or stopped answering."""


# ---- flat buffers -------------------------------------------------------------------------


def layout(model):
    """[(module, key, offset, shape)] of every parameter, in `named_params` order, and the total size."""
    out, offset = [], 0
    for m in model.modules():
        for k, p in m.params.items():
            out.append((m, k, offset, p.shape))
            offset += p.size
    return out, offset


def bind(model, flat, what, copy=False):
    """Make every module's params (what="params") or grads ("grads") views into the 1-D `flat`.

    copy=True first copies the current values into `flat`.
    """
    lay, total = layout(model)
    if flat.shape != (total,):
        raise ValueError(f"flat: expected shape ({total},), got {flat.shape}")
    for m, k, off, shape in lay:
        view = flat[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
        store = m.params if what == "params" else m.grads
        if copy:
            view[...] = store[k]
        store[k] = view


def average_shards(grads):
    """grads: (S, total) shard gradients; leaves their mean in grads[0] (summed in shard order)."""
    acc = grads[0]
    for j in range(1, len(grads)):
        acc += grads[j]
    if len(grads) > 1:
        acc /= len(grads)
    return acc


def mean_losses(per_shard):
    """Mean over shards of each loss (dicts in shard order)."""
    keys = per_shard[0].keys()
    return {k: sum(d[k] for d in per_shard) / len(per_shard) for k in keys}


# ---- the worker process -------------------------------------------------------------------


def _worker_main(conn, shared, cfg, class_names, dataset, val_dataset, rank, n_proc):
    """Loop of a worker process: answer "grads" and "predict" requests until "stop"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # Ctrl-C is the main process's to handle
    keep_freed_memory()
    try:
        from .beyond_paper import build_model, for_inference

        model = build_model(cfg, class_names)
        _, total = layout(model)
        buf = np.frombuffer(shared, dtype=np.float32).reshape(cfg.grad_shards + 1, total)
        bind(model, buf[0], "params")
        model.train()
        conn.send(("ready", rank))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            try:
                if msg[0] == "grads":
                    step = msg[1]
                    out = {}
                    for j in range(rank, cfg.grad_shards, n_proc):
                        bind(model, buf[1 + j], "grads")
                        out[j] = shard_forward_backward(model, dataset, step, j, cfg)
                    conn.send(("ok", out))
                elif msg[0] == "predict":
                    model.eval()
                    preds = [for_inference(model).predict([val_dataset[i][0]])[0] for i in msg[1]]
                    model.train()
                    conn.send(("ok", preds))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        conn.close()


@contextlib.contextmanager
def _main_module_hidden():
    """Start workers without re-importing the parent's __main__ (the target and its arguments
    live in this package): a script without an `if __name__ == "__main__":` guard, such as the
    walkthroughs, would otherwise run again, top to bottom, inside every worker."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main and k in main.__dict__}
    if main is not None:
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


class ShardedGradients:
    """Computes each step's gradient as the mean over `cfg.grad_shards` shards, on `workers` processes.

    Use as a context manager (the workers and the shared memory are released on exit):

        with ShardedGradients(model, cfg, dataset, workers=2) as engine:
            losses = engine.forward_backward(step)   # model.grads now hold the step's gradient
            opt.step()

    Inputs:
    - model: the MaskRCNN being trained (its params / grads become views into shared memory)
    - cfg: its Config (grad_shards, batch_size, seed)
    - dataset: training dataset (sent to the workers once; must be picklable when workers > 1)
    - val_dataset: evaluation dataset for `predict_dataset`, or None
    - workers: processes in all, the main one included; at most cfg.grad_shards are used
    - hang_timeout: seconds without a reply after which a worker counts as hung (default: see
      `_receive`)
    """

    def __init__(self, model, cfg, dataset, val_dataset=None, workers=1, hang_timeout=None):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers: expected a positive integer, got {workers!r}")
        self.model, self.cfg, self.dataset, self.val_dataset = model, cfg, dataset, val_dataset
        self.n_proc = min(workers, cfg.grad_shards)
        if self.n_proc > 1 and any(p.dtype != np.float32 for _, p in model.named_params()):
            raise ValueError("model: data-parallel workers need float32 parameters")
        self.conns, self.procs, self.shared = [], [], None
        self.hang_timeout, self._slowest = hang_timeout, None
        _, total = layout(model)
        S = cfg.grad_shards
        if self.n_proc == 1:
            self.grads = np.zeros((S, total), dtype=np.float32) if S > 1 else None
            return
        ctx = mp.get_context("spawn")
        self.shared = ctx.RawArray(ctypes.c_float, (S + 1) * total)     # zero-filled
        try:
            buf = np.frombuffer(self.shared, dtype=np.float32).reshape(S + 1, total)
            bind(model, buf[0], "params", copy=True)
            self.grads = buf[1:]
            for rank in range(1, self.n_proc):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker_main, daemon=True,
                                args=(child, self.shared, cfg, model.class_names, dataset,
                                      val_dataset, rank, self.n_proc))
                with single_threaded_children(), _main_module_hidden():
                    p.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(p)
            for conn in self.conns:
                self._receive(conn)
        except BaseException:
            self.close()
            raise

    def _receive(self, conn):
        """The next reply of a worker; WorkerFailed when it dies, fails or hangs.

        A worker is hung when it has not answered within `hang_timeout` seconds: 600 for the
        first request (numba may compile its kernels), then 10 x the slowest reply so far, at
        least 60. Its process is checked every second, so a killed worker is noticed at once.
        """
        proc = self.procs[self.conns.index(conn)]
        limit = self.hang_timeout if self.hang_timeout is not None else (
            600.0 if self._slowest is None else max(60.0, 10 * self._slowest))
        start = time.monotonic()
        while not conn.poll(1.0):
            waited = time.monotonic() - start
            if not proc.is_alive():
                raise WorkerFailed(f"a data-parallel worker process (pid {proc.pid}) died "
                                   f"(exit code {proc.exitcode})")
            if waited > limit:
                raise WorkerFailed(f"a data-parallel worker process (pid {proc.pid}) did not "
                                   f"answer for {waited:.0f} s (hung)")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            raise WorkerFailed(f"a data-parallel worker process (pid {proc.pid}) died") from None
        self._slowest = max(self._slowest or 0.0, time.monotonic() - start)
        if status == "error":
            raise WorkerFailed(f"a data-parallel worker process failed:\n{payload}")
        return payload

    def forward_backward(self, step):
        """Forward and backward of `step`'s batch: the mean gradient of its shards lands in the
        model's grads (as `batches.forward_backward` of the whole batch when S = 1). Returns
        the mean losses."""
        cfg, model = self.cfg, self.model
        S = cfg.grad_shards
        if S == 1:
            return shard_forward_backward(model, self.dataset, step, 0, cfg)
        for conn in self.conns:
            conn.send(("grads", step))
        per_shard = {}
        for j in range(0, S, self.n_proc):
            bind(model, self.grads[j], "grads")
            per_shard[j] = shard_forward_backward(model, self.dataset, step, j, cfg)
        for conn in self.conns:
            per_shard.update(self._receive(conn))
        shards = [per_shard[j] for j in range(S)]
        average_shards(self.grads)
        bind(model, self.grads[0], "grads")
        return mean_losses(shards)

    def predict_dataset(self, dataset):
        """Predictions over `dataset` (the val_dataset given at construction when workers > 1),
        one image per call, images dealt round-robin over the processes; in dataset order."""
        from .beyond_paper import for_inference

        n = len(dataset)
        predictor = for_inference(self.model)
        if self.n_proc == 1:
            return [predictor.predict([dataset[i][0]])[0] for i in range(n)]
        if dataset is not self.val_dataset:
            raise ValueError("dataset: with workers > 1 only the val_dataset given at construction")
        for rank, conn in enumerate(self.conns, start=1):
            conn.send(("predict", list(range(rank, n, self.n_proc))))
        preds = [None] * n
        for i in range(0, n, self.n_proc):
            preds[i] = predictor.predict([dataset[i][0]])[0]
        for rank, conn in enumerate(self.conns, start=1):
            for i, p in zip(range(rank, n, self.n_proc), self._receive(conn)):
                preds[i] = p
        return preds

    def close(self):
        """Stop the workers and free the shared memory; the model keeps private copies."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []
        if self.shared is not None:
            for m, k, _, _ in layout(self.model)[0]:     # private copies, the shared block goes
                m.params[k] = np.array(m.params[k])
                m.grads[k] = np.array(m.grads[k])
            self.grads = None
            self.shared = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Data-parallel gradients (parallel.py): the shard mean by definition, and the same bits whether
one process or two compute the shards."""

import numpy as np
import pytest

from npmaskrcnn import Config
from npmaskrcnn.model import MaskRCNN
from npmaskrcnn.parallel import ShardedGradients, average_shards, bind, layout
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.batches import get_batch
from npmaskrcnn.train import read_log, train

STEPS = 4


def cfg2(**overrides):
    kw = dict(train_steps=STEPS, batch_size=4, grad_shards=2, warmup_steps=1, lr=1e-2)
    kw.update(overrides)
    return Config.tiny(**kw)


def data(n=16, seed=0):
    return ShapesDataset(n, seed=seed, image_size=32, min_size=8, max_size=20, max_shapes=3)


def grads_of(model):
    return {k: g.copy() for k, g in model.named_grads()}


class FailingDataset:
    """Picklable dataset whose item `bad` raises (to reach a worker process)."""

    def __init__(self, bad):
        self.inner, self.bad = data(), bad
        self.class_names = self.inner.class_names

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if i == self.bad:
            raise OSError(f"cannot read image {i}")
        return self.inner[i]


def test_average_shards_sums_in_order_and_divides():
    g = np.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 2.0]], dtype=np.float32)
    out = average_shards(g)
    assert np.shares_memory(out, g[0])                     # in place, in shard 0
    np.testing.assert_array_equal(g[0], [1.0, 3.0])
    one = np.array([[4.0, 6.0]], dtype=np.float32)
    np.testing.assert_array_equal(average_shards(one), [4.0, 6.0])      # S = 1: untouched


def test_bind_makes_views_and_keeps_values():
    model = MaskRCNN(Config.tiny())
    before = {k: v.copy() for k, v in model.named_params()}
    _, total = layout(model)
    flat = np.zeros(total, dtype=np.float32)
    bind(model, flat, "params", copy=True)
    for k, v in model.named_params():
        np.testing.assert_array_equal(v, before[k])
        assert np.shares_memory(v, flat), k
    flat += 1.0                                           # writes through the views
    name, first = next(iter(model.named_params()))
    np.testing.assert_array_equal(first, before[name] + 1.0)
    with pytest.raises(ValueError, match="flat: expected shape"):
        bind(model, flat[:-1], "params")


def test_gradient_is_the_mean_of_the_shard_gradients():
    """By definition: each shard alone (its images, its sampling seed), then the mean."""
    cfg, ds, step = cfg2(), data(), 3
    model = MaskRCNN(cfg, ds.class_names)
    model.train()
    per_shard = []
    for j in range(2):
        images, targets = get_batch(ds, step, cfg, shard=j)
        assert len(images) == 2
        model.rng = np.random.default_rng([cfg.seed, 2, step, j])
        model.zero_grad()
        model.forward(images, targets)
        model.backward()
        per_shard.append(grads_of(model))
    with ShardedGradients(model, cfg, ds, workers=1) as engine:
        engine.forward_backward(step)
        got = grads_of(model)
    for k in got:
        np.testing.assert_array_equal(got[k], (per_shard[0][k] + per_shard[1][k]) / 2, err_msg=k)
    # the shards of a step are the step's batch, split in order
    full, _ = get_batch(ds, step, cfg)
    halves = get_batch(ds, step, cfg, shard=0)[0] + get_batch(ds, step, cfg, shard=1)[0]
    assert all(np.array_equal(a, b) for a, b in zip(full, halves))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("w1")
    model, rows = train(cfg2(), str(out), dataset=data(), val_dataset=data(3, seed=7),
                        eval_every=2, progress=False, workers=1)
    return out, model, rows


def strip_times(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_two_processes_give_the_same_bits_as_one(tmp_path, one_process):
    out1, m1, rows1 = one_process
    m2, rows2 = train(cfg2(), str(tmp_path), dataset=data(), val_dataset=data(3, seed=7),
                      eval_every=2, progress=False, workers=2)
    assert strip_times(rows1) == strip_times(rows2)
    for (k, a), (_, b) in zip(m1.named_params(), m2.named_params()):
        assert np.array_equal(a, b), k
        assert b.flags.owndata, k                         # private again, not the shared block
    ev1 = [line.split('"bbox_AP"')[1] for line in open(out1 / "eval.jsonl")]
    ev2 = [line.split('"bbox_AP"')[1] for line in open(tmp_path / "eval.jsonl")]
    assert ev1 == ev2 and len(ev1) == 2                     # the split evaluation too
    m2.predict(data(1, seed=3)[0][0])                      # the model outlives the workers


def test_resume_with_two_processes_replays_the_run(tmp_path, one_process):
    _, m1, rows1 = one_process
    run = str(tmp_path / "run")
    kw = dict(dataset=data(), progress=False, workers=2, checkpoint_every=2)
    train(cfg2(), run, stop_at=2, **kw)
    m2, rows2 = train(cfg2(), run, resume=True, **kw)
    assert strip_times(read_log(tmp_path / "run" / "log.csv")) == strip_times(rows1)
    for (k, a), (_, b) in zip(m1.named_params(), m2.named_params()):
        assert np.array_equal(a, b), k


def test_a_failing_worker_is_reported(tmp_path):
    cfg = cfg2(train_steps=1)
    # step 0's batch: shard 1 (the worker's) holds batch positions 2 and 3
    from npmaskrcnn.batches import batch_indices
    bad = batch_indices(0, 4, 16, cfg.seed)[3]
    with pytest.raises(RuntimeError, match=f"worker process failed(.|\n)*cannot read image {bad}"):
        train(cfg, str(tmp_path), dataset=FailingDataset(bad), progress=False, workers=2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="grad_shards: expected a divisor of batch_size"):
        Config.tiny(batch_size=3, grad_shards=2)
    with pytest.raises(ValueError, match="grad_shards: expected an int >= 1"):
        Config.tiny(grad_shards=0)
    model = MaskRCNN(cfg2())
    with pytest.raises(ValueError, match="workers: expected a positive integer"):
        ShardedGradients(model, cfg2(), data(), workers=0)


def test_workers_start_from_a_script_without_a_main_guard(tmp_path):
    """The walkthroughs are plain top-to-bottom scripts: a worker must not run them again."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "from npmaskrcnn import Config\n"
        "from npmaskrcnn.shapes import ShapesDataset\n"
        "from npmaskrcnn.train import train\n"
        "print('top level ran')\n"
        "cfg = Config.tiny(train_steps=2, batch_size=4, grad_shards=2, warmup_steps=1)\n"
        "data = ShapesDataset(8, seed=0, image_size=32, min_size=8, max_size=20)\n"
        f"model, rows = train(cfg, {str(tmp_path / 'run')!r}, dataset=data, progress=False, workers=2)\n"
        "print('steps', len(rows))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("top level ran") == 1 and "steps 2" in out.stdout


def test_keep_freed_memory_sets_the_malloc_thresholds():
    """On glibc (these machines) both mallopt calls succeed; elsewhere it is a no-op."""
    import platform

    from npmaskrcnn.runtime import keep_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected


@pytest.mark.parametrize("how", ["die", pytest.param("hang", marks=pytest.mark.slow)])
def test_a_failed_worker_ends_training_with_a_checkpoint_and_how_to_resume(tmp_path, how):
    """A worker killed (or hung) in step 2 stops training within seconds with one message that
    names what happened; the checkpoint of step 2 (the last whole step) is there to resume."""
    import os
    import time

    from faulty_data import FailInWorker

    from npmaskrcnn.batches import batch_indices
    from npmaskrcnn.checkpoint import load_checkpoint
    from npmaskrcnn.parallel import WorkerFailed
    from npmaskrcnn.train import train

    cfg = Config.tiny(train_steps=5, batch_size=4, grad_shards=2, warmup_steps=1)
    item = batch_indices(2, 4, 16, cfg.seed)[3]                   # shard 1 of step 2: the worker's
    data = FailInWorker(item, os.getpid(), how)
    start = time.monotonic()
    with pytest.raises(WorkerFailed, match="died" if how == "die" else "hung") as info:
        train(cfg, str(tmp_path / "run"), dataset=data, progress=False, workers=2,
              checkpoint_every=0, **({} if how == "die" else {"hang_timeout": 8}))
    assert time.monotonic() - start < 120
    assert "after step 2" in str(info.value) and "--resume" in str(info.value)
    assert int(load_checkpoint(tmp_path / "run" / "checkpoint.npz")["extra"]["step"]) == 2

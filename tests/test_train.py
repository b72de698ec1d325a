"""The training loop: determinism, exact resume, stopping on NaN, and the files of a run folder."""

import csv
import math
import os

import numpy as np
import pytest

from npmaskrcnn import Config
from npmaskrcnn.checkpoint import load_checkpoint, load_model
from npmaskrcnn.model import MaskRCNN
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.train import LOSS_KEYS, TrainingDiverged, read_log, train

STEPS = 5


def tiny_cfg(**overrides):
    kw = dict(train_steps=STEPS, batch_size=2, warmup_steps=2, lr=1e-2)
    kw.update(overrides)
    return Config.tiny(**kw)


def tiny_data(n=12):
    return ShapesDataset(n, seed=0, image_size=32, min_size=8, max_size=20, max_shapes=3)


def run(tmp_path, name, cfg=None, **kw):
    kw.setdefault("checkpoint_every", 2)
    return train(cfg or tiny_cfg(), str(tmp_path / name), dataset=tiny_data(), progress=False, **kw)


def losses(rows):
    """The deterministic part of the log (everything but the wall time)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def params(model):
    return {k: v.copy() for k, v in model.named_params()}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    tmp = tmp_path_factory.mktemp("reference")
    model, rows = run(tmp, "run")
    return tmp / "run", params(model), rows


def test_run_folder_has_log_curve_checkpoint_and_model(reference):
    out, p, rows = reference
    for name in ("checkpoint.npz", "model.npz", "log.csv", "loss_curve.png"):
        assert os.path.getsize(out / name) > 0, name
    with open(out / "log.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["step", "lr", "loss", *LOSS_KEYS, "grad_norm", "seconds"]
    logged = read_log(out / "log.csv")
    assert [r["step"] for r in logged] == list(range(STEPS))
    assert losses(logged) == losses(rows)                     # the CSV round-trips floats exactly
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_same_params(params(load_model(out / "model.npz")), p)
    assert int(load_checkpoint(out / "checkpoint.npz")["extra"]["step"]) == STEPS


def test_training_changes_the_parameters(reference):
    _, p, _ = reference
    fresh = params(MaskRCNN(tiny_cfg()))
    assert any(not np.array_equal(p[k], fresh[k]) for k in p)


def test_same_seed_gives_identical_runs(tmp_path, reference):
    _, p, rows = reference
    model, rows2 = run(tmp_path, "again")
    assert losses(rows2) == losses(rows)
    assert_same_params(params(model), p)


def test_another_seed_gives_another_run(tmp_path, reference):
    _, _, rows = reference
    _, rows2 = run(tmp_path, "seed1", tiny_cfg(seed=1))
    assert losses(rows2) != losses(rows)


@pytest.mark.parametrize("k", [2, 3])
def test_resume_replays_the_uninterrupted_run_exactly(tmp_path, reference, k):
    """Stopped before step k (k=3 falls between two periodic checkpoints) and resumed."""
    _, p, rows = reference
    _, first = run(tmp_path, "run", stop_at=k)
    assert [r["step"] for r in first] == list(range(k))
    assert not (tmp_path / "run" / "model.npz").exists()      # not finished yet
    model, rows2 = run(tmp_path, "run", resume=True)
    assert losses(rows2) == losses(rows)
    assert losses(read_log(tmp_path / "run" / "log.csv")) == losses(rows)
    assert_same_params(params(model), p)


def test_resume_with_another_config_is_refused(tmp_path):
    run(tmp_path, "run", stop_at=2)
    with pytest.raises(ValueError, match="config"):
        run(tmp_path, "run", tiny_cfg(lr=5e-3), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    bad_step = 3
    calls = {"n": 0}
    original = MaskRCNN.forward

    def forward(self, images, targets):
        out = original(self, images, targets)
        calls["n"] += 1
        if calls["n"] == bad_step + 1:                         # the forward of step `bad_step`
            out["loss_mask"] = float("nan")
        return out

    monkeypatch.setattr(MaskRCNN, "forward", forward)
    with pytest.raises(TrainingDiverged, match=rf"step {bad_step}: loss is not finite.*loss_mask"):
        run(tmp_path, "run", checkpoint_every=2)
    monkeypatch.undo()
    out = tmp_path / "run"
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert int(ckpt["extra"]["step"]) == 2                     # the last periodic checkpoint
    model = load_model(out / "checkpoint.npz")
    assert all(np.isfinite(v).all() for _, v in model.named_params())
    assert not (out / "model.npz").exists()
    assert [r["step"] for r in read_log(out / "log.csv")] == list(range(bad_step))
    _, rows = run(tmp_path, "run", resume=True)                # and the run can go on from it
    assert [r["step"] for r in rows] == list(range(STEPS))


def test_huge_learning_rate_diverges_with_a_clear_message(tmp_path):
    cfg = tiny_cfg(lr=1e12, warmup_steps=0, grad_clip=0.0, train_steps=10)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        run(tmp_path, "run", cfg, checkpoint_every=1)
    msg = str(info.value)
    assert "not finite" in msg and "learning rate" in msg
    step = int(load_checkpoint(tmp_path / "run" / "checkpoint.npz")["extra"]["step"])
    assert 1 <= step < 10
    load_model(tmp_path / "run" / "checkpoint.npz")            # the last good checkpoint loads


class SignalAt:
    """tiny_data whose item `at` sends this process a signal while the loop reads the batch:
    as if the user pressed Ctrl-C (SIGINT) or a scheduler sent SIGTERM in the middle of a step."""

    def __init__(self, at, signum):
        self.data, self.at, self.signum, self.sent = tiny_data(), at, signum, False

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        return self.data[i]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_step_checkpoints_that_step_and_resume_is_exact(tmp_path, reference, signame):
    """Interrupted during step 2 (not a checkpoint step: checkpoint_every=4): the step finishes,
    its checkpoint is written, and resuming gives the uninterrupted run bit for bit."""
    import signal

    from npmaskrcnn.batches import batch_indices
    from npmaskrcnn.train import TrainingInterrupted

    _, p, rows = reference
    cfg = tiny_cfg()
    item = batch_indices(2, cfg.batch_size, 12, cfg.seed)[0]          # read during step 2
    out = tmp_path / "run"
    # the handlers the process had (a shell's background job starts with SIGINT ignored)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted, match="after step 3") as info:
        train(cfg, str(out), dataset=SignalAt(item, getattr(signal, signame)), progress=False,
              checkpoint_every=4)
    assert info.value.step == 3 and int(load_checkpoint(out / "checkpoint.npz")["extra"]["step"]) == 3
    assert not (out / "model.npz").exists() and not (out / "train.lock").exists()
    assert {s: signal.getsignal(s) for s in before} == before                 # handlers restored
    model, rows2 = train(cfg, str(out), dataset=tiny_data(), progress=False, checkpoint_every=4,
                         resume=True)
    assert losses(rows2) == losses(rows)
    assert_same_params(params(model), p)


def test_a_live_run_in_the_folder_is_refused(tmp_path):
    from npmaskrcnn.train import RunInProgress

    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text(str(os.getppid()))               # a live process: our parent
    with pytest.raises(RunInProgress, match=str(os.getppid())):
        run(tmp_path, "run")
    (out / "train.lock").write_text("999999999")                      # no such process: stale
    run(tmp_path, "run")
    assert not (out / "train.lock").exists()


def test_train_keeps_freed_memory_for_reuse(tmp_path, monkeypatch):
    """train() itself sets the allocator option (not only the CLI), so ablate's worker processes
    and scripts that call it get steps without page-faulted fresh arrays."""
    import npmaskrcnn.runtime as runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    run(tmp_path, "keep", tiny_cfg(train_steps=1, warmup_steps=0))
    assert calls

"""Checkpoints: an exact round trip, and refusal of every kind of bad file, without pickle."""

import os

import numpy as np
import pytest

from npmaskrcnn import Config, MaskRCNN
from npmaskrcnn.checkpoint import load_checkpoint, load_model, save_model
from npmaskrcnn.shapes import ShapesDataset


def perturbed_model(seed=1):
    """A tiny model whose parameters differ from any fresh initialisation (so a loader that
    silently re-initialised from the config would be caught)."""
    model = MaskRCNN(Config.tiny())
    rng = np.random.default_rng(seed)
    for _, p in model.named_params():
        p += rng.normal(0, 0.1, size=p.shape).astype(p.dtype)
    return model


def images(n=3):
    ds = ShapesDataset(n, seed=7, image_size=32, min_size=8, max_size=20)
    return [ds[i][0] for i in range(n)]


def entries_of(path):
    """All arrays of a checkpoint, read without pickle."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def saved(tmp_path):
    model = perturbed_model()
    path = tmp_path / "model.npz"
    save_model(model, path)
    return model, path


def test_round_trip_gives_identical_parameters_and_predictions(saved):
    model, path = saved
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.class_names == model.class_names
    for (k1, v1), (k2, v2) in zip(model.named_params(), loaded.named_params()):
        assert k1 == k2 and v1.dtype == v2.dtype and np.array_equal(v1, v2), k1
    ims = images()
    before, after = model.predict(ims), loaded.predict(ims)
    assert sum(len(p["scores"]) for p in before) > 0          # something to compare
    for p, q in zip(before, after):
        for key in ("boxes", "labels", "scores", "masks"):
            assert np.array_equal(p[key], q[key]), key


def test_extra_arrays_round_trip(tmp_path):
    model = perturbed_model()
    path = save_model(model, tmp_path / "ckpt.npz", extra={"step": np.array(7), "optim/m.x": np.ones(3)})
    ckpt = load_checkpoint(path)
    assert int(ckpt["extra"]["step"]) == 7
    assert np.array_equal(ckpt["extra"]["optim/m.x"], np.ones(3))
    small = load_checkpoint(path, arrays=False)           # what it is, without its weights
    assert small["config"] == ckpt["config"] and small["class_names"] == ckpt["class_names"]
    assert small["params"] == {} and small["extra"] == {}


def test_refuses_object_array(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "pickled.npz"
    np.savez(bad, x=np.array([{}], dtype=object), **entries_of(path))
    with pytest.raises(ValueError, match="object|pickle"):
        load_model(bad)


def test_refuses_misshaped_parameter_naming_it(saved, tmp_path):
    model, path = saved
    entries = entries_of(path)
    name = "param/roi_heads.box_predictor.cls_score.weight"
    entries[name] = np.zeros(entries[name].shape[::-1] + (1,), np.float32)
    bad = tmp_path / "misshaped.npz"
    np.savez(bad, **entries)
    with pytest.raises(ValueError, match="roi_heads.box_predictor.cls_score.weight"):
        load_model(bad)


def test_refuses_missing_parameter_naming_it(saved, tmp_path):
    _, path = saved
    entries = entries_of(path)
    del entries["param/rpn.head.conv.bias"]
    bad = tmp_path / "missing_param.npz"
    np.savez(bad, **entries)
    with pytest.raises(ValueError, match="rpn.head.conv.bias"):
        load_model(bad)


def test_refuses_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_model(bad)


def test_refuses_a_file_that_is_not_an_npz(tmp_path):
    """A JSON (or .npy) passed by mistake must give a ValueError naming the file, not numpy's
    message about pickles or a TypeError."""
    text = tmp_path / "config.npz"
    text.write_text(Config.tiny().to_json())
    with pytest.raises(ValueError, match="config.npz"):
        load_model(text)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="array.npy"):
        load_model(npy)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nowhere.npz")
    with pytest.raises(FileNotFoundError):
        save_model(perturbed_model(), tmp_path / "no_such_folder" / "m.npz")


def test_interrupted_save_keeps_previous_checkpoint(saved, tmp_path, monkeypatch):
    old_model, path = saved

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 half of an archive")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="simulated"):
        save_model(perturbed_model(seed=2), path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]      # no temporary file left behind
    loaded = load_model(path)
    for (k, v1), (_, v2) in zip(old_model.named_params(), loaded.named_params()):
        assert np.array_equal(v1, v2), k


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    """A full disk mid-write (np.savez raising ENOSPC after writing part of the file): the old
    checkpoint is byte-identical, no temporary file is left, the error names the path."""
    import errno

    path = tmp_path / "checkpoint.npz"
    model = MaskRCNN(Config.tiny())
    save_model(model, path)
    before = path.read_bytes()
    real_savez = np.savez

    def full_disk(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:3]))          # part of the archive, then
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    for p in model.named_params():
        p[1][...] += 1.0
    with pytest.raises(OSError, match="cannot write .*checkpoint.npz.*No space left"):
        save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_copy_atomic_copies_whole_or_nothing(saved, tmp_path):
    from npmaskrcnn.files import copy_atomic

    _, path = saved
    dst = tmp_path / "copy.npz"
    assert copy_atomic(path, dst) == str(dst)
    assert dst.read_bytes() == path.read_bytes()
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "missing.npz", tmp_path / "other.npz")
    assert not (tmp_path / "other.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left

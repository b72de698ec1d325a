"""The walkthroughs run, make their figures, and the RoIPool/RoIAlign lessons hold.

Each `walkthroughs/NN_*.py` runs as a subprocess in fast mode with its figures sent to a temporary
folder; it must exit 0 and write at least one PNG named after its number. Without a COCO model,
the five with an "on a real photo" section print, as one line, how to make one
(`test_walkthroughs_photo.py` runs those sections). Walkthrough 05's two
reusable functions are imported from the file itself (its name starts with a digit, hence
importlib) and checked: the worked example's numbers, and the shift experiment's staircase vs ramp.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from npmaskrcnn.real_photo import COCO_MODEL_ENV, HINT

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALKTHROUGHS = sorted(glob.glob(os.path.join(REPO_ROOT, "walkthroughs", "[0-9][0-9]_*.py")))
WITH_PHOTO = ("02", "04", "06", "07", "09")              # their last section: on a real photo


def _env(out):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "Agg"
    env["NPMASKRCNN_OUT"] = str(out)
    env.pop(COCO_MODEL_ENV, None)                      # the photo sections print their hint
    return env


def test_walkthroughs_are_found():
    names = [os.path.basename(p) for p in WALKTHROUGHS]
    assert {"00_shapes_data.py", "01_layers_and_backprop.py", "05_roipool_vs_roialign.py"} <= set(names)


# Two halves, one per file: pytest-xdist (--dist loadfile) gives each file to one worker, and the
# ten runs are the longest part of the suite; 05-09 run in test_walkthroughs_late.py.
EARLY = [p for p in WALKTHROUGHS if os.path.basename(p)[:2] < "05"]


@pytest.mark.parametrize("path", EARLY, ids=os.path.basename)
def test_walkthrough_runs_and_draws(path, tmp_path):
    check_walkthrough(path, tmp_path)


def check_walkthrough(path, tmp_path):
    """Run one walkthrough in fast mode into tmp_path; it exits 0 and writes valid PNGs."""
    out = tmp_path / "figures"
    proc = subprocess.run([sys.executable, path, "--fast", "--out", str(out)], cwd=tmp_path,
                          env=_env(out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{os.path.basename(path)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    prefix = os.path.basename(path)[:2]
    assert (HINT in proc.stdout.splitlines()) == (prefix in WITH_PHOTO), "the photo section's hint"
    figures = sorted(p.name for p in out.glob(f"{prefix}_*.png"))
    assert figures, f"{os.path.basename(path)} wrote no {prefix}_*.png into {out}"
    for name in figures:
        assert (out / name).stat().st_size > 1000, f"{name} is suspiciously small"
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
    assert not list(out.glob(".tmp_*")), "a temporary file was left behind"


def test_run_all_fails_on_a_broken_walkthrough(tmp_path):
    """run_all.py exits non-zero when one walkthrough fails, and still runs the others."""
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(REPO_ROOT, "walkthroughs", "run_all.py"))
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    (tmp_path / "00_ok.py").write_text("print('fine')\n")
    (tmp_path / "01_broken.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "02_ok.py").write_text("open('ran_02', 'w').close()\n")
    (tmp_path / "helper.py").write_text("raise SystemExit(4)\n")          # not a walkthrough
    run_all.HERE = str(tmp_path)
    run_all.REPO_ROOT = str(tmp_path)
    assert [os.path.basename(p) for p in run_all.walkthrough_files()] == ["00_ok.py", "01_broken.py", "02_ok.py"]
    assert run_all.main([]) == 1
    assert (tmp_path / "ran_02").exists()


@pytest.fixture(scope="module")
def walkthrough_05(tmp_path_factory):
    """Import walkthrough 05 from its path. Importing runs its cells (cheap in fast mode), so the
    figures go to a temporary folder."""
    out = tmp_path_factory.mktemp("wt05")
    old = {k: os.environ.get(k) for k in ("NPMASKRCNN_OUT", "NPMASKRCNN_FAST")}
    os.environ["NPMASKRCNN_OUT"] = str(out)
    os.environ["NPMASKRCNN_FAST"] = "1"
    old_argv = sys.argv
    sys.argv = [sys.argv[0]]                         # pytest's own arguments are not ours
    try:
        path = os.path.join(REPO_ROOT, "walkthroughs", "05_roipool_vs_roialign.py")
        spec = importlib.util.spec_from_file_location("walkthrough_05", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.argv = old_argv
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return module


def test_worked_example_numbers(walkthrough_05):
    ex = walkthrough_05.worked_example()
    assert f"{ex['roi_cells']:.2f}" == "20.78"
    assert ex["pool_cells"] == 20 and f"{ex['pool_cells']}" == "20"
    assert f"{ex['pool_bin']:.2f}" == "2.86"
    assert ex["pool_bin_int"] == 2 and f"{ex['pool_bin_int']}" == "2"
    assert f"{ex['align_bin']:.2f}" == "2.97"
    assert ex["samples_per_bin"] == 4
    assert ex["feature_size"] == 25
    assert ex["lost_px"] == pytest.approx(25.0)                   # 0.78125 cells * 32
    assert ex["last_edge_pool_cells"] == 14                        # the seed's "20x20 becomes 14x14"
    assert ex["last_edge_error_px"] == pytest.approx(665 - 14 * 32)


def test_shift_experiment_pool_steps_align_slides(walkthrough_05):
    sx = walkthrough_05.shift_experiment()
    n = len(sx["shifts"])
    assert n == 17 and sx["shifts"][0] == 0 and sx["shifts"][-1] == pytest.approx(2.0)
    # RoIPool: a staircase, a few distinct values over 17 positions
    assert len(np.unique(sx["pool_bin"])) <= 4
    assert len(np.unique(np.round(sx["pool_shift"], 9))) <= 4
    assert np.allclose(sx["pool_shift"], np.round(sx["pool_shift"]))     # whole cells only
    # RoIAlign: changes at every single step, and follows the box exactly on the ramp
    assert np.all(np.abs(np.diff(sx["align_bin"])) > 1e-6)
    assert np.all(np.abs(np.diff(sx["align_out"], axis=0)).max(axis=(1, 2)) > 1e-6)
    assert np.allclose(sx["align_shift"], sx["shifts"])

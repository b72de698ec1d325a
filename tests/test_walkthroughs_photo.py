"""The walkthroughs' "on a real photo" sections (02, 04, 06, 07, 09) and their `--model`.

Without `--model` each of the five prints real_photo.HINT and ends with the shapes
(`test_walkthroughs.py` asserts the hint line). With a COCO model each runs its stage on the sample
photo and draws it: the model here is `MaskRCNN(Config.torchvision_r50_fpn())` at its random
initialisation, saved with `checkpoint.save_model` (no torch, nothing downloaded; 178 MB in a
temporary folder), run in fast mode (the photo at a shorter side of 320). The same weights with
`box_score_thresh` 1.0 detect nothing: the sections must then still draw. A missing file, a file
that is no checkpoint, or a shapes model given as `--model` is refused before the walkthrough
runs, naming `--model`.
"""

import os
import subprocess
import sys

import pytest

from npmaskrcnn import real_photo
from npmaskrcnn.checkpoint import save_model
from npmaskrcnn.config import Config
from npmaskrcnn.model import MaskRCNN

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_FIGURES = {"02_backbone_fpn.py": ["02_photo_fpn"],
                 "04_proposals.py": ["04_photo_objectness", "04_photo_proposals"],
                 "06_box_head.py": ["06_photo_detections"],
                 "07_mask_head.py": ["07_photo_masks", "07_photo_pasted"],
                 "09_inference_evaluation.py": ["09_photo_predictions"]}


def run_walkthrough(name, out, *args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "Agg"
    env.pop(real_photo.COCO_MODEL_ENV, None)
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "walkthroughs", name), "--fast",
                           "--out", str(out), *args], cwd=out.parent, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def coco_checkpoints(tmp_path_factory):
    """(detecting, detecting nothing): one randomly initialised torchvision-preset model, saved
    twice, the second time with box_score_thresh 1.0."""
    folder = tmp_path_factory.mktemp("coco")
    model = MaskRCNN(Config.torchvision_r50_fpn())
    detecting = save_model(model, folder / "coco_random.npz")
    model.set_inference(box_score_thresh=1.0)
    return detecting, save_model(model, folder / "coco_nothing.npz")


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    return save_model(MaskRCNN(Config()), tmp_path_factory.mktemp("shapes") / "shapes.npz")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PHOTO_FIGURES))
def test_photo_section_draws(name, coco_checkpoints, tmp_path):
    out = tmp_path / "figures"
    proc = run_walkthrough(name, out, "--model", str(coco_checkpoints[0]))
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert real_photo.HINT not in proc.stdout
    assert f"COCO model {coco_checkpoints[0]}: the photo (512 x 600) goes in at 320 x 375 (fast mode)" \
        in proc.stdout
    for fig in PHOTO_FIGURES[name]:
        path = out / f"{fig}.png"
        assert path.exists() and path.stat().st_size > 1000, f"{name} did not draw {fig}.png"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["06_box_head.py", "07_mask_head.py", "09_inference_evaluation.py"])
def test_photo_section_without_detections(name, coco_checkpoints, tmp_path):
    out = tmp_path / "figures"
    proc = run_walkthrough(name, out, "--model", str(coco_checkpoints[1]))
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for fig in PHOTO_FIGURES[name]:
        assert (out / f"{fig}.png").exists(), f"{name} did not draw {fig}.png without detections"


def test_coco_model_path_accepts_the_preset(coco_checkpoints):
    assert real_photo.coco_model_path(str(coco_checkpoints[0])) == str(coco_checkpoints[0])
    assert real_photo.coco_model_path(None) is None and real_photo.coco_model_path("") is None


def test_bad_model_is_refused_naming_the_flag(shapes_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--model: no file at .*nowhere\.npz.*import-torchvision"):
        real_photo.coco_model_path(str(tmp_path / "nowhere.npz"))
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"--model .*notes\.npz.*not an npmaskrcnn checkpoint"):
        real_photo.coco_model_path(str(text))
    with pytest.raises(ValueError, match=r"--model .*shapes\.npz.*not a COCO model \(Config\.block is "
                                         r"'basic', it needs 'bottleneck'\).*torchvision_r50_fpn"):
        real_photo.coco_model_path(str(shapes_checkpoint))


def test_walkthrough_refuses_a_shapes_model_before_it_runs(shapes_checkpoint, tmp_path):
    out = tmp_path / "figures"
    proc = run_walkthrough("02_backbone_fpn.py", out, "--model", str(shapes_checkpoint))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: --model ") and "not a COCO model" in last, proc.stderr[-2000:]
    assert not list(out.glob("*.png")), "the walkthrough ran before refusing --model"


def test_parse_walkthrough_args_keeps_the_model_in_the_environment(coco_checkpoints, monkeypatch,
                                                                     tmp_path):
    from npmaskrcnn import viz

    for key in (viz.OUT_ENV, viz.FAST_ENV, real_photo.COCO_MODEL_ENV):
        monkeypatch.delenv(key, raising=False)
    args = viz.parse_walkthrough_args(["--out", str(tmp_path), "--model", str(coco_checkpoints[0])])
    assert args.model == str(coco_checkpoints[0]) == os.environ[real_photo.COCO_MODEL_ENV]
    assert viz.parse_walkthrough_args([]).model == str(coco_checkpoints[0])   # a kernel's next cell
    monkeypatch.delenv(real_photo.COCO_MODEL_ENV)
    assert viz.parse_walkthrough_args(["-f", "kernel.json"]).model is None

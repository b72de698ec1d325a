"""The command line, run in-process through `main(argv)` (one subprocess checks `python -m`)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from npmaskrcnn import Config, MaskRCNN
from npmaskrcnn.__main__ import main
from npmaskrcnn.beyond_paper import WithInferenceAdditions
from npmaskrcnn.checkpoint import load_model
from npmaskrcnn.coco import decode_segmentation, save_coco
from npmaskrcnn.shapes import ShapesDataset
from npmaskrcnn.summary import STAGES, flops_per_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "evaluate", "predict", "demo", "summary", "anchors")


def cli(capsys, *argv):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class TwoClassShapes:
    """Shapes relabelled to two classes, at any image size per index (for --data tests)."""

    class_names = ("box", "round")

    def __init__(self, sizes, seed=0):
        self.sizes, self.seed = list(sizes), seed
        self.image_ids = list(range(1, len(self.sizes) + 1))

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        ds = ShapesDataset(1, seed=self.seed + i, image_size=self.sizes[i], min_size=8, max_size=20)
        image, target = ds[0]
        return image, {**target, "labels": np.minimum(target["labels"], 2)}


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(Config.tiny().to_json())
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_json):
    """A tiny model trained for 3 steps by the CLI; returns (run folder, stdout)."""
    out = tmp_path_factory.mktemp("train") / "run"
    code = main(["train", "--config", str(tiny_json), "--steps", "3", "--batch-size", "2",
                 "--set", "hflip=false", "--set", "rpn_post_nms_top_n_train=16",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture
def png(tmp_path):
    image = ShapesDataset(1, seed=3, image_size=32, min_size=8, max_size=20)[0][0]
    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand(capsys, command):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert out.startswith("usage: python -m npmaskrcnn " + command)


def test_python_dash_m_help_lists_the_subcommands():
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "npmaskrcnn", "--help"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout


def test_no_subcommand_is_a_usage_error(capsys):
    code, _, err = cli(capsys)
    assert code == 2 and "COMMAND" in err


def test_summary_of_the_tiny_config(capsys, tiny_json):
    code, out, _ = cli(capsys, "summary", "--config", tiny_json)
    assert code == 0
    for stage in STAGES:
        assert stage in out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    model = MaskRCNN(Config.tiny())
    assert int(total[1].replace(",", "")) == model.num_params()
    flops, _ = flops_per_stage(model)
    assert int(total[3].replace(",", "")) == sum(flops.values())


def test_flops_of_the_rpn_by_hand():
    """RPN head of the tiny config: a 3x3 conv F->F, 1x1 convs F->A and F->4A, on P2..P6 of a
    32x32 image (8x8, 4x4, 2x2, 1x1, 1x1 = 86 positions); 2 FLOPs per multiply-add."""
    cfg = Config.tiny()
    f, a = cfg.fpn_channels, len(cfg.anchor_ratios)
    flops, budget = flops_per_stage(MaskRCNN(cfg))
    assert flops["rpn"] == 2 * 86 * (f * f * 9 + f * a + f * 4 * a)
    # box head: fc6 (F*S*S -> D) and fc7 (D -> D) on every proposal
    d, s = cfg.box_fc_dim, cfg.box_pool_size
    assert flops["roi_heads.box_head"] == 2 * budget["rois"] * (f * s * s * d + d * d)


def test_train_writes_the_run_folder_and_applies_overrides(trained):
    for name in ("model.npz", "checkpoint.npz", "log.csv", "loss_curve.png", "config.json"):
        assert (trained / name).is_file(), name
    cfg = Config.from_json((trained / "config.json").read_text())
    assert (cfg.train_steps, cfg.batch_size, cfg.hflip, cfg.rpn_post_nms_top_n_train) == (3, 2, False, 16)
    assert cfg.image_size == 32                                # from --config
    assert load_model(trained / "model.npz").config == cfg


def test_train_prints_wall_time_and_model_path(capsys, tmp_path, tiny_json):
    code, out, _ = cli(capsys, "train", "--config", tiny_json, "--steps", "1", "--batch-size", "1",
                       "--out", tmp_path / "r", "--no-progress")
    assert code == 0
    assert "wall time" in out
    assert str(tmp_path / "r" / "model.npz") in out


def test_evaluate_prints_metrics_and_writes_json(capsys, trained, tmp_path):
    metrics, results = tmp_path / "m" / "metrics.json", tmp_path / "r" / "results.json"
    code, out, _ = cli(capsys, "evaluate", "--model", trained / "model.npz", "--num-images", 2,
                       "--json", metrics, "--results", results, "--no-progress")
    assert code == 0
    assert "bbox" in out and "segm" in out and "AP50" in out
    m = json.loads(metrics.read_text())
    assert set(m) == {"bbox", "segm"} and "AP" in m["segm"]
    assert isinstance(json.loads(results.read_text()), list)


def test_evaluate_draws_the_shapes_settings_it_is_asked_for(capsys, tmp_path):
    """Without --shapes: the model's own Config.shapes; --shapes hard: the hard generator (on
    which the shipped model, trained on gentle shapes, scores differently)."""
    from npmaskrcnn.checks import shipped_model_path
    from npmaskrcnn.evaluate import evaluate_model
    from npmaskrcnn.shapes import ShapesDataset

    path = shipped_model_path()
    model = load_model(path)
    got = {}
    for shapes in ("hard", None):
        name = shapes or model.config.shapes
        code, out, _ = cli(capsys, "evaluate", "--model", path, "--num-images", 2,
                           *(["--shapes", shapes] if shapes else []), "--json", tmp_path / "m.json",
                           "--no-progress")
        assert code == 0 and f"({name} settings)" in out
        expected = evaluate_model(model, ShapesDataset(2, seed=10_000, image_size=128,
                                                       **ShapesDataset.named_settings(name, 128)))
        got[name] = json.loads((tmp_path / "m.json").read_text())
        for kind in ("bbox", "segm"):
            assert got[name][kind]["AP"] == pytest.approx(expected[kind]["AP"], abs=1e-12)
    assert got["hard"]["segm"]["AP"] != pytest.approx(got["gentle"]["segm"]["AP"], abs=0.01)
    code, _, err = cli(capsys, "evaluate", "--model", path, "--data", tmp_path / "x.json",
                       "--shapes", "hard")
    assert code == 2 and "--shapes" in err


def test_predict_writes_figure_and_detections(capsys, trained, png, tmp_path):
    out_dir = tmp_path / "pred"
    code, out, _ = cli(capsys, "predict", "--model", trained / "model.npz", png,
                       "--out", out_dir, "--score-thresh", 0.0)
    assert code == 0
    assert (out_dir / "shapes.png").read_bytes()[:4] == b"\x89PNG"
    d = json.loads((out_dir / "detections.json").read_text())
    assert d["class_names"] == ["square", "circle", "triangle"]
    (entry,) = d["images"]
    assert (entry["height"], entry["width"]) == (32, 32)
    model = load_model(trained / "model.npz")
    expected = model.predict(np.asarray(Image.open(png).convert("RGB")))[0]
    assert len(entry["detections"]) == len(expected["scores"]) > 0
    det = entry["detections"][0]
    assert set(det) == {"box", "label", "class_name", "score", "mask"}
    assert isinstance(det["mask"]["counts"], str)
    assert det["class_name"] == d["class_names"][det["label"] - 1]
    np.testing.assert_allclose(det["box"], expected["boxes"][0], rtol=1e-6)
    assert np.array_equal(decode_segmentation(det["mask"], 32, 32), expected["masks"][0])


def test_predict_with_inference_options(capsys, trained, png, tmp_path):
    """--set test_flip=true: the detections JSON holds what model.predict gives with it."""
    out_dir = tmp_path / "pred"
    code, _, _ = cli(capsys, "predict", "--model", trained / "model.npz", png, "--out", out_dir,
                     "--score-thresh", 0.0, "--set", "test_flip=true", "--set", "box_score_thresh=0.2")
    assert code == 0
    (entry,) = json.loads((out_dir / "detections.json").read_text())["images"]
    model = WithInferenceAdditions(load_model(trained / "model.npz"))
    model.set_inference(test_flip=True, box_score_thresh=0.2)
    expected = model.predict(np.asarray(Image.open(png).convert("RGB")))[0]
    assert [d["score"] for d in entry["detections"]] == pytest.approx(expected["scores"].tolist(), rel=1e-6)


def test_demo_with_the_trained_model(capsys, trained, tmp_path):
    figure = tmp_path / "out" / "demo.png"
    code, out, _ = cli(capsys, "demo", "--model", trained / "model.npz", "--out", figure,
                       "--num-images", 2)
    assert code == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert "image 0:" in out and "image 1:" in out


def test_demo_without_the_shipped_model_says_how_to_make_it(capsys, tmp_path, monkeypatch):
    import npmaskrcnn.__main__ as cli_module

    monkeypatch.setattr(cli_module, "DEFAULT_MODEL", str(tmp_path / "data" / "shapes_maskrcnn.npz"))
    code, _, err = cli(capsys, "demo")
    assert code == 2
    assert "--model" in err and "python -m npmaskrcnn train" in err
    assert "Traceback" not in err


def test_train_on_a_coco_dataset_takes_its_classes(capsys, tmp_path, tiny_json):
    data = save_coco(TwoClassShapes([32] * 4), tmp_path / "coco")
    code, out, err = cli(capsys, "train", "--config", tiny_json, "--steps", 2, "--batch-size", 2,
                         "--data", data, "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    model = load_model(tmp_path / "run" / "model.npz")
    assert model.class_names == ("box", "round") and model.config.num_classes == 2
    code, out, err = cli(capsys, "evaluate", "--model", tmp_path / "run" / "model.npz",
                         "--data", data, "--no-progress")
    assert code == 0, err
    assert "round" in out


def test_diverged_training_exits_with_2(capsys, tmp_path, tiny_json):
    with np.errstate(all="ignore"):
        code, _, err = cli(capsys, "train", "--config", tiny_json, "--steps", 10, "--lr", 1e12,
                           "--set", "warmup_steps=0", "--set", "grad_clip=0", "--batch-size", 1,
                           "--checkpoint-every", 1, "--out", tmp_path / "run", "--no-progress")
    assert code == 2
    assert "diverged" in err and "not finite" in err
    load_model(tmp_path / "run" / "checkpoint.npz")


@pytest.mark.parametrize("argv, arg", [
    (["evaluate", "--model", "{tmp}/none.npz"], "--model"),
    (["summary", "--model", "{tmp}/none.npz"], "--model"),
    (["summary", "--config", "{tmp}/none.json"], "--config"),
    (["train", "--config", "{tmp}/none.json"], "--config"),
    (["train", "--data", "{tmp}/none.json", "--out", "{tmp}/run"], "--data"),
    (["train", "--resume", "--out", "{tmp}/empty"], "--resume"),
    (["train", "--set", "no_such_field=1", "--out", "{tmp}/run"], "--set"),
    (["train", "--set", "pooler", "--out", "{tmp}/run"], "--set"),
    (["train", "--lr", "-1", "--out", "{tmp}/run"], "--lr"),
    (["evaluate", "--model", "{model}", "--data", "{tmp}/none.json"], "--data"),
    (["evaluate", "--model", "{model}", "--json", "{file}/sub/m.json"], "--json"),
    (["predict", "--model", "{model}", "{tmp}/none.png", "--out", "{tmp}/p"], "IMAGE"),
    (["predict", "--model", "{model}", "{file}", "--out", "{tmp}/p"], "IMAGE"),
    (["predict", "--model", "{model}", "{png}", "--out", "{file}/sub"], "--out"),
    (["predict", "--model", "{file}", "{png}", "--out", "{tmp}/p"], "--model"),
    (["demo", "--model", "{half}"], "--model"),
    (["demo", "--model", "{model}", "--out", "{file}/demo.png"], "--out"),
])
def test_bad_paths_exit_2_naming_the_argument(capsys, tmp_path, trained, png, argv, arg):
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("not an image")
    model = trained / "model.npz"
    half = tmp_path / "half.npz"
    half.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    subs = {"tmp": tmp_path, "model": model, "png": png, "file": not_an_image, "half": half}
    code, out, err = cli(capsys, *[a.format(**subs) for a in argv])
    assert code == 2
    assert err.startswith(f"error: {arg}"), err
    assert "Traceback" not in err


def test_train_into_a_finished_run_refuses_and_leaves_it_byte_identical(capsys, trained, tiny_json):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    code, _, err = cli(capsys, "train", "--config", tiny_json, "--steps", 3, "--out", trained,
                       "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_train_overwrite_replaces_a_run_and_a_too_long_warmup_is_shortened(capsys, tmp_path, tiny_json):
    out = tmp_path / "run"
    argv = ["train", "--config", tiny_json, "--steps", 2, "--batch-size", 2, "--out", out,
            "--no-progress", "--set", "warmup_steps=200"]
    code, stdout, _ = cli(capsys, *argv)
    assert code == 0 and "warmup shortened to 0 steps" in stdout
    assert json.loads((out / "config.json").read_text())["warmup_steps"] == 0
    code, _, _ = cli(capsys, *argv, "--overwrite")
    assert code == 0


def test_describe_lists_the_first_detections_then_how_many_more():
    from npmaskrcnn.viz import describe

    pred = {"boxes": np.tile(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), (12, 1)),
            "labels": np.ones(12, np.int64), "scores": np.linspace(0.9, 0.8, 12, dtype=np.float32)}
    text = describe(pred, ("circle",))
    assert text.count("circle") == 10 and text.endswith("; and 2 more")
    assert describe({k: v[:3] for k, v in pred.items()}, ("circle",)).count("circle") == 3

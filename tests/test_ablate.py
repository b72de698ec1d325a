import dataclasses
import json
import os

import numpy as np
import pytest

from npmaskrcnn.__main__ import main
from npmaskrcnn.ablate import (PRETRAIN_SEED, VARIANTS, base_config, check_overrides, finished_run, pretrain,
                               pretrain_config, run_config)
from npmaskrcnn.ablate_table import (LABELS, PAPER, TABLE, ablation_figure, plan, results_markdown, run_key,
                                     summarize)
from npmaskrcnn.beyond_paper import build_model
from npmaskrcnn.checkpoint import save_model
from npmaskrcnn.config import Config


def test_ablate_trains_each_variant_per_seed_and_writes_the_table(tmp_path, capsys):
    out, save = tmp_path / "runs", tmp_path / "save"
    argv = ["ablate", "--steps", "2", "--seeds", "0,1", "--stride", "16", "--variants",
            "roi_align,roi_pool", "--eval-images", "2", "--workers", "2", "--out", str(out),
            "--save-dir", str(save)]
    assert main(argv) == 0
    result = json.loads((save / "results.json").read_text())
    assert result["seeds"] == [0, 1] and set(result["runs"]) == {"roi_align@16", "roi_pool@16"}
    for r in result["runs"].values():
        assert set(r["per_seed"]) == {"0", "1"}
        for t in ("bbox", "segm"):
            v = [r["per_seed"][s][t]["AP"] for s in ("0", "1")]
            assert 0.0 <= min(v) and max(v) <= 1.0
            assert r["mean"][t]["AP"] == pytest.approx(np.mean(v))
            assert r["std"][t]["AP"] == pytest.approx(np.std(v, ddof=1))
    table = (save / "results.md").read_text()
    assert "| RoIPool |" in table and "26.9 / 48.8 / 26.4" in table and "±" in table
    assert "--seeds 0,1" in table
    for folder in (out, save):
        assert (folder / "ablation.png").read_bytes()[:4] == b"\x89PNG"
        assert os.path.isfile(folder / "roi_align.npz") and os.path.isfile(folder / "roi_pool.npz")
    # the two seeds are two different runs, each in its own folder
    logs = [(out / "roi_align@16" / f"seed{s}" / "log.csv").read_text() for s in (0, 1)]
    assert logs[0] != logs[1]
    # a second run into the same folders refuses without --overwrite, and leaves the table
    before = (save / "results.md").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (save / "results.md").read_bytes() == before
    # an interrupted table: three models finished (their result.json), one did not; the same
    # command again trains only that one, and the table is the same
    first = json.loads((save / "results.json").read_text())
    for folder in (out, save):
        (folder / "results.json").unlink()
    (out / "roi_pool@16" / "seed1" / "result.json").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused from an earlier run") == 3 and "3 of them reused" in printed
    again = json.loads((save / "results.json").read_text())
    assert again["reused_runs"] == 3
    for key in first["runs"]:
        for seed in ("0", "1"):
            a, b = first["runs"][key]["per_seed"][seed], again["runs"][key]["per_seed"][seed]
            assert a["segm"] == b["segm"] and a["bbox"] == b["bbox"]
    assert "reused" not in again["runs"]["roi_pool@16"]["per_seed"]["1"]
    # a finished run is reused only for the same config and the same number of images scored
    done = out / "roi_align@16" / "seed0"
    assert finished_run(done, run_config("roi_align", 16, 0, 2), 2)["segm"] == a_segm(first)
    assert finished_run(done, run_config("roi_align", 16, 0, 3), 2) is None
    assert finished_run(done, run_config("roi_align", 16, 1, 2), 2) is None
    assert finished_run(done, run_config("roi_align", 16, 0, 2), 3) is None


def test_ablate_with_a_pretrained_body(tmp_path, capsys):
    """--pretrain-steps: the FPN baseline is trained first (seed PRETRAIN_SEED), and every row's
    ResNet body starts from its body; a second table in the same --out reuses the pretraining."""
    from npmaskrcnn.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    argv = ["ablate", "--steps", "2", "--seeds", "0", "--stride", "16", "--variants", "roi_align",
            "--eval-images", "2", "--workers", "2", "--pretrain-steps", "2", "--out", str(out),
            "--set", "box_batch_size_per_image=16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pretraining the ResNet body: 2 steps" in printed and "--pretrain-steps 2" in printed
    assert "--set box_batch_size_per_image=16" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["pretrain_steps"] == 2 and result["pretrain_seconds"] > 0
    assert result["overrides"] == ["box_batch_size_per_image=16"]
    pre = load_checkpoint(out / "pretrain" / "model.npz")
    assert pre["config"] == pretrain_config(2, ["box_batch_size_per_image=16"])
    assert pre["config"].seed == PRETRAIN_SEED and pre["config"].box_batch_size_per_image == 16
    row_ckpt = load_checkpoint(out / "roi_align@16" / "seed0" / "model.npz")
    assert row_ckpt["config"] == run_config("roi_align", 16, 0, 2, ["box_batch_size_per_image=16"])
    row = row_ckpt["params"]
    scratch = build_model(run_config("roi_align", 16, 0, 2)).state_dict()
    body = [k for k in row if k.startswith("backbone.body.")]
    assert body and all(k in pre["params"] for k in body)
    # two small steps from the pretrained body: near it, far from the row's own random init
    near = max(np.abs(row[k] - pre["params"][k]).max() for k in body)
    far = max(np.abs(row[k] - scratch[k]).max() for k in body)
    assert near < 0.02 < far
    # the FPN and the heads are not passed on
    k = "backbone.fpn.inner2.weight"
    assert np.abs(row[k] - pre["params"][k]).max() > 0.02
    # another table in the same folder reuses the pretraining (same config); other overrides do not
    said = []
    folder = out / "pretrain"
    assert pretrain(2, folder, 1, said.append, overrides=["box_batch_size_per_image=16"]) == \
        (str(folder / "model.npz"), 0.0)
    assert said == [f"pretrained ResNet body: reusing {folder / 'model.npz'}"]
    assert not pretrain_config(2) == pre["config"]


def test_start_from_copies_and_refuses_by_name():
    from npmaskrcnn.train import start_from

    cfg = Config.tiny()
    model, other = build_model(cfg), build_model(dataclasses.replace(cfg, seed=5))
    body = {k: v.copy() for k, v in other.state_dict().items() if k.startswith("backbone.body.")}
    start_from(model, body)
    sd = model.state_dict()
    assert all(np.array_equal(sd[k], v) for k, v in body.items())
    with pytest.raises(ValueError, match="'nope' is not a parameter"):
        start_from(model, {"nope": np.zeros(1)})
    k = next(iter(body))
    with pytest.raises(ValueError, match=f"init: '{k}' has shape"):
        start_from(model, {k: np.zeros(3)})


def a_segm(result):
    return result["runs"]["roi_align@16"]["per_seed"]["0"]["segm"]


def test_ablate_refuses_bad_arguments(tmp_path, capsys):
    for extra, arg in ((["--variants", "roi_wrap"], "--variants"), (["--seeds", "0,x"], "--seeds"),
                       (["--seeds", "-1"], "--seeds"), (["--eval-images", "0"], "--eval-images"),
                       (["--pretrain-steps", "-1"], "--pretrain-steps"),
                       (["--set", "pooler=roi_pool"], "--set"), (["--set", "nope=1"], "--set"),
                       (["--set", "box_batch_size_per_image=-3"], "--set"), (["--set", "lr"], "--set"),
                       (["--body-from", str(tmp_path / "none.npz")], "--body-from"),
                       (["--body-from", str(tmp_path / "tiny.npz")], "--body-from"),
                       (["--body-from", str(tmp_path / "junk.npz")], "--body-from"),
                       (["--body-from", str(tmp_path / "tiny.npz"), "--pretrain-steps", "5"], "--body-from")):
        if not (tmp_path / "tiny.npz").exists():
            save_model(build_model(Config.tiny()), str(tmp_path / "tiny.npz"))   # another body
            (tmp_path / "junk.npz").write_bytes(b"not a model")
        code = main(["ablate", *extra, "--out", str(tmp_path), "--save-dir", str(tmp_path)])
        assert code == 2
        assert arg in capsys.readouterr().err


def test_ablate_with_the_body_of_a_given_model(tmp_path, capsys):
    """--body-from: every row's ResNet body starts from that model's; the table records the
    file's SHA-256, a finished run is reused only for the same file."""
    import hashlib

    from npmaskrcnn.checkpoint import load_checkpoint

    donor = build_model(dataclasses.replace(base_config(1, 16, 0), seed=7))
    save_model(donor, str(tmp_path / "body.npz"))
    sha = hashlib.sha256((tmp_path / "body.npz").read_bytes()).hexdigest()
    out = tmp_path / "runs"
    argv = ["ablate", "--steps", "1", "--seeds", "0", "--stride", "16", "--variants", "roi_align",
            "--eval-images", "1", "--workers", "1", "--body-from", str(tmp_path / "body.npz"),
            "--out", str(out), "--set", "box_batch_size_per_image=16"]
    assert main(argv) == 0
    assert f"--body-from {tmp_path / 'body.npz'}" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert result["body_sha256"] == sha and result["pretrain_steps"] == 0
    row = load_checkpoint(out / "roi_align@16" / "seed0" / "model.npz")["params"]
    body = {k: v for k, v in donor.state_dict().items() if k.startswith("backbone.body.")}
    assert max(np.abs(row[k] - v).max() for k, v in body.items()) < 0.02   # one small step from it
    # the same command, as after an interruption, reuses the run; another body file would not
    (out / "results.json").unlink()
    assert main(argv) == 0
    assert "reused from an earlier run" in capsys.readouterr().out
    cfg = run_config("roi_align", 16, 0, 1, ["box_batch_size_per_image=16"])
    done = out / "roi_align@16" / "seed0"
    assert finished_run(done, cfg, 1, 0, sha) is not None
    assert finished_run(done, cfg, 1, 0, "0" * 64) is None and finished_run(done, cfg, 1) is None


def test_variants_differ_from_the_baseline_in_one_switch():
    base = base_config(10, 16, 0)
    assert base.pooler_levels == (4,)
    assert base_config(10, 32, 0).pooler_levels == (5,)
    assert base_config(10, "fpn", 0).pooler_levels == (2, 3, 4, 5)
    for name, switch in VARIANTS.items():
        assert len(switch) <= 1, name


def test_the_table_has_every_row_the_issue_names():
    rows = {(sec, v, st) for sec, v, st, _ in TABLE}
    assert {("2c", v, 16) for v in ("roi_pool", "roi_warp", "roi_warp_max", "roi_align",
                                    "roi_align_max")} <= rows
    assert {("2b", "softmax_masks", 16), ("2b", "class_agnostic_masks", 16),
            ("2d", "roi_pool", 32), ("2d", "roi_align", 32), ("2e", "mlp_mask_head", "fpn"),
            ("2e", "roi_align", "fpn"), ("aligned", "roi_align_unaligned", 16)} <= rows
    # each section's first row is its baseline: RoIAlign avg, sigmoid, class-specific, FCN
    firsts = {}
    for sec, v, st, _ in TABLE:
        firsts.setdefault(sec, v)
    assert set(firsts.values()) == {"roi_align"}
    assert PAPER["2d", "roi_pool"]["bbox"][0] == 28.2 and PAPER["2c", "roi_pool"]["segm"][0] == 26.9
    # a subset of variants keeps only their rows, in the table's order
    assert [r[:3] for r in plan(["roi_pool"], None)] == [("2c", "roi_pool", 16), ("2d", "roi_pool", 32)]
    # a flat table labels its rows by name; every variant has a label
    assert plan(["roi_warp_max", "roi_align"], 16) == [("flat", "roi_warp_max", 16, "RoIWarp max"),
                                                      ("flat", "roi_align", 16, "RoIAlign avg")]
    assert set(LABELS) == set(VARIANTS)


def fake_runs(rows, values):
    """Runs with two seeds whose mask AP are values[key] +- 0.01 (box AP half of it)."""
    runs = {}
    for _, v, st, _ in rows:
        ap = values[run_key(v, st)]
        per_seed = {s: {t: {k: (ap + d) * (1.0 if t == "segm" else 0.5) for k in ("AP", "AP50", "AP75")}
                        for t in ("bbox", "segm")} for s, d in (("0", -0.01), ("1", 0.01))}
        mean, std = summarize(per_seed)
        runs[run_key(v, st)] = {"per_seed": per_seed, "mean": mean, "std": std}
    return runs


def test_table_shows_mean_std_and_both_differences_by_hand():
    rows = plan(["roi_align", "roi_pool"], None)
    runs = fake_runs(rows, {"roi_align@16": 0.80, "roi_pool@16": 0.70, "roi_align@32": 0.75,
                            "roi_pool@32": 0.60, "roi_align@fpn": 0.9})
    assert runs["roi_pool@16"]["std"]["segm"]["AP"] == pytest.approx(np.std([0.69, 0.71], ddof=1))
    md = results_markdown(rows, runs, "header")
    line = next(x for x in md.splitlines() if x.startswith("| RoIPool |"))
    # mean +- std of mask AP 70.0 +- 1.4, ours -10.0 from RoIAlign, the paper's 26.9 - 30.3 = -3.4
    assert "| 70.0 ± 1.4 |" in line and "| -10.0 |" in line and line.endswith("| -3.4 |")
    line32 = next(x for x in md.splitlines() if x.startswith("| RoIPool, stride 32 |"))
    assert "| 28.2 / 52.7 / 26.9 |" in line32 and "-15.0" in line32 and line32.endswith("| -7.3 |")
    assert "### Table 2d" in md and "### Table 2e" in md
    fig = ablation_figure(rows, runs)
    assert len(fig.axes) == len({r[0] for r in rows})


def test_summarize_one_seed_has_zero_spread():
    per_seed = {"0": {t: {"AP": 0.5, "AP50": 0.7, "AP75": 0.4} for t in ("bbox", "segm")}}
    mean, std = summarize(per_seed)
    assert mean["segm"]["AP50"] == 0.7 and std["segm"]["AP"] == 0.0


def test_the_table_on_large_shapes():
    """`--set shapes=large` (the protocol of docs/results.md's stride-16 budget) reaches every
    row and the pretraining, and their data: shapes of 32-80 px instead of 16-64."""
    from npmaskrcnn.batches import default_dataset

    over = check_overrides(["shapes=large"])
    assert run_config("roi_pool", 16, 1, 5, over).shapes == "large"
    assert pretrain_config(5, over).shapes == "large"
    ds = default_dataset(run_config("roi_align", 16, 0, 5, over), 3)
    assert (ds.min_size, ds.max_size) == (32.0, 80.0)
    assert (default_dataset(run_config("roi_align", 16, 0, 5), 3).max_size) == 64.0

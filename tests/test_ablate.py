"""The ablation runner: one switch per variant, a table, the two models walkthrough 05 loads."""

import json
import os

from npmaskrcnn.__main__ import main
from npmaskrcnn.ablate import VARIANTS, base_config


def test_ablate_trains_each_variant_and_writes_the_table(tmp_path):
    out, save = tmp_path / "runs", tmp_path / "save"
    code = main(["ablate", "--steps", "2", "--variants", "roi_align,roi_pool", "--eval-images", "2",
                 "--out", str(out), "--save-dir", str(save)])
    assert code == 0
    results = json.loads((save / "results.json").read_text())["results"]
    assert set(results) == {"roi_align", "roi_pool"}
    for r in results.values():
        assert 0.0 <= r["segm"]["AP"] <= 1.0 and r["train_seconds"] > 0
    table = (save / "results.md").read_text()
    assert "| roi_pool |" in table and "26.9 / 48.8 / 26.4" in table
    assert os.path.isfile(save / "roi_align.npz") and os.path.isfile(save / "roi_pool.npz")


def test_ablate_refuses_an_unknown_variant(tmp_path, capsys):
    code = main(["ablate", "--variants", "roi_wrap", "--out", str(tmp_path), "--save-dir", str(tmp_path)])
    assert code == 2
    assert "--variants" in capsys.readouterr().err


def test_variants_differ_from_the_baseline_in_one_switch():
    base = base_config(10, 16, 0)
    assert base.pooler_levels == (4,)
    for name, switch in VARIANTS.items():
        assert len(switch) <= 1, name

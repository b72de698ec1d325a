"""The executed walkthroughs in docs/walkthroughs/ are current: one notebook (and HTML page) per
walkthrough, made from the walkthrough's present source (its sha256 is recorded by
walkthroughs/render.py), holding its figures as outputs. A walkthrough changed without running
`python walkthroughs/render.py --only NN` fails here."""

import glob
import hashlib
import json
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(REPO_ROOT, "walkthroughs", "[0-9][0-9]_*.py")))
RENDERED = os.path.join(REPO_ROOT, "docs", "walkthroughs")


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_the_rendering_is_current_and_holds_the_figures(source):
    stem = os.path.splitext(os.path.basename(source))[0]
    path = os.path.join(RENDERED, stem + ".ipynb")
    assert os.path.isfile(path), f"no {path}: run python walkthroughs/render.py --only {stem[:2]}"
    with open(path) as f:
        nb = json.load(f)
    with open(source, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert nb["metadata"]["npmaskrcnn"]["source_sha256"] == sha, \
        f"{stem}.py changed since it was rendered: run python walkthroughs/render.py --only {stem[:2]}"
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{stem} ran with an error"
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{stem}.ipynb holds no figure"
    assert os.path.getsize(os.path.join(RENDERED, stem + ".html")) > 10_000


def test_the_index_links_every_walkthrough():
    with open(os.path.join(RENDERED, "index.html")) as f:
        index = f.read()
    for source in SOURCES:
        assert os.path.splitext(os.path.basename(source))[0] + ".html" in index

"""Execute every walkthrough as a notebook and write it with its outputs: .ipynb and .html.

    pip install jupytext nbclient nbconvert ipykernel      # documentation tools, not run-time ones
    python walkthroughs/render.py [--only 05,06] [--timeout 900]

For each `walkthroughs/NN_stage.py` (jupytext percent format) this writes
`docs/walkthroughs/NN_stage.ipynb` (GitHub renders it, figures included) and
`docs/walkthroughs/NN_stage.html`, then `docs/walkthroughs/index.html` linking them all. The
walkthroughs run in a Jupyter kernel, where `viz.save_figure` displays each figure inline. Each
notebook records the sha256 of the source it was made from (`metadata.npmaskrcnn.source_sha256`);
`tests/test_rendered_walkthroughs.py` fails when a walkthrough changed and its rendering did not.
The figures of the run go to a temporary folder, not to `walkthroughs/out/`. The notebooks are
rendered without a COCO model (NPMASKRCNN_COCO_MODEL is cleared for the kernel), so their "on a
real photo" sections show the one line that says how to make one.
"""

import argparse
import glob
import hashlib
import html
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
OUT = os.path.join(REPO_ROOT, "docs", "walkthroughs")
COCO_MODEL_ENV = "NPMASKRCNN_COCO_MODEL"                     # npmaskrcnn.real_photo's


def source_sha256(path):
    """sha256 of a walkthrough's source file (what its rendering records)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def walkthrough_files():
    return sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py")))


def render(path, timeout, figures_dir):
    """Execute one walkthrough in a kernel; write its .ipynb and .html. Returns seconds taken."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env = {"NPMASKRCNN_OUT": figures_dir, "PYTHONPATH": os.pathsep.join(
        [REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    saved = {k: os.environ.get(k) for k in list(env) + [COCO_MODEL_ENV]}
    os.environ.update(env)                                   # the kernel inherits them
    os.environ.pop(COCO_MODEL_ENV, None)                     # rendered without a COCO model
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": HERE}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    nb.metadata["npmaskrcnn"] = {"source": os.path.relpath(path, REPO_ROOT),
                                 "source_sha256": source_sha256(path),
                                 "seconds": round(seconds, 1)}
    stem = os.path.splitext(os.path.basename(path))[0]
    from npmaskrcnn.files import atomic_write, write_text_atomic

    atomic_write(os.path.join(OUT, stem + ".ipynb"), lambda f: nbformat.write(nb, f), mode="w")
    body, _ = HTMLExporter().from_notebook_node(nb)
    write_text_atomic(body, os.path.join(OUT, stem + ".html"))
    return seconds


def write_index():
    """docs/walkthroughs/index.html: one link per rendered walkthrough, with its title."""
    import json

    from npmaskrcnn.files import write_text_atomic

    rows = []
    for nb_path in sorted(glob.glob(os.path.join(OUT, "[0-9][0-9]_*.ipynb"))):
        with open(nb_path) as f:
            nb = json.load(f)
        first = "".join(nb["cells"][0]["source"]).splitlines()[0].lstrip("# ").strip()
        stem = os.path.splitext(os.path.basename(nb_path))[0]
        rows.append(f'<li><a href="{stem}.html">{html.escape(first)}</a> '
                    f'(<a href="{stem}.ipynb">notebook</a>)</li>')
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>npmaskrcnn walkthroughs</title>"
            "</head><body>\n<h1>npmaskrcnn: the walkthroughs, executed</h1>\n<p>Mask R-CNN in NumPy, "
            "one stage per walkthrough, with every output and figure.</p>\n<ol>\n"
            + "\n".join(rows) + "\n</ol>\n</body></html>\n")
    write_text_atomic(page, os.path.join(OUT, "index.html"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated walkthrough numbers, e.g. 05,06")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        import jupytext  # noqa: F401
        import nbclient  # noqa: F401
        import nbconvert  # noqa: F401
    except ImportError as e:
        print(f"error: {e.name} is missing: pip install jupytext nbclient nbconvert ipykernel",
              file=sys.stderr)
        return 2
    sys.path.insert(0, REPO_ROOT)
    os.makedirs(OUT, exist_ok=True)
    only = None if args.only is None else {n.strip() for n in args.only.split(",")}
    with tempfile.TemporaryDirectory() as figures:
        for path in walkthrough_files():
            name = os.path.basename(path)
            if only is not None and name[:2] not in only:
                continue
            print(f"=== {name}", flush=True)
            print(f"=== {name}: {render(path, args.timeout, figures):.1f} s", flush=True)
    write_index()
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The package's shape, as docs/architecture.md describes it: the paper's path names no addition
beyond the paper, no two modules import each other (directly or in a cycle), every file holds
about 400 lines at most, and the command line's --help needs only the standard library."""

import ast
import glob
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "npmaskrcnn")
PAPER_PATH = ("model.py", "backbone.py", "rpn.py", "roi_heads.py", "box_head.py", "mask_head.py")
ADDITION_WORDS = ("jitter", "iou_balanced", "iou-balanced", "libra", "box_refine", "second look",
                  "second_look", "test_flip", "test-time", "rescore", "mask_confidence",
                  "box_from_mask", "neg_iou_bins")
MAX_LINES = 420


def modules():
    return sorted(glob.glob(os.path.join(PKG, "*.py")))


def imports_of(path):
    """Package modules imported by one file (relative or absolute), at any depth of the file."""
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("npmaskrcnn."):
                out.add(node.module.split(".")[1])
            elif node.module == "npmaskrcnn":
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("npmaskrcnn."))
    names = {os.path.splitext(os.path.basename(p))[0] for p in modules()}
    return out & names


@pytest.mark.parametrize("name", PAPER_PATH)
def test_the_papers_path_names_no_addition(name):
    text = open(os.path.join(PKG, name)).read().lower()
    found = [w for w in ADDITION_WORDS if w in text]
    assert not found, f"{name} mentions {found}: additions belong in beyond_paper.py"


def test_no_import_cycles():
    graph = {os.path.splitext(os.path.basename(p))[0]: imports_of(p) for p in modules()}
    graph = {k: v - {k, "__init__"} for k, v in graph.items()}

    def reach(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize("path", modules(), ids=os.path.basename)
def test_files_stay_short(path):
    n = sum(1 for _ in open(path))
    assert n <= MAX_LINES, f"{os.path.basename(path)} has {n} lines: split it by stage"


def test_help_needs_only_the_standard_library():
    code = ("import sys; sys.argv = ['npmaskrcnn', '--help']\n"
            "import npmaskrcnn.__main__ as m\n"
            "m.build_parser().format_help()\n"
            "heavy = sorted(k for k in sys.modules if k.split('.')[0] in "
            "('numpy', 'numba', 'matplotlib', 'pycocotools', 'scipy', 'PIL'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(PKG), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

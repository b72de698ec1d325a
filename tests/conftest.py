import os
import sys

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one test process per core (pyproject.toml: -n auto): each with one BLAS and one numba
    # thread, as the CLI trains, or the processes' thread pools fight over the cores (runtime.py)
    for _k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_k, "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Every hypothesis test is derandomised, so a CI run is repeatable: the examples depend only on
# the test's code, never on a random seed or on the example database of an earlier run. A test's
# own @settings(...) inherits these defaults (this file is loaded before the test modules).
settings.register_profile("npmaskrcnn", derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.load_profile("npmaskrcnn")

# NPMASKRCNN_REQUIRE_TORCH=1 (set by .ci/run for the PyTorch cross-checks): a skip is a failure,
# so a cross-check can never pass unseen because torch or torchvision is missing.
REQUIRE_TORCH = os.environ.get("NPMASKRCNN_REQUIRE_TORCH") == "1"


def _fail_skip(report):
    if REQUIRE_TORCH and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped while NPMASKRCNN_REQUIRE_TORCH=1: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield                                    # a module-level importorskip lands here
    _fail_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    if REQUIRE_TORCH:
        n = {k: len(terminalreporter.stats.get(k, [])) for k in ("passed", "failed", "skipped",
                                                                  "error")}
        terminalreporter.write_line(f"torch cross-checks: {n['passed']} passed, {n['failed']} "
                                    f"failed, {n['skipped']} skipped, {n['error']} errors")

"""runtime.exit_with_parent: a worker whose parent is killed ends instead of working on."""

import os
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = ("import os, time; from npmaskrcnn.runtime import exit_with_parent; "
         "exit_with_parent(os.getppid(), every=0.05); exit_with_parent(os.getppid(), every=0.05); "
         "time.sleep(60)")
PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}])
print(child.pid, flush=True)
sys.stdin.readline()                      # the test says when to die
os.kill(os.getpid(), 9)
"""


def _running(pid):
    """True while `pid` exists and is not a zombie (a dead child its new parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_ends_when_its_parent_is_killed():
    paths = [REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.0)
        assert _running(child), "the worker must keep running while its parent lives"
        parent.stdin.write("die\n")
        parent.stdin.flush()
        assert parent.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), "the worker outlived its killed parent"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)

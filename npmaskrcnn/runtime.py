"""Process settings for training: thread counts and the memory allocator. Not the algorithm.

Training runs BLAS and numba on one thread per process and uses the other cores through
data-parallel worker processes (`parallel.py`): on 2 cores that does more steps than one process
with two threads, and a second OpenBLAS thread loses several times its speed as soon as anything
else runs, because its threads spin-wait for each other (docs/performance.md has the figures).
`single_threaded_env()` must run before numpy is imported; it only uses the standard library.
"""

import contextlib
import ctypes
import os

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def single_threaded_env():
    """Set one BLAS and one numba thread for this process, unless the environment says otherwise.
    Call before numpy is imported (the CLI's train command, the walkthrough that trains)."""
    for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(k, "1")


def as_the_cli_trains():
    """The process settings of the CLI's `train`, for any script or walkthrough that trains: one
    BLAS and one numba thread (call before numpy is imported) and freed memory kept for reuse."""
    single_threaded_env()
    keep_freed_memory()


@contextlib.contextmanager
def single_threaded_children():
    """Processes started inside this block get one BLAS and one numba thread unless the
    environment says otherwise: one process per core, not one thread pool per process."""
    added = [k for k in THREAD_VARIABLES if k not in os.environ]
    os.environ.update({k: "1" for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same few-MB arrays (im2col columns, activations,
    gradients) every step. By default glibc serves such blocks with fresh `mmap`s and unmaps
    them when freed, so every step the kernel zero-fills them again page by page. Raising the
    mmap and trim thresholds to 1 GiB keeps the memory in the heap; the arithmetic, hence every
    weight, is bit for bit the same. A no-op (returns False) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3                # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) & bool(mallopt(m_trim_threshold, 1 << 30))


_WATCHED = set()


def exit_with_parent(parent_pid, every=1.0):
    """In a worker process: end it (exit code 1) as soon as its parent `parent_pid` is gone.

    A pool's worker busy with a long job does not read its pipe, so it would not notice that the
    command which started it was killed (e.g. `kill PID` of `ablate`, which cannot clean up):
    it would train to the end of its job first. A daemon thread checks the parent pid every
    `every` seconds; an orphan is re-parented, so its parent pid changes."""
    import threading
    import time

    if parent_pid in _WATCHED:                 # one watcher per process, however many jobs
        return
    _WATCHED.add(parent_pid)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()

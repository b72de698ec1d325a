"""Writing files so that a reader never sees half of one: the package's one atomic writer.

Every file the package writes (checkpoints, JSON, figures, images) goes through `atomic_write`:
the content is written to a temporary file in the destination's folder, flushed to disk, then
renamed over the destination (`os.replace` is atomic on POSIX). An interrupted or failed write
(Ctrl-C, a full disk, a read-only folder) leaves the previous file intact and no temporary behind.
Standard library only.
"""

import json
import os
import tempfile


def atomic_write(path, write, mode="wb"):
    """Write `path` atomically.

    Inputs:
    - path: destination file (its folder must exist)
    - write: function called with an open file object (opened with `mode`) that writes the content
    - mode: "wb" (binary) or "w" (text)
    Returns: the path. Raises OSError (naming the path) when the folder is missing or unwritable.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path!r}: the folder {folder!r} does not exist")
    ext = os.path.splitext(path)[1]
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=ext)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write into the folder {folder!r}: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())                   # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not str(e).startswith("cannot write"):
            raise OSError(e.errno, f"cannot write {path!r} (the previous file, if any, is "
                                   f"unchanged): {e.strerror or e}") from e
        raise
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(obj, path):
    """Write `obj` (anything json.dump accepts) as JSON to `path` atomically. Returns the path."""
    return atomic_write(path, lambda f: json.dump(obj, f), mode="w")


def write_text_atomic(text, path):
    """Write a string to `path` atomically. Returns the path."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def copy_atomic(src, dst):
    """Copy the file `src` to `dst` atomically (whole or not at all). Returns dst."""
    with open(src, "rb") as f:
        data = f.read()
    return atomic_write(dst, lambda g: g.write(data))


def save_figure_atomic(fig, path, dpi=100):
    """Write a matplotlib figure to `path` as PNG atomically, then close it. Returns the path."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)

"""Safe checkpoints: a plain .npz, loaded without pickle, written atomically.

Layout of the archive (every entry a numeric or unicode array, never an object array):
    format_version          () int
    config                  () str, the Config as JSON
    class_names             (K,) str
    param/<dotted name>     every parameter, e.g. param/backbone.body.stem.0.weight
    extra/<key>             optional training state (optimizer moments, step, ...)

Saving goes through `files.atomic_write` (a temporary file renamed over `path`), so an
interrupted or failed save leaves the previous checkpoint intact.
"""

import json
import os
import zipfile

import numpy as np

from .config import Config
from .files import atomic_write

FORMAT_VERSION = 1


def save_model(model, path, extra=None):
    """Write `model` (and optional extra arrays) to `path` atomically. Returns the path.

    Inputs:
    - model: a MaskRCNN
    - path: destination .npz file
    - extra: optional dict name -> array (training state), stored as extra/<name>
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"path: the folder {folder!r} is not writable")
    arrays = {"format_version": np.array(FORMAT_VERSION),
              "config": np.array(model.config.to_json()),
              "class_names": np.array(list(model.class_names), dtype=str)}
    for name, value in model.named_params():
        arrays["param/" + name] = value
    for name, value in (extra or {}).items():
        arrays["extra/" + name] = np.asarray(value)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path, arrays=True):
    """Read a checkpoint without pickle. Returns dict: config, class_names, params, extra.
    `arrays=False` reads and checks only the small entries (params and extra come back empty):
    what a checkpoint is, without its weights.

    Raises FileNotFoundError for a missing file and ValueError (naming the path and entry) for a
    file that is not a valid checkpoint: truncated, not a zip, pickled/object arrays, no config.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint file at {path!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path!r}: not an .npz (zip) archive; truncated, corrupt "
                         "or another kind of file")
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = {}
            for key in z.files:
                if not arrays and key.startswith(("param/", "extra/")):
                    continue
                try:
                    entries[key] = z[key]
                except ValueError as e:
                    raise ValueError(f"checkpoint {path!r}: entry {key!r} is an object (pickled) "
                                     "array; refusing to load it") from e
    except (zipfile.BadZipFile, EOFError, OSError, TypeError) as e:
        raise ValueError(f"checkpoint {path!r}: not a readable .npz archive (truncated or "
                         f"corrupt?): {e}") from e
    for key in ("format_version", "config", "class_names"):
        if key not in entries:
            raise ValueError(f"checkpoint {path!r}: missing entry {key!r}; not an npmaskrcnn checkpoint")
    fv = entries["format_version"]
    if fv.shape != () or not np.issubdtype(fv.dtype, np.integer):
        raise ValueError(f"checkpoint {path!r}: entry 'format_version' must be a scalar int, got "
                         f"shape {fv.shape} dtype {fv.dtype}")
    version = int(fv)
    if version != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path!r}: format_version {version}, this code reads {FORMAT_VERSION}")
    if entries["config"].shape != () or entries["config"].dtype.kind != "U":
        raise ValueError(f"checkpoint {path!r}: entry 'config' must be a JSON string, got shape "
                         f"{entries['config'].shape} dtype {entries['config'].dtype}")
    try:
        config = Config.from_dict(json.loads(str(entries["config"])))
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"checkpoint {path!r}: invalid config entry: {e}") from e
    if entries["class_names"].ndim != 1 or entries["class_names"].dtype.kind != "U":
        raise ValueError(f"checkpoint {path!r}: entry 'class_names' must be a 1-D array of "
                         f"strings, got shape {entries['class_names'].shape} dtype "
                         f"{entries['class_names'].dtype}")
    params = {_renamed(k[len("param/"):]): v for k, v in entries.items() if k.startswith("param/")}
    for name, v in params.items():
        if v.dtype not in (np.float32, np.float64):
            raise ValueError(f"checkpoint {path!r}: entry 'param/{name}' must be float32 or "
                             f"float64, got {v.dtype}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"checkpoint {path!r}: entry 'param/{name}' holds NaN or inf")
    extra = {k[len("extra/"):]: v for k, v in entries.items() if k.startswith("extra/")}
    return {"config": config, "class_names": tuple(str(c) for c in entries["class_names"]),
            "params": params, "extra": extra}


# parameter names of earlier versions -> today's (the mask predictor left the mask head)
_OLD_PREFIXES = (("roi_heads.mask_head.predictor.", "roi_heads.mask_predictor.mask_fcn_logits."),)


def _renamed(name):
    for old, new in _OLD_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def load_model(path):
    """Load a ready-to-use model from a checkpoint written by `save_model`.

    The network is built as its config says (`beyond_paper.build_model`), and wrapped for the
    inference additions the config turns on (`beyond_paper.for_inference`): the paper's config
    gives a plain MaskRCNN. Raises ValueError naming any missing, unexpected or mis-shaped
    parameter.

    Also asks glibc's allocator to keep freed memory for reuse (`runtime.keep_freed_memory`, a
    process-wide setting): a forward pass allocates and frees arrays of up to a few hundred MB at
    every layer, and served by fresh mmaps each is zero-filled again page by page. Measured on
    R50-FPN, an 800 x 1067 photo: about 1.6x faster (`benchmarks/bench_torchvision_r50.py
    --malloc-defaults`).
    """
    from .beyond_paper import build_model, for_inference
    from .runtime import keep_freed_memory

    keep_freed_memory()
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["config"], ckpt["class_names"])
    try:
        model.load_state_dict(ckpt["params"])
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise ValueError(f"checkpoint {os.fspath(path)!r}: {msg}") from e
    return for_inference(model)

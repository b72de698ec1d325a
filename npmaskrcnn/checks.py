"""Argument checks in one place: paths, numbers, and loading what a command line names.

Every check raises `UsageError` (a ValueError) whose message starts with the argument's name
and says what was expected; the CLI prints it as one line with exit code 2. Heavy modules are
imported inside the functions, so importing this module needs only the standard library.
"""

import math
import os
import zipfile


def shipped_model_path():
    """Where the shipped model is: data/ beside the package (a checkout, an editable install),
    else <prefix>/share/npmaskrcnn/ (pip install .). The first candidate when neither exists."""
    import sys

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [os.path.join(here, "data", "shapes_maskrcnn.npz"),
                  os.path.join(sys.prefix, "share", "npmaskrcnn", "shapes_maskrcnn.npz")]
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


class UsageError(ValueError):
    """A user error: a missing file, an unreadable checkpoint, an invalid value."""


def input_file(path, arg):
    """The path if it names an existing file, else UsageError naming `arg`."""
    if not os.path.exists(path):
        raise UsageError(f"{arg}: no such file: {path!r}")
    if not os.path.isfile(path):
        raise UsageError(f"{arg}: {path!r} is not a file")
    return path


def input_dir(path, arg):
    """The path if it names an existing folder, else UsageError naming `arg`."""
    if not os.path.isdir(path):
        raise UsageError(f"{arg}: no such folder: {path!r}")
    return path


def output_dir(path, arg):
    """Create an output folder (and its parents) and check that it is writable. Returns it."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{arg}: {path!r} exists and is not a folder") from None
    except OSError as e:
        raise UsageError(f"{arg}: cannot create the folder {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{arg}: the folder {path!r} is not writable")
    return path


def output_file(path, arg):
    """Check an output file's path: its folder is created, and the path is not a folder."""
    if os.path.isdir(path):
        raise UsageError(f"{arg}: {path!r} is a folder; expected a file name")
    output_dir(os.path.dirname(os.path.abspath(path)), arg)
    return path


def at_least(value, least, arg):
    """An int >= least (None passes through), else UsageError naming `arg`."""
    if value is not None and value < least:
        kind = "positive" if least == 1 else f">= {least}" if least else "non-negative"
        raise UsageError(f"{arg}: expected a {kind} integer, got {value}")
    return value


def fraction(value, arg):
    """A number in [0, 1] (NaN refused), else UsageError naming `arg`."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
        raise UsageError(f"{arg}: expected a number in [0, 1], got {value}")
    return value


def only_with(value, arg, other, other_value):
    """Refuse `arg` when the option it belongs to (`other`) is not given."""
    if value is not None and other_value is None:
        raise UsageError(f"{arg}: only meaningful with {other}")


def load_model_arg(path, arg="--model", default=None):
    """Load the checkpoint a command line names; says how to make the shipped one if missing."""
    from .checkpoint import load_model

    if not os.path.exists(path) and default is not None and os.path.abspath(path) == os.path.abspath(default):
        raise UsageError(f"{arg}: the shipped model {path!r} is missing. Make it with "
                         f"`python -m npmaskrcnn train --out runs/shapes` and copy "
                         f"runs/shapes/model.npz to {path}, or pass --model PATH of a trained model")
    input_file(path, arg)
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{arg}: {path!r} is not an .npz checkpoint (not a zip archive; truncated?)")
    try:
        return load_model(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"{arg}: {e}") from None


def load_coco_arg(json_path, image_dir, arg, images_arg, skip_bad_images=False):
    """Read the COCO dataset a command line names; every image file must exist, unless
    skip_bad_images (then images that are missing or unreadable are dropped, with one warning)."""
    from .coco import load_coco

    input_file(json_path, arg)
    if image_dir is not None:
        input_dir(image_dir, images_arg)
    try:
        dataset = load_coco(json_path, image_dir, on_bad_image="skip" if skip_bad_images else "raise")
    except (ValueError, OSError) as e:
        raise UsageError(f"{arg}: {e}") from None
    if len(dataset) == 0:
        raise UsageError(f"{arg}: {json_path!r} lists no images")
    missing = [dataset.image_path(i) for i in range(len(dataset))
               if not os.path.isfile(dataset.image_path(i))]
    if missing:
        raise UsageError(f"{images_arg}: {len(missing)} image file(s) of {json_path!r} are missing, "
                         f"e.g. {missing[0]!r}; pass the image folder with {images_arg}")
    return dataset


def read_image_arg(path, arg="IMAGE"):
    """Read an image file (any format Pillow reads) as (H, W, 3) uint8 RGB, converted as
    `imageio.read_image` says (grayscale, RGBA, palette, 16-bit, EXIF rotation); returns
    (image, conversions: tuple of str)."""
    from .imageio import read_image

    input_file(path, arg)
    try:
        return read_image(path, return_conversions=True)
    except (ValueError, OSError) as e:
        raise UsageError(f"{arg}: cannot read {path!r} as an image: {e}") from None


def far_from_training(image_shape, config):
    """A one-line warning when an image is far from what a model of `config` was trained on,
    else None: its shorter side after the transform against the training's (min_size, or the
    shapes image_size when the model does not resize) — more than 2x off either way."""
    h, w = image_shape[:2]
    if config.min_size is None:
        side, trained = min(h, w), config.image_size
        what = f"{config.image_size} x {config.image_size} images, not resized"
    else:
        from .transform import resized_size

        side = min(resized_size(h, w, config.min_size[-1], config.max_size))
        trained = min(config.min_size)
        what = f"images resized to a shorter side of {list(config.min_size)}"
    if side > 2 * trained or 2 * side < trained:
        return (f"warning: a {w}x{h} image is far from what this model was trained on ({what}); "
                f"its objects may be out of the anchors' range and its detections unreliable")
    return None


def config_arg(path, arg="--config"):
    """Read a Config JSON file a command line names."""
    from .config import Config

    input_file(path, arg)
    try:
        with open(path) as f:
            return Config.from_json(f.read())
    except (ValueError, TypeError, AttributeError) as e:
        raise UsageError(f"{arg}: {path!r} is not a valid Config JSON: {e}") from None


def overrides_arg(cfg, items, arg="--set"):
    """`cfg` with --set key=value items applied (Config.with_overrides), errors naming `arg`."""
    try:
        return cfg.with_overrides(items)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{arg}: {e}") from None


def inference_options_arg(items, arg="--set"):
    """--set key=value items of inference options as a dict (values parsed as JSON)."""
    from .config import Config

    try:
        return Config.parse_overrides(items)
    except ValueError as e:
        raise UsageError(f"{arg}: {e}") from None

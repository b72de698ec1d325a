"""A COCO model and a real photo, for the walkthroughs' "on a real photo" sections.

Walkthroughs 02, 04, 06, 07 and 09 end with their stage run on matplotlib's sample photo (Grace
Hopper, 512 x 600) by a COCO model: a checkpoint of `Config.torchvision_r50_fpn()`, e.g.
torchvision's COCO weights converted by `python -m npmaskrcnn import-torchvision`
(docs/torchvision.md). `--model coco.npz` on a walkthrough's command line names it (`viz`
keeps it in the environment variable NPMASKRCNN_COCO_MODEL, so Jupyter kernels and child
processes see it too; NPMASKRCNN_MODEL is the shapes model's). Without one the sections print
HINT and the walkthrough ends with the shapes.

Naming:
    path    the COCO model's checkpoint (.npz), or None when none is named
    fast    fast mode: the photo's shorter side goes in at FAST_PHOTO_SIZE[0] pixels instead of
            800 (about 1 s per forward pass of ResNet-50 on two cores instead of ~7 s)
"""

import os

COCO_MODEL_ENV = "NPMASKRCNN_COCO_MODEL"
HINT = ("to see this stage on a real photo: python -m npmaskrcnn import-torchvision "
        "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out coco.npz (docs/torchvision.md), "
        "then add --model coco.npz")
FAST_PHOTO_SIZE = (320, 533)                 # (min_size, max_size) of the transform in fast mode
EXPECTED = ("expected a checkpoint of Config.torchvision_r50_fpn(), e.g. torchvision's COCO weights "
            "converted by `python -m npmaskrcnn import-torchvision` (docs/torchvision.md)")


def coco_model_path(path):
    """`path` checked to be a COCO model, reading only its config (not its 170 MB of weights).

    Inputs:
    - path: str or None
    Returns:
    - path (None stays None)
    Raises FileNotFoundError or ValueError naming `--model` for a missing file, a file that is no
    npmaskrcnn checkpoint, or a model of another architecture than the torchvision preset (a
    shapes model, say).
    """
    from .checkpoint import load_checkpoint
    from .torchvision_weights import check_exportable

    if not path:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model: no file at {path!r}; {EXPECTED}")
    try:
        cfg = load_checkpoint(path, arrays=False)["config"]
    except ValueError as e:
        raise ValueError(f"--model {path!r}: not an npmaskrcnn checkpoint ({e}); {EXPECTED}") from None
    try:
        check_exportable(cfg)
    except ValueError as e:
        msg = str(e)                                     # "... Config.block is 'basic', it needs ..."
        because = msg[msg.index("Config."):] if "Config." in msg else msg
        raise ValueError(f"--model {path!r}: not a COCO model ({because}); {EXPECTED}") from None
    return path


def sample_photo():
    """matplotlib's sample photo of Grace Hopper as (600, 512, 3) uint8 RGB."""
    import matplotlib.cbook

    from .imageio import read_image

    return read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_photo_model(path, fast=False):
    """The COCO model at `path` (eval mode) and the photo, or None when `path` is None.

    Inputs:
    - path: str or None (checked by `coco_model_path`)
    - fast: resize the photo's shorter side to FAST_PHOTO_SIZE[0] instead of 800 (the model's
      own config changes; the checkpoint does not)
    Returns:
    - (model, photo) or None
    """
    from .checkpoint import load_model

    if coco_model_path(path) is None:
        return None
    model = load_model(path).eval()
    if fast:
        model.update_config(("min_size", "max_size"), min_size=FAST_PHOTO_SIZE[:1],
                            max_size=FAST_PHOTO_SIZE[1])
    return model, sample_photo()

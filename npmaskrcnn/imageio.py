"""Image files as they come -> (H, W, 3) uint8 RGB, each conversion stated.

The model takes 8-bit RGB. Files come grey, 16-bit, with alpha, with a palette, in CMYK, or
stored sideways with an EXIF orientation tag. Pillow's `convert("RGB")` alone gets two of these
wrong: a 16-bit grey PNG ("I;16", values 0..65535) is clipped to 255, so it becomes all white, and
the EXIF tag is ignored, so a phone photo arrives rotated. `read_image` converts once, at the
boundary, and returns the list of what it did, so a CLI can say it.

What each input becomes (in this order):
    EXIF orientation 2..8   the image is transposed as the tag says (`PIL.ImageOps.exif_transpose`);
                            the returned size is the displayed one, as torchvision's `decode_image`
                            with `apply_exif_orientation=True` and every photo viewer show it
    several frames (GIF, TIFF)  the first frame
    "1" (bilevel)           0 -> 0, 1 -> 255, grey replicated to R = G = B
    "L", "LA"               grey replicated; alpha dropped
    "I;16*", "I" (16-bit)   round(x * 255 / 65535), not clipped: 65535 -> 255, 32768 -> 128
    "F" (float)             values in [0, 1]: round(x * 255); other ranges are refused
    "P", "PA"               the palette looked up (Pillow), then alpha dropped if any
    "RGBA", "RGBa", "RGBX"  alpha dropped (the colour channels kept as stored, not composited
                            on a background): what torchvision's `read_image(..., ImageReadMode.RGB)`
                            and Pillow's `convert("RGB")` do, so a model trained on such data sees
                            the same pixels
    "CMYK"                  Pillow's conversion, R = round((255 - C) * (255 - K) / 255), ...
    "YCbCr", "LAB", "HSV"   Pillow's conversion to RGB
    48-bit RGB PNG          Pillow decodes it as "RGB" keeping the high byte of each sample,
                            floor(x / 256), which is at most 1 below round(x * 255 / 65535)

Shape shorthand:
    H, W   image height and width (after the EXIF transpose)

Naming:
    conversions   tuple of short sentences, one per conversion applied; empty for an 8-bit RGB file
"""

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION_TAG = 0x0112
EXIF_ORIENTATIONS = {
    2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
    5: "transposed (mirrored along the main diagonal)", 6: "rotated 90 degrees clockwise",
    7: "transversed (mirrored along the anti-diagonal)", 8: "rotated 90 degrees counter-clockwise",
}
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _scale_16_to_8(values):
    """Inputs: integer array in 0..65535. Returns: uint8 array round(x * 255 / 65535).

    Integer arithmetic, exact: (x * 255 + 32767) // 65535 rounds half up (no x * 255 / 65535 is
    exactly .5, since 65535 is odd).
    """
    return ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def _grey_to_rgb(grey):
    """Inputs: (H, W) uint8. Returns: (H, W, 3) uint8 with R = G = B = grey."""
    return np.repeat(grey[:, :, None], 3, axis=2)


def to_rgb_uint8(image):
    """A Pillow image of any mode -> 8-bit RGB, and what was converted.

    The EXIF orientation is applied first; then the mode is converted as the module docstring
    lists.

    Inputs:
    - image: PIL.Image.Image (opened; it is read here)
    Returns:
    - rgb: (H, W, 3) uint8
    - conversions: tuple of str, one per conversion (empty for an upright 8-bit RGB image)
    Raises ValueError for a mode or value range that has no defined 8-bit meaning.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        notes.append(f"{image.n_frames} frames: the first one used")
    tile = getattr(image, "tile", None)                        # before decoding: the raw mode
    args = tile[0].args if tile else None
    raw_mode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    if orientation in EXIF_ORIENTATIONS:
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied: {EXIF_ORIENTATIONS[orientation]}")
    mode = image.mode
    if mode == "RGB":
        if raw_mode in ("RGB;16B", "RGB;16L", "RGB;16N"):
            notes.append("48-bit RGB: Pillow kept the high byte of each sample, floor(x / 256)")
        return np.asarray(image, dtype=np.uint8).copy(), tuple(notes)
    if mode == "1":
        rgb = _grey_to_rgb(np.asarray(image, dtype=bool).astype(np.uint8) * 255)
        notes.append("bilevel (1-bit) -> RGB (0 / 255, grey replicated)")
    elif mode in ("L", "LA"):
        rgb = _grey_to_rgb(np.asarray(image.getchannel(0), dtype=np.uint8))
        notes.append("grey -> RGB (replicated)" if mode == "L"
                     else "grey + alpha -> RGB (grey replicated, alpha dropped)")
    elif mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"image: mode {mode!r} with values in [{values.min()}, {values.max()}]; "
                             f"expected 16-bit values 0..65535")
        rgb = _grey_to_rgb(_scale_16_to_8(values))
        notes.append("16-bit grey -> 8-bit RGB: round(x * 255 / 65535), grey replicated")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError(f"image: mode 'F' (32-bit float) with values in "
                             f"[{np.nanmin(values)}, {np.nanmax(values)}]; expected values in [0, 1]")
        rgb = _grey_to_rgb(np.round(values * 255).astype(np.uint8))
        notes.append("float grey in [0, 1] -> 8-bit RGB: round(x * 255), grey replicated")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        converted = image.convert("RGBA" if has_alpha else "RGB")
        rgb = np.asarray(converted, dtype=np.uint8)[:, :, :3].copy()
        notes.append("palette -> RGB" + (" (transparency dropped)" if has_alpha else ""))
    elif mode in ("RGBA", "RGBa", "RGBX"):
        rgb = np.asarray(image, dtype=np.uint8)[:, :, :3].copy()
        notes.append("RGBX -> RGB (padding byte dropped)" if mode == "RGBX"
                     else f"{mode} -> RGB (alpha dropped, colours kept as stored)")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        try:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
        except ValueError as e:
            raise ValueError(f"image: cannot convert mode {mode!r} to RGB: {e}") from None
        notes.append(f"{mode} -> RGB (Pillow's conversion)")
    else:
        raise ValueError(f"image: mode {mode!r} has no defined conversion to 8-bit RGB; expected "
                         f"one of 1, L, LA, I, I;16, F, P, PA, RGB, RGBA, RGBX, CMYK, YCbCr, LAB, HSV")
    return rgb, tuple(notes)


def read_image(path, return_conversions=False):
    """Read an image file (any format Pillow reads) as 8-bit RGB, converted as the module says.

    Inputs:
    - path: str or os.PathLike
    - return_conversions: also return what was converted (as numpy's `return_counts`)
    Returns:
    - image: (H, W, 3) uint8
    - conversions: tuple of str (only with return_conversions=True)
    Raises FileNotFoundError if there is no such file, ValueError naming the file if it cannot be
    decoded (not an image, truncated, corrupt, too large for Pillow, or an unsupported mode).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            image, conversions = to_rgb_uint8(im)                   # decodes here
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read as an image: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:                  # truncated, corrupt, mode
        raise ValueError(f"{path}: cannot read as an image: {str(e).removeprefix('image: ')}") from None
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{path}: the image is empty ({image.shape[1]}x{image.shape[0]} pixels)")
    return (image, conversions) if return_conversions else image

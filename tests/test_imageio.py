"""Tests of image reading: every conversion with a hand-checked pixel, errors naming the file."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from npmaskrcnn.imageio import EXIF_ORIENTATION_TAG, read_image, to_rgb_uint8


def read(path):
    image, notes = read_image(str(path), return_conversions=True)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image, notes


def test_rgb_is_read_as_is(tmp_path):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image, notes = read(tmp_path / "a.png")
    np.testing.assert_array_equal(image, pixels)
    assert notes == ()
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)    # PathLike, no notes


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768, 0, 257, 128]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
        assert (np.asarray(im.convert("RGB"))[0, :2] == 255).all()            # what convert() does
    image, notes = read(tmp_path / "g16.png")
    # round(x * 255 / 65535): 255, 127.5019 -> 128, 0, 1, 0.498 -> 0
    np.testing.assert_array_equal(image[0, :, 0], [255, 128, 0, 1, 0])
    assert (image == image[:, :, :1]).all()
    assert notes == ("16-bit grey -> 8-bit RGB: round(x * 255 / 65535), grey replicated",)


def test_32_bit_int_grey_in_16_bit_range_and_out_of_it():
    image, notes = to_rgb_uint8(Image.fromarray(np.array([[1000, 65535]], np.int32)))
    np.testing.assert_array_equal(image[0, :, 1], [4, 255])                  # 3.89 -> 4
    assert "16-bit grey" in notes[0]
    with pytest.raises(ValueError, match=r"mode 'I' with values in \[5, 70000\]"):
        to_rgb_uint8(Image.fromarray(np.array([[70000, 5]], np.int32)))


def test_float_grey(tmp_path):
    Image.fromarray(np.array([[0.5, 0.25, 1.0]], np.float32)).save(tmp_path / "f.tif")
    image, notes = read(tmp_path / "f.tif")
    np.testing.assert_array_equal(image[0, :, 2], [128, 64, 255])            # 127.5, 63.75, 255
    assert "float grey" in notes[0]
    Image.fromarray(np.array([[2.0]], np.float32)).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"big\.tif: cannot read as an image: mode 'F'.*\[0, 1\]"):
        read_image(tmp_path / "big.tif")


def test_grey_bilevel_and_grey_alpha(tmp_path):
    Image.new("L", (2, 1), 77).save(tmp_path / "l.png")
    image, notes = read(tmp_path / "l.png")
    assert (image == 77).all() and notes == ("grey -> RGB (replicated)",)
    Image.new("LA", (2, 1), (90, 10)).save(tmp_path / "la.png")
    image, notes = read(tmp_path / "la.png")
    assert (image == 90).all() and "alpha dropped" in notes[0]
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    bits.save(tmp_path / "b.png")
    image, notes = read(tmp_path / "b.png")
    np.testing.assert_array_equal(image[0], [[0, 0, 0], [255, 255, 255]])
    assert "bilevel" in notes[0]


def test_rgba_alpha_dropped_colours_kept(tmp_path):
    Image.new("RGBA", (1, 1), (10, 20, 30, 40)).save(tmp_path / "a.png")
    image, notes = read(tmp_path / "a.png")
    np.testing.assert_array_equal(image[0, 0], [10, 20, 30])                 # not composited
    assert notes == ("RGBA -> RGB (alpha dropped, colours kept as stored)",)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50])
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png")
    image, notes = read(tmp_path / "p.png")
    np.testing.assert_array_equal(image[0], [[10, 20, 30], [200, 100, 50]])
    assert notes == ("palette -> RGB",)
    p.save(tmp_path / "pt.png", transparency=0)
    image, notes = read(tmp_path / "pt.png")
    np.testing.assert_array_equal(image[0], [[10, 20, 30], [200, 100, 50]])
    assert notes == ("palette -> RGB (transparency dropped)",)


def test_cmyk(tmp_path):
    Image.new("CMYK", (1, 1), (100, 50, 0, 60)).save(tmp_path / "c.tif")
    image, notes = read(tmp_path / "c.tif")
    # (255 - C) * (255 - K) / 255: 155 * 195 / 255 = 118.5 -> 119, 205 * 195 / 255 = 156.8 -> 157, 195
    np.testing.assert_array_equal(image[0, 0], [119, 157, 195])
    assert notes == ("CMYK -> RGB (Pillow's conversion)",)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exif_orientation_6_rotates_clockwise(tmp_path, fmt):
    # a 2 x 3 (H x W) image stored sideways; orientation 6: display = stored rotated 90 degrees
    # clockwise, so the displayed image is 3 x 2 and its top-left pixel is the stored bottom-left
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[1, 0] = (255, 0, 0)                                                 # bottom-left red
    if fmt == "jpeg":                                                          # lossy: big blocks
        pixels = np.kron(pixels, np.ones((16, 16, 1), np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    path = tmp_path / f"r.{fmt}"
    Image.fromarray(pixels).save(path, exif=exif, **({"quality": 95} if fmt == "jpeg" else {}))
    image, notes = read(path)
    k = 16 if fmt == "jpeg" else 1
    assert image.shape == (3 * k, 2 * k, 3)
    top_left = image[k // 2, k // 2].astype(int)
    assert abs(top_left - (255, 0, 0)).max() <= 8                              # JPEG: within 8
    assert abs(image[-1, -1].astype(int)).max() <= 8                           # the rest black
    assert notes == ("EXIF orientation 6 applied: rotated 90 degrees clockwise",)


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (2, 2), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    image, notes = read(tmp_path / "a.gif")
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    assert notes[0] == "2 frames: the first one used" and notes[1].startswith("palette -> RGB")


def _png_48_bit(path, pixels):
    """Write an (H, W, 3) uint16 array as a 16-bit-per-sample RGB PNG (Pillow cannot)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    h, w = pixels.shape[:2]
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_48_bit_rgb_keeps_the_high_byte_and_says_so(tmp_path):
    _png_48_bit(tmp_path / "rgb16.png", np.array([[[0x80FF, 65535, 255]]], np.uint16))
    image, notes = read(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(image[0, 0], [0x80, 255, 0])                 # floor(x / 256)
    assert notes == ("48-bit RGB: Pillow kept the high byte of each sample, floor(x / 256)",)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nope\.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"text\.png: cannot read as an image"):
        read_image(tmp_path / "text.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: cannot read as an image"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(TypeError, match="path: expected a file path"):
        read_image(3)
    with pytest.raises(TypeError, match="image: expected a PIL.Image.Image"):
        to_rgb_uint8(np.zeros((2, 2, 3), np.uint8))


# ---- COCO folders read through read_image ------------------------------------------------------
def coco_folder(folder, files):
    """A COCO JSON over 4 x 6 images `files` (name -> PIL image or bytes), one box each."""
    import json
    images, annotations = [], []
    for k, (name, content) in enumerate(files.items(), start=1):
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            content.save(folder / name)
        images.append({"id": k, "file_name": name, "height": 4, "width": 6})
        annotations.append({"id": k, "image_id": k, "category_id": 1, "iscrowd": 0, "area": 4,
                            "bbox": [1, 1, 2, 2], "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]})
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return str(path)


def test_coco_reads_16_bit_and_rgba_images(tmp_path):
    from npmaskrcnn.coco import load_coco
    path = coco_folder(tmp_path, {
        "g16.png": Image.fromarray(np.full((4, 6), 32768, np.uint16)),
        "rgba.png": Image.new("RGBA", (6, 4), (10, 20, 30, 0))})
    ds = load_coco(path)
    image, notes = ds.load_image(0, return_conversions=True)
    assert (image == 128).all() and "16-bit grey" in notes[0]                # was 255 with convert
    image, target = ds[1]
    assert (image == (10, 20, 30)).all() and target["boxes"].shape == (1, 4)


def test_coco_bad_image_raises_naming_the_file_or_is_skipped(tmp_path):
    from npmaskrcnn.coco import dataset_to_coco, load_coco
    path = coco_folder(tmp_path, {"good.png": Image.new("RGB", (6, 4), (1, 2, 3)),
                                  "corrupt.png": b"\x89PNG\r\n\x1a\n garbage",
                                  "small.png": Image.new("RGB", (3, 2))})
    ds = load_coco(path)
    assert len(ds) == 3 and ds.skipped == []
    with pytest.raises(ValueError, match=r"corrupt\.png: cannot read as an image"):
        ds[1]
    with pytest.raises(ValueError, match=r"small\.png is 3x2 \(width x height\) but the JSON says 6x4"):
        ds[2]
    with pytest.warns(UserWarning, match=r"(?s)skipped 2 of 3 images.*corrupt\.png.*small\.png"):
        ds = load_coco(path, on_bad_image="skip")
    assert len(ds) == 1 and ds.image_ids == [1]
    assert [name for name, _ in ds.skipped] == ["corrupt.png", "small.png"]
    assert (ds[0][0] == (1, 2, 3)).all()
    gt = dataset_to_coco(ds)
    assert [im["id"] for im in gt["images"]] == [1] and [a["image_id"] for a in gt["annotations"]] == [1]
    with pytest.raises(ValueError, match="on_bad_image: expected 'raise' or 'skip'"):
        load_coco(path, on_bad_image="ignore")

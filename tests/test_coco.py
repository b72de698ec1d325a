"""Tests of COCO-format writing and reading: round trip, polygons, RLE kinds, clear errors."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from npmaskrcnn.coco import dataset_to_coco, decode_segmentation, load_coco, save_coco
from npmaskrcnn.shapes import ShapesDataset


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    ds = ShapesDataset(12, seed=5)
    out = tmp_path_factory.mktemp("coco")
    return ds, save_coco(ds, str(out))


def test_save_writes_images_and_json(saved):
    ds, path = saved
    folder = os.path.dirname(path)
    assert os.path.basename(path) == "instances.json"
    assert sorted(os.listdir(os.path.join(folder, "images"))) == [f"{i:06d}.png" for i in range(1, 13)]
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp_")]
    with open(path) as f:
        coco = json.load(f)
    assert coco["categories"] == [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"},
                                  {"id": 3, "name": "triangle"}]
    assert [img["id"] for img in coco["images"]] == ds.image_ids
    assert coco["images"][0] == {"id": 1, "file_name": "000001.png", "height": 128, "width": 128}
    ann = coco["annotations"][0]
    assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
    mask = decode_segmentation(ann["segmentation"], 128, 128)
    assert ann["area"] == mask.sum()
    np.testing.assert_array_equal(mask, ds[0][1]["masks"][0])
    x1, y1, x2, y2 = ds[0][1]["boxes"][0]
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    # pycocotools itself reads it
    COCO(path)


def test_round_trip_is_exact(saved):
    ds, path = saved
    loaded = load_coco(path)
    assert len(loaded) == len(ds)
    assert loaded.class_names == ds.class_names
    assert loaded.image_ids == ds.image_ids
    assert loaded.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert set(loaded.coco_dict) >= {"images", "annotations", "categories"}
    for i in range(len(ds)):
        (image_a, target_a), (image_b, target_b) = ds[i], loaded[i]
        np.testing.assert_array_equal(image_a, image_b)
        for key in ("boxes", "labels", "masks"):
            assert target_a[key].dtype == target_b[key].dtype
            np.testing.assert_array_equal(target_a[key], target_b[key])


def test_dataset_to_coco_of_loaded_equals_original(saved):
    ds, path = saved
    a, b = dataset_to_coco(ds), dataset_to_coco(load_coco(path))
    assert a["annotations"] == b["annotations"]
    assert a["categories"] == b["categories"]
    assert a["images"] == b["images"]


def write_json(folder, coco):
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path


def hand_made(folder, segmentation, mode="RGB"):
    """A 10x12 image with one annotation (category 7) plus a crowd one, as a COCO JSON."""
    Image.new(mode, (12, 10), color=128 if mode == "L" else (10, 20, 30, 40)[:len(mode)]).save(
        os.path.join(folder, "a.png"))
    coco = {
        "images": [{"id": 42, "file_name": "a.png", "height": 10, "width": 12}],
        "categories": [{"id": 9, "name": "nine"}, {"id": 7, "name": "seven"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "segmentation": segmentation,
             "bbox": [2, 1, 4, 3], "area": 12, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 9, "iscrowd": 1, "bbox": [0, 0, 1, 1],
             "area": 1, "segmentation": {"size": [10, 12], "counts": [0, 1, 119]}},
        ],
    }
    return write_json(folder, coco)


def expected_square():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:4, 2:6] = True  # rows 1..3, cols 2..5: the polygon (2,1)-(6,4) at pixel centres
    return mask


def test_polygon_segmentation(tmp_path):
    path = hand_made(str(tmp_path), [[2, 1, 6, 1, 6, 4, 2, 4]])
    ds = load_coco(path)
    assert ds.image_dir == str(tmp_path)  # no images/ folder: the JSON's folder
    assert ds.class_names == ("seven", "nine")  # sorted by category id
    assert ds.label_to_category_id == {1: 7, 2: 9}
    assert ds.image_ids == [42]
    image, target = ds[0]
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(target["masks"], [expected_square()])
    np.testing.assert_array_equal(target["labels"], [1])  # crowd annotation skipped
    np.testing.assert_array_equal(target["boxes"], [[2, 1, 6, 4]])
    gt = dataset_to_coco(ds)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]  # crowd kept for COCOeval
    assert gt["images"][0]["id"] == 42


@pytest.mark.parametrize("kind", ["uncompressed", "compressed"])
def test_rle_segmentations(tmp_path, kind):
    rle = mask_utils.encode(np.asfortranarray(expected_square().astype(np.uint8)))
    if kind == "compressed":
        segmentation = {"size": [10, 12], "counts": rle["counts"].decode()}
    else:
        flat = expected_square().flatten(order="F")
        runs, value, count = [], False, 0
        for v in flat:
            if v != value:
                runs.append(count)
                value, count = v, 0
            count += 1
        runs.append(count)
        segmentation = {"size": [10, 12], "counts": runs}
    _, target = load_coco(hand_made(str(tmp_path), segmentation))[0]
    np.testing.assert_array_equal(target["masks"], [expected_square()])


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_become_rgb(tmp_path, mode):
    image, _ = load_coco(hand_made(str(tmp_path), [[2, 1, 6, 1, 6, 4, 2, 4]], mode=mode))[0]
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    expected = (128, 128, 128) if mode == "L" else (10, 20, 30)
    assert (image == expected).all()


def test_empty_mask_falls_back_to_bbox(tmp_path):
    _, target = load_coco(hand_made(str(tmp_path), []))[0]
    assert not target["masks"].any()
    np.testing.assert_array_equal(target["boxes"], [[2, 1, 6, 4]])


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco(path)


def test_missing_image_file(tmp_path):
    path = hand_made(str(tmp_path), [[2, 1, 6, 1, 6, 4, 2, 4]])
    os.remove(tmp_path / "a.png")
    ds = load_coco(path)
    with pytest.raises(FileNotFoundError, match="a.png"):
        ds[0]


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_field(tmp_path, key):
    coco = {"images": [], "annotations": [], "categories": []}
    del coco[key]
    with pytest.raises(ValueError, match=f"'{key}'"):
        load_coco(write_json(str(tmp_path), coco))


@pytest.mark.parametrize("field", ["image_id", "category_id", "segmentation"])
def test_annotation_missing_field(tmp_path, field):
    path = hand_made(str(tmp_path), [[2, 1, 6, 1, 6, 4, 2, 4]])
    with open(path) as f:
        coco = json.load(f)
    del coco["annotations"][0][field]
    with pytest.raises(ValueError, match=f"annotation id 1: missing field '{field}'"):
        load_coco(write_json(str(tmp_path), coco))


@pytest.mark.parametrize("segmentation, expected", [
    ([[2, 1, 6, 1, 6]], "even number"),
    ([[2, 1, "x", 1, 6, 4]], "even number"),
    ([2, 1, 6, 1, 6, 4], "list of polygons"),
    ("abc", "list of polygons or an RLE"),
    ({"counts": "abc"}, "'counts' and 'size'"),
    ({"size": [5, 5], "counts": "abc"}, "does not match"),
    ({"size": [10, 12], "counts": [3, 4]}, "summing to"),
    ({"size": [10, 12], "counts": 3.5}, "list of ints or a string"),
])
def test_malformed_segmentation(tmp_path, segmentation, expected):
    path = hand_made(str(tmp_path), segmentation)
    with pytest.raises(ValueError, match=expected) as err:
        load_coco(path)
    assert "annotation id 1" in str(err.value) and "'segmentation'" in str(err.value)


def test_unknown_ids(tmp_path):
    path = hand_made(str(tmp_path), [[2, 1, 6, 1, 6, 4, 2, 4]])
    with open(path) as f:
        coco = json.load(f)
    coco["annotations"][0]["category_id"] = 3
    with pytest.raises(ValueError, match="annotation id 1: field 'category_id'"):
        load_coco(write_json(str(tmp_path), coco))
    coco["annotations"][0]["category_id"] = 7
    coco["annotations"][0]["image_id"] = 5
    with pytest.raises(ValueError, match="annotation id 1: field 'image_id'"):
        load_coco(write_json(str(tmp_path), coco))


def test_resave_coco_dataset_keeps_ids(tmp_path):
    path = hand_made(str(tmp_path), [[2, 1, 6, 1, 6, 4, 2, 4]])
    out = save_coco(load_coco(path), str(tmp_path / "out"))
    again = load_coco(out)
    assert again.image_ids == [42] and again.label_to_category_id == {1: 7, 2: 9}
    assert os.path.isfile(tmp_path / "out" / "images" / "000042.png")
    np.testing.assert_array_equal(again[0][1]["masks"], [expected_square()])

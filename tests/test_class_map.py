"""A model's labels against a dataset's: matched by name (torchvision's 90 COCO ids against a
COCO JSON's 80 categories), by position only when the names cannot say, refused otherwise."""

import json

import numpy as np
import pytest

from npmaskrcnn.__main__ import main
from npmaskrcnn.checks import shipped_model_path
from npmaskrcnn.checkpoint import load_model
from npmaskrcnn.class_map import label_mapping, relabel
from npmaskrcnn.coco import save_coco
from npmaskrcnn.config import COCO_CATEGORY_NAMES
from npmaskrcnn.evaluate import evaluate_model
from npmaskrcnn.shapes import ShapesDataset

# COCO 2017's instances JSON: 80 categories under ids 1..90 (a few, as the file has them)
COCO_JSON_CATEGORIES = {1: "person", 3: "car", 10: "traffic light", 27: "backpack", 90: "toothbrush"}


def test_same_names_same_order_is_the_identity():
    assert label_mapping(["a", "b"], ("a", "b")) == ({1: 1, 2: 2}, "same")


def test_torchvision_labels_meet_a_coco_json_by_name():
    """The loader numbers a JSON's categories 1..K in id order; the imported model's label is the
    category id itself. backpack: id 27, the JSON's 4th category here (25th in the full file)."""
    dataset_names = [COCO_JSON_CATEGORIES[i] for i in sorted(COCO_JSON_CATEGORIES)]
    mapping, how = label_mapping(COCO_CATEGORY_NAMES, dataset_names)
    assert how == "by name"
    assert mapping == {1: 1, 3: 2, 10: 3, 27: 4, 90: 5}
    assert len(COCO_CATEGORY_NAMES) == 90 and COCO_CATEGORY_NAMES.count("N/A") == 10


def test_permuted_names_are_matched_by_name_not_position():
    assert label_mapping(["circle", "square", "triangle"], ["triangle", "circle", "square"]) == \
        ({1: 2, 2: 3, 3: 1}, "by name")


def test_other_names_as_many_classes_fall_back_to_position():
    assert label_mapping(["circle", "square"], ["1", "2"]) == ({1: 1, 2: 2}, "by position")


def test_a_dataset_class_the_model_lacks_is_refused_by_name():
    with pytest.raises(ValueError, match=r"no model class named \['hexagon'\]"):
        label_mapping(["circle", "square", "triangle"], ["circle", "hexagon"])
    with pytest.raises(ValueError, match=r"two model classes named \['N/A'\]"):
        label_mapping(COCO_CATEGORY_NAMES, ["person", "N/A"])


def test_relabel_maps_labels_and_drops_unmatched_detections():
    pred = {"boxes": np.arange(12, dtype=np.float32).reshape(3, 4), "labels": np.array([3, 12, 1]),
            "scores": np.array([0.9, 0.8, 0.7], dtype=np.float32),
            "masks": np.stack([np.full((2, 2), i % 2 == 0) for i in range(3)]), "note": "kept"}
    (out,) = relabel([pred], {1: 1, 3: 2})
    assert out["labels"].tolist() == [2, 1]
    np.testing.assert_array_equal(out["boxes"], pred["boxes"][[0, 2]])
    np.testing.assert_array_equal(out["scores"], pred["scores"][[0, 2]])
    np.testing.assert_array_equal(out["masks"], pred["masks"][[0, 2]])
    assert out["note"] == "kept" and pred["labels"].tolist() == [3, 12, 1]   # input untouched
    (empty,) = relabel([{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64),
                         "scores": np.zeros(0)}], {1: 1})
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


class Renamed:
    """Shapes whose classes are given in another order, or only some of them (labels follow)."""

    def __init__(self, base, class_names):
        self.base, self.class_names = base, tuple(class_names)
        self.image_ids = base.image_ids

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, target = self.base[i]
        names = [self.base.class_names[k - 1] for k in target["labels"]]
        keep = np.array([n in self.class_names for n in names], dtype=bool)
        labels = np.array([self.class_names.index(n) + 1 for n, k in zip(names, keep) if k], np.int64)
        return image, {**{k: v[keep] for k, v in target.items() if k != "labels"}, "labels": labels}


@pytest.fixture(scope="module")
def shipped_and_data():
    model = load_model(shipped_model_path())
    base = ShapesDataset(12, seed=10_000, image_size=128)
    return model, base, evaluate_model(model, base)


def evaluate_cli(capsys, tmp_path, dataset):
    data = save_coco(dataset, tmp_path / "coco")
    code = main(["evaluate", "--model", shipped_model_path(), "--data", data, "--json",
                 str(tmp_path / "m.json"), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err, (json.loads((tmp_path / "m.json").read_text()) if code == 0 else None)


def test_evaluate_on_a_json_with_its_classes_in_another_order(capsys, tmp_path, shipped_and_data):
    model, base, expected = shipped_and_data
    code, out, _, got = evaluate_cli(capsys, tmp_path, Renamed(base, ["triangle", "circle", "square"]))
    assert code == 0 and "by name" in out and "circle -> circle" in out
    for kind in ("bbox", "segm"):
        assert got[kind]["AP"] == pytest.approx(expected[kind]["AP"], abs=1e-12)


def test_evaluate_on_a_json_with_some_of_the_classes(capsys, tmp_path, shipped_and_data):
    """Only squares and circles annotated: the model's triangle detections are dropped, and each
    class scores what it scores in the full evaluation (COCO AP is per class)."""
    model, base, expected = shipped_and_data
    code, out, _, got = evaluate_cli(capsys, tmp_path, Renamed(base, ["square", "circle"]))
    assert code == 0 and "1 other class has" in out
    for kind in ("bbox", "segm"):
        for name in ("square", "circle"):
            assert got[kind]["per_class"][name] == pytest.approx(expected[kind]["per_class"][name],
                                                                 abs=1e-12)


def test_evaluate_refuses_a_json_whose_classes_the_model_lacks(capsys, tmp_path, shipped_and_data):
    _, base, _ = shipped_and_data
    code, _, err, _ = evaluate_cli(capsys, tmp_path, Renamed(base, ["circle", "hexagon"]))
    assert code == 2 and "--data" in err and "hexagon" in err


class First:
    """The first n images of a dataset."""

    def __init__(self, base, n):
        self.base, self.n = base, n
        self.class_names, self.image_ids = base.class_names, base.image_ids[:n]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.base[i]


def test_evaluate_num_images_takes_the_first_images_of_the_json(capsys, tmp_path, shipped_and_data):
    model, base, _ = shipped_and_data
    data = save_coco(base, tmp_path / "coco")
    code = main(["evaluate", "--model", shipped_model_path(), "--data", data, "--num-images", "5",
                 "--json", str(tmp_path / "m.json"), "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == 0 and "(5 images)" in out
    got, expected = json.loads((tmp_path / "m.json").read_text()), evaluate_model(model, First(base, 5))
    for kind in ("bbox", "segm"):
        assert got[kind]["AP"] == pytest.approx(expected[kind]["AP"], abs=1e-12)

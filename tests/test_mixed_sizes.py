"""Images of different sizes and aspect ratios: one batch, each image's own coordinates, the CLI."""

import numpy as np
import pytest
from PIL import Image

from npmaskrcnn import Config, MaskRCNN
from npmaskrcnn.__main__ import main
from npmaskrcnn.beyond_paper import WithInferenceAdditions
from npmaskrcnn.checkpoint import load_model
from npmaskrcnn.coco import save_coco
from npmaskrcnn.shapes import ShapesDataset

SIZES = [(32, 48), (40, 24), (64, 64)]                 # (h, w): wide, tall, square


class CroppedShapes:
    """Shapes images cropped to (h, w) per index; boxes from the cropped masks (for --data)."""

    class_names = ("square", "circle", "triangle")

    def __init__(self, sizes, seed=0):
        self.sizes, self.seed = list(sizes), seed
        self.image_ids = list(range(1, len(self.sizes) + 1))

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        image, t = ShapesDataset(1, seed=self.seed + i, image_size=max(h, w), min_size=8,
                                 max_size=max(8, min(h, w) // 2))[0]
        masks = t["masks"][:, :h, :w]
        keep = [k for k, m in enumerate(masks) if m.sum() >= 4]
        masks, labels = masks[keep], t["labels"][keep]
        boxes = np.array([[np.flatnonzero(m.any(0))[0], np.flatnonzero(m.any(1))[0],
                           np.flatnonzero(m.any(0))[-1] + 1, np.flatnonzero(m.any(1))[-1] + 1]
                          for m in masks], np.float32).reshape(-1, 4)
        return np.ascontiguousarray(image[:h, :w]), {"boxes": boxes, "labels": labels, "masks": masks}


def images_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("cfg", [Config.tiny(), Config.tiny(min_size=(40,), max_size=56)],
                         ids=["no-resize", "resize"])
def test_each_image_gets_boxes_and_masks_in_its_own_coordinates(cfg):
    images = images_of(SIZES)
    for model in (MaskRCNN(cfg), WithInferenceAdditions(MaskRCNN(cfg))):
        if isinstance(model, WithInferenceAdditions):
            model.set_inference(test_flip=True, box_refine=True, mask_rescore=True)
        preds = model.predict(images)
        assert len(preds) == 3
        for (h, w), p in zip(SIZES, preds):
            assert len(p["boxes"]) > 0                     # untrained: scores ~ 1/(K+1) > 0.05
            assert p["masks"].shape == (len(p["boxes"]), h, w) and p["masks"].dtype == bool
            b = p["boxes"]
            assert b.min() >= 0 and np.all(b[:, 2] <= w + 1e-3) and np.all(b[:, 3] <= h + 1e-3)
            assert np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])


def test_an_image_in_a_mixed_batch_equals_it_alone_when_the_padding_is_the_same():
    # 40x24 pads to 64x32 alone; with a 64x32 neighbour the batch is 64x32 as well
    model = MaskRCNN(Config.tiny())
    a, b = images_of([(40, 24), (64, 32)], seed=3)
    alone, together = model.predict([a])[0], model.predict([a, b])[0]
    assert len(alone["boxes"]) == len(together["boxes"]) > 0
    np.testing.assert_allclose(together["boxes"], alone["boxes"], atol=1e-4)
    np.testing.assert_allclose(together["scores"], alone["scores"], atol=1e-5)
    np.testing.assert_array_equal(together["labels"], alone["labels"])


def test_a_larger_neighbour_changes_the_padding_and_so_the_features_a_little():
    # GroupNorm's statistics include the zero padding, so a 40x24 image padded to 64x64 (by a
    # 64x64 neighbour) sees every feature shifted slightly, not only near the padding
    model = MaskRCNN(Config.tiny())
    a, b = images_of([(40, 24), (64, 64)], seed=3)
    alone = model.backbone(model.preprocess([a])[0])[0][0]               # p2 (F, 16, 8)
    together = model.backbone(model.preprocess([a, b])[0])[0][0][:, :16, :8]
    diff = np.abs(alone - together)
    assert 0 < diff.max() < 0.5 * np.abs(alone).max()
    # so predict runs each padded size as its own batch: the neighbour changes nothing
    for m in (model, WithInferenceAdditions(model)):
        one, two = m.predict([a])[0], m.predict([a, b])
        assert two[1]["masks"].shape[1:] == (64, 64)
        for k in one:
            np.testing.assert_array_equal(two[0][k], one[k])


def test_resized_detections_map_back_by_hand():
    # a 32x48 image with min_size 64 is seen at 64x96: a detection at (10, 20, 30, 40) there is
    # (5, 10, 15, 20) in the original, and its mask (all ones) covers exactly rows 10..19, cols 5..14
    model = MaskRCNN(Config.tiny(min_size=(64,)))
    heads = model.roi_heads
    det_rois = np.array([[0, 10, 20, 30, 40]], np.float32)
    probs = np.ones((1, 8, 8), np.float32)
    det = heads.assemble_image(det_rois, np.array([1]), np.array([0.9]), probs, (64, 96), 0,
                               (32, 48))
    np.testing.assert_array_equal(det["boxes"], [[5, 10, 15, 20]])
    expected = np.zeros((32, 48), bool)
    expected[10:20, 5:15] = True
    np.testing.assert_array_equal(det["masks"][0], expected)


def test_predict_maps_the_resized_detections_back_to_the_original():
    model = MaskRCNN(Config.tiny(min_size=(64,)))
    image = images_of([(32, 48)])[0]
    batch, _ = model.transform_images([image])
    assert batch.image_sizes == [(64, 96)] and batch.tensors.shape == (1, 3, 64, 96)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(features, batch.image_sizes)
    seen = model.roi_heads.predict(features[:4], proposals, batch.image_sizes)[0]   # at 64x96
    pred = model.predict(image)[0]
    np.testing.assert_array_equal(pred["boxes"], seen["boxes"] * np.float32(0.5))
    np.testing.assert_array_equal(pred["scores"], seen["scores"])
    assert pred["masks"].shape == (len(pred["boxes"]), 32, 48)


def test_training_resizes_targets_and_draws_one_scale_per_image():
    ds = CroppedShapes(SIZES)
    images, targets = zip(*[ds[i] for i in range(3)])
    model = MaskRCNN(Config.tiny(min_size=(24, 40), max_size=64))
    model.train()
    sizes = []
    for seed in range(4):
        model.rng = np.random.default_rng(seed)
        batch, resized = model.transform_images(list(images), list(targets), training=True,
                                                rng=np.random.default_rng(seed))
        sizes.append(tuple(batch.image_sizes))
        for (h, w), t in zip(batch.image_sizes, resized):
            assert t["masks"].shape[1:] == (h, w)
            assert t["boxes"].max() <= max(h, w) + 1
        model.rng = np.random.default_rng(seed)
        losses = model.forward(list(images), list(targets))
        assert all(np.isfinite(v) for v in losses.values())
        model.backward()
    assert len(set(sizes)) > 1                          # the scale is drawn per image and step


def test_a_single_min_size_draws_no_random_numbers_in_training():
    ds = CroppedShapes(SIZES)
    images, targets = zip(*[ds[i] for i in range(3)])
    model = MaskRCNN(Config.tiny(min_size=(40,)))
    model.train()
    rng = np.random.default_rng(5)
    model.transform_images(list(images), list(targets), training=True, rng=rng)
    assert rng.random() == np.random.default_rng(5).random()


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_trains_evaluates_and_predicts_on_coco_data_of_three_sizes(capsys, tmp_path):
    data = save_coco(CroppedShapes(SIZES), tmp_path / "coco")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(Config.tiny(min_size=(32, 48), max_size=64).to_json())
    code, out, err = cli(capsys, "train", "--config", cfg, "--steps", 2, "--batch-size", 3,
                         "--data", data, "--val-data", data, "--eval-every", 2,
                         "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    model_path = tmp_path / "run" / "model.npz"
    model = load_model(model_path)
    assert model.config.min_size == (32, 48) and model.config.max_size == 64
    assert (tmp_path / "run" / "eval.jsonl").exists()
    code, out, err = cli(capsys, "evaluate", "--model", model_path, "--data", data, "--no-progress",
                         "--batch-size", 3)
    assert code == 0, err
    assert "segm AP" in out and "triangle" in out
    images = sorted((tmp_path / "coco").rglob("*.png"))
    assert len(images) == 3
    code, out, err = cli(capsys, "predict", "--model", model_path, *images, "--out",
                         tmp_path / "pred", "--score-thresh", 0.0)
    assert code == 0, err
    assert (tmp_path / "pred" / "detections.json").exists()


def test_predict_states_the_conversion_of_a_16_bit_png(capsys, tmp_path):
    grey = np.full((40, 56), 65535 // 2, np.uint16)                 # 32767 -> 127 in 8 bits
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    model = MaskRCNN(Config.tiny())
    from npmaskrcnn.checkpoint import save_model
    save_model(model, tmp_path / "m.npz")
    code, out, err = cli(capsys, "predict", "--model", tmp_path / "m.npz", path, "--out",
                         tmp_path / "pred")
    assert code == 0, err
    line = [ln for ln in out.splitlines() if "converted" in ln]
    assert len(line) == 1 and "16" in line[0] and str(path) in line[0]


def test_predict_warns_once_when_an_input_is_far_from_the_training_size(capsys, tmp_path):
    model = MaskRCNN(Config.tiny())                                   # 32 px, no resize
    from npmaskrcnn.checkpoint import save_model
    save_model(model, tmp_path / "m.npz")
    paths = []
    for k, (h, w) in enumerate([(160, 200), (200, 160), (32, 32)]):
        paths.append(tmp_path / f"im{k}.png")
        Image.fromarray(images_of([(h, w)], seed=k)[0]).save(paths[-1])
    code, out, err = cli(capsys, "predict", "--model", tmp_path / "m.npz", *paths, "--out",
                         tmp_path / "pred")
    assert code == 0, err
    assert err.count("warning") == 1 and "200x160" in err and "2 of the 3" in err


def test_anchors_command_on_coco_data_and_on_shapes(capsys, tmp_path):
    data = save_coco(CroppedShapes(SIZES), tmp_path / "coco")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(Config.tiny().to_json())
    code, out, err = cli(capsys, "anchors", "--data", data, "--config", cfg, "--out",
                         tmp_path / "fit.png")
    assert code == 0, err
    assert "best anchor IoU" in out and (tmp_path / "fit.png").stat().st_size > 0
    code, out, err = cli(capsys, "anchors", "--config", cfg, "--num-images", 5)
    assert code == 0, err
    assert "objects in 5 images" in out


def test_predict_shrinks_a_large_image_for_a_model_that_does_not_resize(capsys, tmp_path,
                                                                        monkeypatch):
    import npmaskrcnn.commands as cli_module
    from npmaskrcnn.checkpoint import save_model

    monkeypatch.setattr(cli_module, "MAX_UNRESIZED_SIDE", 48)
    save_model(MaskRCNN(Config.tiny()), tmp_path / "m.npz")
    path = tmp_path / "big.png"
    Image.fromarray(images_of([(60, 96)])[0]).save(path)
    code, out, err = cli(capsys, "predict", "--model", tmp_path / "m.npz", path, "--out",
                         tmp_path / "pred", "--score-thresh", 0.0)
    assert code == 0, err
    assert "seen at 48x30, detections mapped back to 96x60" in out
    import json
    entry = json.loads((tmp_path / "pred" / "detections.json").read_text())["images"][0]
    assert (entry["height"], entry["width"]) == (60, 96) and entry["detections"]
    boxes = np.array([d["box"] for d in entry["detections"]])
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 96 + 1e-3 and boxes[:, 3].max() <= 60 + 1e-3


def test_a_config_without_the_transform_fields_loads_with_no_resize():
    d = Config.tiny().to_dict()
    for k in ("min_size", "max_size", "input_divisor"):
        del d[k]
    cfg = Config.from_dict(d)
    assert (cfg.min_size, cfg.max_size, cfg.input_divisor) == (None, None, 1.0)
    assert Config.tiny(min_size=800).min_size == (800,)
    with pytest.raises(ValueError, match="min_size"):
        Config.tiny(min_size=(0,))

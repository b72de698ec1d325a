"""The torchvision preset without torch: Config.torchvision_r50_fpn, torchvision's anchor convention
and mask paste by hand, and the state-dict mapping (torchvision_weights.py) with its errors. The
comparisons against torchvision itself are in test_torchvision_r50.py (they need torch)."""

import numpy as np
import pytest

from npmaskrcnn import torchvision_weights as tw
from npmaskrcnn.__main__ import main
from npmaskrcnn.anchors import AnchorGenerator
from npmaskrcnn.config import COCO_CATEGORY_NAMES, Config
from npmaskrcnn.mask_head import paste_masks, paste_masks_torchvision
from npmaskrcnn.model import MaskRCNN

TV_SIZES = (32, 64, 128, 256, 512)


@pytest.fixture(scope="module")
def r50():
    return MaskRCNN(Config.torchvision_r50_fpn())


def test_preset_is_torchvisions_model(r50):
    cfg = r50.config
    assert r50.class_names == COCO_CATEGORY_NAMES and len(COCO_CATEGORY_NAMES) == 90
    assert r50.class_names[0] == "person" and r50.class_names[11] == "N/A"   # label 12: an unused id
    assert (cfg.min_size, cfg.max_size, cfg.input_divisor) == ((800,), 1333, 255.0)
    # torchvision's 44,401,393 parameters + 53,120 x 2 BN statistics - the 257 numbers of the
    # mask predictor's background channel, which is never read
    assert r50.num_params() == 44_401_393 + 2 * 53_120 - 257
    assert tuple(r50.backbone.body.stem.children["1"].params) == tw_stats()
    assert r50.backbone.body.stem.children["1"].eps == 0.0
    assert r50.rpn.anchor_generator.convention == "torchvision"


def tw_stats():
    return ("weight", "bias", "running_mean", "running_var")


def test_torchvision_cell_anchors_are_rounded():
    gen = AnchorGenerator(TV_SIZES, (0.5, 1.0, 2.0), convention="torchvision")
    np.testing.assert_array_equal(gen.cell_anchors(0), [[-23, -11, 23, 11], [-16, -16, 16, 16],
                                                        [-11, -23, 11, 23]])
    np.testing.assert_array_equal(gen.cell_anchors(4), [[-362, -181, 362, 181], [-256, -256, 256, 256],
                                                        [-181, -362, 181, 362]])


def test_torchvision_anchors_sit_on_cell_corners_with_strides_from_the_padded_size():
    gen = AnchorGenerator(TV_SIZES, (0.5, 1.0, 2.0), convention="torchvision")
    shapes = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]           # 800 x 1088 padded
    anchors = gen.grid_anchors(shapes, (800, 1088))
    assert sum(len(a) for a in anchors) == 217_413
    p6 = anchors[4].reshape(13, 17, 3, 4)
    # P6 strides are 800 // 13 = 61 and 1088 // 17 = 64: the centres of its square anchors
    np.testing.assert_array_equal(p6[:3, 0, 1, 1] + 256, [0, 61, 122])
    np.testing.assert_array_equal(p6[0, :3, 1, 0] + 256, [0, 64, 128])
    np.testing.assert_array_equal(anchors[0][:3], [[-23, -11, 23, 11], [-16, -16, 16, 16],
                                                   [-11, -23, 11, 23]])      # cell (0, 0) at (0, 0)
    assert anchors[0].dtype == np.float32
    with pytest.raises(ValueError, match="image_shape"):
        gen.grid_anchors(shapes)


def test_torchvision_paste_hand_case():
    # a 2 x 2 mask of ones in the box (2, 2, 6, 6): padded to 4 x 4 (zeros around), the box grown
    # by 4 / 2 about its centre to (0, 0, 8, 8), resized to the inclusive 9 x 9, pasted at (0, 0)
    out = paste_masks_torchvision(np.ones((1, 2, 2), np.float32), np.array([[2, 2, 6, 6]], np.float32),
                                  (10, 12))
    src = np.maximum((np.arange(9) + 0.5) * 4 / 9 - 0.5, 0)                    # align_corners=False
    profile = np.interp(src, np.arange(4), [0, 1, 1, 0])
    expected = np.zeros((10, 12))
    expected[:9, :9] = np.outer(profile, profile)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(paste_masks(np.ones((1, 2, 2), np.float32), np.array([[2, 2, 6, 6]]),
                                              (10, 12), 0.5, "torchvision")[0], expected >= 0.5)


def test_torchvision_paste_truncates_corners_toward_zero_and_clips_to_the_image():
    # box (-2.6, -2.6, 1, 1): centre -0.8, half side 1.8 x 2 = 3.6, grown to (-4.4, 2.8), truncated
    # toward zero to (-4, 2) (floor would give -5): a 7 x 7 window of which columns and rows
    # 4..6 (image pixels 0..2) lie in the 4 x 4 image
    m = np.full((1, 2, 2), 0.8, np.float32)
    out = paste_masks_torchvision(m, np.array([[-2.6, -2.6, 1.0, 1.0]], np.float32), (4, 4))
    src = np.minimum(np.maximum((np.arange(7) + 0.5) * 4 / 7 - 0.5, 0), 3)
    profile = np.interp(src, np.arange(4), [0, 1, 1, 0])
    expected = np.zeros((4, 4))
    expected[:3, :3] = 0.8 * np.outer(profile[4:], profile[4:])
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    assert out[0, 0, 0] > 0.5 and out[0, 2, 2] == 0
    assert paste_masks_torchvision(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), (5, 6)).shape == (0, 5, 6)


def test_state_dict_round_trip_and_layout(r50):
    state = tw.to_torchvision(r50)
    assert len(state) == 307
    assert state["backbone.body.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["backbone.fpn.layer_blocks.3.0.bias"].shape == (256,)
    assert state["rpn.head.conv.0.0.weight"].shape == (256, 256, 3, 3)
    assert state["roi_heads.mask_head.3.0.bias"].shape == (256,)
    assert state["roi_heads.mask_predictor.conv5_mask.weight"].shape == (256, 256, 2, 2)
    logits = state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert logits.shape == (91, 256, 1, 1) and not logits[0].any()     # background channel: zeros
    before = {k: v.copy() for k, v in r50.named_params()}
    state = {k: v.copy() for k, v in state.items()}
    for _, v in r50.named_params():
        v.fill(7.0)
    tw.from_torchvision(state, r50)
    for k, v in r50.named_params():
        assert np.array_equal(v, before[k]), k


def test_legacy_key_spellings_and_batch_norm_counters(r50):
    state = tw.to_torchvision(r50)
    legacy = {}
    for k, v in state.items():
        k = k.replace("fpn.inner_blocks.0.0.", "fpn.inner_blocks.0.").replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        k = k.replace("roi_heads.mask_head.2.0.", "roi_heads.mask_head.mask_fcn3.")
        legacy[k] = v
    assert "roi_heads.mask_head.mask_fcn3.weight" in legacy and "rpn.head.conv.weight" in legacy
    assert tw.canonical_key("roi_heads.mask_head.mask_fcn1.bias") == "roi_heads.mask_head.0.0.bias"
    legacy["backbone.body.bn1.num_batches_tracked"] = np.array(3)
    assert tw.guess_bn_eps(legacy) == 1e-5 and tw.guess_bn_eps(state) == 0.0
    legacy = {k: v.copy() for k, v in legacy.items()}
    conv = r50.roi_heads.mask_head.convs.children["2"].children["0"].params["weight"]
    expected = conv.copy()
    conv.fill(0)
    tw.from_torchvision(legacy, r50)
    np.testing.assert_array_equal(conv, expected)


def test_import_errors_name_the_key(r50):
    state = tw.to_torchvision(r50)
    with pytest.raises(ValueError, match="'backbone.body.fc.weight'"):
        tw.from_torchvision({**state, "backbone.body.fc.weight": np.zeros((3, 3))}, r50)
    short = dict(state)
    del short["roi_heads.box_head.fc7.bias"]
    with pytest.raises(ValueError, match="missing key 'roi_heads.box_head.fc7.bias'"):
        tw.from_torchvision(short, r50)
    with pytest.raises(ValueError, match="'rpn.head.cls_logits.bias': expected shape"):
        tw.from_torchvision({**state, "rpn.head.cls_logits.bias": np.zeros(5, np.float32)}, r50)
    assert tw.num_outputs(state) == 91


def test_export_refuses_the_shapes_models_naming_the_part(tmp_path, capsys):
    with pytest.raises(ValueError, match="BasicBlock"):
        tw.check_exportable(Config.shipped())
    with pytest.raises(ValueError, match="Config.pooler"):
        tw.check_exportable(Config.torchvision_r50_fpn(pooler="roi_align"))
    code = main(["export-torchvision", "data/shapes_maskrcnn.npz", "--out", str(tmp_path / "w.pth")])
    assert code == 2 and "BasicBlock" in capsys.readouterr().err
    assert not (tmp_path / "w.pth").exists()


def test_preset_predicts_in_original_coordinates_with_coco_labels(r50):  # last: changes r50
    # a small image resized up by the preset's own transform (min_size 64 here, to stay fast);
    # score threshold 0 so that the random network's near-uniform softmax still yields detections
    # (and 20 proposals: every (proposal, class) pair is then a candidate of the per-class NMS)
    model = r50
    model.update_config(("min_size", "max_size"), min_size=(64,), max_size=128)
    model.set_inference(box_score_thresh=0.0, detections_per_img=5, rpn_post_nms_top_n_test=20)
    image = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    det = model.predict(image)[0]
    assert len(det["boxes"]) == 5 and det["masks"].shape == (5, 30, 45) and det["masks"].dtype == bool
    assert det["labels"].min() >= 1 and det["labels"].max() <= 90
    assert det["boxes"].min() >= 0 and det["boxes"][:, 2].max() <= 45.5 and det["boxes"][:, 3].max() <= 30.5
    assert np.all(np.diff(det["scores"]) <= 0)


def test_whole_model_gradient_check_with_the_torchvision_options():
    """Training through every torchvision option at tiny size: Bottlenecks with frozen BN (no
    gradient for their statistics), torchvision's anchors, unaligned RoIAlign, the mask head
    without norm. Checked as test_model.py checks the shapes model."""
    from gradcheck import model_central_difference
    from test_model import freeze_proposals, randomize, tiny_batch, total_loss

    rng = np.random.default_rng(0)
    cfg = Config.tiny(block="bottleneck", norm="frozen_bn", bn_eps=0.0, stage_channels=(8, 8, 16, 16),
                      anchor_convention="torchvision", pooler="roi_align_unaligned", rpn_min_size=1e-3,
                      mask_head_norm="none", mask_paste="torchvision")
    model = MaskRCNN(cfg).astype(np.float64)
    randomize(model, rng)
    images, targets = tiny_batch()
    freeze_proposals(model).n_images = len(images)
    model.zero_grad()
    _, losses = total_loss(model, images, targets)
    assert losses["loss_mask"] > 0 and losses["loss_box_reg"] > 0 and losses["loss_rpn_box_reg"] > 0
    model.backward()
    grads, h = dict(model.named_grads()), 1e-5
    frozen = {k for k, _ in model.named_params() if k.rsplit(".", 2)[-2].startswith("bn")
              or ".downsample.1." in k or k.startswith("backbone.body.stem.1.")}
    assert len(frozen) == 4 * (1 + 4 * 3 + 4)          # stem + 3 per block + 4 projections
    assert all(not grads[k].any() for k in frozen)
    trained = [(k, p) for k, p in model.named_params() if k not in frozen]
    for name, p in trained[::2] + trained[-1:]:         # every other array (time), and the last
        g = grads[name]
        i = np.unravel_index(int(np.argmax(np.abs(g))), p.shape)
        num = model_central_difference(lambda: total_loss(model, images, targets)[0], model, p,
                                       i, h)
        assert abs(num - g[i]) / max(abs(num) + abs(g[i]), 1e-4) < 1e-6, (name, num, g[i])

"""Classification testing protocols (PAPER.md section 5) against inputs and scores computed here independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sppnet.core.models import build_model
from sppnet.core.networks import ModelConfig, feature_sizes, get_network
from sppnet.core.preprocess import (
    Preprocess,
    full_view,
    hflip,
    resize_short_side,
    resize_to,
    subtract_mean,
    to_chw_batch,
)
from sppnet.reproduce.evaluate import (
    EvalResult,
    default_scales,
    evaluate,
    evaluate_many,
    multiview_windows,
    pooled_views,
)
from sppnet.reproduce.windows import image_box_to_cells

PRE = Preprocess(mean_bgr=(104.0, 117.0, 123.0), short_side=128, crop=112)
MEAN = np.array(PRE.mean_bgr, dtype=np.float32)
CLASSES = 5
RNG = np.random.default_rng(406)
CHANNEL_WEIGHTS = RNG.normal(0.0, 0.05, size=(3, CLASSES))


def _image(height: int, width: int, dtype: type = np.uint8) -> np.ndarray:
    return (RNG.random((height, width, 3)) * 255).astype(dtype)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Recorder(nn.Module):
    """Keeps every input batch; its logits are a fixed linear map of each input's per-channel means."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.spec = get_network("zf5_cpu")
        self.config = ModelConfig("zf5_cpu", num_classes=classes)
        self.weight = nn.Parameter(torch.tensor(CHANNEL_WEIGHTS[:, :classes], dtype=torch.float32))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x.mean(dim=(2, 3)) @ self.weight

    def fed(self) -> np.ndarray:
        """Every input fed so far as (N, H, W, 3)."""
        return torch.cat(self.inputs).numpy().transpose(0, 2, 3, 1)


def _expected_scores(views: np.ndarray) -> np.ndarray:
    """What Recorder scores for (V, H, W, 3) views, softmax averaged over them."""
    means = views.astype(np.float64).mean(axis=(1, 2))
    return _softmax(means @ CHANNEL_WEIGHTS).mean(axis=0)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """A tiny ZF-5 with He-initialised weights, so that its scores depend on the image."""
    torch.manual_seed(0)
    model = build_model("zf5_cpu", num_classes=CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                module.bias.zero_()
        model.classifier.fc8.weight.mul_(0.05)  # logits of order 1: softmax far from saturation
    return model.eval()


def _ten_by_slicing(resized: np.ndarray, crop: int) -> np.ndarray:
    """Caffe's oversample order: top-left, top-right, bottom-left, bottom-right, centre, then their mirrors."""
    h, w = resized.shape[:2]
    offsets = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
    five = [resized[t : t + crop, x : x + crop] for t, x in offsets]
    return np.stack(five + [v[:, ::-1] for v in five])


def test_ten_views_feed_caffe_order_and_average_softmax():
    img = _image(130, 170)
    resized = resize_short_side(img, PRE.short_side)  # 128 x 167
    expected = _ten_by_slicing(resized, PRE.crop) - MEAN
    model = Recorder()
    result = evaluate(model, [img], [2], mode="10view", pre=PRE, batch_size=3, keep_predictions=True)
    assert len(model.inputs) == 4  # 10 views in batches of 3, 3, 3, 1
    np.testing.assert_array_equal(model.fed(), expected)
    np.testing.assert_allclose(result.scores[0], _expected_scores(expected), rtol=1e-5)
    assert (result.mode, result.size, result.n, result.views) == ("10view", PRE.crop, 1, 10)


def test_ten_views_resized_to_size():
    img = _image(140, 128, np.float32)
    views = _ten_by_slicing(resize_short_side(img, PRE.short_side), PRE.crop)
    expected = np.stack([resize_to(v, 90, 90) for v in views]) - MEAN
    model = Recorder()
    result = evaluate(model, [img], [0], mode="10view", pre=PRE, size=90, keep_predictions=True)
    np.testing.assert_array_equal(model.fed(), expected)
    np.testing.assert_allclose(result.scores[0], _expected_scores(expected), rtol=1e-5)


@pytest.mark.parametrize("size", [None, 112, 90])
def test_crop_mode_feeds_the_centre_crop(size):
    images = [_image(130, 170), _image(200, 128, np.float32)]
    expected = []
    for img in images:
        resized = resize_short_side(img, PRE.short_side)
        h, w = resized.shape[:2]
        top, left = (h - PRE.crop) // 2, (w - PRE.crop) // 2
        crop = resized[top : top + PRE.crop, left : left + PRE.crop]
        expected.append((crop if size in (None, PRE.crop) else resize_to(crop, size, size)) - MEAN)
    model = Recorder()
    result = evaluate(model, images, [0, 1], mode="crop", pre=PRE, size=size, keep_predictions=True)
    np.testing.assert_array_equal(model.fed(), np.stack(expected))
    np.testing.assert_allclose(result.scores, [_expected_scores(v[None]) for v in expected], rtol=1e-5)
    assert result.size == (size or PRE.crop) and result.views == 2


FULL_SHAPES = [(120, 160), (160, 120), (120, 160), (100, 100), (130, 170), (90, 120)]


def test_full_mode_feeds_each_whole_image_batched_by_shape():
    images = [_image(h, w) for h, w in FULL_SHAPES]
    model = Recorder()
    result = evaluate(model, images, [0] * len(images), mode="full", pre=PRE, batch_size=2, keep_predictions=True)
    # Short side 128: (120, 160), (120, 160) and (90, 120) all become 128 x 171 -> one group of 3 (batches of
    # 2 + 1); 171 x 128, 128 x 128 and 128 x 167 are one image each: 5 forwards in all.
    assert [tuple(x.shape) for x in model.inputs] == [
        (2, 3, 128, 171),
        (1, 3, 128, 171),
        (1, 3, 171, 128),
        (1, 3, 128, 128),
        (1, 3, 128, 167),
    ]
    expected = [_expected_scores((resize_short_side(img, 128) - MEAN)[None]) for img in images]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)
    assert (result.size, result.views) == (128, len(images))


def test_full_mode_batching_does_not_change_results(net):
    images = [_image(h, w) for h, w in FULL_SHAPES]
    labels = [0, 1, 2, 3, 4, 0]
    batched = evaluate(net, images, labels, mode="full", pre=PRE, size=112, batch_size=8, keep_predictions=True)
    alone = evaluate(net, images, labels, mode="full", pre=PRE, size=112, batch_size=1, keep_predictions=True)
    np.testing.assert_allclose(batched.scores, alone.scores, rtol=1e-5, atol=1e-7)
    for img, scores in zip(images, alone.scores, strict=True):
        x = torch.from_numpy(to_chw_batch([full_view(img, PRE, 112)]))
        with torch.no_grad():
            one = torch.softmax(net(x).double(), dim=1)[0].numpy()
        np.testing.assert_allclose(scores, one, rtol=1e-5, atol=1e-7)
    assert batched.top1_err == alone.top1_err and batched.top5_err == alone.top5_err


def test_pooled_window_covering_the_image_is_spp_of_its_conv5(net):
    img = _image(112, 112)
    pooled = pooled_views(net, img, PRE, 112)  # one window: the whole 112 x 112 image, then its mirror
    x = subtract_mean(resize_short_side(img, 112), PRE)
    with torch.no_grad():
        maps = net.features(torch.from_numpy(to_chw_batch([x, hflip(resize_short_side(img, 112)) - MEAN])))
        expected = net.pool(maps)
    assert pooled.shape == expected.shape == (2, net.pool.output_dim(net.spec.conv5_channels))
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_pooled_windows_on_a_wide_image(net):
    img = _image(112, 150)
    assert feature_sizes(net.spec, 112, 150)[-1][1:] == (6, 8)
    # Windows in Caffe's order: top-left (left 0), top-right (left 150 - 112 = 38), centre (left 38 // 2 = 19),
    # the rest repeat them; all rows 0..111. Cells from the 1-based pixels (left + 1, left + 112):
    #   left 0:  first floor(1/16) + 1 = 1, last ceil(112/16) - 1 = 6       -> [0, 6)
    #   left 38: first floor(39/16) + 1 = 3, last ceil(150/16) - 1 = 9 -> 8 -> [2, 8)
    #   left 19: first floor(20/16) + 1 = 2, last ceil(131/16) - 1 = 8      -> [1, 8)
    # and rows [0, 6) for all three.
    columns = [(0, 6), (2, 8), (1, 8)]
    pooled = pooled_views(net, img, PRE, 112)
    assert pooled.shape[0] == 6
    resized = resize_short_side(img, 112)
    with torch.no_grad():
        maps = net.features(torch.from_numpy(to_chw_batch([resized - MEAN, hflip(resized) - MEAN])))
        for k, (x0, x1) in enumerate(columns):
            for m in range(2):
                expected = net.pool(maps[m : m + 1, :, 0:6, x0:x1])[0]
                torch.testing.assert_close(pooled[m * 3 + k], expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("height", "width", "crop", "count"),
    [
        (224, 298, 224, 3),  # short side = crop: left, middle, right only (the paper's 6 views with mirrors)
        (256, 341, 224, 9),
        (560, 746, 224, 9),
        (112, 112, 112, 1),
        (113, 150, 112, 6),  # rows {0, 0, 1}: 2 distinct, columns {0, 19, 38}: 3
        (150, 112, 112, 3),
    ],
)
def test_multiview_window_counts(height, width, crop, count):
    boxes = multiview_windows(height, width, crop)
    assert len(boxes) == count == len({(b[0], b[1]) for b in boxes.tolist()})
    assert ((boxes[:, 2] - boxes[:, 0] + 1) == crop).all() and ((boxes[:, 3] - boxes[:, 1] + 1) == crop).all()
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() == width - 1 and boxes[:, 3].max() == height - 1


def test_paper_view_count():
    # PAPER.md section 5: 18 views per scale, 6 at 224, 96 in all, for a 4:3 image.
    counts = [2 * len(multiview_windows(s, s * 4 // 3, 224)) for s in default_scales(224)]
    assert default_scales(224) == (224, 256, 300, 360, 448, 560)
    assert counts == [6, 18, 18, 18, 18, 18] and sum(counts) == 96
    assert default_scales(112) == (112, 128, 150, 180, 224, 280)


def _expected_multiview(model: nn.Module, img: np.ndarray, scales: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Each view cropped out of conv5 by slicing and pooled with the model's SPP; the full views by forward."""
    c = PRE.crop
    logits = []
    with torch.no_grad():
        for s in scales:
            resized = resize_short_side(img, s)
            h, w = resized.shape[:2]
            for view in (resized, hflip(resized)):
                maps = model.features(torch.from_numpy(to_chw_batch([view - MEAN])))
                for top in sorted({0, (h - c) // 2, h - c}):
                    for left in sorted({0, (w - c) // 2, w - c}):
                        x0, y0, x1, y1 = image_box_to_cells((left, top, left + c - 1, top + c - 1), 16, *maps.shape[2:])
                        logits.append(model.classifier(model.pool(maps[:, :, y0:y1, x0:x1])))
        resized = resize_short_side(img, PRE.short_side)
        logits.append(model(torch.from_numpy(to_chw_batch([resized - MEAN, hflip(resized) - MEAN]))))
    all_logits = torch.cat(logits).double().numpy()
    return _softmax(all_logits).mean(axis=0), len(all_logits)


def test_multiview_scores_match_views_cut_from_conv5(net):
    images = [_image(120, 160), _image(112, 140, np.float32)]
    scales = (112, 150)
    result = evaluate(net, images, [1, 3], mode="multiview", pre=PRE, scales=scales, keep_predictions=True)
    expected = [_expected_multiview(net, img, scales) for img in images]
    np.testing.assert_allclose(result.scores, [e[0] for e in expected], rtol=1e-5, atol=1e-7)
    # 120 x 160 -> 112 x 149: rows {0}, columns {0, 18, 37}: 3 x 2; 150 x 200: 9 x 2; plus 2 full views = 26.
    # 112 x 140 -> 112 x 140: 3 x 2; 150 x 188: 18; + 2 = 26.
    assert [e[1] for e in expected] == [26, 26]
    assert (result.mode, result.size, result.scales, result.n, result.views) == ("multiview", None, scales, 2, 52)


def test_multiview_default_scales(net):
    img = _image(120, 160)
    result = evaluate(net, [img], [0], mode="multiview", pre=PRE, keep_predictions=True)
    assert result.scales == (112, 128, 150, 180, 224, 280)
    # Short side 112 = crop: 6 views; the five larger scales: 18 each; 2 full views.
    assert result.views == 6 + 5 * 18 + 2
    assert result.top5.shape == (1, CLASSES) and sorted(result.top5[0].tolist()) == list(range(CLASSES))
    assert result.scores.shape == (1, CLASSES) and np.isclose(result.scores.sum(), 1.0)
    assert 0.0 <= result.top1_err <= 1.0 and result.top5_err == 0.0


class TableModel(nn.Module):
    """Constant images of value 10 * k score row k of a fixed logit table, whatever the view."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)
        self.spec = get_network("zf5_cpu")
        self.config = ModelConfig("zf5_cpu", num_classes=self.table.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[torch.round(x.mean(dim=(1, 2, 3)) / 10).long()]


def _constant_images(n: int) -> list[np.ndarray]:
    return [np.full((60, 80, 3), 10 * k, dtype=np.uint8) for k in range(n)]


ZERO_MEAN = Preprocess(mean_bgr=(0.0, 0.0, 0.0), short_side=128, crop=112)


def test_top1_top5_arithmetic():
    table = [
        [0, 9, 1, 2, 3, 4, 5],  # label 1 ranks 1st: top-1 and top-5 right
        [0, 9, 1, 2, 3, 4, 5],  # label 6 ranks 2nd: top-1 wrong, top-5 right
        [7, 6, 5, 4, 3, 2, 1],  # label 4 ranks 5th: top-5 right
        [7, 6, 5, 4, 3, 2, 1],  # label 5 ranks 6th: both wrong
        [1, 1, 1, 1, 1, 1, 1],  # all tied, ties go to the lower index: top-5 is 0..4; label 6: both wrong
        [1, 1, 1, 1, 1, 1, 1],  # label 0: both right
    ]
    labels = [1, 6, 4, 5, 6, 0]
    for mode in ("crop", "10view"):
        result = evaluate(
            TableModel(table), _constant_images(6), labels, mode=mode, pre=ZERO_MEAN, keep_predictions=True
        )
        assert result.top1_err == pytest.approx(4 / 6)  # images 1, 2, 3, 4
        assert result.top5_err == pytest.approx(2 / 6)  # images 3, 4
        assert result.top5.tolist() == [
            [1, 6, 5, 4, 3],
            [1, 6, 5, 4, 3],
            [0, 1, 2, 3, 4],
            [0, 1, 2, 3, 4],
            [0, 1, 2, 3, 4],
            [0, 1, 2, 3, 4],
        ]
        np.testing.assert_allclose(result.scores, _softmax(np.array(table, dtype=np.float64)), rtol=1e-6)


def test_top5_with_fewer_than_five_classes():
    table = [[3, 1, 2], [3, 1, 2], [0, 0, 5]]
    labels = [0, 1, 1]  # top-1: right, wrong, wrong; top-5 covers all 3 classes: always right
    result = evaluate(TableModel(table), _constant_images(3), labels, mode="crop", pre=ZERO_MEAN, keep_predictions=True)
    assert result.top1_err == pytest.approx(2 / 3) and result.top5_err == 0.0
    assert result.top5.tolist() == [[0, 2, 1], [0, 2, 1], [2, 0, 1]]


def test_to_json_and_evaluate_many(net):
    images = [_image(120, 160), _image(150, 130)]
    labels = [0, 4]
    plan = [("crop", None), ("10view", 90), ("full", 150), ("multiview", (112,))]
    results = evaluate_many(net, images, labels, PRE, plan, keep_predictions=True)
    for (mode, value), got in zip(plan, results, strict=True):
        kwargs = {"scales": value} if mode == "multiview" else {"size": value}
        alone = evaluate(net, images, labels, mode=mode, pre=PRE, keep_predictions=True, **kwargs)
        assert isinstance(got, EvalResult) and got.mode == mode
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-6)
        record = json.loads(json.dumps(got.to_json()))
        assert record["mode"] == mode and record["n"] == 2 and record["top5"] == got.top5.tolist()
    assert [r.size for r in results] == [112, 90, 150, None]
    assert results[3].to_json()["scales"] == [112]
    assert evaluate(net, images, labels, mode="crop", pre=PRE).to_json()["top5"] is None


def test_evaluate_many_checks_every_entry_first():
    model = Recorder()
    with pytest.raises(ValueError, match="unknown mode 'dense'"):
        evaluate_many(model, [_image(120, 160)], [0], PRE, [("crop", None), ("dense", None)])
    assert model.inputs == []


def test_training_mode_restored(net):
    net.train()
    try:
        first = evaluate(net, [_image(120, 160)], [0], mode="crop", pre=PRE, keep_predictions=True)
        second = evaluate(net, [_image(120, 160)], [0], mode="crop", pre=PRE, keep_predictions=True)
        assert net.training
        assert first.scores is not None and second.scores is not None
    finally:
        net.eval()
    img = _image(120, 160)
    a = evaluate(net, [img], [0], mode="crop", pre=PRE, keep_predictions=True)
    net.train()
    b = evaluate(net, [img], [0], mode="crop", pre=PRE, keep_predictions=True)
    net.eval()
    np.testing.assert_array_equal(a.scores, b.scores)  # dropout is off while evaluating


def test_no_spp_model():
    torch.manual_seed(0)
    baseline = build_model("zf5_cpu", spp=False, num_classes=CLASSES)
    img = _image(120, 160)
    assert evaluate(baseline, [img], [0], mode="10view", pre=PRE).views == 10
    for mode in ("full", "multiview"):
        with pytest.raises(ValueError, match=rf"mode '{mode}' needs an SPP model.*'crop' or '10view'"):
            evaluate(baseline, [img], [0], mode=mode, pre=PRE)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "five"}, r"unknown mode 'five'; choose one of crop, 10view, full, multiview"),
        ({"mode": "crop", "size": 20}, r"'crop' size 20 is too small"),
        ({"mode": "10view", "size": 30}, r"'10view' size 30 is too small"),
        ({"mode": "full", "size": 20}, r"'full' short side 20 is too small"),
        ({"mode": "multiview", "scales": (112, 30)}, r"'multiview' scale 30 is too small"),
        ({"mode": "multiview", "scales": (100,)}, r"scale 100 is below the crop 112"),
        ({"mode": "multiview", "scales": ()}, r"at least one scale"),
        ({"mode": "multiview", "size": 128}, r"takes scales, not size"),
        ({"mode": "crop", "scales": (128,)}, r"scales are for mode 'multiview'"),
        ({"mode": "crop", "batch_size": 0}, r"batch_size must be >= 1"),
    ],
)
def test_setting_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(Recorder(), [_image(120, 160)], [0], pre=PRE, **kwargs)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        ([], [], "no images"),
        ([np.zeros((120, 160, 3), np.uint8)] * 2, [0], "2 images but labels of shape"),
        ([np.zeros((120, 160, 3), np.uint8)], [5], r"labels must be integers in \[0, 5\)"),
        ([np.zeros((120, 160, 3), np.uint8)], [-1], r"labels must be integers in \[0, 5\)"),
        ([np.zeros((120, 160, 3), np.uint8)], [0.5], r"labels must be integers"),
        ([np.zeros((120, 160), np.uint8)], [0], r"image 0 has shape \(120, 160\)"),
    ],
)
def test_data_errors(images, labels, match):
    with pytest.raises(ValueError, match=match):
        evaluate(Recorder(), images, labels, mode="crop", pre=PRE)

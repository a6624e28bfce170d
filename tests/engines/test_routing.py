"""Routing under the default export and policy: every decodable image, of any size and aspect ratio, is served; a
size no model takes is fitted into the served range (aspect kept, an over-elongated image centre-cropped on its long
side) and the route records the size it was fitted from. Refusing is for the caller who asks (`outside="error"`).

The export here is `sppnet export`'s default for the trained zf5_cpu run (scales 112 and 90 from its training
sizes, the dynamic model up to twice the largest: 39..224), fp32 only to save time. Expected sizes are worked by
hand in the comments (zf5_cpu's preprocessing: crop 112, so policy "full" scales the short side to 112).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sppnet.core.errors import InvalidInput, RouteError
from sppnet.core.runs import load_model
from sppnet.engines.compare import TOLERANCE, compare
from sppnet.engines.model_set import load_model_set
from sppnet.engines.routing import Policy, fitted_size, prepare, route
from sppnet.engines.runtime import Runtime
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run

from .conftest import PHOTOS

SCALES = ((112, 112), (90, 90))
LOW, HIGH = 39, 224  # zf5_cpu's smallest input; the default max size, twice the largest scale


@pytest.fixture(scope="module")
def default_onnx(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("routing") / "onnx"
    export_onnx(source_from_run(trained_run), out, ExportConfig(precisions=("fp32",)))
    return out


@pytest.fixture(scope="module")
def fixed_only_onnx(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("routing") / "fixed"
    export_onnx(source_from_run(trained_run), out, ExportConfig(precisions=("fp32",), dynamic=False))
    return out


@pytest.mark.parametrize(
    ("size", "bounds", "scaled", "served"),
    [
        ((100, 150), (39, 224, 224), (100, 150), (100, 150)),  # in range: unchanged
        ((900, 1800), (39, 704, 704), (352, 704), (352, 704)),  # x 704/1800: 351.999... -> 352
        ((191, 384), (39, 224, 224), (111, 224), (111, 224)),  # scikit-image's page: x 224/384: 111.42 -> 111
        ((300, 300), (39, 224, 112), (112, 112), (112, 112)),  # the tighter axis decides: x 112/300
        ((1, 1), (39, 224, 224), (39, 39), (39, 39)),  # up to the smallest size
        ((10, 20), (39, 224, 224), (39, 78), (39, 78)),  # x 39/10 (the short side reaches 39 first)
        ((1, 2000), (39, 224, 224), (39, 78000), (39, 224)),  # too elongated: short side 39, centre 224 of 78000
        ((2000, 3), (39, 224, 224), (26000, 39), (224, 39)),  # x 13: 26000 x 39, centre 224 rows
    ],
)
def test_fitted_size_against_hand_worked_cases(size, bounds, scaled, served) -> None:
    assert fitted_size(*size, *bounds) == (scaled, served)


# (image, the policy's size before fitting or None when it is served as it is, the served size)
DEFAULT_CASES = [
    ((1, 1), None, (112, 112)),  # short side to 112: the fixed 112 model
    ("page.png", (112, 225), (112, 224)),  # 191x384 -> 112 x (384*112/191 = 225.2): 225 > 224; x 224/225
    ("text.png", (112, 292), (86, 224)),  # 172x448 -> 112 x 291.7 -> 292; x 224/292: 85.9 -> 86 x 224
    ("retina.jpg", None, (112, 112)),  # a large photo, 1411x1411
    ("astronaut.png", None, (112, 112)),
    ((1, 2000), (112, 224000), (39, 224)),  # 112 x 224000; short side to 39 (x 39/112), centre crop of 78000
    ((2000, 3), (74667, 112), (224, 39)),  # 2000*112/3 = 74666.7 -> 74667; x 39/112 -> 26000 x 39, centre crop
    ((150, 130), None, (129, 112)),  # 150*112/130 = 129.2: in range, the dynamic model
]


def load(image: str | tuple[int, int], rng: np.random.Generator) -> Path | np.ndarray:
    if isinstance(image, str):
        return PHOTOS / image
    return rng.integers(0, 256, (*image, 3), dtype=np.uint8)


def test_the_default_policy_serves_every_decodable_image_of_any_aspect_ratio(
    default_onnx: Path, trained_run: Path
) -> None:
    rng = np.random.default_rng(0)
    images = [load(image, rng) for image, _, _ in DEFAULT_CASES]
    model = load_model(trained_run)
    with Runtime(default_onnx) as rt:
        assert rt.policy == Policy() and (rt.policy.name, rt.policy.outside) == ("full", "resize")
        results = rt.infer(images)
        for (image, fitted_from, served), result, source in zip(DEFAULT_CASES, results, images, strict=True):
            assert result.error is None, (image, result.error)
            r = result.route
            assert ((r.height, r.width), r.fitted_from) == (served, fitted_from), image
            if r.kind == "fixed":
                assert (r.height, r.width) in SCALES and r.model == f"zf5_cpu_{r.height}x{r.width}_fp32.onnx"
            else:
                assert LOW <= r.height <= HIGH and LOW <= r.width <= HIGH and r.model == "zf5_cpu_dynamic_fp32.onnx"
            assert ("fitted from" in r.describe()) == (fitted_from is not None)
            assert ("fitted_from" in r.to_json()) == (fitted_from is not None)
            # The logits are the network's on the view that was served.
            view = rt.prepare(source).view
            with torch.inference_mode():
                want = model(torch.from_numpy(view.transpose(2, 0, 1)[None].copy())).numpy()
            row = compare(result.logits[None], want, name=str(image), precision="fp32", size=served)
            assert row.max_rel <= TOLERANCE["fp32"], row


def test_an_over_elongated_image_is_centre_cropped_on_its_long_side(default_onnx: Path) -> None:
    models = load_model_set(default_onnx)
    pre = models.card.preprocess
    image = np.zeros((100, 2000, 3), np.uint8)
    image[:, 1000:] = 255  # dark left half, bright right half
    view = prepare(image, Policy("none"), pre, models)
    # x 0.39 (the short side to 39): 39 x 780, the edge at column 390; the centre 224 columns start at 278, so the
    # edge lands at column 112 of the served view.
    assert view.fitted_from == (100, 2000) and view.pixels.shape == (39, 224, 3)
    dark, bright = (np.float32(v - 128.0) * np.float32(pre.scale) for v in (0.0, 255.0))
    np.testing.assert_array_equal(view.pixels[:, :112], np.full((39, 112, 3), dark))
    np.testing.assert_array_equal(view.pixels[:, 112:], np.full((39, 112, 3), bright))
    assert route(view, models).fitted_from == (100, 2000)


def test_without_a_dynamic_model_an_image_is_fitted_onto_the_nearest_fixed_scale(fixed_only_onnx: Path) -> None:
    rng = np.random.default_rng(1)
    with Runtime(fixed_only_onnx, policy=Policy("none")) as rt:
        cases = {(100, 150): (112, 112), (60, 70): (90, 90), (112, 112): (112, 112), (1, 1): None, (2000, 3): None}
        results = rt.infer([rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in cases])
    # 100x150: |log 112/100| + |log 112/150| = 0.41 < |log 90/100| + |log 90/150| = 0.62; 60x70: 1.09 > 0.66.
    for (size, scale), result in zip(cases.items(), results, strict=True):
        assert result.error is None, result.error
        r = result.route
        assert r.kind == "fixed" and (r.height, r.width) in SCALES
        if scale is not None:
            assert (r.height, r.width) == scale
        assert r.fitted_from == (None if size in SCALES else size)


def test_refusing_is_for_the_caller_who_asks_and_names_the_options(default_onnx: Path) -> None:
    models = load_model_set(default_onnx)
    strict = Policy("none", outside="error")
    view = prepare(np.zeros((1, 2000, 3), np.uint8), strict, models.card.preprocess, models)
    assert view.fitted_from is None and view.pixels.shape[:2] == (1, 2000)
    with pytest.raises(RouteError) as refused:
        route(view, models)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("no model takes a 1x2000 input (fixed sizes: 112x112, 90x90; dynamic: 39x39..112x112")
    assert message.endswith("drop --outside error, use another --policy, or export with a larger --max-size")
    with Runtime(default_onnx, policy=strict) as rt:
        fine, refused_photo = rt.infer([np.zeros((100, 120, 3), np.uint8), PHOTOS / "retina.jpg"])
    assert fine.error is None and fine.route.fitted_from is None
    assert refused_photo.error.startswith("no model takes a 1411x1411 input") and refused_photo.route is None
    with pytest.raises(InvalidInput, match="unknown outside-range action 'clip': choose one of resize, error"):
        Policy(outside="clip")

"""The runtime through the ONNX Runtime backend: each image routed as specified (exact fixed size -> that model,
any other size -> the dynamic model's tightest profile, outside -> fitted into range by default, or an error on
request), outputs equal to PyTorch on the same input within the stated tolerances, input order kept, threads and
streaming equal to serial calls, and every bad image an error of its own. The dispatcher's error isolation is
tests/engines/test_dispatch.py; routing and fitting are tests/engines/test_routing.py.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sppnet.core.errors import BackendError, OutOfMemory, RouteError
from sppnet.core.images import load_bgr
from sppnet.core.manifest import Weights
from sppnet.core.runs import load_model
from sppnet.engines.backends.base import Runner, TensorMeta
from sppnet.engines.compare import TOLERANCE
from sppnet.engines.model_set import load_model_set
from sppnet.engines.routing import Policy, Served, prepare, route_size
from sppnet.engines.runtime import Runtime

from .conftest import SCALES


def reference(trained_run: Path, view: np.ndarray) -> np.ndarray:
    """PyTorch's logits for one prepared (h, w, 3) view."""
    model = load_model(trained_run)
    with torch.inference_mode():
        return model(torch.from_numpy(view.transpose(2, 0, 1)[None].copy())).double().numpy()[0]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_exact_fixed_sizes_go_to_their_model_and_other_sizes_to_the_dynamic_profiles(runtime_onnx: Path) -> None:
    served = Served.of(load_model_set(runtime_onnx))
    assert route_size(112, 112, served).model == "zf5_cpu_112x112_fp32.onnx"
    assert route_size(90, 90, served).kind == "fixed"
    small, large = route_size(90, 91, served), route_size(300, 500, served)
    assert (small.model, small.kind, small.profile) == ("zf5_cpu_dynamic_fp32.onnx", "dynamic", 0)
    assert large.profile == 1  # beyond the largest export scale: the second profile
    for h, w in ((38, 100), (100, 705), (1000, 1000)):
        with pytest.raises(RouteError, match=rf"no model takes a {h}x{w} input .*drop --outside error"):
            route_size(h, w, served)


def test_policies_give_the_papers_sizes(runtime_onnx: Path) -> None:
    models = load_model_set(runtime_onnx)
    pre = models.card.preprocess  # zf5_cpu: short side 128, crop 112 (the paper's 256/224 halved)
    image = np.zeros((300, 451, 3), np.uint8)
    assert prepare(image, Policy("center-crop"), pre, models).pixels.shape[:2] == (112, 112)
    assert prepare(image, Policy("full"), pre, models).pixels.shape[:2] == (112, 168)  # short side = crop
    assert prepare(image, Policy("full", 90), pre, models).pixels.shape[:2] == (90, 135)
    assert prepare(image, Policy("nearest"), pre, models).pixels.shape[:2] in SCALES
    assert prepare(image, Policy("none"), pre, models).pixels.shape[:2] == (300, 451)
    assert all(prepare(image, Policy(name), pre, models).fitted_from is None for name in ("full", "none"))
    huge = np.zeros((900, 1800, 3), np.uint8)
    resized = prepare(huge, Policy("none"), pre, models)
    assert resized.pixels.shape[:2] == (352, 704)  # aspect kept, long side at the dynamic range's end
    assert resized.fitted_from == (900, 1800)
    assert route_size(352, 704, Served.of(models)).kind == "dynamic"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_mixed_size_stream_is_routed_and_equals_pytorch_in_input_order(
    runtime_onnx: Path, trained_run: Path, photos: list[Path], precision: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    arrays = [random_image(rng, *size) for size in [(112, 112), (90, 90), (97, 131), (41, 300), (112, 112), (64, 40)]]
    images: list[Path | np.ndarray] = [*photos, *arrays]
    images = [images[i] for i in rng.permutation(len(images))]
    with Runtime(runtime_onnx, policy=Policy("none"), precision=precision, topk=3) as rt:
        results = rt.infer(images)
        pre = rt.pre
    assert [r.index for r in results] == list(range(len(images)))
    worst = 0.0
    for image, result in zip(images, results, strict=True):
        assert result.error is None, result.error
        pixels = image if isinstance(image, np.ndarray) else load_bgr(image)
        assert (result.route.height, result.route.width) == pixels.shape[:2]  # policy none: the image's own size
        assert result.route.kind == ("fixed" if pixels.shape[:2] in SCALES else "dynamic")
        assert result.route.fitted_from is None
        want = reference(trained_run, prepare(pixels, Policy("none"), pre, rt.models).pixels)
        worst = max(worst, rel_error(result.logits, want))
        assert result.topk[0][0] == rt.models.card.classes[int(np.argmax(result.logits))]
        assert len(result.topk) == 3 and sum(p for _, p in result.topk) <= 1.0 + 1e-9
        if not isinstance(image, np.ndarray):
            assert result.source == str(image)
    print(f"\n{precision}: {len(images)} images, max relative error vs PyTorch {worst:.3g}")
    assert worst <= TOLERANCE[precision]


def test_eight_threads_get_exactly_the_serial_results(runtime_onnx: Path, photos: list[Path]) -> None:
    rng = np.random.default_rng(1)
    requests = [[random_image(rng, int(rng.integers(60, 200)), int(rng.integers(60, 200))) for _ in range(4)]
                for _ in range(16)]  # fmt: skip
    requests[3] = [photos[0], photos[2], *requests[3]]
    with Runtime(runtime_onnx) as rt:
        serial = [rt.infer(r) for r in requests]
        threaded: list[list | None] = [None] * len(requests)

        def work(k: int) -> None:
            for i in range(k, len(requests), 8):
                threaded[i] = rt.infer(requests[i])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for a, b in zip(serial, threaded, strict=True):
        assert b is not None
        for x, y in zip(a, b, strict=True):
            assert x.route == y.route and np.array_equal(x.logits, y.logits)


def test_streamed_single_images_are_batched_and_equal_the_request_results(runtime_onnx: Path) -> None:
    rng = np.random.default_rng(2)
    images = [random_image(rng, *((112, 112) if i % 3 else (150, 90))) for i in range(20)]
    with Runtime(runtime_onnx, max_wait_ms=50) as rt:
        direct = rt.infer(images)
        futures = [rt.submit(image, index=i) for i, image in enumerate(images)]
        streamed = [f.result(timeout=60) for f in futures]
        stats = rt.executor.stats
    assert [r.index for r in streamed] == list(range(20))
    for a, b in zip(direct, streamed, strict=True):
        assert a.route == b.route and rel_error(b.logits, a.logits) <= 1e-5
    assert stats.batches < stats.images  # the stream was batched, not run one by one


def test_each_bad_image_is_its_own_error_and_odd_formats_are_converted(runtime_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    good = tmp_path / "good.png"
    Image.fromarray(random_image(rng, 120, 160)).save(good)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(random_image(rng, 200, 200)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(random_image(rng, 1, 1)).save(tmp_path / "one.png")
    Image.fromarray(rng.integers(0, 256, (80, 90), dtype=np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 256, (80, 90, 4), dtype=np.uint8), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (80, 90, 4), dtype=np.uint8), "CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (80, 90), dtype=np.uint16)).save(tmp_path / "16bit.png")
    (tmp_path / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    names = ["good.png", "truncated.jpg", "empty.png", "text.png", "one.png", "gray.png", "rgba.png", "cmyk.jpg",
             "16bit.png", "bomb.png"]  # fmt: skip
    with Runtime(runtime_onnx, policy=Policy("none", outside="error")) as rt:
        results = {Path(r.source).name: r for r in rt.infer([tmp_path / n for n in names])}
    for ok in ("good.png", "gray.png", "rgba.png", "cmyk.jpg", "16bit.png"):
        assert results[ok].error is None and results[ok].route.height == (120 if ok == "good.png" else 80), ok
    assert "truncated" in results["truncated.jpg"].error or "cannot" in results["truncated.jpg"].error
    for bad in ("empty.png", "text.png"):
        assert results[bad].error and results[bad].route is None
    assert "no model takes a 1x1 input" in results["one.png"].error  # refused only because the caller asked
    assert "pixels" in results["bomb.png"].error
    with Runtime(runtime_onnx, policy=Policy("none")) as rt:  # by default it is fitted into the range
        (one,) = rt.infer([tmp_path / "one.png"])
    assert one.error is None and (one.route.height, one.route.width, one.route.fitted_from) == (39, 39, (1, 1))
    with Runtime(runtime_onnx) as rt:  # policy full: a 1x1 image is resized to the training size (documented)
        (one,) = rt.infer([tmp_path / "one.png"])
    assert one.error is None and (one.route.height, one.route.width) == (112, 112)


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (decompression-bomb sized) with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


class _SmallMemory(Runner):
    """Fails with OutOfMemory above `limit` images, like a device that cannot hold a big batch."""

    name = "small-memory"

    def __init__(self, inner: Runner, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []

    def _activate_impl(self) -> None:
        self.inner.activate()

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise OutOfMemory(f"{len(x)} images do not fit")
        return self.inner.infer(feed, profile)

    def _inputs_impl(self) -> list[TensorMeta]:
        return self.inner.inputs()

    def _outputs_impl(self) -> list[TensorMeta]:
        return self.inner.outputs()

    def _deactivate_impl(self) -> None:
        self.inner.deactivate()


def test_out_of_memory_retries_with_smaller_batches(runtime_onnx: Path) -> None:
    rng = np.random.default_rng(4)
    images = [random_image(rng, 112, 112) for _ in range(8)]
    with Runtime(runtime_onnx) as rt:
        want = rt.infer(images)
        name = "zf5_cpu_112x112_fp32.onnx"
        small = _SmallMemory(rt.runners[name], limit=3).activate()
        rt.runners[name] = rt.executor.runners[name] = small
        got = rt.infer(images)
    assert small.calls == [8, 4, 2, 2, 4, 2, 2]
    assert rt.executor.stats.oom_retries == 3
    for a, b in zip(want, got, strict=True):
        assert rel_error(b.logits, a.logits) <= 1e-5


def test_directory_and_backend_mismatches_are_refused_naming_the_fix(
    runtime_onnx: Path, trained_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="which the torch backend cannot run: pass --backend onnxruntime"):
        Runtime(runtime_onnx, backend="torch")
    with pytest.raises(ValueError, match=r"not an engine directory .* or a run \(RUN/model.json"):
        Runtime(tmp_path)
    with Runtime(trained_run, backend="torch", policy=Policy("none")) as rt:  # the reference runs any size
        (r,) = rt.infer([np.zeros((77, 203, 3), np.uint8)])
    assert r.error is None and (r.route.model, r.route.kind) == ("model.safetensors", "dynamic")


def test_the_onnx_runtime_hot_path_never_imports_torch(runtime_onnx: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from sppnet.engines.runtime import Runtime\n"
        "from sppnet.engines.routing import Policy\n"
        f"rt = Runtime({str(runtime_onnx)!r}, policy=Policy('none'))\n"
        "results = rt.infer([np.zeros((100, 120, 3), np.uint8), np.zeros((112, 112, 3), np.uint8)])\n"
        "assert all(r.error is None for r in results)\n"
        "print(sorted(m for m in ('torch', 'onnx', 'tensorrt', 'tensorrt_rtx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_size_the_window_rule_cannot_bin_is_refused_not_pooled_wrongly(tmp_path: Path) -> None:
    from sppnet.core.models import build_model
    from sppnet.core.networks import get_network
    from sppnet.export.onnx_export import ExportConfig, ExportSource, card_of, export_onnx

    torch.manual_seed(0)
    model = build_model("zf5_cpu", num_classes=3, rule="window").eval()
    pre = get_network("zf5_cpu").default_preprocess((112,))
    source = ExportSource(model, card_of(model, ["a", "b", "c"], pre, Weights("0" * 64, trained=False)))
    export_onnx(source, tmp_path, ExportConfig(scales=((112, 112),), precisions=("fp32",), max_size=256))
    rng = np.random.default_rng(5)
    square = random_image(rng, 224, 224)
    with Runtime(tmp_path, policy=Policy("none")) as rt:
        good, bad = rt.infer([square, random_image(rng, 180, 224)])
        view = prepare(square, Policy("none"), rt.pre, rt.models).pixels
    # conv5 of 224 is 13 cells (13 mod n is 0 or 1 for n = 6, 3, 2, 1); of 180 it is 10 (10 mod 6 = 4: 9 windows).
    with torch.inference_mode():
        want = model(torch.from_numpy(view.transpose(2, 0, 1)[None].copy())).numpy()[0]
    assert good.error is None and good.route.kind == "dynamic" and rel_error(good.logits, want) <= 1e-4
    assert bad.error is not None and "cannot be pooled under the window rule" in bad.error


def test_a_model_that_fails_to_load_frees_the_ones_loaded_before_it(runtime_onnx: Path, monkeypatch) -> None:
    import sppnet.engines.runtime as runtime_module

    made: list[Runner] = []
    real = runtime_module.make_runners

    def third_fails(*args: object, **kwargs: object) -> dict[str, Runner]:
        runners = real(*args, **kwargs)
        name = list(runners)[2]
        runners[name]._activate_impl = lambda: (_ for _ in ()).throw(BackendError(f"{name} is corrupt"))
        made.extend(runners.values())
        return runners

    monkeypatch.setattr(runtime_module, "make_runners", third_fails)
    with pytest.raises(BackendError, match="is corrupt"):
        Runtime(runtime_onnx)
    assert made and not any(r.is_active for r in made)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_run_directory_serves_its_precision_through_the_torch_backend(trained_run: Path, precision: str) -> None:
    rng = np.random.default_rng(6)
    images = [random_image(rng, 112, 112), random_image(rng, 97, 131)]
    with (
        Runtime(trained_run, policy=Policy("none")) as reference,
        Runtime(trained_run, policy=Policy("none"), precision=precision) as rt,
    ):
        assert rt.models.kind == "run" and rt.models.precision == precision
        want, got = reference.infer(images), rt.infer(images)
    for a, b in zip(want, got, strict=True):
        assert b.error is None and b.route == a.route
        assert 0 < rel_error(b.logits, a.logits) <= TOLERANCE[precision]  # rounded, so not equal to fp32


def test_a_precision_a_directory_cannot_serve_is_refused_naming_the_ones_it_can(
    runtime_onnx: Path, trained_run: Path
) -> None:
    with pytest.raises(ValueError, match=r"a run runs in fp32, fp16, bf16, not int8: pass one of those"):
        Runtime(trained_run, precision="int8")
    with pytest.raises(ValueError, match=r"has no bf16 models \(it has fp16, fp32\): pass --precision fp16"):
        Runtime(runtime_onnx, precision="bf16")

"""The runtime: image -> preprocess -> route -> batch -> model -> top-k, in input order, each image's route kept.

One dispatcher drives every backend: TensorRT engines (GPU), compiled PyTorch packages (`torch_aoti`, GPUs
TensorRT cannot run on, or the CPU), ONNX Runtime (an export directory, on the CPU or CUDA), or the PyTorch run
itself (the reference). A bad image is that image's error, never the batch's. `Runtime.stream` serves a stream
through the GPU-fed path (`sppnet.engines.feed`); on a GPU the precision defaults to fp16.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from sppnet.core.errors import BadImage, InvalidInput, SppnetError, one_line
from sppnet.core.images import DEFAULT_MAX_PIXELS, load_bgr
from sppnet.core.manifest import EngineManifest, directory_kind, read_engine_manifest, read_export_manifest
from sppnet.engines.backends.base import Runner
from sppnet.engines.dispatch import Executor, Item, StreamBatcher, run_batches
from sppnet.engines.model_set import ModelSet, load_model_set
from sppnet.engines.routing import Policy, Route, prepare, route

BACKENDS = ("auto", "tensorrt", "torch_aoti", "onnxruntime", "torch")
NATIVE = {"engines": "tensorrt", "onnx": "onnxruntime", "run": "torch"}
AOTI = "torch_aoti"  # engine directories built by `sppnet build --builder torch_aoti` (AOTInductor packages)

Image = str | os.PathLike[str] | np.ndarray


@dataclass(frozen=True)
class Result:
    """One image's answer: top-k (class, probability), its route, or the error that stopped it."""

    index: int
    source: str
    route: Route | None = None
    topk: tuple[tuple[str, float], ...] = ()
    logits: np.ndarray | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.source}
        if self.error is not None:
            return record | {"error": self.error}
        assert self.route is not None
        return record | {"route": self.route.to_json(), "topk": [{"class": c, "p": round(p, 6)} for c, p in self.topk]}


def native_backend(models: ModelSet) -> str:
    """The backend a directory is served by: engines -> tensorrt (or torch_aoti for compiled PyTorch packages),
    an ONNX export -> onnxruntime, a run -> torch."""
    manifest = models.manifest
    if isinstance(manifest, EngineManifest) and manifest.builder.module == AOTI:
        return AOTI
    return NATIVE[models.kind]


def make_runners(models: ModelSet, backend: str, **options: Any) -> dict[str, Runner]:
    """One runner per model file for `backend` ("auto": the directory's own: engines -> tensorrt, ...).

    `options` go to each runner; `device` ("cpu", "cuda", "cuda:N") is understood by every backend.
    """
    if backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    native = native_backend(models)
    chosen = native if backend == "auto" else backend
    if chosen != native:
        raise InvalidInput(
            f"{models.directory} is {'an' if models.kind != 'run' else 'a'} {models.kind} directory for {native}, "
            f"which the {chosen} backend cannot run: pass --backend {native} or a directory for {chosen} "
            "(tensorrt: `sppnet build`; torch_aoti: `sppnet build --builder torch_aoti`; onnxruntime: "
            "`sppnet export`; torch: a run)"
        )
    card = models.card
    if chosen == "onnxruntime":
        from sppnet.engines.backends.onnxrt import OnnxRuntimeRunner

        return {f.file: OnnxRuntimeRunner(models.path(f), **options) for f in models.files}
    if chosen == "torch":
        from sppnet.engines.backends.pyt import TorchRunner

        names = {"input_name": card.input_name, "output_name": card.output_name}
        return {
            f.file: TorchRunner(models.directory, precision=models.precision, **names, **options) for f in models.files
        }
    manifest = models.manifest
    assert isinstance(manifest, EngineManifest)
    if chosen == AOTI:
        from sppnet.engines.backends.aoti import AOTIRunner

        return {f.file: AOTIRunner(models.path(f), manifest, f, **options) for f in models.files}
    from sppnet.engines.backends.trt import TensorRTRunner

    if "device" in options:  # TensorRTRunner takes the CUDA device index
        options = {**options, "device": _cuda_index(options["device"])}
    return {f.file: TensorRTRunner(models.path(f), manifest, f, **options) for f in models.files}


def _cuda_index(device: object) -> int:
    text = str(device)
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InvalidInput(f"TensorRT engines run on a GPU: pass --device cuda or cuda:N, not {text}")
    return int(index or 0)


def gpu_requested(directory: str | os.PathLike[str], device: str | None) -> bool:
    """Whether a runtime on `directory` with `device` runs its models on a GPU (compiled packages built for one
    count, without a device named)."""
    if device is not None:
        return device.startswith("cuda")
    try:
        manifest = read_engine_manifest(directory, verify=False)
    except SppnetError:
        return False
    return manifest.builder.module == AOTI and manifest.target.get("device") == "cuda"


def default_precision(directory: str | os.PathLike[str], device: str | None) -> str:
    """fp16 on a GPU where the directory has fp16 models, else fp32. Reads the manifest only: the files are
    verified once, when the chosen set loads."""
    if not gpu_requested(directory, device):
        return "fp32"
    try:
        kind = directory_kind(directory)
        if kind == "run":
            return "fp16"  # PyTorch casts a run to any precision
        read = read_engine_manifest if kind == "engines" else read_export_manifest
        files = read(directory, verify=False).files
    except SppnetError:
        return "fp32"  # loading the set says what is wrong
    return "fp16" if any(f.precision == "fp16" and f.spp_form != "plugin" for f in files) else "fp32"


class Runtime:
    """Serves one model directory; use as a context manager, or call `close()`.

    `infer(images)` runs a request (the caller's images batched by route); `submit(image)` streams one image
    through a shared batcher that waits at most `max_wait_ms` for others of the same route; `stream(images)` runs
    the GPU-fed path. `device` ("cpu", "cuda", "cuda:N") goes to every runner; `precision` None is fp16 where the
    models run on a GPU and the directory has fp16 models, else fp32.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        backend: str = "auto",
        policy: Policy | None = None,
        precision: str | None = None,
        topk: int = 5,
        max_wait_ms: float = 2.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        runner_options: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        self.device = device
        self.models = load_model_set(directory, precision or default_precision(directory, device))
        self.policy = policy or Policy()
        self.pre = self.models.card.preprocess
        self.topk = max(1, min(topk, len(self.models.card.classes)))
        self.max_pixels = max_pixels
        options = dict(runner_options or {}) | ({"device": device} if device is not None else {})
        self.runners = make_runners(self.models, backend, **options)
        self.executor = Executor(
            self.runners,
            lambda r: self.models.max_batch(r.model, r.profile),
            self.models.card.input_name,
            self.models.card.output_name,
        )
        try:
            for runner in self.runners.values():
                runner.activate()
        except BaseException:
            for runner in self.runners.values():  # free what the runners before the failing one hold
                runner.deactivate()
            raise
        self._batcher: StreamBatcher | None = None
        self._max_wait_ms = max_wait_ms
        self._feed: Any = None

    def prepare(self, image: Image) -> Item:
        """Decode (if a path), apply the policy and the Caffe preprocessing, and route; raises per-image errors."""
        arrays = isinstance(image, np.ndarray)
        pixels = _check_array(image) if arrays else load_bgr(image, max_pixels=self.max_pixels)
        view = prepare(pixels, self.policy, self.pre, self.models)
        return Item(view.pixels, route(view, self.models))

    def infer(self, images: Sequence[Image]) -> list[Result]:
        """Results for `images`, in order; an image that cannot be read or routed gets its own error."""
        items: list[Item | Exception] = []
        for image in images:
            try:
                items.append(self.prepare(image))
            except SppnetError as e:  # this image's problem: it gets the error, the others go on
                items.append(e)
        outcomes = run_batches(self.executor, items)
        triples = zip(images, items, outcomes, strict=True)
        return [self._result(i, image, item, out) for i, (image, item, out) in enumerate(triples)]

    def submit(self, image: Image, index: int = 0) -> Future:
        """A future of one image's Result, batched with other submissions of the same route."""
        result: Future = Future()
        try:
            item = self.prepare(image)
        except SppnetError as e:
            result.set_result(self._result(index, image, e, e))
            return result
        if self._batcher is None:
            self._batcher = StreamBatcher(self.executor, self._max_wait_ms)
        logits = self._batcher.submit(item)

        def done(f: Future) -> None:
            error = f.exception()
            if error is not None and not isinstance(error, SppnetError):
                result.set_exception(error)  # a bug: the caller gets it with its traceback
                return
            result.set_result(self._result(index, image, item, error if error is not None else f.result()))

        logits.add_done_callback(done)
        return result

    def stream(self, images: Sequence[Image], **feed_options: Any) -> list[Result]:
        """Results for `images`, in order, through the GPU-fed path (`sppnet.engines.feed.DeviceFeed`): decoding in
        worker processes, uint8 uploads, preprocessing on the models' device, double-buffered batches per route.
        `feed_options` configure the feed the first time (workers, depth, batch)."""
        if self._feed is None:
            from sppnet.engines.feed import DeviceFeed

            self._feed = DeviceFeed(self, **feed_options)
        return self._feed.run(images)

    def _result(self, index: int, image: Image, item: Item | Exception, outcome: object) -> Result:
        source = "<array>" if isinstance(image, np.ndarray) else os.fspath(image)
        if isinstance(outcome, Exception):
            route_taken = item.route if isinstance(item, Item) else None
            return Result(index, source, route_taken, error=one_line(outcome))
        assert isinstance(item, Item) and isinstance(outcome, np.ndarray)
        return Result(index, source, item.route, self._topk(outcome), outcome)

    def _topk(self, logits: np.ndarray) -> tuple[tuple[str, float], ...]:
        z = logits.astype(np.float64) - logits.max()
        p = np.exp(z) / np.exp(z).sum()
        order = np.argsort(-p, kind="stable")[: self.topk]
        return tuple((self.models.card.classes[i], float(p[i])) for i in order)

    def close(self) -> None:
        """Finish streamed work and free every backend."""
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        for runner in self.runners.values():
            runner.deactivate()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_array(image: np.ndarray) -> np.ndarray:
    """An in-memory image must be BGR uint8 (H, W, 3), as `load_bgr` returns."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise BadImage(
            f"an image array must be BGR uint8 of shape (H, W, 3); got {image.dtype} {image.shape}: "
            "decode files with sppnet.core.images.load_bgr"
        )
    return image

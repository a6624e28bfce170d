"""`sppnet bench runtime`: a stream of mixed-size images through the dispatcher, against calling the chosen models
directly with the same batches, and against PyTorch eager on the same inputs, timed side by side in one run.

With a device (`--device cuda`, or cpu for a dry run), `bench_serving` times serving at the device's speed in one
run, every row against PyTorch eager fp32 and fp16 and torch.compile on the same stream: the bare engine on one
device batch; the GPU-fed runtime (`Runtime.stream`) from decoded arrays at a fixed scale, on mixed sizes at their
exact size and with the `nearest` policy; end to end from JPEG files; and batch-1 latency (p50, p99).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sppnet.core.errors import InvalidInput
from sppnet.core.preprocess import subtract_mean, to_chw_batch
from sppnet.engines.backends.base import Runner, TensorMeta
from sppnet.engines.routing import Policy, route_size
from sppnet.engines.runtime import Runtime, native_backend


@dataclass(frozen=True)
class RuntimeBench:
    """Median seconds per pass over the stream, and the ratios that matter."""

    images: int
    routes: dict[str, int]
    dispatcher_s: float
    direct_s: float
    torch_s: float | None
    backend: str
    precision: str

    ratios: tuple[float, ...] = ()  # dispatcher / direct, pass by pass
    bookkeeping_s: float | None = None  # dispatcher minus direct with models that return at once

    @property
    def overhead(self) -> float:
        """Median over passes of dispatcher time / direct time, minus one (0.03 = 3% overhead); pairing the two
        passes of one repeat cancels the machine's slow drift."""
        ratios = self.ratios or (self.dispatcher_s / self.direct_s,)
        return statistics.median(ratios) - 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"overhead": self.overhead}


def mixed_stream(models_fixed: list[tuple[int, int]], count: int, lo: int, hi: int, seed: int = 0) -> list[np.ndarray]:
    """`count` BGR uint8 images: a third at the fixed scales exactly, the rest of random size in [lo, hi]."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        if models_fixed and i % 3 == 0:
            h, w = models_fixed[(i // 3) % len(models_fixed)]
        else:
            h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return images


def bench_runtime(
    directory: str,
    *,
    count: int = 96,
    repeats: int = 9,
    precision: str = "fp32",
    backend: str = "auto",
    max_size: int = 256,
    torch_reference: bool = True,
    seed: int = 0,
    device: str | None = None,
    **serving: Any,
) -> RuntimeBench | ServingBench:
    """Time the dispatcher, direct model calls and (optionally) PyTorch eager over one mixed stream, interleaved.

    With `device`, time serving on that device instead (`bench_serving`; `serving` holds its options).
    """
    if device is not None:
        return bench_serving(directory, device=device, precision=precision, backend=backend, seed=seed, **serving)
    with Runtime(directory, backend=backend, policy=Policy("none"), precision=precision, topk=1) as rt:
        models = rt.models
        lo = models.dynamic.profiles[0].min[2] if models.dynamic else min(h for h, _ in models.fixed)
        stream = mixed_stream(list(models.fixed), count, lo, min(max_size, models.sizes.max), seed)
        served = models.served
        routes = [route_size(img.shape[0], img.shape[1], served) for img in stream]
        groups: dict[tuple[str, int, int, int], list[int]] = {}
        for i, r in enumerate(routes):
            groups.setdefault(r.key(), []).append(i)

        def direct() -> None:
            # The dispatcher's work minus the dispatcher: preprocess everything, then run the same batches.
            views = [subtract_mean(image.astype(np.float32), rt.pre) for image in stream]
            for (name, profile, _, _), indices in groups.items():
                limit = models.max_batch(name, profile)
                for start in range(0, len(indices), limit):
                    batch = to_chw_batch([views[i] for i in indices[start : start + limit]])
                    rt.runners[name].infer({models.card.input_name: batch}, profile)

        def dispatcher() -> None:
            results = rt.infer(stream)
            assert all(r.error is None for r in results)

        torch_pass = _torch_pass(rt, stream, groups, routes) if torch_reference else None
        timings: dict[str, list[float]] = {"dispatcher": [], "direct": [], "torch": []}
        dispatcher(), direct()  # warm-up: sessions, allocators, caches
        if torch_pass:
            torch_pass()
        passes = [("direct", direct), ("dispatcher", dispatcher), ("torch", torch_pass)]
        for repeat in range(repeats):
            # Rotate the order each repeat so no contender always follows the same one (caches, thread pools).
            for name, fn in passes[repeat % 3 :] + passes[: repeat % 3]:
                if fn is None:
                    continue
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)
        bookkeeping = _bookkeeping(rt, dispatcher, direct, repeats)
        counts: dict[str, int] = {}
        for r in routes:
            counts[r.model] = counts.get(r.model, 0) + 1
        return RuntimeBench(
            count,
            counts,
            statistics.median(timings["dispatcher"]),
            statistics.median(timings["direct"]),
            statistics.median(timings["torch"]) if timings["torch"] else None,
            native_backend(models) if backend == "auto" else backend,
            precision,
            tuple(d / r for d, r in zip(timings["dispatcher"], timings["direct"], strict=True)),
            bookkeeping,
        )


class _Instant(Runner):
    """Returns zeros of the right shape at once: what is left of a pass is the dispatcher's own work."""

    def __init__(self, classes: int, input_name: str, output_name: str) -> None:
        super().__init__()
        self.classes, self.input_name, self.output_name = classes, input_name, output_name

    def _activate_impl(self) -> None: ...

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        return {self.output_name: np.zeros((len(x), self.classes), np.float32)}

    def _inputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta(self.input_name, np.dtype(np.float32), (None, 3, None, None))]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta(self.output_name, np.dtype(np.float32), (None, self.classes))]

    def _deactivate_impl(self) -> None: ...


def _bookkeeping(rt: Runtime, dispatcher: Callable[[], None], direct: Callable[[], None], repeats: int) -> float:
    """Median of (dispatcher - direct) pass time with instant models: routing, grouping, results, top-k."""
    real = dict(rt.runners)
    card = rt.models.card
    instant = _Instant(card.num_classes, card.input_name, card.output_name).activate()
    for name in real:
        rt.runners[name] = rt.executor.runners[name] = instant
    try:
        differences = []
        for _ in range(repeats):
            start = time.perf_counter()
            dispatcher()
            middle = time.perf_counter()
            direct()
            differences.append((middle - start) - (time.perf_counter() - middle))
    finally:
        for name, runner in real.items():
            rt.runners[name] = rt.executor.runners[name] = runner
    return statistics.median(differences)


def _torch_pass(rt: Runtime, stream: list[np.ndarray], groups: dict, routes: list) -> Callable[[], None] | None:
    """PyTorch eager on the same same-size batches (the model the directory was exported from)."""
    import torch

    model = source_model(rt)
    if model is None:
        return None

    def run() -> None:
        with torch.inference_mode():
            for indices in groups.values():
                views = [subtract_mean(stream[i].astype(np.float32), rt.pre) for i in indices]
                for start in range(0, len(views), 32):
                    model(torch.from_numpy(to_chw_batch(views[start : start + 32])))

    return run


def source_model(rt: Runtime) -> Any:
    """The PyTorch model a runtime's directory came from (a run, an export's run, a compiled-engine directory's
    export's run), in eval mode on the CPU; None for TensorRT engines."""
    from sppnet.core.manifest import EngineManifest
    from sppnet.core.runs import load_model
    from sppnet.export.onnx_export import source_of_export

    models = rt.models
    if models.kind == "run":
        return load_model(models.directory).eval()
    if models.kind == "onnx":
        return source_of_export(models.directory).model.eval()
    manifest = models.manifest
    if isinstance(manifest, EngineManifest) and native_backend(models) == "torch_aoti":
        return source_of_export(manifest.source_dir).model.eval()
    return None


def format_bench(b: RuntimeBench | ServingBench) -> str:
    """The benchmark as a few readable lines with its ratios."""
    if isinstance(b, ServingBench):
        return b.format()
    per = {k: b.images / v for k, v in (("dispatcher", b.dispatcher_s), ("direct", b.direct_s))}
    lines = [
        f"{b.images} images of mixed sizes ({', '.join(f'{k}: {v}' for k, v in sorted(b.routes.items()))})",
        f"backend {b.backend}, {b.precision}; median of interleaved passes",
        f"  dispatcher (preprocess + route + batch + run + top-k): {b.dispatcher_s * 1e3:8.1f} ms  "
        f"{per['dispatcher']:8.1f} img/s",
        f"  direct model calls, same batches and preprocessing:    {b.direct_s * 1e3:8.1f} ms  "
        f"{per['direct']:8.1f} img/s",
        f"  dispatch overhead: {100 * b.overhead:+.1f}% (target < 5%; median of {len(b.ratios)} paired passes, "
        f"range {100 * (min(b.ratios) - 1):+.1f}%..{100 * (max(b.ratios) - 1):+.1f}%)",
        f"  dispatcher's own work (instant models): {b.bookkeeping_s * 1e3:.2f} ms per pass = "
        f"{100 * b.bookkeeping_s / b.direct_s:+.1f}% of the direct pass",
    ]
    if b.torch_s is not None:
        lines.append(
            f"  PyTorch eager, same batches:                            {b.torch_s * 1e3:8.1f} ms  "
            f"{b.images / b.torch_s:8.1f} img/s  -> dispatcher is {b.torch_s / b.dispatcher_s:.2f}x PyTorch's speed"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- serving on a device (`--device`)


class TorchCall:
    """A PyTorch model as the GPU-fed path's model call: eager or torch.compile'd, fp32/fp16/bf16, channels_last."""

    def __init__(self, model: Any, precision: str, device: str, *, compiled: bool = False) -> None:
        import copy

        import torch

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.dtype = dtype
        module = copy.deepcopy(model).eval().to(device, dtype=dtype).to(memory_format=torch.channels_last)
        self.model = torch.compile(module, dynamic=False) if compiled else module

    def __call__(self, x: Any, profile: int = 0) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(x.to(self.dtype).contiguous(memory_format=torch.channels_last)).float()


@dataclass(frozen=True)
class Row:
    """One contender on one stream: median seconds per pass of `images` images."""

    stream: str
    contender: str
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


@dataclass
class ServingBench:
    """Serving on a device: rows per stream and contender, batch-1 latency, and what was measured on what."""

    device: str
    backend: str
    precision: str
    batch: int
    scale: tuple[int, int]
    rows: list[Row]
    latency: dict[str, dict[str, float]]
    notes: list[str]

    def rate(self, stream: str, contender: str) -> float | None:
        found = [r for r in self.rows if r.stream == stream and r.contender == contender]
        return found[0].images_per_s if found else None

    def to_json(self) -> dict[str, Any]:
        rows = [asdict(r) | {"images_per_s": round(r.images_per_s, 1)} | self._ratios(r) for r in self.rows]
        record = asdict(self) | {"rows": rows}
        bare, fed = self.rate("bare", "engine"), self.rate("arrays fixed", "engine")
        if bare and fed:
            record["fed_over_bare"] = round(fed / bare, 3)
        return record

    def _ratios(self, row: Row) -> dict[str, float]:
        out = {}
        for reference in ("eager fp32", "eager fp16"):
            base = self.rate(row.stream, reference)
            if base:
                out[f"x_{reference.replace(' ', '_')}"] = round(row.images_per_s / base, 2)
        return out

    def format(self) -> str:
        lines = [
            f"serving on {self.device}: backend {self.backend}, {self.precision}, batch {self.batch}, fixed scale "
            f"{self.scale[0]}x{self.scale[1]}; median of interleaved passes",
            f"  {'stream':22} {'contender':24} {'images/s':>10}  {'x eager fp32':>12} {'x eager fp16':>12}",
        ]
        for r in self.rows:
            ratios = self._ratios(r)
            cells = [f"{ratios[k]:12.2f}" if k in ratios else f"{'':12}" for k in ("x_eager_fp32", "x_eager_fp16")]
            lines.append(f"  {r.stream:22} {r.contender:24} {r.images_per_s:10.1f}  {' '.join(cells)}")
        bare, fed = self.rate("bare", "engine"), self.rate("arrays fixed", "engine")
        if bare and fed:
            lines.append(f"  GPU-fed fixed-scale stream / bare engine: {fed / bare:.2f} (target >= 0.80)")
        for name, stats in self.latency.items():
            lines.append(f"  batch-1 latency, {name}: p50 {stats['p50_ms']:.3f} ms, p99 {stats['p99_ms']:.3f} ms")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _interleaved(contenders: dict[str, Callable[[], None]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds per call of each contender, one warm-up call each, then passes in rotating order."""
    for fn in contenders.values():
        fn()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for repeat in range(repeats):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
            _sync(device)
            start = time.perf_counter()
            contenders[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _latency(call: Callable[[], None], device: str, calls: int) -> dict[str, float]:
    for _ in range(10):
        call()
    _sync(device)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"p50_ms": 1e3 * times[len(times) // 2], "p99_ms": 1e3 * times[min(len(times) - 1, int(0.99 * len(times)))]}


def write_jpegs(images: list[np.ndarray], directory: Any) -> list[str]:
    """The images as JPEG files (quality 95) in `directory`, for the end-to-end rows."""
    from pathlib import Path

    import cv2

    paths = []
    for i, image in enumerate(images):
        path = Path(directory) / f"{i:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(path))
    return paths


def bench_serving(
    directory: str,
    *,
    device: str = "cuda",
    precision: str | None = None,
    backend: str = "auto",
    count: int = 2048,
    batch: int | None = None,
    repeats: int = 3,
    sizes: tuple[int, int] = (180, 320),
    workers: int | None = None,
    contenders: tuple[str, ...] = ("eager fp32", "eager fp16", "compiled fp16"),
    jpeg: bool = True,
    latency_calls: int = 200,
    seed: int = 0,
) -> ServingBench:
    """Serving images/s on `device` for a directory's models and for PyTorch on the same streams (module docstring).

    Args:
        count: images per stream pass; batch: the fixed-scale batch (default: the fixed model's max batch).
        sizes: the range of random sides of the mixed streams.
        contenders: PyTorch rows beside the engine ("eager fp32", "eager fp16", "eager bf16", "compiled fp16").
    """
    import tempfile

    import torch

    notes: list[str] = []
    rows: list[Row] = []
    latency: dict[str, dict[str, float]] = {}
    with Runtime(directory, backend=backend, policy=Policy("none"), precision=precision, device=device, topk=1) as rt:
        models = rt.models
        if not models.fixed:
            raise InvalidInput(f"{directory} has no fixed-size model: the serving benchmark needs one")
        scale, entry = next(iter(models.fixed.items()))
        batch = min(batch or entry.max_batch, entry.max_batch)
        model = source_model(rt)
        calls: dict[str, TorchCall] = {}
        for name in contenders if model is not None else ():
            kind, prec = name.split()
            calls[name] = TorchCall(model, prec, device, compiled=kind == "compiled")
        if model is None:
            notes.append("no PyTorch model behind these engines: engine rows only")
        feed = rt._feed or _open_feed(rt, workers)
        engine_calls = dict(feed.calls)
        rng = np.random.default_rng(seed)

        # bare: the model alone on one device batch, count // batch calls per pass
        x = torch.from_numpy(rng.normal(0.0, 60.0, (batch, 3, *scale)).astype(np.float32) * rt.pre.scale)
        x = x.to(device)
        engine_run, engine_buffer = engine_calls[entry.file]
        engine_run(x, 0)
        buffer = engine_buffer(batch)
        engine_x = buffer.copy_(x) if buffer is not None else x
        calls_per_pass = max(1, count // batch)
        bare: dict[str, Callable[[], None]] = {
            "engine": lambda: [engine_run(engine_x, 0) for _ in range(calls_per_pass)]
        }
        for name, call in calls.items():
            bare[name] = lambda call=call: [call(x) for _ in range(calls_per_pass)]
        for name, seconds in _interleaved(bare, repeats, device).items():
            rows.append(Row("bare", name, calls_per_pass * batch, seconds))

        def through_feed(images: list[Any], call: Callable[[Any, int], Any] | None) -> Callable[[], None]:
            def run() -> None:
                feed.calls = engine_calls if call is None else {k: (call, lambda b: None) for k in engine_calls}
                results = feed.run(images)
                if any(r.error for r in results):
                    raise InvalidInput(f"the benchmark stream failed: {next(r.error for r in results if r.error)}")

            return run

        fixed = [rng.integers(0, 256, (*scale, 3), dtype=np.uint8) for _ in range(count)]
        lo, hi = sizes
        mixed = [
            rng.integers(0, 256, (*map(int, rng.integers(lo, hi + 1, 2)), 3), dtype=np.uint8) for _ in range(count)
        ]
        streams: list[tuple[str, str, list[Any], tuple[str, ...]]] = [
            ("arrays fixed", "none", fixed, tuple(calls)),
            ("arrays mixed exact", "none", mixed, tuple(n for n in calls if not n.startswith("compiled"))),
            ("arrays mixed nearest", "nearest", mixed, tuple(calls)),
        ]
        notes.append("torch.compile is left out of the exact-size stream: it would recompile for every new size")
        with tempfile.TemporaryDirectory(prefix="sppnet-bench-") as tmp:
            if jpeg:
                streams.append(("jpeg mixed nearest", "nearest", write_jpegs(mixed, tmp), tuple(calls)[:2]))
            for stream, policy, images, names in streams:
                rt.policy = Policy(policy)
                passes = {"engine": through_feed(images, None)} | {n: through_feed(images, calls[n]) for n in names}
                if stream == "arrays fixed":
                    passes["engine, Runtime.infer"] = lambda images=images: rt.infer(images)
                for name, seconds in _interleaved(passes, repeats, device).items():
                    rows.append(Row(stream, name, len(images), seconds))
        feed.calls = engine_calls

        one = x[:1].contiguous()
        latency["engine"] = _latency(lambda: engine_run(one, 0), device, latency_calls)
        for name in ("eager fp16", "compiled fp16"):
            if name in calls:
                latency[name] = _latency(lambda name=name: calls[name](one), device, latency_calls)
    return ServingBench(device, native_backend(models), models.precision, batch, scale, rows, latency, notes)


def _open_feed(rt: Runtime, workers: int | None) -> Any:
    from sppnet.engines.feed import DeviceFeed

    rt._feed = DeviceFeed(rt, workers=workers)
    return rt._feed

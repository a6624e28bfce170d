"""`sppnet bench runtime`: a stream of mixed-size images through the dispatcher, against calling the chosen models
directly with the same batches, and against PyTorch eager on the same inputs, timed side by side in one run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sppnet.core.preprocess import subtract_mean, to_chw_batch
from sppnet.engines.backends.base import Runner, TensorMeta
from sppnet.engines.routing import Policy, Served, route_size
from sppnet.engines.runtime import NATIVE, Runtime


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
) -> RuntimeBench:
    """Time the dispatcher, direct model calls and (optionally) PyTorch eager over one mixed stream, interleaved."""
    with Runtime(directory, backend=backend, policy=Policy("none"), precision=precision, topk=1) as rt:
        models = rt.models
        lo = models.dynamic.profiles[0].min[2] if models.dynamic else min(h for h, _ in models.fixed)
        stream = mixed_stream(list(models.fixed), count, lo, min(max_size, models.sizes.max), seed)
        served = Served.of(models)
        routes = [route_size(img.shape[0], img.shape[1], served) for img in stream]
        groups: dict[tuple[str, int, int, int], list[int]] = {}
        for i, r in enumerate(routes):
            groups.setdefault(r.key(), []).append(i)
        by_name = {f.file: f for f in models.files}

        def direct() -> None:
            # The dispatcher's work minus the dispatcher: preprocess everything, then run the same batches.
            views = [subtract_mean(image.astype(np.float32), rt.pre) for image in stream]
            for (name, profile, _, _), indices in groups.items():
                limit = by_name[name].profiles[profile].max_batch
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
            NATIVE[models.kind] if backend == "auto" else backend,
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

    from sppnet.core.runs import load_model
    from sppnet.export.onnx_export import source_of_export

    models = rt.models
    if models.kind == "run":
        model = load_model(models.directory)
    elif models.kind == "onnx":
        model = source_of_export(models.directory).model
    else:
        return None
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            for indices in groups.values():
                views = [subtract_mean(stream[i].astype(np.float32), rt.pre) for i in indices]
                for start in range(0, len(views), 32):
                    model(torch.from_numpy(to_chw_batch(views[start : start + 32])))

    return run


def format_bench(b: RuntimeBench) -> str:
    """The benchmark as a few readable lines with its ratios."""
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

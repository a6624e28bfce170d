"""Stage 6, serve: held-out images of varied sizes through the runtime under two policies, compared with PyTorch
on the same inputs (the one comparator), and a mixed-size stream timed against direct calls and PyTorch eager."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.images import load_bgr
from sppnet.engines.backends.pyt import TorchRunner
from sppnet.engines.bench_runtime import bench_runtime
from sppnet.engines.compare import compare, summarise
from sppnet.engines.routing import Policy, prepare
from sppnet.engines.runtime import Runtime
from sppnet.pipeline.evaluate import spread_subset

POLICIES = (Policy("full"), Policy("center-crop"))


@dataclass(frozen=True)
class PolicyResult:
    """One policy's pass: routes taken, distinct input sizes, per-image errors and the agreement with PyTorch."""

    policy: str
    seconds: float
    routes: dict[str, int]
    distinct_sizes: int
    errors: tuple[str, ...]
    agreement: dict[str, Any]


@dataclass(frozen=True)
class ServeResult:
    """Every policy's pass over the held-out images, and the throughput benchmark."""

    images: int
    policies: tuple[PolicyResult, ...]
    bench: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "policies": [vars(p) | {"errors": list(p.errors)} for p in self.policies],
            "bench": self.bench,
        }

    def markdown(self) -> str:
        """The report's runtime section."""
        b = self.bench
        lines = [
            "## Runtime",
            "",
            f"{self.images} held-out images of varied sizes served through the runtime (ONNX Runtime backend, "
            "CPU) under two policies, and compared with PyTorch on the same inputs:",
            "",
            "| policy | routes (images) | input sizes | errors | top-1 agreement | max rel. error | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in self.policies:
            routes = "; ".join(f"{name}: {count}" for name, count in sorted(s.routes.items()))
            a = s.agreement
            lines.append(
                f"| {s.policy} | {routes} | {s.distinct_sizes} distinct | {len(s.errors)} | "
                f"{100 * a['top1_agree']:.1f}% of {a['sizes']} | {a['max_rel']:.3g} | {s.seconds:.2f} |"
            )
        torch_rate = f", PyTorch eager {b['images'] / b['torch_s']:.1f} img/s." if b.get("torch_s") else "."
        lines += [
            "",
            f"Throughput on a stream of {b['images']} mixed-size images (a third at the fixed scales; median of "
            f"interleaved passes): dispatcher {b['images'] / b['dispatcher_s']:.1f} img/s, direct model calls "
            f"{b['images'] / b['direct_s']:.1f} img/s (paired-median overhead {100 * b['overhead']:+.1f}%; the "
            f"dispatcher's own work, timed with models that return at once, {1e3 * b['bookkeeping_s']:.2f} ms per "
            f"pass = {100 * b['bookkeeping_s'] / b['direct_s']:+.1f}%){torch_rate}",
        ]
        return "\n".join(lines) + "\n"


def held_out_images(data_dir: Path, count: int) -> list[Path]:
    """`count` test images of a built-in dataset, spread evenly over its classes (sorted: a reproducible choice)."""
    paths = sorted(p for p in (data_dir / "test").rglob("*") if p.is_file())
    return [paths[i] for i in spread_subset(len(paths), count)]


def serve_check(onnx_dir: Path, run_dir: Path, images: list[Path], *, bench_images: int = 288) -> ServeResult:
    """Serve `images` from `onnx_dir` under each policy, compare with the run's PyTorch model, time a stream."""
    with TorchRunner(run_dir) as reference:
        served = tuple(_serve(onnx_dir, reference, images, policy) for policy in POLICIES)
    bench = bench_runtime(str(onnx_dir), count=bench_images, repeats=9)
    return ServeResult(len(images), served, bench.to_json())


def _serve(onnx_dir: Path, reference: TorchRunner, images: list[Path], policy: Policy) -> PolicyResult:
    began = time.perf_counter()
    with Runtime(onnx_dir, policy=policy, topk=1) as rt:
        results = rt.infer(list(images))
        seconds = time.perf_counter() - began
        card, rows = rt.models.card, []
        for path, result in zip(images, results, strict=True):
            if result.error is not None or result.logits is None or result.route is None:
                continue
            view = prepare(load_bgr(path), policy, rt.pre, rt.models).pixels
            feed = {card.input_name: np.ascontiguousarray(view.transpose(2, 0, 1)[None])}
            want = reference.infer(feed)[card.output_name]
            size = (result.route.height, result.route.width)
            rows.append(compare(result.logits[None], want, name=policy.describe(), precision="fp32", size=size))
    agreement = summarise(rows)[0] if rows else {"sizes": 0, "top1_agree": 0.0, "max_rel": 0.0}
    routes = Counter(f"{r.route.model} (profile {r.route.profile})" for r in results if r.route)
    sizes = {(r.route.height, r.route.width) for r in results if r.route is not None}
    errors = tuple(r.error for r in results if r.error is not None)
    return PolicyResult(policy.describe(), seconds, dict(routes), len(sizes), errors, agreement)

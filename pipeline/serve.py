"""The main job's runtime stage: serve held-out images of varied sizes through the runtime, and report the routes,
the agreement with PyTorch on the same inputs and the throughput against direct calls and PyTorch eager.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.engines.bench_runtime import bench_runtime
from sppnet.engines.routing import Policy, prepare
from sppnet.engines.runtime import Runtime


def serve_check(
    onnx_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    policies: Sequence[Policy] = (Policy("full"), Policy("center-crop")),
    bench_images: int = 288,
) -> dict[str, Any]:
    """Run `images` through the ONNX Runtime backend under each policy and compare with the PyTorch run on the
    same inputs; then time a mixed-size stream."""
    from sppnet.core.runs import load_model

    model = load_model(run_dir)
    served = [_serve(onnx_dir, model, images, policy) for policy in policies]
    bench = bench_runtime(str(onnx_dir), count=bench_images, repeats=9)
    return {"images": len(images), "policies": served, "bench": bench.to_json()}


def _serve(
    onnx_dir: str | os.PathLike[str], model: Any, images: Sequence[str | os.PathLike[str]], policy: Policy
) -> dict[str, Any]:
    import torch

    from sppnet.core.images import load_bgr

    began = time.perf_counter()
    with Runtime(onnx_dir, policy=policy, topk=1) as rt:
        results = rt.infer(list(images))
        seconds = time.perf_counter() - began
        worst, agree, checked = 0.0, 0, 0
        for path, result in zip(images, results, strict=True):
            if result.error is not None or result.logits is None:
                continue
            view = prepare(load_bgr(path), policy, rt.pre, rt.models)
            with torch.inference_mode():
                want = model(torch.from_numpy(view.transpose(2, 0, 1)[None].copy())).double().numpy()[0]
            worst = max(worst, float(np.abs(result.logits - want).max() / np.abs(want).max()))
            agree += int(np.argmax(result.logits) == np.argmax(want))
            checked += 1
    sizes = {(r.route.height, r.route.width) for r in results if r.route is not None}
    return {
        "policy": policy.describe(),
        "seconds": seconds,
        "errors": [r.to_json() for r in results if r.error is not None],
        "routes": dict(Counter(f"{r.route.model} (profile {r.route.profile})" for r in results if r.route)),
        "distinct_sizes": len(sizes),
        "agreement": {"checked": checked, "top1_agree": agree / max(checked, 1), "max_rel": worst},
    }


def serve_markdown(result: dict[str, Any]) -> str:
    """The report's runtime section."""
    b = result["bench"]
    lines = [
        "## Runtime",
        "",
        f"{result['images']} held-out images of varied sizes served through the runtime (ONNX Runtime backend, "
        "CPU) under two policies, and compared with PyTorch on the same inputs:",
        "",
        "| policy | routes (images) | input sizes | errors | top-1 agreement | max rel. error | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["policies"]:
        routes = "; ".join(f"{name}: {count}" for name, count in sorted(s["routes"].items()))
        a = s["agreement"]
        lines.append(
            f"| {s['policy']} | {routes} | {s['distinct_sizes']} distinct | {len(s['errors'])} | "
            f"{100 * a['top1_agree']:.1f}% of {a['checked']} | {a['max_rel']:.3g} | {s['seconds']:.2f} |"
        )
    lines += [
        "",
        f"Throughput on a stream of {b['images']} mixed-size images (a third at the fixed scales; median of "
        f"interleaved passes): dispatcher {b['images'] / b['dispatcher_s']:.1f} img/s, direct model calls "
        f"{b['images'] / b['direct_s']:.1f} img/s (paired-median overhead {100 * b['overhead']:+.1f}%; the "
        f"dispatcher's own work, timed with models that return at once, {1e3 * b['bookkeeping_s']:.2f} ms per "
        f"pass = {100 * b['bookkeeping_s'] / b['direct_s']:+.1f}%)"
        + (f", PyTorch eager {b['images'] / b['torch_s']:.1f} img/s." if b.get("torch_s") else "."),
    ]
    return "\n".join(lines) + "\n"


def held_out_images(data_dir: str | os.PathLike[str], count: int = 200) -> list[Path]:
    """The first `count` test images of a built-in dataset (sorted, so the choice is reproducible)."""
    paths = sorted(p for p in (Path(data_dir) / "test").rglob("*") if p.is_file())
    return paths[:count]

"""Engines against ONNX Runtime on a GPU machine: every engine of a directory through TensorRTRunner, compared with
the ONNX file it was built from (ONNX Runtime, CPU) on the same random inputs, then timed; prints JSON.

    python -m sppnet.engines.gpu_check --engines ENGINE_DIR --onnx ONNX_DIR [--sizes 24] [--repeat 50]

Fixed engines run at their scale (batch 1 and max); the dynamic engine at many sizes across its range (each on the
profile the runtime would pick, batch 1) and at each profile's max batch. Errors are those of
`sppnet.engines.parity.compare` (max |engine - onnx| over the largest |onnx logit|, with its tolerances). Timings go
through `infer` (pinned copies both ways included), after warm-up: batch-1 latency and max-batch throughput at
each profile's tuned size. No GPU, or TensorRT-RTX refusing this GPU, ends the run with one line on stderr (its
exact message) and the JSON so far on stdout; exit status 1 for any failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.atomic import sha256_file
from sppnet.core.errors import SppnetError
from sppnet.core.manifest import (
    MANIFEST,
    EngineManifest,
    ExportManifest,
    ModelFile,
    read_engine_manifest,
    read_export_manifest,
)
from sppnet.core.profiles import Profile, profile_for
from sppnet.engines.backends.cuda import CUDA_APIS, load_cuda
from sppnet.engines.backends.onnxrt import OnnxRuntimeRunner, SessionFromOnnx
from sppnet.engines.backends.trt import TensorRTRunner
from sppnet.engines.compare import compare, summarise
from sppnet.engines.parity import random_images


class CheckError(SppnetError):
    """The check cannot go on; the message is the one line printed."""


def check_inputs(engine_dir: Path, onnx_dir: Path) -> tuple[EngineManifest, ExportManifest]:
    """Both manifests, after checking that the engines were built from this very export."""
    manifest = read_engine_manifest(engine_dir)
    onnx_manifest = read_export_manifest(onnx_dir)
    if sha256_file(onnx_dir / MANIFEST) != manifest.source_manifest_sha256:
        raise CheckError(
            f"{engine_dir} was not built from {onnx_dir} (its manifest names the export at "
            f"{manifest.source_dir}): pass the ONNX directory the engines were built from"
        )
    return manifest, onnx_manifest


def dynamic_sizes(profiles: Sequence[Profile], count: int, seed: int) -> list[tuple[int, int]]:
    """Every profile's corners and tuned size, then `count` random sizes over the whole range (no duplicates)."""
    rng = np.random.default_rng(seed)
    sizes: list[tuple[int, int]] = []
    for p in profiles:
        (h0, w0), (h1, w1) = p.min[2:], p.max[2:]
        sizes += [(h0, w0), (h1, w1), (h0, w1), (h1, w0), (p.opt[2], p.opt[3])]
    lo_h, lo_w = min(p.min[2] for p in profiles), min(p.min[3] for p in profiles)
    hi_h, hi_w = max(p.max[2] for p in profiles), max(p.max[3] for p in profiles)
    for _ in range(count):
        sizes.append((int(rng.integers(lo_h, hi_h + 1)), int(rng.integers(lo_w, hi_w + 1))))
    return list(dict.fromkeys(sizes))


def parity_cases(entry: ModelFile, count: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(profile, batch, height, width) to compare: fixed at batch 1 and max; dynamic at many sizes and max batches."""
    profiles = list(entry.profiles)
    if entry.kind == "fixed" and entry.scale is not None:
        h, w = entry.scale
        return [(0, 1, h, w), (0, profiles[0].max_batch, h, w)]
    cases = [(profile_for(profiles, h, w), 1, h, w) for h, w in dynamic_sizes(profiles, count, seed)]
    cases += [(i, p.max_batch, p.opt[2], p.opt[3]) for i, p in enumerate(profiles)]
    return cases


def timed(run: Any, repeat: int, warmup: int) -> list[float]:
    """Seconds per call of `run()` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def timing_row(profile: int, batch: int, size: tuple[int, int], times: Sequence[float]) -> dict[str, Any]:
    """Median and p90 milliseconds per call and images per second at the median."""
    ordered = sorted(times)
    median = statistics.median(ordered)
    return {
        "profile": profile,
        "batch": batch,
        "size": list(size),
        "calls": len(ordered),
        "median_ms": round(median * 1e3, 4),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3, 4),
        "images_per_s": round(batch / median, 1),
    }


def check_engine(
    runner: TensorRTRunner,
    reference: OnnxRuntimeRunner,
    entry: ModelFile,
    manifest: EngineManifest,
    *,
    sizes: int,
    seed: int,
    repeat: int,
    warmup: int,
) -> dict[str, Any]:
    """Parity rows, their summary and timings for one active runner against its active ONNX Runtime reference."""
    rng = np.random.default_rng(seed)
    card = manifest.card
    rows = []
    for profile, batch, h, w in parity_cases(entry, sizes, seed):
        feed = {card.input_name: random_images(rng, batch, h, w, card.preprocess.scale)}
        got = runner.infer(feed, profile)[card.output_name]
        want = reference.infer(feed)[card.output_name]
        rows.append(compare(got, want, name=entry.file, precision=entry.precision, size=(h, w)))
    timings = []
    for index, p in enumerate(entry.profiles):
        h, w = p.opt[2], p.opt[3]
        for batch in dict.fromkeys((1, p.max_batch)):
            feed = {card.input_name: random_images(rng, batch, h, w, card.preprocess.scale)}
            times = timed(lambda feed=feed, index=index: runner.infer(feed, index), repeat, warmup)
            timings.append(timing_row(index, batch, (h, w), times))
    worst = max(rows, key=lambda r: r.max_rel)
    return {"parity": summarise(rows)[0], "worst": worst.to_json(), "timing": timings}


def run_checks(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    """Fill `report` engine by engine; True if every engine is within tolerance. An SppnetError stops the run."""
    manifest, _ = check_inputs(args.engines, args.onnx)
    report["builder"] = {"module": manifest.builder.module, "version": manifest.builder.version}
    report["target"] = manifest.target
    cuda = load_cuda(args.cuda_api, args.device)
    report["device"] = {"name": cuda.device_name(), "capability": cuda.capability(), "cuda_api": cuda.name}
    ok = True
    for entry in manifest.files:
        record: dict[str, Any] = {"engine": entry.file, "kind": entry.kind, "precision": entry.precision}
        report["engines"].append(record)
        runner = TensorRTRunner(args.engines / entry.file, manifest, entry, device=args.device, cuda_api=args.cuda_api)
        source = args.onnx / (entry.source_file or "")
        reference = OnnxRuntimeRunner(SessionFromOnnx(source, providers=["CPUExecutionProvider"]))
        try:
            with runner, reference:
                record |= check_engine(
                    runner,
                    reference,
                    entry,
                    manifest,
                    sizes=args.sizes,
                    seed=args.seed,
                    repeat=args.repeat,
                    warmup=args.warmup,
                )
            ok = ok and record["parity"]["ok"]
        except SppnetError as e:
            record["error"] = str(e)
            raise CheckError(f"{entry.file}: {e}") from e
        finally:
            record["runner"] = dict(runner.info)
    return ok


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sppnet.engines.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--engines", required=True, type=Path, metavar="ENGINE_DIR", help="an `sppnet build` output")
    parser.add_argument("--onnx", required=True, type=Path, metavar="ONNX_DIR", help="the export it was built from")
    parser.add_argument("--sizes", type=int, default=24, help="random sizes for the dynamic engine (24)")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per case (50)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first; TensorRT-RTX compiles here (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--cuda-api", choices=CUDA_APIS, default=None, help="(cuda-python if importable, else torch)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; JSON on stdout, one line on stderr on failure; exit status 0 only if everything passed."""
    args = build_parser().parse_args(argv)
    report: dict[str, Any] = {"engine_dir": str(args.engines), "onnx_dir": str(args.onnx), "engines": []}
    try:
        ok = run_checks(args, report)
    except SppnetError as e:
        report["error"] = str(e)
        print(json.dumps(report, indent=1))
        print(f"gpu_check: {e}", file=sys.stderr)
        return 1
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    if not ok:
        print("gpu_check: some engines are outside their parity tolerance (see 'parity' above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

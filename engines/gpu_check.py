"""The one GPU check: on a GPU machine with this repository installed, every engine kind that can run there is
built, checked for parity against PyTorch and ONNX Runtime CPU through `sppnet.engines.compare`, and benchmarked;
one JSON is written (rewritten after every step, so a run cut short keeps its results) and printed.

    python -m sppnet.engines.gpu_check --out DIR --json OUT.json [--device cuda] [--budget 420]

Steps: export ZF-5 (untrained, 1000 classes; fp32 ONNX at 224 and the dynamic model up to 320); compiled PyTorch
packages for the device in fp16, then fp32 while the time budget allows, each against eager PyTorch fp32 and ONNX
Runtime CPU at many sizes; the serving benchmark (`bench_serving`: bare engine, GPU-fed runtime from arrays at a
fixed scale, mixed sizes exact and `nearest`, JPEG files end to end, batch-1 latency; PyTorch eager fp32/fp16 and
torch.compile beside each) with the issue's targets; ONNX Runtime's CUDA provider (TF32 off and on) against its
CPU provider, and seconds per image on new sizes with heuristic and exhaustive cuDNN search; eager fp16 and bf16
against fp32. `--device cpu` (with a small network: `--network zf5_cpu --classes 10 --scales 112 --max-size 160
--batch 8 --images 64`) is the dry run the tests make.

With `--engines ENGINE_DIR --onnx ONNX_DIR` it checks TensorRT engines instead: every engine of a directory through
TensorRTRunner, compared with the ONNX file it was built from (ONNX Runtime, CPU) on the same random inputs, then
timed; prints JSON.

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
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.atomic import sha256_file, write_atomic
from sppnet.core.errors import SppnetError, one_line
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
    device = _device_index(args.device)
    cuda = load_cuda(args.cuda_api, device)
    report["device"] = {"name": cuda.device_name(), "capability": cuda.capability(), "cuda_api": cuda.name}
    ok = True
    for entry in manifest.files:
        record: dict[str, Any] = {"engine": entry.file, "kind": entry.kind, "precision": entry.precision}
        report["engines"].append(record)
        runner = TensorRTRunner(args.engines / entry.file, manifest, entry, device=device, cuda_api=args.cuda_api)
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


# ---------------------------------------------------------------- the full check: every engine kind that runs here

TARGETS = {
    "fed_over_bare": 0.80,  # GPU-fed fixed-scale stream over the bare compiled engine, same batch
    "fixed_stream_fp16": 35_000.0,  # images/s, fixed-scale stream from decoded arrays
    "mixed_exact": 4 * 620.0,  # images/s, mixed sizes at their exact size (4x the runtime's 620 before)
    "mixed_nearest": 15_000.0,  # images/s, mixed sizes with the nearest policy
    "batch1_p50_ms": 0.5,  # batch-1 latency on a fixed-scale engine
}


class Report:
    """The one JSON of a full check, rewritten atomically after every step so a run cut short keeps what it did."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.record: dict[str, Any] = {"steps": {}, "skipped": {}, "errors": {}}
        self.start = time.perf_counter()

    def step(self, name: str, value: Any) -> None:
        self.record["steps"][name] = value
        self.save()

    def skip(self, name: str, why: str) -> None:
        self.record["skipped"][name] = why
        self.save()

    def error(self, name: str, error: BaseException) -> None:
        self.record["errors"][name] = f"{type(error).__name__}: {one_line(error)}"
        self.save()

    def save(self) -> None:
        self.record["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        if self.path is not None:
            write_atomic(self.path, (json.dumps(self.record, indent=1, default=str) + "\n").encode())


def environment(device: str) -> dict[str, Any]:
    """Versions and the device: what the numbers were measured with."""
    import platform

    import onnxruntime as ort
    import torch

    record: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "device": device,
    }
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        record |= {
            "gpu": torch.cuda.get_device_name(index),
            "capability": list(torch.cuda.get_device_capability(index)),
        }
    with contextlib.suppress(ImportError):
        import triton

        record["triton"] = triton.__version__
    return record


def parity_sizes(entry: ModelFile, count: int, seed: int) -> list[tuple[int, int, int]]:
    """(batch, height, width): a fixed model at batch 1 and 8; a dynamic one at odd, elongated and random sizes."""
    if entry.kind == "fixed" and entry.scale is not None:
        return [(1, *entry.scale), (min(8, entry.max_batch), *entry.scale)]
    return [(1 + i % 2, h, w) for i, (h, w) in enumerate(dynamic_sizes(entry.profiles, count, seed))]


def torch_logits(model: Any, x: np.ndarray, device: str, precision: str = "fp32") -> np.ndarray:
    """A PyTorch model's fp32 logits for one batch on `device` (a copy in fp16 or bf16 when asked), TF32 off."""
    import copy

    import torch

    from sppnet.export.aoti_builder import full_fp32
    from sppnet.export.torch_form import DTYPES

    dtype = DTYPES[precision]
    model = model.to(device) if precision == "fp32" else copy.deepcopy(model).to(device, dtype=dtype)
    with torch.inference_mode(), full_fp32():
        return model(torch.from_numpy(x).to(device, dtype=dtype)).float().cpu().numpy()


def check_packages(engine_dir: Path, onnx_dir: Path, model: Any, device: str, count: int, seed: int) -> dict[str, Any]:
    """Every compiled package against eager PyTorch fp32 and ONNX Runtime CPU (the fp32 ONNX file of its kind)."""
    from sppnet.engines.backends.aoti import AOTIRunner

    manifest, onnx = read_engine_manifest(engine_dir), read_export_manifest(onnx_dir)
    card = manifest.card
    rows: list[Any] = []
    rng = np.random.default_rng(seed)
    for entry in manifest.files:
        source = next(f for f in onnx.files if (f.kind, f.scale, f.precision) == (entry.kind, entry.scale, "fp32"))
        reference = OnnxRuntimeRunner(SessionFromOnnx(onnx_dir / source.file, providers=["CPUExecutionProvider"]))
        with AOTIRunner(engine_dir / entry.file, manifest, entry, device=device) as runner, reference:
            for batch, h, w in parity_sizes(entry, count, seed):
                x = random_images(rng, batch, h, w, card.preprocess.scale)
                got = runner.infer({card.input_name: x})[card.output_name]
                want = torch_logits(model, x, device)
                rows.append(
                    compare(got, want, name=f"{entry.file} vs eager fp32", precision=entry.precision, size=(h, w))
                )
                want = reference.infer({card.input_name: x})[card.output_name]
                rows.append(
                    compare(got, want, name=f"{entry.file} vs onnxruntime cpu", precision=entry.precision, size=(h, w))
                )
            info = dict(runner.info)
        rows.append(info)
    return {
        "parity": summarise([r for r in rows if not isinstance(r, dict)]),
        "runners": [r for r in rows if isinstance(r, dict)],
        "compile_seconds": {f.file: f.seconds for f in manifest.files},
    }


def check_onnxruntime_cuda(onnx_dir: Path, device: str, count: int, seed: int) -> dict[str, Any]:
    """ONNX Runtime's CUDA provider (TF32 off, then on) against its CPU provider on the fp32 files; then seconds per
    image on a stream of new sizes with cuDNN's heuristic algorithm choice and with exhaustive search."""
    manifest = read_export_manifest(onnx_dir)
    card = manifest.card
    rng = np.random.default_rng(seed)
    rows, timing = [], {}
    for entry in [f for f in manifest.files if f.precision == "fp32" and f.spp_form != "plugin"]:
        cpu = OnnxRuntimeRunner(SessionFromOnnx(onnx_dir / entry.file, providers=["CPUExecutionProvider"]))
        with cpu:
            cases = [
                (random_images(rng, b, h, w, card.preprocess.scale)) for b, h, w in parity_sizes(entry, count, seed)
            ]
            wants = [cpu.infer({card.input_name: x})[card.output_name] for x in cases]
        for tf32 in (False, True):
            name = f"{entry.file} cuda tf32 {'on' if tf32 else 'off'}"
            with OnnxRuntimeRunner(onnx_dir / entry.file, device=device, tf32=tf32) as gpu:
                for x, want in zip(cases, wants, strict=True):
                    got = gpu.infer({card.input_name: x})[card.output_name]
                    rows.append(
                        compare(
                            got, want, name=name, precision="fp32", size=x.shape[2:], tolerance=1e-3 if tf32 else None
                        )
                    )
        if entry.kind == "dynamic":
            lo, hi = entry.profiles[0].min[2], min(entry.profiles[0].max[2], 320)
            for search, images in (("HEURISTIC", 24), ("EXHAUSTIVE", 6)):
                sizes = [tuple(int(v) for v in rng.integers(lo, hi + 1, 2)) for _ in range(images)]
                with OnnxRuntimeRunner(onnx_dir / entry.file, device=device, cudnn_search=search) as gpu:
                    start = time.perf_counter()
                    for h, w in sizes:
                        gpu.infer({card.input_name: random_images(rng, 1, h, w, card.preprocess.scale)})
                    timing[search] = {"new_sizes": images, "seconds_per_image": (time.perf_counter() - start) / images}
    return {"parity": summarise(rows), "new_size_stream": timing}


def check_eager_precisions(model: Any, scale: tuple[int, int], device: str, seed: int, input_scale: float) -> list[Any]:
    """PyTorch fp16 and bf16 against fp32 on the device (the reference every compiled package is held to)."""
    rng = np.random.default_rng(seed)
    x = random_images(rng, 8, *scale, input_scale)
    want = torch_logits(model, x, device)
    rows = [
        compare(torch_logits(model, x, device, p), want, name=f"eager {p}", precision=p, size=scale)
        for p in ("fp16", "bf16")
    ]
    return summarise(rows)


def targets_met(bench: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against what the serving benchmark measured."""
    rates = {(r["stream"], r["contender"]): r["images_per_s"] for r in bench["rows"]}
    p50 = bench["latency"].get("engine", {}).get("p50_ms")
    found = {
        "fed_over_bare": bench.get("fed_over_bare"),
        "fixed_stream_fp16": rates.get(("arrays fixed", "engine")),
        "mixed_exact": rates.get(("arrays mixed exact", "engine")),
        "mixed_nearest": rates.get(("arrays mixed nearest", "engine")),
        "batch1_p50_ms": p50,
    }
    return {
        name: {
            "target": target,
            "measured": found[name],
            "met": found[name] is not None
            and (found[name] <= target if name.endswith("_ms") else found[name] >= target),
        }
        for name, target in TARGETS.items()
    }


def full_check(args: argparse.Namespace) -> int:
    """Export, build every engine kind that runs on this device, check parity, benchmark; one JSON (module doc)."""
    from sppnet.engines.bench_runtime import bench_serving
    from sppnet.export.aoti_builder import build_aoti_engines
    from sppnet.export.onnx_export import ExportConfig, export_onnx, source_untrained

    device = args.device if args.device in ("cpu",) or args.device.startswith("cuda") else f"cuda:{args.device}"
    report = Report(args.json)
    deadline = time.perf_counter() + args.budget
    out = Path(args.out)
    report.step("environment", environment(device))
    kinds = set(args.kinds)
    scales = tuple((s, s) for s in args.scales)
    source = source_untrained(args.network, num_classes=args.classes, seed=args.seed)
    model = source.model.eval()
    onnx_dir = out / "onnx"
    start = time.perf_counter()
    config = ExportConfig(
        scales=scales, precisions=("fp32",), max_batch=args.batch, opt_batch=min(64, args.batch), max_size=args.max_size
    )
    export_onnx(source, onnx_dir, config)
    report.step(
        "export",
        {
            "seconds": round(time.perf_counter() - start, 1),
            "network": args.network,
            "classes": args.classes,
            "scales": args.scales,
            "max_size": args.max_size,
            "batch": args.batch,
        },
    )
    ok = True
    built: dict[str, Path] = {}

    def build(precision: str) -> bool:
        """Build and check one precision's packages unless the budget is spent; False if it failed."""
        name = f"aoti_{precision}"
        spent = [report.record["steps"][f"build {p}"]["seconds"] for p in built]
        estimate = 1.5 * max(spent, default=60.0)
        if time.perf_counter() + estimate > deadline:
            report.skip(name, f"building it (about {estimate:.0f} s) would overrun the --budget of {args.budget:.0f} s")
            return True
        try:
            start = time.perf_counter()
            path = out / name
            build_aoti_engines(
                onnx_dir, path, precisions=[precision], device=device, vectorize=not args.scalar, progress=print
            )
            built[precision] = path
            verify = json.loads((path / "verify.json").read_text())
            report.step(f"build {precision}", {"seconds": round(time.perf_counter() - start, 1), "verify": verify})
            result = check_packages(path, onnx_dir, model, device, args.sizes, args.seed)
            report.step(f"parity {name}", result)
            return all(s["ok"] for s in result["parity"])
        except SppnetError as e:
            report.error(name, e)
            return False

    # what the targets need first (fp16 on a GPU), then the checks, then fp32 packages while time is left
    first, later = (["fp16"], ["fp32"]) if device != "cpu" else (["fp32"], [])
    if "aoti" in kinds:
        ok = all([build(p) for p in first])
    if "aoti" in kinds and built:
        if time.perf_counter() + 60 > deadline:
            report.skip("bench", "no time left within --budget")
        else:
            try:
                contenders = ("eager fp32", "eager fp16") + (("compiled fp16",) if args.compile else ())
                bench = bench_serving(
                    str(next(iter(built.values()))),
                    device=device,
                    count=args.images,
                    batch=args.batch,
                    repeats=args.repeats,
                    contenders=contenders,
                    sizes=(args.min_side, args.max_side),
                ).to_json()
                bench["targets"] = targets_met(bench)
                report.step("bench", bench)
            except SppnetError as e:
                ok = False
                report.error("bench", e)
    if "onnxruntime" in kinds and device != "cpu":
        try:
            result = check_onnxruntime_cuda(onnx_dir, device, max(4, args.sizes // 2), args.seed)
            ok = ok and all(s["ok"] for s in result["parity"])
            report.step("onnxruntime cuda", result)
        except SppnetError as e:
            report.error("onnxruntime cuda", e)
    elif "onnxruntime" in kinds:
        report.skip("onnxruntime cuda", "the device is the cpu")
    if "eager" in kinds:
        rows = check_eager_precisions(model, scales[0], device, args.seed, source.card.preprocess.scale)
        report.step("eager precisions", rows)
    if "aoti" in kinds:
        ok = all([build(p) for p in later]) and ok
    report.record["ok"] = ok and not report.record["errors"]
    report.save()
    print(json.dumps(report.record, indent=1, default=str))
    return 0 if report.record["ok"] else 1


def _device_index(device: str | None) -> int:
    text = device or "0"
    return int(text.partition(":")[2] or 0) if text.startswith("cuda") else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sppnet.engines.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, metavar="ENGINE_DIR", help="check these TensorRT engines instead")
    parser.add_argument("--onnx", type=Path, metavar="ONNX_DIR", help="the export the TensorRT engines came from")
    parser.add_argument("--sizes", type=int, default=None, help="random sizes for dynamic models (24; full: 12)")
    parser.add_argument("--repeat", type=int, default=50, help="TensorRT: timed calls per case (50)")
    parser.add_argument("--warmup", type=int, default=20, help="TensorRT: untimed calls first (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (cuda; TensorRT: the index, 0)")
    parser.add_argument("--cuda-api", choices=CUDA_APIS, default=None, help="(cuda-python if importable, else torch)")
    full = parser.add_argument_group("full check (without --engines)")
    full.add_argument("--out", type=Path, default=Path("artifacts/gpu-check"), help="where models are built")
    full.add_argument("--json", type=Path, default=None, help="the report's file (also printed)")
    full.add_argument("--budget", type=float, default=420.0, help="seconds; later builds are skipped past it (420)")
    full.add_argument("--kinds", type=lambda t: t.split(","), default=["aoti", "onnxruntime", "eager"])
    full.add_argument("--network", default="zf5")
    full.add_argument("--classes", type=int, default=1000)
    full.add_argument("--scales", type=lambda t: [int(v) for v in t.split(",")], default=[224])
    full.add_argument("--max-size", type=int, default=320, help="the dynamic models' largest side (320)")
    full.add_argument("--batch", type=int, default=256, help="max batch of every model (256)")
    full.add_argument("--images", type=int, default=2048, help="images per benchmark stream (2048)")
    full.add_argument("--min-side", type=int, default=180, help="mixed streams' smallest side (180)")
    full.add_argument("--max-side", type=int, default=320, help="mixed streams' largest side (320)")
    full.add_argument("--repeats", type=int, default=3, help="benchmark passes per contender (3)")
    full.add_argument("--no-compile", dest="compile", action="store_false", help="leave torch.compile out")
    full.add_argument("--scalar", action="store_true", help="CPU: scalar kernels (faster builds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; JSON on stdout, one line on stderr on failure; exit status 0 only if everything passed."""
    args = build_parser().parse_args(argv)
    if args.engines is None:
        args.sizes = args.sizes or 12
        args.device = args.device or "cuda"
        try:
            return full_check(args)
        except SppnetError as e:  # no GPU, a failed export: one line, as every other failure here
            print(f"gpu_check: {one_line(e)}", file=sys.stderr)
            return 1
    if args.onnx is None:
        build_parser().error("--engines needs --onnx, the export the engines were built from")
    args.sizes = args.sizes or 24
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

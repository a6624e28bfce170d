"""`sppnet export`: a trained run (or an untrained network) to ONNX files and their manifest.

One model per scale (static H and W, dynamic batch) and, with `dynamic`, one model with symbolic H and W in both
SPP forms (decomposed for ONNX Runtime and TensorRT-RTX, plugin for full TensorRT), each in every precision.
Every file is checked (onnx.checker, shape inference) and written atomically; the manifest is written last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from safetensors.torch import save as save_safetensors

from sppnet.core.atomic import sha256, write_atomic
from sppnet.core.bins import check_pyramid
from sppnet.core.models import SPPNet, build_model
from sppnet.core.networks import feature_sizes, feature_stride, geometry, get_network, min_input_size
from sppnet.core.runs import load_model, read_model_info
from sppnet.export.manifest import ONNX_FORMAT, VERSION, file_entry, read_manifest, write_manifest
from sppnet.export.onnx_builder import OPSET, PRECISIONS
from sppnet.export.onnx_model import INPUT, OUTPUT, check_onnx, model_to_onnx


@dataclass(frozen=True)
class ExportConfig:
    """What to export. Scales default to the run's training sizes (else the network's: the paper's 224, 180)."""

    scales: tuple[tuple[int, int], ...] = ()
    dynamic: bool = True
    precisions: tuple[str, ...] = ("fp32", "fp16")
    max_batch: int = 32
    opt_batch: int = 8
    max_size: int | None = None  # the dynamic model's largest H and W; default twice the largest scale


@dataclass
class ExportSource:
    """The model to export and what the manifest says about where it came from."""

    model: SPPNet
    classes: list[str]
    preprocess: dict[str, Any]
    weights: dict[str, Any] = field(default_factory=dict)
    train_sizes: tuple[int, ...] = ()  # the default export scales


def source_from_run(run_dir: str | os.PathLike[str], network: str | None = None) -> ExportSource:
    """A trained run (`RUN/model.json` + weights, verified); `network`, when given, must be the run's."""
    info = read_model_info(run_dir)
    if network is not None and info["network"] != network:
        raise ValueError(
            f"{run_dir} holds a {info['network']} model, not {network}: pass --network {info['network']} "
            "or a run of the network you mean"
        )
    model = load_model(run_dir)
    weights = {"source": str(Path(run_dir).resolve()), "sha256": info["weights"]["sha256"], "trained": True}
    sizes = tuple(info["train"].get("config", {}).get("sizes", ()))
    return ExportSource(model, list(info["classes"]), info["preprocess"], weights, sizes)


def source_untrained(network: str, *, num_classes: int = 1000, seed: int = 0) -> ExportSource:
    """A network with Caffe's initial weights (seed `seed`): for export and build benchmarks, not for accuracy."""
    torch.manual_seed(seed)
    model = build_model(network, num_classes=num_classes).eval()
    spec = get_network(network)
    data = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    weights = {
        "source": f"untrained {network}, Caffe init, seed {seed}",
        "sha256": sha256(data),
        "trained": False,
        "seed": seed,
    }
    classes = [f"class_{i}" for i in range(num_classes)]
    return ExportSource(model, classes, get_network(network).default_preprocess(spec.train_sizes).to_json(), weights)


def check_scale(model: SPPNet, height: int, width: int) -> tuple[int, int]:
    """conv5's size at an input scale; ValueError naming the fix if the scale is too small or cannot be binned."""
    spec, config = model.spec, model.config
    _, h, w = feature_sizes(spec, height, width)[-1]
    if config.spp:
        try:
            check_pyramid(h, w, config.levels, config.rule)
        except ValueError as e:
            raise ValueError(f"scale {height}x{width} (conv5 {h}x{w}): {e}") from None
    elif (height, width) != (config.input_size or spec.input_size,) * 2:
        size = config.input_size or spec.input_size
        raise ValueError(f"the no-SPP model takes {size}x{size} only, not {height}x{width}: use --scales {size}")
    return h, w


def file_name(network: str, precision: str, scale: tuple[int, int] | None, form: str) -> str:
    """zf5_224x224_fp32.onnx, zf5_dynamic_fp16.onnx, zf5_dynamic_plugin_fp32.onnx."""
    where = f"{scale[0]}x{scale[1]}" if scale is not None else "dynamic"
    suffix = "_plugin" if form == "plugin" else ""
    return f"{network}_{where}{suffix}_{precision}.onnx"


def export_onnx(
    source: ExportSource,
    out_dir: str | os.PathLike[str],
    config: ExportConfig = ExportConfig(),
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write every requested ONNX file and then `out_dir/manifest.json`; returns the manifest's path."""
    model, spec = source.model.eval(), source.model.spec
    scales = config.scales or tuple((s, s) for s in source.train_sizes or spec.train_sizes)
    for precision in config.precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not 1 <= config.opt_batch <= config.max_batch:
        raise ValueError(f"need 1 <= opt batch ({config.opt_batch}) <= max batch ({config.max_batch})")
    if not model.config.spp and config.dynamic:
        raise ValueError("the no-SPP baseline takes one input size: export it with --no-dynamic")
    conv5 = {scale: check_scale(model, *scale) for scale in scales}  # every scale checked before writing
    smallest = min_input_size(spec)
    max_size = config.max_size or 2 * max(max(s) for s in scales)
    if config.dynamic and max_size < smallest:
        raise ValueError(f"--max-size {max_size} is below {spec.name}'s smallest input {smallest}")

    jobs: list[tuple[str, tuple[int, int] | None, str]] = [(p, s, "static") for s in scales for p in config.precisions]
    if config.dynamic:
        jobs += [(p, None, form) for form in ("decomposed", "plugin") for p in config.precisions]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for precision, scale, form in jobs:
        start = time.perf_counter()
        graph = model_to_onnx(model, precision=precision, size=scale, spp_form=form)
        check_onnx(graph, custom_op=form == "plugin")
        path = out / file_name(spec.name, precision, scale, form)
        write_atomic(path, graph.SerializeToString())
        seconds = time.perf_counter() - start
        entries.append(
            file_entry(
                path,
                kind="fixed" if scale else "dynamic",
                scale=list(scale) if scale else None,
                conv5=list(conv5[scale]) if scale else None,
                precision=precision,
                spp_form=form,
                export_seconds=round(seconds, 3),
            )
        )
        if progress:
            progress(f"{path.name}: {entries[-1]['bytes'] / 2**20:.1f} MiB in {seconds:.1f} s")

    manifest = {
        "format": ONNX_FORMAT,
        "version": VERSION,
        "network": spec.name,
        "model": asdict(model.config),
        "classes": source.classes,
        "preprocess": source.preprocess,
        "weights": source.weights,
        "spp": {"levels": list(model.config.levels), "rule": model.config.rule, "enabled": model.config.spp},
        "input": {"name": INPUT, "dtype": "float32", "layout": "NCHW", "channels": 3},
        "output": {"name": OUTPUT, "dtype": "float32", "classes": model.config.num_classes},
        "max_batch": config.max_batch,
        "opt_batch": config.opt_batch,
        # `layers` lets the torch-free runtime compute conv5's size and refuse sizes the rule cannot bin.
        "sizes": {"min": smallest, "max": max_size, "feature_stride": feature_stride(spec), "layers": geometry(spec)},
        "opset": OPSET,
        "producer": {"onnx": onnx.__version__, "torch": torch.__version__},
        "files": entries,
    }
    return write_manifest(out, manifest)


def source_of_export(
    onnx_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None
) -> ExportSource:
    """The model an export was made from (the run its manifest names, or `checkpoint`), refusing other weights."""
    manifest = read_manifest(onnx_dir, ONNX_FORMAT)
    weights = manifest["weights"]
    if checkpoint is not None or weights.get("trained"):
        source = source_from_run(checkpoint or weights["source"], manifest["network"])
    else:
        source = source_untrained(
            manifest["network"], num_classes=manifest["output"]["classes"], seed=int(weights.get("seed", 0))
        )
    if source.weights["sha256"] != weights["sha256"]:
        raise ValueError(
            f"the weights of {source.weights['source']} are not the ones exported to {onnx_dir} (sha256 differs): "
            "pass the run that was exported with --checkpoint, or re-export"
        )
    return source

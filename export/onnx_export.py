"""`sppnet export`: a run (or an untrained network) to ONNX files and their typed manifest.

One model per scale (static H and W, dynamic batch) and, with `dynamic`, one model with symbolic H and W whose SPP
is decomposed into standard ops (ONNX Runtime, TensorRT-RTX), plus with `plugin` the custom-node form for full
TensorRT's SPP plugin; each in every precision. Every file is checked (onnx.checker, shape inference) and written
atomically; the manifest, with each file's optimisation profiles, is written last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import torch
from safetensors.torch import save as save_safetensors

from sppnet.core.atomic import sha256, write_atomic
from sppnet.core.bins import check_pyramid
from sppnet.core.errors import ArtifactError, InvalidInput
from sppnet.core.manifest import (
    MANIFEST,
    ExportManifest,
    ModelCard,
    ModelFile,
    SizeRange,
    Weights,
    file_record,
    read_export_manifest,
    read_run_info,
    write_manifest,
)
from sppnet.core.models import SPPNet, build_model
from sppnet.core.networks import feature_sizes, feature_stride, geometry, min_input_size
from sppnet.core.preprocess import Preprocess
from sppnet.core.profiles import Profile, dynamic_profiles, fixed_profile
from sppnet.core.runs import load_model
from sppnet.export.onnx_builder import OPSET, PRECISIONS
from sppnet.export.onnx_model import check_onnx, model_to_onnx


@dataclass(frozen=True)
class ExportConfig:
    """What to export. Scales default to the run's training sizes (else the network's: the paper's 224, 180).

    `plugin` adds the dynamic model's custom-node form, which only full TensorRT with the sppnet plugin builds
    (ONNX Runtime and TensorRT-RTX cannot run it), so it is off by default.
    """

    scales: tuple[tuple[int, int], ...] = ()
    dynamic: bool = True
    plugin: bool = False
    precisions: tuple[str, ...] = ("fp32", "fp16")
    max_batch: int = 32
    opt_batch: int = 8
    max_size: int | None = None  # the dynamic model's largest H and W; default twice the largest scale


@dataclass(frozen=True)
class ExportSource:
    """The model to export and the card its manifest carries (classes, preprocessing, where the weights came from)."""

    model: SPPNet
    card: ModelCard
    train_sizes: tuple[int, ...] = ()  # the default export scales


def card_of(model: SPPNet, classes: list[str], preprocess: Preprocess, weights: Weights) -> ModelCard:
    """The card of a model about to be exported."""
    return ModelCard(model.spec.name, model.config, tuple(classes), preprocess, weights)


def source_from_run(run_dir: str | os.PathLike[str], network: str | None = None) -> ExportSource:
    """A run (`RUN/model.json` + weights, verified); `network`, when given, must be the run's."""
    info = read_run_info(run_dir)
    card = info.card
    if network is not None and card.network != network:
        raise InvalidInput(
            f"{run_dir} holds a {card.network} model, not {network}: pass --network {card.network} "
            "or a run of the network you mean"
        )
    model = load_model(run_dir, info)
    weights = replace(card.weights, file=None, source=str(Path(run_dir).resolve()), trained=True)
    sizes = tuple(info.train.get("config", {}).get("sizes", ()))
    return ExportSource(model, replace(card, weights=weights), sizes)


def source_untrained(network: str, *, num_classes: int = 1000, seed: int = 0) -> ExportSource:
    """A network with Caffe's initial weights (seed `seed`): for export and build benchmarks, not for accuracy."""
    torch.manual_seed(seed)
    model = build_model(network, num_classes=num_classes).eval()
    data = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    weights = Weights(sha256(data), source=f"untrained {network}, Caffe init, seed {seed}", trained=False, seed=seed)
    classes = [f"class_{i}" for i in range(num_classes)]
    return ExportSource(model, card_of(model, classes, model.spec.default_preprocess(), weights))


def check_scale(model: SPPNet, height: int, width: int) -> tuple[int, int]:
    """conv5's size at an input scale; InvalidInput naming the fix if the scale is too small or cannot be binned."""
    spec, config = model.spec, model.config
    _, h, w = feature_sizes(spec, height, width)[-1]
    if config.spp:
        try:
            check_pyramid(h, w, config.levels, config.rule)
        except ValueError as e:
            raise InvalidInput(f"scale {height}x{width} (conv5 {h}x{w}): {e}") from None
    elif (height, width) != (config.input_size or spec.input_size,) * 2:
        size = config.input_size or spec.input_size
        raise InvalidInput(f"the no-SPP model takes {size}x{size} only, not {height}x{width}: use --scales {size}")
    return h, w


def file_name(network: str, precision: str, scale: tuple[int, int] | None, form: str) -> str:
    """zf5_224x224_fp32.onnx, zf5_dynamic_fp16.onnx, zf5_dynamic_plugin_fp32.onnx."""
    where = f"{scale[0]}x{scale[1]}" if scale is not None else "dynamic"
    suffix = "_plugin" if form == "plugin" else ""
    return f"{network}_{where}{suffix}_{precision}.onnx"


def profiles_of(
    scale: tuple[int, int] | None, scales: tuple[tuple[int, int], ...], sizes: SizeRange, config: ExportConfig
) -> tuple[Profile, ...]:
    """The optimisation profiles of one exported model: its fixed size, or the dynamic range (core.profiles)."""
    batches = {"opt_batch": config.opt_batch, "max_batch": config.max_batch}
    if scale is not None:
        return (fixed_profile(*scale, **batches),)
    return tuple(dynamic_profiles(min_size=sizes.min, max_size=sizes.max, scales=scales, **batches))


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
            raise InvalidInput(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not 1 <= config.opt_batch <= config.max_batch:
        raise InvalidInput(f"need 1 <= opt batch ({config.opt_batch}) <= max batch ({config.max_batch})")
    if not model.config.spp and config.dynamic:
        raise InvalidInput("the no-SPP baseline takes one input size: export it with --no-dynamic")
    for scale in scales:  # every scale checked before anything is written
        check_scale(model, *scale)
    smallest = min_input_size(spec)
    max_size = config.max_size or 2 * max(max(s) for s in scales)
    if config.dynamic and max_size < smallest:
        raise InvalidInput(f"--max-size {max_size} is below {spec.name}'s smallest input {smallest}")
    # `layers` lets the torch-free runtime compute conv5's size and refuse sizes the rule cannot bin.
    sizes = SizeRange(smallest, max_size, feature_stride(spec), tuple(tuple(g) for g in geometry(spec)))

    jobs: list[tuple[str, tuple[int, int] | None, str]] = [(p, s, "static") for s in scales for p in config.precisions]
    if config.dynamic:
        forms = ("decomposed", "plugin") if config.plugin else ("decomposed",)
        jobs += [(p, None, form) for form in forms for p in config.precisions]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an interrupted re-export must not leave the old manifest listing files
    entries: list[ModelFile] = []
    for precision, scale, form in jobs:
        start = time.perf_counter()
        graph = model_to_onnx(model, precision=precision, size=scale, spp_form=form)
        check_onnx(graph, custom_op=form == "plugin")
        path = out / file_name(spec.name, precision, scale, form)
        write_atomic(path, graph.SerializeToString())
        seconds = time.perf_counter() - start
        entries.append(
            file_record(
                path,
                kind="fixed" if scale else "dynamic",
                scale=scale,
                precision=precision,
                spp_form=form,
                profiles=profiles_of(scale, scales, sizes, config),
                seconds=round(seconds, 3),
            )
        )
        if progress:
            progress(f"{path.name}: {entries[-1].bytes / 2**20:.1f} MiB in {seconds:.1f} s")

    manifest = ExportManifest(
        card=source.card,
        sizes=sizes,
        max_batch=config.max_batch,
        opt_batch=config.opt_batch,
        files=tuple(entries),
        opset=OPSET,
        producer={"onnx": onnx.__version__, "torch": torch.__version__},
    )
    return write_manifest(out, manifest)


def source_of_export(
    onnx_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None
) -> ExportSource:
    """The model an export was made from (the run its manifest names, or `checkpoint`), refusing other weights."""
    card = read_export_manifest(onnx_dir).card
    weights = card.weights
    if checkpoint is not None or weights.trained:
        run = checkpoint or weights.source
        if run is None:
            raise ArtifactError(f"{onnx_dir} does not say which run it was exported from: pass --checkpoint RUN")
        source = source_from_run(run, card.network)
    else:
        source = source_untrained(card.network, num_classes=card.num_classes, seed=weights.seed or 0)
    if source.card.weights.sha256 != weights.sha256:
        raise InvalidInput(
            f"the weights of {source.card.weights.source} are not the ones exported to {onnx_dir} (sha256 differs): "
            "pass the run that was exported with --checkpoint, or re-export"
        )
    return source

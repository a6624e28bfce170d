"""ONNX Runtime against PyTorch: every file of an export, through the backends' runners and the one comparator.

`check_export` runs every fixed model at its scale and the dynamic models at many sizes, each through an
`OnnxRuntimeRunner`, and the same inputs through a `TorchRunner` on the exported model, then `compare`s them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.bins import can_bin
from sppnet.core.manifest import read_export_manifest
from sppnet.engines.backends.onnxrt import OnnxRuntimeRunner, SessionFromOnnx
from sppnet.engines.backends.pyt import TorchRunner
from sppnet.engines.compare import Comparison, compare


def random_images(rng: np.random.Generator, batch: int, height: int, width: int, scale: float) -> np.ndarray:
    """Inputs shaped like preprocessed images: mean-subtracted pixels (std ~60 grey levels) times the input scale."""
    return (rng.normal(0.0, 60.0, (batch, 3, height, width)) * scale).astype(np.float32)


def dynamic_sizes(
    smallest: int, largest: int, count: int, binnable: Any = None, seed: int = 0
) -> list[tuple[int, int]]:
    """Edge sizes (the smallest, extreme aspect ratios, sizes off the feature stride) and random ones in range;
    `binnable(h, w)`, when given, keeps only sizes whose conv5 the pyramid's rule can bin."""
    rng = np.random.default_rng(seed)
    edges = [(smallest, smallest), (smallest, largest), (largest, smallest), (smallest + 1, smallest + 3)]
    edges += [(largest, largest)] if largest <= 2 * smallest + 200 else []
    sizes = list(edges)
    while len(sizes) < count + len(edges):
        sizes.append((int(rng.integers(smallest, largest + 1)), int(rng.integers(smallest, largest + 1))))
    return [s for s in dict.fromkeys(sizes) if binnable is None or binnable(*s)]


def check_export(
    model: Any,
    onnx_dir: str | os.PathLike[str],
    *,
    dynamic_count: int = 50,
    dynamic_max: int | None = None,
    batch: int = 2,
    seed: int = 0,
) -> list[Comparison]:
    """Compare every runnable file of an export with the PyTorch model (the plugin form needs TensorRT: skipped).

    Fixed files run at their scale with `batch` images; dynamic files at `dynamic_count` sizes, one image each.
    """
    directory = Path(onnx_dir)
    manifest = read_export_manifest(directory)
    card, sizes = manifest.card, manifest.sizes
    rng = np.random.default_rng(seed)
    largest = min(sizes.max, dynamic_max or sizes.max)

    def binnable(h: int, w: int) -> bool:
        conv5 = sizes.conv5(h, w)
        return conv5 is not None and can_bin(*conv5, card.levels, card.rule)

    cases = dynamic_sizes(sizes.min, largest, dynamic_count, binnable, seed)
    rows = []
    with TorchRunner(lambda: model, input_name=card.input_name, output_name=card.output_name) as reference:
        for entry in manifest.files:
            if entry.spp_form == "plugin":
                continue
            runner = OnnxRuntimeRunner(SessionFromOnnx(directory / entry.file, providers=["CPUExecutionProvider"]))
            with runner:
                for h, w in [entry.scale] if entry.scale else cases:
                    x = random_images(rng, batch if entry.kind == "fixed" else 1, h, w, card.preprocess.scale)
                    feed = {card.input_name: x}
                    want = reference.infer(feed)[card.output_name]
                    got = runner.infer(feed)[card.output_name]
                    rows.append(compare(got, want, name=entry.file, precision=entry.precision, size=(h, w)))
    return rows

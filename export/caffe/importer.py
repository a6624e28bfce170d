"""`sppnet caffe import`: a Caffe prototxt + caffemodel as a sppnet run directory (model.safetensors + model.json).

Everything is read and checked before anything is written: the prototxt (syntax, layers, chain), the mapping to
sppnet's network, every parameter blob against the shape the prototxt implies, the mean file and class names.
The weights go straight from the caffemodel's arrays into the model (no copy) and from there to the file
(safetensors' streaming writer), so peak memory is about the weights themselves. The run records where it came from
(`RunInfo.origin`: files, sha256, Caffe format, pyramid, dropout scaling) and its network (`ModelCard.spec`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppnet.core.atomic import sha256_file, write_atomic
from sppnet.core.errors import BadData, InvalidInput
from sppnet.core.models import SPPNet
from sppnet.core.preprocess import Preprocess
from sppnet.core.runs import save_trained
from sppnet.export.caffe.caffemodel import CaffeModel, read_blobproto, read_caffemodel
from sppnet.export.caffe.mapping import Mapped, map_net
from sppnet.export.caffe.netdef import read_netdef

MEAN_FILE = "mean.npy"
# The SPP-net release's preprocessing (its detection code): BGR, scalar mean 128, no scaling.
RELEASE_MEAN_BGR = (128.0, 128.0, 128.0)


def match_weights(mapped: Mapped, model: CaffeModel, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's parameters from the caffemodel's blobs (sharing their memory); BadData naming the layer and
    both shapes where the two files do not match."""
    fix = "pass the caffemodel trained with this prototxt"
    by_layer: dict[str, list[Any]] = {}
    for entry in mapped.params:
        by_layer.setdefault(entry.layer, []).append(entry)
    tensors: dict[str, torch.Tensor] = {}
    for layer, entries in by_layer.items():
        blobs = model.blobs.get(layer)
        if blobs is None:
            raise BadData(f"{model.path} has no layer {layer!r}, which the prototxt needs weights for: {fix}")
        if len(blobs) != len(entries):
            needs = "weights and a bias" if len(entries) == 2 else "weights only (bias_term: false)"
            raise BadData(
                f"layer {layer!r} has {len(blobs)} blobs in {model.path} but the prototxt needs {len(entries)} "
                f"({needs}): {fix}"
            )
        for index, (entry, blob) in enumerate(zip(entries, blobs, strict=True)):
            shape = tuple(expected[entry.key].shape)
            caffe_shape = shape[::-1] if entry.transpose else shape
            if not blob.matches(caffe_shape):
                what = "weights" if index == 0 else "bias"
                raise BadData(
                    f"layer {layer!r}: its {what} are {blob.shape_text()} in {model.path} but "
                    f"{'x'.join(map(str, caffe_shape))} by the prototxt: {fix}"
                )
            tensor = torch.from_numpy(blob.data.reshape(caffe_shape))
            tensors[entry.key] = tensor.t().contiguous() if entry.transpose else tensor
    return tensors


def read_classes(path: str | os.PathLike[str] | None, count: int) -> list[str]:
    """One class name per line (blank lines ignored), as many as the model has outputs; class_0... without a file."""
    if path is None:
        return [f"class_{i}" for i in range(count)]
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read the class names {path} ({e}): pass a text file, one name per line") from None
    if len(names) != count:
        raise BadData(f"{path} names {len(names)} classes but the model has {count} outputs: give one name per output")
    return names


def read_mean(path: str | os.PathLike[str]) -> np.ndarray:
    """A Caffe mean .binaryproto (1 x 3 x H x W, BGR) as a (3, H, W) float32 array."""
    blob = read_blobproto(path)
    shape = tuple(d for d in blob.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] != 3:
        raise BadData(f"{path} holds a {blob.shape_text()} blob, not a 3 x H x W BGR mean: pass Caffe's mean file")
    return blob.data.reshape(shape)


def _preprocess(
    size: int,
    scale: float,
    mean_bgr: Sequence[float] | None,
    mean_file: str | os.PathLike[str] | None,
    out: Path,
) -> tuple[Preprocess, np.ndarray | None]:
    if mean_bgr is not None and mean_file is not None:
        raise InvalidInput("give either --mean-bgr B,G,R or --mean MEAN.binaryproto, not both")
    if not scale > 0:
        raise InvalidInput(f"--scale must be positive; got {scale}")
    mean = read_mean(mean_file) if mean_file is not None else None
    short_side = -(-size * 256 // 224)
    values: dict[str, Any] = {"crop": size, "short_side": short_side, "scale": float(scale)}
    if mean is not None:
        values["mean_image"] = str((out / MEAN_FILE).resolve())
    else:
        values["mean_bgr"] = tuple(mean_bgr) if mean_bgr is not None else RELEASE_MEAN_BGR
    return Preprocess(**values), mean


def import_caffe(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mean_bgr: Sequence[float] | None = None,
    mean_file: str | os.PathLike[str] | None = None,
    scale: float = 1.0,
    classes: str | os.PathLike[str] | None = None,
    input_size: tuple[int, int] | None = None,
    dropout_scaling: str = "auto",
    name: str | None = None,
) -> Path:
    """Import a Caffe model as the run directory `out`; returns its model.json.

    Preprocessing defaults to the SPP-net release's (BGR, scalar mean 128, scale 1). `input_size` is the run's
    size (export scales, crop) and is needed where the prototxt declares no input shape. `dropout_scaling` "auto"
    detects the release's test-time-scaled dropout from its V0 hybrid layout; "train" or "test" force it.
    """
    out = Path(out)
    net = read_netdef(prototxt)
    mapped = map_net(net, input_size=input_size, dropout_scaling=dropout_scaling, name=name)
    with torch.device("meta"):
        model = SPPNet(mapped.spec, mapped.config)
    expected = model.state_dict()
    weights = read_caffemodel(caffemodel, wanted={entry.layer for entry in mapped.params})
    tensors = match_weights(mapped, weights, expected)
    missing = sorted(set(expected) - set(tensors))
    if missing:  # every parameter has a blob by construction; this guards the mapping itself
        raise InvalidInput(f"the imported network has parameters without blobs ({missing}): report this as a bug")
    class_names = read_classes(classes, mapped.config.num_classes)
    preprocess, mean = _preprocess(mapped.spec.input_size, scale, mean_bgr, mean_file, out)
    origin = {
        "kind": "caffe",
        "prototxt": str(Path(prototxt).resolve()),
        "prototxt_sha256": sha256_file(Path(prototxt)),
        "caffemodel": str(Path(caffemodel).resolve()),
        "caffemodel_sha256": sha256_file(Path(caffemodel)),
        "caffemodel_format": weights.format,
        **mapped.record,
    }
    del weights  # the tensors keep the arrays they need
    model.load_state_dict(tensors, assign=True)
    del tensors
    out.mkdir(parents=True, exist_ok=True)
    if mean is not None:
        buffer = io.BytesIO()
        np.save(buffer, mean, allow_pickle=False)
        write_atomic(out / MEAN_FILE, buffer.getvalue())
    spec = mapped.spec.to_json()
    return save_trained(out, model, classes=class_names, preprocess=preprocess, origin=origin, spec=spec)

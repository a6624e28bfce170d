"""Checkpoints that resume a run exactly: weights and solver state in safetensors, the rest in JSON; no pickle.

A checkpoint directory holds `checkpoint.json` and the two tensor files it names, `model-<sha>.safetensors` and
`solver-<sha>.safetensors` (named by a prefix of their sha256). Every file is written to a temporary name,
fsynced and renamed into place, and the JSON last: whenever it exists it names tensor files that exist and
match it, even if a save into the same directory dies half way. Files no longer named are removed afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import random
from dataclasses import asdict, dataclass, field, is_dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from sppnet.core.atomic import read_json, sha256, write_atomic
from sppnet.core.errors import ArtifactError
from sppnet.core.runs import check_fits, read_tensors

FORMAT = "sppnet-checkpoint"
VERSION = 1
STATE_FILE = "checkpoint.json"


@dataclass(frozen=True)
class Checkpoint:
    """What `load_checkpoint` read besides the tensors: the caller's state, the RNG states, the network name."""

    directory: Path
    state: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)
    network: str | None = None


# --- random number generators -------------------------------------------------------------------------------


def _encode_bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _decode_bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _jsonable(value: Any) -> Any:
    """numpy's bit generator state with arrays and numpy scalars made lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def capture_rng(numpy_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The states of torch's (and CUDA's, if present) generators, `numpy_rng`'s and Python's, as a JSON-able dict."""
    version, internal, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch": _encode_bytes(torch.get_rng_state()),
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        rng["torch_cuda"] = [_encode_bytes(s) for s in torch.cuda.get_rng_state_all()]
    if numpy_rng is not None:
        rng["numpy"] = _jsonable(numpy_rng.bit_generator.state)
    return rng


def restore_rng(rng: dict[str, Any], numpy_rng: np.random.Generator | None = None) -> None:
    """Put back the states `capture_rng` took; `numpy_rng` (same bit generator kind) is set in place."""
    if "torch" not in rng or "python" not in rng:
        raise ArtifactError("no RNG states to restore: save the checkpoint with rng=capture_rng(numpy_rng)")
    torch.set_rng_state(_decode_bytes(rng["torch"]))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "torch_cuda" in rng and torch.cuda.is_available():
        if len(rng["torch_cuda"]) != torch.cuda.device_count():
            raise ArtifactError(
                f"the RNG states were saved with {len(rng['torch_cuda'])} CUDA devices but "
                f"{torch.cuda.device_count()} are visible; set CUDA_VISIBLE_DEVICES to match to resume exactly"
            )
        torch.cuda.set_rng_state_all([_decode_bytes(s) for s in rng["torch_cuda"]])
    if numpy_rng is not None:
        if "numpy" not in rng:
            raise ArtifactError("the RNG states hold no numpy generator: capture_rng was called without one")
        saved_kind, kind = rng["numpy"]["bit_generator"], type(numpy_rng.bit_generator).__name__
        if saved_kind != kind:
            raise ArtifactError(f"the saved numpy state is of a {saved_kind} generator, not {kind}: use a {saved_kind}")
        numpy_rng.bit_generator.state = rng["numpy"]


def _write_tensors(directory: Path, stem: str, tensors: dict[str, torch.Tensor]) -> tuple[str, str]:
    """Save `tensors` as `<stem>-<sha>.safetensors`; returns (file name, sha256)."""
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    digest = sha256(data)
    name = f"{stem}-{digest[:16]}.safetensors"
    write_atomic(directory / name, data)
    return name, digest


# --- save ---------------------------------------------------------------------------------------------------


def _network_name(model: nn.Module) -> str | None:
    spec = getattr(model, "spec", None)
    return getattr(spec, "name", None)


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else None


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The model's name of each optimizer parameter, in the order of the optimizer's state_dict indices."""
    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    missing = [i for i, p in enumerate(ordered) if id(p) not in names]
    if missing:
        raise ArtifactError(
            f"optimizer parameter {missing[0]} is not a parameter of the model: build the optimizer from this model"
        )
    return [names[id(p)] for p in ordered]


def _split_optimizer_state(
    optimizer: torch.optim.Optimizer, param_names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's tensors keyed `<param name>/<state key>`, and the rest as JSON."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        name = param_names[index]
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    meta = {
        "class": type(optimizer).__name__,
        "param_names": param_names,
        "param_groups": state_dict["param_groups"],
        "scalars": scalars,
    }
    return tensors, meta


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    rng: dict[str, Any] | None = None,
) -> Path:
    """Save weights, solver state, the caller's JSON-able `state` (epoch, step, configs, metrics) and `rng`.

    Returns the path of the checkpoint's JSON. An older checkpoint in `directory` stays loadable until the new
    one is complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "network": _network_name(model),
        "model_config": _model_config(model),
        "state": state,
        "rng": rng or {},
    }
    json.dumps(meta)  # refuse a state that is not JSON-able before any file is written
    files = {}
    name, digest = _write_tensors(directory, "model", model.state_dict())
    files["model"] = {"file": name, "sha256": digest}
    if optimizer is not None:
        tensors, meta["optimizer"] = _split_optimizer_state(optimizer, _optimizer_param_names(model, optimizer))
        name, digest = _write_tensors(directory, "solver", tensors)
        files["solver"] = {"file": name, "sha256": digest}
    meta["files"] = files
    path = directory / STATE_FILE
    write_atomic(path, (json.dumps(meta, indent=1) + "\n").encode())
    keep = {entry["file"] for entry in files.values()}
    for stale in [*directory.glob("model-*.safetensors"), *directory.glob("solver-*.safetensors")]:
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return path


# --- load ---------------------------------------------------------------------------------------------------


def read_checkpoint_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON (network, configs, state, rng, file hashes) without reading any tensor."""
    path = Path(directory) / STATE_FILE
    meta = read_json(path, "checkpoint", "pass a directory written by save_checkpoint")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ArtifactError(
            f"{path} is not an {FORMAT} version {VERSION} file: pass a directory written by save_checkpoint"
        )
    return meta


def _optimizer_state_dict(meta: dict[str, Any], tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, Any]:
    """Rebuild a torch optimizer state_dict from the JSON part and the `<param name>/<key>` tensors."""
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, _, slot = key.rpartition("/")
        state.setdefault(index[name], {})[slot] = tensor
    for name, scalars in meta["scalars"].items():
        state.setdefault(index[name], {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def _at(names: list[str], index: int) -> str:
    return repr(names[index]) if index < len(names) else "absent"


def load_checkpoint(
    directory: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> Checkpoint:
    """Load weights (and solver state when `optimizer` is given) in place; returns the saved state and RNG states.

    Everything is checked before anything is changed: on a ValueError the model and optimizer are untouched.
    RNG states are returned, not applied: call `restore_rng(checkpoint.rng, numpy_rng)` to resume exactly.
    """
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    path = directory / STATE_FILE
    network = meta.get("network")
    weights = read_tensors(directory, meta["files"]["model"])
    here = _network_name(model)
    made_for = f" (it was made for network {network!r}, this model is {here!r})" if network else ""
    check_fits(model.state_dict(), weights, path, made_for)
    optimizer_state = None
    if optimizer is not None:
        if "solver" not in meta["files"]:
            raise ArtifactError(f"checkpoint {path} holds no solver state: load it with optimizer=None")
        saved = meta["optimizer"]
        if saved["class"] != type(optimizer).__name__:
            raise ArtifactError(f"checkpoint {path} holds {saved['class']} state, not {type(optimizer).__name__}")
        names = _optimizer_param_names(model, optimizer)
        if names != saved["param_names"]:
            first = next(i for i, (a, b) in enumerate(zip_longest(names, saved["param_names"])) if a != b)
            raise ArtifactError(
                f"checkpoint {path} has solver state for other parameters: optimizer parameter {first} is "
                f"{_at(saved['param_names'], first)} in the checkpoint but {_at(names, first)} here; "
                "build the optimizer with the same param groups (caffe_param_groups)"
            )
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        if sizes != [len(group["params"]) for group in saved["param_groups"]]:
            raise ArtifactError(f"checkpoint {path} has param groups of other sizes: build the optimizer the same way")
        solver_tensors = read_tensors(directory, meta["files"]["solver"])
        params = dict(model.named_parameters())
        for key, tensor in solver_tensors.items():
            name = key.rpartition("/")[0]
            if tensor.dim() and tuple(tensor.shape) != tuple(params[name].shape):
                raise ArtifactError(
                    f"checkpoint {path} does not fit this optimizer: {key} has shape {tuple(tensor.shape)} "
                    f"but the parameter has {tuple(params[name].shape)}{made_for}; build the model it was saved from"
                )
        optimizer_state = _optimizer_state_dict(saved, solver_tensors, names)
    model.load_state_dict(weights)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state)
    return Checkpoint(directory, meta["state"], meta.get("rng", {}), network)

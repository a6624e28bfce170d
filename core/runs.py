"""A trained run's deliverable: `RUN/model.safetensors` plus `RUN/model.json` (network, pyramid, classes,
preprocessing), which export, evaluation and the runtime read back with `load_model`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from sppnet.core.atomic import read_json, sha256, write_atomic
from sppnet.core.models import SPPNet, build_model
from sppnet.core.preprocess import Preprocess

MODEL_FILE = "model.safetensors"
INFO_FILE = "model.json"
FORMAT = "sppnet-model"
REQUIRED = ("model", "classes", "preprocess", "weights")


def read_tensors(
    directory: Path,
    entry: dict[str, str],
    fix: str = "the checkpoint is damaged; restore it from another checkpoint or re-save it",
) -> dict[str, torch.Tensor]:
    """Read a safetensors file named in a JSON entry {"file", "sha256"}, checking its sha256 first; never pickle."""
    path = directory / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"tensor file {path} cannot be read ({e.strerror}): {fix}") from e
    digest = sha256(data)
    if digest != entry["sha256"]:
        raise ValueError(
            f"tensor file {path} is corrupt or truncated: its sha256 {digest[:16]}... does not match "
            f"{entry['sha256'][:16]}... recorded beside it; {fix}"
        )
    return load_safetensors(data)


def check_fits(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path, made_for: str) -> None:
    """Raise naming the first key that is missing, unexpected or of another shape in `found`."""
    for key, tensor in expected.items():
        if key not in found:
            problem = f"{key} is missing from the checkpoint"
            break
        if tuple(found[key].shape) != tuple(tensor.shape):
            problem = (
                f"{key} has shape {tuple(found[key].shape)} in the checkpoint but {tuple(tensor.shape)} in the model"
            )
            break
    else:
        unexpected = [key for key in found if key not in expected]
        if not unexpected:
            return
        problem = f"{unexpected[0]} is in the checkpoint but not in the model"
    raise ValueError(f"{path} does not fit this model{made_for}: {problem}; build the model it was saved from")


def save_trained(
    run_dir: str | os.PathLike[str],
    model: SPPNet,
    *,
    classes: list[str],
    preprocess: Preprocess,
    train: dict[str, Any] | None = None,
) -> Path:
    """Write the weights and their description atomically (weights first, so a JSON always has its weights)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    write_atomic(run_dir / MODEL_FILE, data)
    info = {
        "format": FORMAT,
        "version": 1,
        "network": model.spec.name,
        "model": asdict(model.config),
        "classes": list(classes),
        "preprocess": preprocess.to_json(),
        "weights": {"file": MODEL_FILE, "sha256": sha256(data)},
        "train": train or {},
    }
    write_atomic(run_dir / INFO_FILE, (json.dumps(info, indent=1) + "\n").encode())
    return run_dir / INFO_FILE


def read_model_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`RUN/model.json`, checked for its format; ValueError naming the path and the fix otherwise."""
    path = Path(run_dir) / INFO_FILE
    info = read_json(path, "model description", "pass a run directory written by `sppnet train`")
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is not an sppnet model description: pass a run directory of `sppnet train`")
    missing = [key for key in REQUIRED if not isinstance(info.get(key), dict | list)]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: the file is damaged; retrain or restore the run")
    return info


def load_model(run_dir: str | os.PathLike[str]) -> SPPNet:
    """The trained network of a run, weights verified by sha256, in eval mode."""
    info = read_model_info(run_dir)
    config = info["model"]
    model = build_model(
        config["name"],
        spp=config["spp"],
        num_classes=config["num_classes"],
        levels=config["levels"],
        rule=config["rule"],
        dropout=config["dropout"],
        input_size=config.get("input_size"),
    )
    weights = read_tensors(Path(run_dir), info["weights"], fix="retrain the run or restore it")
    check_fits(model.state_dict(), weights, Path(run_dir) / MODEL_FILE, f" ({config['name']} as model.json says)")
    model.load_state_dict(weights)
    return model.eval()


def load_preprocess(run_dir: str | os.PathLike[str]) -> Preprocess:
    """The preprocessing the run was trained with."""
    return Preprocess.from_json(read_model_info(run_dir)["preprocess"])

"""A trained run's deliverable: `RUN/model.safetensors` plus `RUN/model.json` (network, pyramid, classes,
preprocessing), which export, evaluation and the runtime read back with `load_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .checkpoint import write_atomic
from .models import SPPNet, build_model
from .preprocess import Preprocess

MODEL_FILE = "model.safetensors"
INFO_FILE = "model.json"
FORMAT = "sppnet-model"


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
        "weights": {"file": MODEL_FILE, "sha256": hashlib.sha256(data).hexdigest()},
        "train": train or {},
    }
    write_atomic(run_dir / INFO_FILE, (json.dumps(info, indent=1) + "\n").encode())
    return run_dir / INFO_FILE


def read_model_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`RUN/model.json`, checked for its format; ValueError naming the path and the fix otherwise."""
    path = Path(run_dir) / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: pass a run directory written by `sppnet train`")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}): retrain or restore the run") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{path} is not an sppnet model description: pass a run directory of `sppnet train`")
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
    path = Path(run_dir) / info["weights"]["file"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path} is missing or unreadable ({err}): retrain or restore the run") from err
    if hashlib.sha256(data).hexdigest() != info["weights"]["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in model.json (truncated or replaced): retrain the run")
    weights = load_safetensors(data)
    expected = model.state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{path} does not fit {config['name']} as model.json describes it: retrain the run")
    model.load_state_dict(weights)
    return model.eval()


def load_preprocess(run_dir: str | os.PathLike[str]) -> Preprocess:
    """The preprocessing the run was trained with."""
    return Preprocess.from_json(read_model_info(run_dir)["preprocess"])

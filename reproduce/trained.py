"""A trained run's deliverable: `RUN/model.safetensors` plus `RUN/model.json` (network, pyramid, classes,
preprocessing), which export, evaluation and the runtime read back with `load_model`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import save as save_safetensors

from .checkpoint import check_fits, read_json, read_tensors, sha256, write_atomic
from .models import SPPNet, build_model
from .preprocess import Preprocess

MODEL_FILE = "model.safetensors"
INFO_FILE = "model.json"
FORMAT = "sppnet-model"
REQUIRED = ("model", "classes", "preprocess", "weights")


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

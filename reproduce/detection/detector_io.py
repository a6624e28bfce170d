"""Trained detectors on disk: `OUT/detector.json`, the fine-tuned fc layers in safetensors, SVMs and box
regressors in .npz (read with allow_pickle=False). Written atomically, the JSON last; no pickle anywhere.
"""

from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from sppnet.core.atomic import read_json, sha256, write_atomic
from sppnet.core.errors import ArtifactError
from sppnet.core.manifest import read_run_info
from sppnet.core.runs import load_model, load_preprocess
from sppnet.reproduce.detection.bbox_regression import BBoxRegressionConfig, BBoxRegressor
from sppnet.reproduce.detection.pipeline import DetectConfig, Detector
from sppnet.reproduce.detection.proposals import ProposalSettings
from sppnet.reproduce.detection.svm import SVMBank, SVMConfig

FORMAT = "sppnet-detector"
INFO = "detector.json"
FIX = "retrain it with `sppnet detect train`"


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_detectors(
    out: str | os.PathLike[str], run_dir: str | os.PathLike[str], mode: str, classes: list[str],
    config: DetectConfig, detectors: list[Detector], results: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write every column's detector of one mode; returns the JSON's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    tuned = next((d.fc_model for d in detectors if d.column == "ftfc7"), None)
    if tuned is not None:
        data = save_safetensors({k: v.detach().contiguous() for k, v in tuned.classifier.state_dict().items()})
        write_atomic(out / "ftfc.safetensors", data)
        files["ftfc"] = {"file": "ftfc.safetensors", "sha256": sha256(data)}
    for d in detectors:
        arrays = {"weights": d.svms.weights, "bias": d.svms.bias, "scale": np.array(d.svms.scale),
                  "trained": d.svms.trained}  # fmt: skip
        if d.regressor is not None:
            r, n = d.regressor, d.regressor.num_classes
            dim = next(iter(r.weights.values())).shape if r.weights else (1, 4)
            arrays |= {
                "bbox_weights": np.stack([r.weights.get(c, np.zeros(dim)) for c in range(1, n + 1)]),
                "bbox_mean": np.stack([r.target_mean.get(c, np.zeros(4)) for c in range(1, n + 1)]),
                "bbox_std": np.stack([r.target_std.get(c, np.ones(4)) for c in range(1, n + 1)]),
                "bbox_fitted": np.array([c in r.weights for c in range(1, n + 1)]),
                "bbox_scale": np.array(d.regressor_scale),
            }
        name = f"{d.column.replace(' ', '_')}.npz"
        data = _npz(arrays)
        write_atomic(out / name, data)
        files[d.column] = {"file": name, "sha256": sha256(data), "fc": "pool5" if d.fc_model is None else
                           ("ftfc" if d.fc_model is tuned else "pretrained")}  # fmt: skip
    info = {
        "format": FORMAT,
        "version": 1,
        "run_dir": str(Path(run_dir).resolve()),
        "backbone_sha256": read_run_info(run_dir).card.weights.sha256,
        "mode": mode,
        "classes": classes,
        "config": asdict(config),
        "files": files,
        "results": results or {},
    }
    write_atomic(out / INFO, (json.dumps(info, indent=1) + "\n").encode())
    return out / INFO


def _read(out: Path, entry: dict[str, str]) -> bytes:
    path = out / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path} cannot be read ({e.strerror}): {FIX}") from e
    if sha256(data) != entry["sha256"]:
        raise ArtifactError(f"{path} does not match {out / INFO} (sha256): the file was changed or truncated; {FIX}")
    return data


def load_detectors(out: str | os.PathLike[str]) -> tuple[dict[str, Any], Any, Any, list[Detector]]:
    """(info, backbone model, preprocessing, detectors) of a trained detector directory, hashes verified."""
    out = Path(out)
    info = read_json(out / INFO, "detector description", FIX)
    if info.get("format") != FORMAT:
        raise ArtifactError(f"{out / INFO} is not an sppnet detector description: {FIX}")
    if read_run_info(info["run_dir"]).card.weights.sha256 != info["backbone_sha256"]:
        raise ArtifactError(f"the backbone run {info['run_dir']} changed since the detector was trained: {FIX}")
    model, pre = load_model(info["run_dir"]), load_preprocess(info["run_dir"])
    num_classes = len(info["classes"])
    tuned = None
    if "ftfc" in info["files"]:
        tuned = copy.deepcopy(model)
        tuned.reset_classifier(num_classes + 1)
        tuned.classifier.load_state_dict(load_safetensors(_read(out, info["files"]["ftfc"])))
        tuned.eval()
    detectors = []
    for column, entry in info["files"].items():
        if column == "ftfc":
            continue
        arrays = np.load(io.BytesIO(_read(out, entry)), allow_pickle=False)
        bank = SVMBank(arrays["weights"], arrays["bias"], float(arrays["scale"]), arrays["trained"], ())
        fc_model = {"pool5": None, "ftfc": tuned, "pretrained": model}[entry["fc"]]
        regressor, scale = None, 1.0
        if "bbox_weights" in arrays:
            regressor = BBoxRegressor(num_classes, BBoxRegressionConfig(**info["config"]["bbox"]))
            for c in range(1, num_classes + 1):
                if arrays["bbox_fitted"][c - 1]:
                    regressor.weights[c] = arrays["bbox_weights"][c - 1]
                    regressor.target_mean[c] = arrays["bbox_mean"][c - 1]
                    regressor.target_std[c] = arrays["bbox_std"][c - 1]
            scale = float(arrays["bbox_scale"])
        detectors.append(Detector(column, bank, fc_model, regressor, scale))
    return info, model, pre, detectors


def config_from_json(record: dict[str, Any]) -> DetectConfig:
    """A DetectConfig from its `asdict` form."""
    record = dict(record)
    record["scales"] = tuple(record["scales"])
    record["proposals"] = ProposalSettings(**record["proposals"])
    record["svm"] = SVMConfig(**record["svm"])
    record["bbox"] = BBoxRegressionConfig(**record["bbox"])
    return DetectConfig(**record)

"""A run directory: `RUN/model.safetensors` plus `RUN/model.json` (a typed `RunInfo`: network, pyramid, classes,
preprocessing, how it was trained or where it was imported from), which every command reads back with
`load_model`. Tensors are read through safetensors after their sha256 is checked: never a pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from sppnet.core.atomic import atomic_path, sha256, sha256_file
from sppnet.core.errors import ArtifactError
from sppnet.core.manifest import RUN_WEIGHTS, ModelCard, RunInfo, Weights, read_run_info, write_manifest
from sppnet.core.models import SPPNet
from sppnet.core.preprocess import Preprocess


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
        raise ArtifactError(f"tensor file {path} cannot be read ({e.strerror}): {fix}") from e
    digest = sha256(data)
    if digest != entry["sha256"]:
        raise ArtifactError(
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
    raise ArtifactError(f"{path} does not fit this model{made_for}: {problem}; build the model it was saved from")


def save_trained(
    run_dir: str | os.PathLike[str],
    model: SPPNet,
    *,
    classes: list[str],
    preprocess: Preprocess,
    train: dict[str, Any] | None = None,
    origin: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> Path:
    """Write the weights and their `RunInfo` atomically (weights first, so a model.json always has its weights).

    `spec` is the layer table as JSON for a network that is not registered (an imported model). The weights are
    streamed to the file (safetensors' `save_file`), so a 300 MB model is never held twice in memory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / RUN_WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
        digest = sha256_file(tmp)
    card = ModelCard(
        network=model.spec.name,
        model=model.config,
        classes=tuple(classes),
        preprocess=preprocess,
        weights=Weights(digest, file=RUN_WEIGHTS),
        spec=spec,
    )
    return write_manifest(run_dir, RunInfo(card, train or {}, origin or {}))


def build_from_card(card: ModelCard) -> SPPNet:
    """The network a card describes, freshly initialised (weights are loaded by the caller)."""
    return SPPNet(card.network_spec(), card.model)


def load_model(run_dir: str | os.PathLike[str], info: RunInfo | None = None) -> SPPNet:
    """The network of a run, weights verified by sha256, in eval mode."""
    info = info or read_run_info(run_dir)
    card = info.card
    model = build_from_card(card)
    assert card.weights.file is not None  # read_run_info checks it
    entry = {"file": card.weights.file, "sha256": card.weights.sha256}
    weights = read_tensors(Path(run_dir), entry, fix="retrain the run or restore it")
    check_fits(model.state_dict(), weights, Path(run_dir) / card.weights.file, f" ({card.network} as model.json says)")
    model.load_state_dict(weights)
    return model.eval()


def load_preprocess(run_dir: str | os.PathLike[str]) -> Preprocess:
    """The preprocessing the run was trained with (or imported with)."""
    return read_run_info(run_dir).card.preprocess

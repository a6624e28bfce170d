"""Training on a device: device selection, bf16, worker processes, the convergence rule and resume across devices."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sppnet.core.devices import check_precision, resolve_device
from sppnet.core.errors import DeviceUnavailable
from sppnet.core.manifest import read_run_info
from sppnet.core.networks import get_network
from sppnet.core.runs import load_model
from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.stats import ConvergenceRule
from sppnet.reproduce.train import TrainConfig, train

SIZES = (64, 48)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shapes"
    make_classification_dataset(out, source="shapes", n=80, seed=4)
    return out


def config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        model="zf5_cpu",
        sizes=SIZES,
        epochs=2,
        batch_size=16,
        seed=3,
        preprocess=get_network("zf5_cpu").default_preprocess(SIZES),
    )
    return replace(base, **changes)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_model(run).state_dict()


def quiet(_: str) -> None:
    pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_is_refused_in_one_line_where_there_is_none(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="sees no CUDA GPU") as info:
        train(config(), data_dir, tmp_path / "run", device="cuda", log=quiet)
    assert len(str(info.value).splitlines()) == 1 and not (tmp_path / "run").exists()
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_bf16_autocast_trains_on_the_cpu_with_fp32_master_weights(data_dir: Path, tmp_path: Path) -> None:
    assert check_precision(torch.device("cpu"), "bf16") == "bf16"  # this torch has CPU bf16 autocast
    history = train(config(precision="bf16"), data_dir, tmp_path / "bf16", device="cpu", log=quiet)
    train(config(), data_dir, tmp_path / "fp32", device="cpu", log=quiet)
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    bf16, fp32 = weights(tmp_path / "bf16"), weights(tmp_path / "fp32")
    assert all(w.dtype == torch.float32 for w in bf16.values())  # master weights stay fp32
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)  # the forward really ran in bf16
    assert read_run_info(tmp_path / "bf16").train["config"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        config(precision="fp16")


def test_worker_processes_make_the_same_batches_as_the_prefetch_thread(data_dir: Path, tmp_path: Path) -> None:
    train(config(), data_dir, tmp_path / "thread", device="cpu", workers=0, log=quiet)
    train(config(), data_dir, tmp_path / "workers", device="cpu", workers=2, log=quiet)
    a, b = weights(tmp_path / "thread"), weights(tmp_path / "workers")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stops_once_the_rule_says_it_has_converged_and_says_so(data_dir: Path, tmp_path: Path) -> None:
    rule = ConvergenceRule(min_gain_pp=100.0, window=0.5, min_epochs=2)  # any two epochs "converge"
    logged: list[str] = []
    history = train(config(epochs=6, stop=rule), data_dir, tmp_path / "run", device="cpu", log=logged.append)
    assert len(history) == 2
    stopped = read_run_info(tmp_path / "run").train["stopped"]
    assert stopped == {"reason": "converged", "epochs_run": 2, "budget": 6, "rule": rule.describe()}
    assert any(line.startswith("converged after 2 epochs") for line in logged)
    budget = train(config(epochs=2), data_dir, tmp_path / "budget", device="cpu", log=quiet)
    assert len(budget) == 2 and read_run_info(tmp_path / "budget").train["stopped"]["reason"] == "budget"


def test_resume_refuses_a_run_started_on_another_device(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(epochs=1), data_dir, run, device="cpu", log=quiet)
    checkpoint = run / "checkpoint" / "checkpoint.json"
    meta = json.loads(checkpoint.read_text())
    meta["state"]["device"] = "cuda"  # as a GPU run would have recorded it
    checkpoint.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="was trained on cuda; resuming on cpu"):
        train(config(epochs=2), data_dir, run, resume=True, device="cpu", log=quiet)

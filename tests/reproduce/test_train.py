"""Training: multi-size alternation, exact resume, data-parallel equivalence, bad images, the run's files;
device selection, bf16, worker processes, the convergence rule and resume across devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sppnet.core.devices import check_precision, resolve_device
from sppnet.core.errors import DeviceUnavailable
from sppnet.core.manifest import read_run_info
from sppnet.core.networks import get_network
from sppnet.core.preprocess import resize_to
from sppnet.core.runs import load_model
from sppnet.reproduce.builtin_data import make_classification_dataset
from sppnet.reproduce.stats import PlateauRule
from sppnet.reproduce.train import Context, TrainConfig, _batches, load_data, train

SIZES = (64, 48)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shapes"
    make_classification_dataset(out, source="shapes", n=120, seed=3)
    return out


def config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        model="zf5_cpu",
        sizes=SIZES,
        epochs=3,
        batch_size=16,
        seed=7,
        preprocess=get_network("zf5_cpu").default_preprocess(SIZES),
    )
    return replace(base, **changes)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_model(run).state_dict()


def test_multi_size_alternates_whole_epochs_and_random_size_stays_in_range() -> None:
    alternate = config()
    assert [alternate.size_at(e) for e in range(5)] == [64, 48, 64, 48, 64]
    drawn = [config(size_schedule="random").size_at(e) for e in range(40)]
    assert min(drawn) >= 48 and max(drawn) <= 64 and len(set(drawn)) > 5
    assert drawn == [config(size_schedule="random").size_at(e) for e in range(40)]


def test_the_small_size_is_the_same_crop_resized(data_dir: Path) -> None:
    cfg = config()
    data = load_data(data_dir, cfg, log=lambda _: None)
    big = next(_batches(data, replace(cfg, sizes=(64,)), Context(), 1))[0]
    small, _ = next(_batches(data, cfg, Context(), 1))  # epoch 1 of (64, 48) is at 48
    assert small.shape == (16, 3, 48, 48) and big.shape == (16, 3, 64, 64)
    # A constant mean commutes with bilinear resizing, so resizing the 64 views gives the 48 views.
    expected = np.stack([resize_to(v.transpose(1, 2, 0), 48, 48).transpose(2, 0, 1) for v in big])
    np.testing.assert_allclose(small, expected, atol=1e-3)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(config(), data_dir, tmp_path / "straight", log=lambda _: None)

    import sppnet.reproduce.train as train_module

    real_epoch = train_module.train_epoch

    def interrupted(*args: object, **kwargs: object) -> dict[str, float]:
        if args[5] == 2:  # the epoch argument
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(), data_dir, tmp_path / "resumed", log=lambda _: None)
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    assert not (tmp_path / "resumed" / "model.json").exists()
    history = train(config(), data_dir, tmp_path / "resumed", resume=True, log=lambda _: None)

    assert [row["epoch"] for row in history] == [0, 1, 2]
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["size"] for line in lines] == [64, 48, 64]


def test_resume_refuses_other_settings_and_a_new_run_refuses_an_old_directory(data_dir: Path, tmp_path: Path) -> None:
    train(config(epochs=1), data_dir, tmp_path / "run", log=lambda _: None)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config(epochs=1), data_dir, tmp_path / "run", log=lambda _: None)
    with pytest.raises(ValueError, match="different settings"):
        train(config(epochs=2, seed=8), data_dir, tmp_path / "run", resume=True, log=lambda _: None)


def test_the_run_directory_holds_weights_description_metrics_and_a_loadable_model(
    data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(config(epochs=2), data_dir, run, log=lambda _: None)
    card = read_run_info(run).card
    assert card.network == "zf5_cpu" and card.levels == (6, 3, 2, 1)
    assert list(card.classes) == sorted(p.name for p in (data_dir / "train").iterdir())
    assert card.preprocess.crop == 64 and card.preprocess.scale == 1 / 64
    model = load_model(run)
    assert not model.training
    assert model(torch.zeros(2, 3, 80, 50)).shape == (2, len(card.classes))
    (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256"):
        load_model(run)
    info_text = (run / "model.json").read_text()
    (run / "model.json").write_text(json.dumps({"format": "sppnet-model", "version": 2}))
    with pytest.raises(ValueError, match="lacks 'model'"):
        load_model(run)
    (run / "model.json").write_text(info_text[: len(info_text) // 2])
    with pytest.raises(ValueError, match="unreadable"):
        load_model(run)


def test_bad_images_are_reported_and_skipped_or_stop_the_run(data_dir: Path, tmp_path: Path) -> None:
    dirty = tmp_path / "dirty"
    import shutil

    shutil.copytree(data_dir, dirty)
    first_class = sorted((dirty / "train").iterdir())[0]
    (first_class / "corrupt.png").write_bytes(b"not an image")
    Image.new("RGB", (1, 1)).save(first_class / "tiny.png")
    logged: list[str] = []
    train(config(epochs=1), dirty, tmp_path / "run", log=logged.append)
    skipped = [line for line in logged if line.startswith("skipped")]
    assert len(skipped) == 2 and any("corrupt.png" in line for line in skipped)
    assert any("tiny.png" in line for line in skipped)
    with pytest.raises(ValueError, match=r"corrupt\.png"):
        train(config(epochs=1, on_bad="error"), dirty, tmp_path / "run2", log=lambda _: None)


def test_two_process_data_parallel_training_matches_one_process(data_dir: Path, tmp_path: Path) -> None:
    args = [
        "train",
        "--model",
        "zf5_cpu",
        "--data",
        str(data_dir),
        "--sizes",
        "64,48",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--seed",
        "7",
        "--dropout",
        "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run(
        [sys.executable, "-m", "sppnet.cli", *args, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "sppnet.cli",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # gradients summed in another order: float32 rounding only
    print(f"2-process vs 1-process max weight difference: {worst:.2e}")


@pytest.mark.parametrize("name", ["zf5_cpu", "convnet5_cpu", "overfeat5_cpu", "overfeat7_cpu"])
def test_every_cpu_preset_trains_multi_size_and_with_no_spp(name: str, data_dir: Path, tmp_path: Path) -> None:
    pre = get_network(name).default_preprocess(SIZES)
    history = train(config(model=name, epochs=2, preprocess=pre), data_dir, tmp_path / "spp", log=lambda _: None)
    assert [row["size"] for row in history] == [64, 48]
    assert all(np.isfinite(row["train_loss"]) for row in history)
    baseline = config(model=name, spp=False, sizes=(64,), epochs=1, preprocess=pre)
    train(baseline, data_dir, tmp_path / "nospp", log=lambda _: None)
    assert read_run_info(tmp_path / "nospp").card.spp is False


# ---------------------------------------------------------------- devices, precision, workers, convergence


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
    history = train(config(epochs=2, precision="bf16"), data_dir, tmp_path / "bf16", device="cpu", log=quiet)
    train(config(epochs=2), data_dir, tmp_path / "fp32", device="cpu", log=quiet)
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    bf16, fp32 = weights(tmp_path / "bf16"), weights(tmp_path / "fp32")
    assert all(w.dtype == torch.float32 for w in bf16.values())  # master weights stay fp32
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)  # the forward really ran in bf16
    assert read_run_info(tmp_path / "bf16").train["config"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        config(precision="fp16")


def test_worker_processes_make_the_same_batches_as_the_prefetch_thread(data_dir: Path, tmp_path: Path) -> None:
    train(config(epochs=2), data_dir, tmp_path / "thread", device="cpu", workers=0, log=quiet)
    train(config(epochs=2), data_dir, tmp_path / "workers", device="cpu", workers=2, log=quiet)
    a, b = weights(tmp_path / "thread"), weights(tmp_path / "workers")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_plateau_rule_drops_the_lr_on_the_validation_split_and_stops_once_converged(
    data_dir: Path, tmp_path: Path
) -> None:
    data = load_data(data_dir, config(), log=quiet).hold_out(16)
    assert len(data.val_images) == 16 and len(data.train_images) + 16 == len(load_data(data_dir, config()).train_images)
    # Every epoch "plateaus": a phase needs patience + 1 = 2 epochs, so one drop after 2, converged after 4.
    rule = PlateauRule(patience=1, delta_pp=100.0, drops=1)
    logged: list[str] = []
    cfg = config(epochs=6, plateau=rule)
    history = train(cfg, data_dir, tmp_path / "run", data=data, device="cpu", log=logged.append)
    assert [row["lr"] for row in history] == [0.01, 0.01, 0.001, 0.001]
    assert all("val_top1_err" in row and "test_top1_err" not in row for row in history)  # never the test split
    stopped = read_run_info(tmp_path / "run").train["stopped"]
    assert (stopped["reason"], stopped["epochs_run"], stopped["budget"]) == ("converged", 4, 6)
    assert stopped["lr_drops"] == ["after epoch 2: plateau"] and stopped["rule"] == rule.describe()
    assert any(line.startswith("converged after 4 epochs") for line in logged)
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

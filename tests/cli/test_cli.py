"""The `sppnet` command: describe and bench work as a user runs them; bad input is one line, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sppnet.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("size", "conv5"), [("224", "256x13x13"), ("180", "256x10x10")])
def test_describe_zf5_prints_conv5_13_at_224_and_10_at_180(
    capsys: pytest.CaptureFixture[str], size: str, conv5: str
) -> None:
    code, out, _ = run(capsys, "describe", "zf5", "--size", size)
    assert code == 0
    conv5_row = next(line for line in out.splitlines() if line.startswith("conv5"))
    assert conv5 in conv5_row and f"{384 * 256 * 3 * 3 + 256:,}" in conv5_row  # conv4 -> conv5, 3x3, + biases
    assert "12800" in next(line for line in out.splitlines() if line.startswith("spp"))


def test_describe_json_has_every_layer_and_non_square_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "describe", "overfeat7", "--size", "180x240", "--json")
    rows = {row["layer"]: row for row in json.loads(out)}
    assert code == 0 and rows["conv7"]["output"] == [512, 14, 19] and rows["fc8"]["output"] == [1000]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["describe", "vgg16"], "unknown network 'vgg16'"),
        (["describe", "zf5", "--size", "20"], "too small for zf5"),
        (["describe", "zf5", "--size", "0x3"], "not H or HxW"),
        (["describe", "zf5", "--size", "180", "--no-spp"], "use an SPP model"),
        (["describe", "zf5", "--rule", "floor"], "invalid choice: 'floor'"),
        (["describe", "zf5", "--size", "180", "--rule", "window"], "rule='window'"),
        (["describe", "zf5", "--levels", "6,x"], "not comma-separated"),
        (["reproduce", "--seeds", "0,-1"], "seeds '0,-1' are not comma-separated integers >= 0"),
        (["train", "--model", "zf5", "--data", "d", "--out", "r", "--milestones", "0"], "integers >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("sppnet")]) == 1


def test_bench_spp_prints_ratios_from_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bench", "spp", "--batch", "2", "--channels", "8", "--repeats", "2", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["size"] for r in rows] == ["13x13", "10x10"]
    assert all(r["naive_over_spp"] > 0 and r["spp_over_maxpool"] > 0 for r in rows)


def test_the_installed_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sppnet.cli", "describe", "zf5_cpu", "--size", "112"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "32x6x6" in done.stdout  # 112 -> 54 -> 27 -> 12 -> 6


def test_missing_dataset_and_wrong_layout_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code, _, err = run(
        capsys,
        "train",
        "--model",
        "zf5_cpu",
        "--data",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "run"),
        "--sizes",
        "64",
    )
    assert code == 2 and "Traceback" not in err and str(tmp_path / "nope") in err
    (tmp_path / "flat").mkdir()
    code, _, err = run(capsys, "evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "flat"))
    assert code == 2 and "model.json" in err


def test_bench_train_reports_data_and_compute_per_size(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from sppnet.reproduce.builtin_data import make_classification_dataset

    make_classification_dataset(tmp_path / "d", source="shapes", n=100, seed=0)
    code, out, err = run(
        capsys,
        "bench",
        "train",
        "--data",
        str(tmp_path / "d"),
        "--sizes",
        "64,48",
        "--batch-size",
        "8",
        "--batches",
        "2",
        "--json",
    )
    rows = json.loads(out)
    assert code == 0, err
    assert [r["size"] for r in rows] == [64, 48]
    assert all(r["data_s"] > 0 and r["compute_s"] > 0 and r["images_per_s"] > 0 for r in rows)


def test_bench_train_compares_precisions_and_refuses_a_missing_gpu(capsys: pytest.CaptureFixture[str], tmp_path):
    import torch

    from sppnet.reproduce.builtin_data import make_classification_dataset

    make_classification_dataset(tmp_path / "d", source="shapes", n=60, seed=0)
    common = ["bench", "train", "--data", str(tmp_path / "d"), "--sizes", "48", "--batch-size", "8", "--batches", "2"]
    code, out, err = run(capsys, *common, "--precision", "fp32,bf16", "--json")
    assert code == 0, err
    assert [(r["device"], r["precision"]) for r in json.loads(out)] == [("cpu", "fp32"), ("cpu", "bf16")]
    code, out, _ = run(capsys, *common, "--precision", "fp32,bf16")
    assert "cpu bf16 vs cpu fp32 at 48:" in out
    if not torch.cuda.is_available():
        code, _, err = run(capsys, *common, "--device", "cuda")
        assert code == 2 and "sees no CUDA GPU" in err and len(err.strip().splitlines()) == 1

    code, _, err = run(capsys, *common, "--batch-size", "64")
    assert code == 2 and "fewer than one batch of 64" in err and "Traceback" not in err


def test_seed_zero_is_a_seed() -> None:
    from sppnet.cli import build_parser

    assert build_parser().parse_args(["reproduce", "--seeds", "0,1,2"]).seeds == (0, 1, 2)


def test_options_a_run_would_ignore_are_refused(capsys: pytest.CaptureFixture[str], trained_run, tmp_path) -> None:
    code, _, err = run(capsys, "describe", str(trained_run), "--classes", "5")
    assert code == 2 and "a run is described as it was trained" in err
    code, _, err = run(capsys, "export", "--checkpoint", str(trained_run), "--seed", "3", "--out", str(tmp_path / "x"))
    assert code == 2 and "--classes and --seed are for untrained weights" in err and not (tmp_path / "x").exists()
    code, out, _ = run(capsys, "describe", str(trained_run))
    assert code == 0 and "fc8" in out

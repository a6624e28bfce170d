"""`sppnet export`, `parity`, `build` and `bench export` as a user runs them; bad input is one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .test_cli import run


def test_export_parity_and_build_a_trained_run(capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path) -> None:
    onnx_dir, engine_dir = tmp_path / "onnx", tmp_path / "engines"
    code, out, err = run(
        capsys, "export", "--checkpoint", str(trained_run), "--scales", "112,100x76", "--max-size", "160",
        "--out", str(onnx_dir),
    )  # fmt: skip
    assert code == 0, err
    assert "zf5_cpu_100x76_fp16.onnx" in out and f"wrote {onnx_dir / 'manifest.json'}" in out

    code, out, err = run(capsys, "parity", "--onnx", str(onnx_dir), "--sizes", "6", "--json")
    assert code == 0, err
    summary = {row["file"]: row for row in json.loads(out)}
    assert set(summary) == {
        "zf5_cpu_112x112_fp32.onnx", "zf5_cpu_112x112_fp16.onnx", "zf5_cpu_100x76_fp32.onnx",
        "zf5_cpu_100x76_fp16.onnx", "zf5_cpu_dynamic_fp32.onnx", "zf5_cpu_dynamic_fp16.onnx",
    }  # fmt: skip
    assert all(row["ok"] and row["max_rel"] <= row["tolerance"] for row in summary.values())

    code, out, err = run(capsys, "build", "--onnx", str(onnx_dir), "--out", str(engine_dir), "--precision", "fp16")
    assert code == 0, err
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert sorted(f["file"] for f in manifest["files"]) == [
        "zf5_cpu_100x76_fp16.engine", "zf5_cpu_112x112_fp16.engine", "zf5_cpu_dynamic_fp16.engine",
    ]  # fmt: skip


def test_bench_export_prints_times_and_sizes_per_engine(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code, out, err = run(
        capsys, "bench", "export", "--networks", "convnet5_cpu", "--scales", "96", "--precision", "fp16",
        "--plugin", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("convnet5_cpu")}
    assert set(rows) == {
        "convnet5_cpu_96x96_fp16.onnx", "convnet5_cpu_dynamic_fp16.onnx", "convnet5_cpu_dynamic_plugin_fp16.onnx"
    }  # fmt: skip
    assert float(rows["convnet5_cpu_96x96_fp16.onnx"][3]) > 0  # engine MiB
    assert "no plugins" in " ".join(rows["convnet5_cpu_dynamic_plugin_fp16.onnx"])  # exported on request, not built
    assert "built 2 engines" in out and not any(tmp_path.iterdir())  # timed, then removed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--network", "zf5", "--scales", "30", "--out", "{tmp}/x"], "too small for zf5"),
        (["export", "--out", "{tmp}/x"], "--checkpoint RUN (a run) or --network NAME"),
        (["export", "--checkpoint", "{run}", "--network", "zf5", "--out", "{tmp}/x"], "holds a zf5_cpu model"),
        (["export", "--checkpoint", "{tmp}", "--out", "{tmp}/x"], "no model description"),
        (["build", "--onnx", "{tmp}", "--out", "{tmp}/e"], "no ONNX export manifest"),
        (["parity", "--onnx", "{tmp}"], "re-export it with `sppnet export"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *[a.format(tmp=tmp_path, run=trained_run) for a in argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_truncated_onnx_file_stops_the_build_before_any_engine(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path
) -> None:
    onnx_dir = tmp_path / "onnx"
    assert run(capsys, "export", "--checkpoint", str(trained_run), "--no-dynamic", "--out", str(onnx_dir))[0] == 0
    victim = onnx_dir / "zf5_cpu_90x90_fp32.onnx"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    code, _, err = run(capsys, "build", "--onnx", str(onnx_dir), "--out", str(tmp_path / "engines"))
    assert code == 2 and "zf5_cpu_90x90_fp32.onnx" in err and "sppnet export" in err
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").glob("*.engine"))


def test_without_a_builder_build_says_what_to_install(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path, monkeypatch
) -> None:
    onnx_dir = tmp_path / "onnx"
    run(
        capsys,
        "export",
        "--checkpoint",
        str(trained_run),
        "--no-dynamic",
        "--precision",
        "fp16",
        "--out",
        str(onnx_dir),
    )
    for module in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    code, _, err = run(capsys, "build", "--onnx", str(onnx_dir), "--out", str(tmp_path / "engines"))
    assert code == 2 and "pip install tensorrt-rtx-cu13" in err and len(err.strip().splitlines()) == 1


def test_infer_prints_topk_and_route_per_image_in_order_and_exits_1_on_a_bad_image(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path
) -> None:
    import skimage.data

    photos = Path(skimage.data.__file__).parent
    onnx_dir = tmp_path / "onnx"
    assert run(capsys, "export", "--checkpoint", str(trained_run), "--max-size", "256", "--out", str(onnx_dir))[0] == 0
    images = [str(photos / "coffee.png"), str(tmp_path / "missing.png"), str(photos / "astronaut.png")]
    code, out, _ = run(capsys, "infer", *images, "--engines", str(onnx_dir), "--json", "--topk", "3")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [line["path"] for line in lines] == images
    assert "error" in lines[1] and "not found" in lines[1]["error"]
    assert lines[0]["route"]["size"] == [112, 168] and lines[0]["route"]["kind"] == "dynamic"  # full, short side 112
    assert lines[2]["route"] == {
        "model": "zf5_cpu_112x112_fp32.onnx",
        "kind": "fixed",
        "profile": 0,
        "size": [112, 112],
    }
    assert all(len(line["topk"]) == 3 for line in (lines[0], lines[2]))

    code, out, _ = run(capsys, "infer", images[0], "--engines", str(trained_run), "--backend", "torch")
    assert code == 0 and "[model.safetensors profile 0 at 112x168]" in out
    code, _, err = run(capsys, "infer", images[0], "--engines", str(onnx_dir), "--backend", "torch")
    assert code == 2 and "pass --backend onnxruntime" in err


def test_bench_runtime_prints_the_dispatch_overhead_and_the_pytorch_ratio(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path
) -> None:
    onnx_dir = tmp_path / "onnx"
    run(capsys, "export", "--checkpoint", str(trained_run), "--precision", "fp32", "--out", str(onnx_dir))
    code, out, err = run(capsys, "bench", "runtime", "--engines", str(onnx_dir), "--images", "24", "--repeats", "2")
    assert code == 0, err
    assert "dispatch overhead" in out and "x PyTorch's speed" in out and "24 images of mixed sizes" in out


def test_serve_repo_writes_a_triton_repository_and_refuses_rtx_engines_without_the_flag(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path
) -> None:
    onnx_dir, engines, repo = tmp_path / "onnx", tmp_path / "engines", tmp_path / "repo"
    run(capsys, "export", "--checkpoint", str(trained_run), "--precision", "fp16", "--out", str(onnx_dir))
    assert run(capsys, "build", "--onnx", str(onnx_dir), "--out", str(engines))[0] == 0
    code, _, err = run(capsys, "serve-repo", "--engines", str(engines), "--out", str(repo))
    assert code == 2 and "--allow-rtx" in err and not repo.exists()
    code, _, err = run(capsys, "serve-repo", "--engines", str(engines), "--out", str(repo), "--allow-rtx")
    assert code == 0, err
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    assert models == [
        "zf5_cpu_112x112_fp16",
        "zf5_cpu_90x90_fp16",
        "zf5_cpu_dynamic_fp16_p0",
        "zf5_cpu_dynamic_fp16_p1",
    ]
    assert all((repo / m / "config.pbtxt").is_file() and (repo / m / "1" / "model.plan").is_file() for m in models)


def test_describe_takes_a_run_directory_and_prints_its_own_network(
    capsys: pytest.CaptureFixture[str], trained_run: Path
) -> None:
    code, out, err = run(capsys, "describe", str(trained_run), "--size", "112", "--json")
    rows = {row["layer"]: row for row in json.loads(out)}
    assert code == 0, err
    assert rows["conv5"]["output"] == [32, 6, 6] and rows["fc8"]["output"] == [10]  # the run's 10 shape classes


def test_compiled_pytorch_engines_build_and_serve_from_the_command_line(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path
) -> None:
    import skimage.data

    onnx_dir, engines = tmp_path / "onnx", tmp_path / "aoti"
    export = ["export", "--checkpoint", str(trained_run), "--scales", "90", "--no-dynamic", "--precision", "fp32"]
    assert run(capsys, *export, "--out", str(onnx_dir))[0] == 0
    code, out, err = run(
        capsys, "build", "--onnx", str(onnx_dir), "--out", str(engines), "--builder", "torch_aoti", "--device", "cpu"
    )
    assert code == 0, err
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["builder"]["module"] == "torch_aoti" and [f["scale"] for f in manifest["files"]] == [[90, 90]]
    photo = str(Path(skimage.data.__file__).parent / "coffee.png")
    code, out, err = run(capsys, "infer", photo, "--engines", str(engines), "--policy", "nearest", "--json")
    assert code == 0, err
    assert json.loads(out)["route"]["model"] == manifest["files"][0]["file"]
    code, _, err = run(capsys, "build", "--onnx", str(onnx_dir), "--out", str(tmp_path / "x"), "--precision", "bf16")
    assert code == 2 and "bf16" in err  # TensorRT builds fp32 and fp16 only

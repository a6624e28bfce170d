"""The GPU check and the serving benchmark as far as they run on the CPU: the check's dry run writes its one JSON
with every step it could take and why it skipped the others; the benchmark measures every stream and contender
side by side and reports ratios and the issue's targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sppnet.engines.bench_runtime import ServingBench, bench_serving, format_bench
from sppnet.engines.gpu_check import TARGETS, main, targets_met


def test_the_dry_run_writes_one_json_with_each_step_and_each_skip(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "report.json"
    argv = ["--device", "cpu", "--network", "zf5_cpu", "--classes", "5", "--scales", "64", "--max-size", "96"]
    argv += ["--batch", "4", "--kinds", "onnxruntime,eager", "--out", str(tmp_path / "out"), "--json", str(report)]
    assert main(argv) == 0
    record = json.loads(report.read_text())
    assert json.loads(capsys.readouterr().out) == record
    assert list(record["steps"]) == ["environment", "export", "eager precisions"]
    assert record["steps"]["environment"]["device"] == "cpu" and record["steps"]["export"]["scales"] == [64]
    assert record["skipped"] == {"onnxruntime cuda": "the device is the cpu"} and record["errors"] == {}
    eager = {row["file"]: row for row in record["steps"]["eager precisions"]}
    assert eager["eager fp16"]["ok"] and eager["eager bf16"]["ok"] and record["ok"] is True
    assert (tmp_path / "out" / "onnx" / "manifest.json").is_file()


def test_targets_are_read_off_the_benchmark() -> None:
    rows = [
        {"stream": "arrays fixed", "contender": "engine", "images_per_s": 40_000.0},
        {"stream": "arrays mixed exact", "contender": "engine", "images_per_s": 2_000.0},
        {"stream": "arrays mixed nearest", "contender": "engine", "images_per_s": 15_000.0},
    ]
    found = targets_met({"rows": rows, "latency": {"engine": {"p50_ms": 0.4}}, "fed_over_bare": 0.79})
    assert set(found) == set(TARGETS)
    assert [name for name, t in found.items() if t["met"]] == ["fixed_stream_fp16", "mixed_nearest", "batch1_p50_ms"]
    assert found["mixed_exact"] == {"target": 2480.0, "measured": 2000.0, "met": False}


def test_the_serving_benchmark_times_every_stream_against_pytorch_on_the_same_images(runtime_onnx: Path) -> None:
    bench = bench_serving(
        str(runtime_onnx),
        device="cpu",
        count=16,
        repeats=1,
        contenders=("eager fp32",),
        latency_calls=5,
        workers=1,
    )
    assert isinstance(bench, ServingBench) and bench.batch == 8 and bench.scale == (112, 112)
    streams = ["bare", "arrays fixed", "arrays mixed exact", "arrays mixed nearest", "jpeg mixed nearest"]
    assert list(dict.fromkeys(r.stream for r in bench.rows)) == streams
    for stream in streams:
        assert {r.contender for r in bench.rows if r.stream == stream} >= {"engine", "eager fp32"}
    assert all(r.seconds > 0 and r.images == 16 for r in bench.rows)
    record = bench.to_json()
    assert record["fed_over_bare"] > 0 and all("x_eager_fp32" in row for row in record["rows"])
    assert set(bench.latency) == {"engine"} and bench.latency["engine"]["p99_ms"] >= bench.latency["engine"]["p50_ms"]
    text = format_bench(bench)
    assert "GPU-fed fixed-scale stream / bare engine" in text and "batch-1 latency, engine: p50" in text

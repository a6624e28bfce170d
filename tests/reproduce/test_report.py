"""The report writer: numbers against hand-computed statistics, verdicts, files, atomicity and errors."""

from __future__ import annotations

import copy
import json
import os
import statistics
from pathlib import Path

import pytest

from sppnet.reproduce import report

SEEDS = [0, 1, 2]
CROP, SHORT = 112, 128
TEST_SIZES = [90, 112, 128, 160]
# Hand-made top-1 error fractions per seed. Chosen so that, paired by seed:
#   single - no_spp (10-view): -3, -3.5, -3 pp          -> appears (every resample below 0)
#   multi - single (10-view):  +1, -1.5, +1 pp          -> not established (the interval holds 0)
#   single full - crop:        -1, +1, -1 pp            -> not established
#   multi full - crop:         -1, -1, -2 pp            -> appears
TOP1 = {
    "no_spp": {"crop": [0.43, 0.44, 0.45], "10view": [0.40, 0.42, 0.41]},
    "spp_single": {"crop": [0.45, 0.46, 0.44], "10view": [0.37, 0.385, 0.38], "full": [0.44, 0.47, 0.43]},
    "spp_multi": {"crop": [0.45, 0.45, 0.45], "10view": [0.38, 0.37, 0.39], "full": [0.44, 0.44, 0.43]},
}
TOP5 = 0.1  # every top-5 error, plus 0.01 per seed index
OTHER_SIZE_TOP1 = {90: [0.50, 0.52, 0.51], 112: [0.46, 0.47, 0.45], 160: [0.48, 0.49, 0.50]}
# Paper Table 2 (ZF-5, 10-view top-1) and Table 3 (ZF-5 top-1: crop, full), PAPER.md section 6.
PAPER_ZF5 = {"no_spp": 35.99, "spp_single": 34.98, "spp_multi": 34.60}
PAPER_ZF5_T3 = {"spp_single": (38.01, 37.55), "spp_multi": (37.57, 37.07)}


IMAGES = 600


def _eval(mode: str, size: int, top1: float, i: int) -> dict:
    # The first round(top1 * 600) test images are wrong: any two evaluations then differ in one direction only.
    wrong = round(top1 * IMAGES)
    correct = [0] * wrong + [1] * (IMAGES - wrong)
    return {"mode": mode, "size": size, "n": IMAGES, "top1_err": top1, "top5_err": TOP5 + 0.01 * i, "correct": correct}


def make_results(seeds=SEEDS, quick=False, network="zf5_cpu") -> dict:
    runs = []
    for variant, views in TOP1.items():
        for i, seed in enumerate(seeds):
            evals = [_eval("crop", CROP, views["crop"][i], i), _eval("10view", CROP, views["10view"][i], i)]
            if "full" in views:
                evals.append(_eval("full", SHORT, views["full"][i], i))
                evals += [_eval("full", size, errs[i], i) for size, errs in OTHER_SIZE_TOP1.items()]
            history = [
                {
                    "epoch": e,
                    "size": CROP,
                    "lr": 0.01,
                    "train_loss": 2.0 - 0.1 * e + 0.01 * i,
                    "train_top1_err": 0.7,
                    "test_top1_err": 0.6 - 0.02 * e,
                    "seconds": 1.0,
                }
                for e in range(3)
            ]
            runs.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "run_dir": f"artifacts/{variant}/{seed}",
                    "train_seconds": 40.0 + i,
                    "history": history,
                    "eval": evals,
                }
            )
    return {
        "format": 2,
        "settings": {
            "network": network,
            "epochs": 3,
            "seeds": list(seeds),
            "quick": quick,
            "train_sizes": {"no_spp": [112], "spp_single": [112], "spp_multi": [112, 90]},
            "test_sizes": TEST_SIZES,
            "data": {"name": "synthetic"},
            "preprocess": {"short_side": SHORT, "crop": CROP},
        },
        "runs": runs,
        "timing": {"total_seconds": 700.1, "cpu_count": 2, "torch_threads": 2},
    }


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results()


@pytest.fixture(scope="module")
def summary(results) -> dict:
    return report.summarise(results)


def pct(values: list[float]) -> list[float]:
    return [100.0 * v for v in values]


@pytest.mark.parametrize("variant", report.VARIANTS)
@pytest.mark.parametrize("view", ["crop", "10view"])
def test_table2_means_and_stds(summary, variant, view) -> None:
    stat = summary["variants"][variant][view]["top1"]
    assert stat["mean"] == pytest.approx(statistics.mean(pct(TOP1[variant][view])))
    assert stat["std"] == pytest.approx(statistics.stdev(pct(TOP1[variant][view])))
    assert stat["n"] == 3
    top5 = summary["variants"][variant][view]["top5"]
    assert top5["mean"] == pytest.approx(statistics.mean([10.0, 11.0, 12.0]))
    assert top5["std"] == pytest.approx(1.0)
    assert summary["variants"][variant]["paper_10view"]["top1"] == PAPER_ZF5[variant]


def test_table3(summary) -> None:
    for variant in report.SPP_VARIANTS:
        row = summary["table3"][variant]
        assert row["crop_top1"]["mean"] == pytest.approx(statistics.mean(pct(TOP1[variant]["crop"])))
        assert row["full_top1"]["mean"] == pytest.approx(statistics.mean(pct(TOP1[variant]["full"])))
        assert (row["paper_crop_top1"], row["paper_full_top1"]) == PAPER_ZF5_T3[variant]


def _paired(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(pct(a), pct(b), strict=True)]


EXPECTED_EFFECTS = {
    "spp_vs_no_spp": (
        _paired(TOP1["spp_single"]["10view"], TOP1["no_spp"]["10view"]),
        34.98 - 35.99,
        "appears",
    ),
    "multi_vs_single": (
        _paired(TOP1["spp_multi"]["10view"], TOP1["spp_single"]["10view"]),
        34.60 - 34.98,
        "not established",
    ),
    "full_vs_crop_single": (
        _paired(TOP1["spp_single"]["full"], TOP1["spp_single"]["crop"]),
        37.55 - 38.01,
        "not established",
    ),
    "full_vs_crop_multi": (
        _paired(TOP1["spp_multi"]["full"], TOP1["spp_multi"]["crop"]),
        37.07 - 37.57,
        "appears",
    ),
}


@pytest.mark.parametrize("key", EXPECTED_EFFECTS)
def test_effects(summary, key) -> None:
    diffs, paper_delta, verdict = EXPECTED_EFFECTS[key]
    effect = {e["key"]: e for e in summary["effects"]}[key]
    assert effect["delta"]["mean"] == pytest.approx(statistics.mean(diffs))
    assert effect["delta"]["std"] == pytest.approx(statistics.stdev(diffs))
    assert effect["delta"]["values"] == pytest.approx(diffs)
    assert effect["paper_delta"] == pytest.approx(paper_delta, abs=1e-9)
    assert effect["verdict"] == verdict
    assert f"Verdict: {verdict};" in effect["sentence"]
    interval = effect["interval"]
    assert interval["mean"] == pytest.approx(statistics.mean(diffs))  # equal test sets: the per-seed mean's mean
    assert interval["low"] <= interval["mean"] <= interval["high"] and interval["seeds"] == 3
    assert (interval["high"] < 0) == (verdict == "appears") and interval["images"] == IMAGES


def test_paper_deltas_are_the_briefs_numbers(summary) -> None:
    deltas = {e["key"]: e["paper_delta"] for e in summary["effects"]}
    assert deltas == {
        "spp_vs_no_spp": -1.01,
        "multi_vs_single": -0.38,
        "full_vs_crop_single": -0.46,
        "full_vs_crop_multi": -0.50,
    }


def test_test_sizes(summary) -> None:
    rows = {row["size"]: row for row in summary["test_sizes"]["spp_single"]}
    assert sorted(rows) == TEST_SIZES
    assert rows[SHORT]["full_image"] and not rows[90]["full_image"]
    assert rows[SHORT]["top1"]["mean"] == pytest.approx(statistics.mean(pct(TOP1["spp_single"]["full"])))
    assert rows[90]["top1"]["mean"] == pytest.approx(statistics.mean(pct(OTHER_SIZE_TOP1[90])))
    assert (rows[90]["top1"]["min"], rows[90]["top1"]["max"]) == pytest.approx((50.0, 52.0))


def test_curves(summary) -> None:
    rows = summary["curves"]["spp_multi"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[1]["train_loss"]["mean"] == pytest.approx(statistics.mean([1.9, 1.91, 1.92]))
    assert rows[2]["monitored_top1"]["mean"] == pytest.approx(56.0)


def test_one_seed() -> None:
    summary = report.summarise(make_results(seeds=[0]))
    stat = summary["variants"]["spp_single"]["10view"]["top1"]
    assert stat["n"] == 1 and stat["std"] is None and stat["mean"] == pytest.approx(37.0)
    effects = {e["key"]: e for e in summary["effects"]}
    assert effects["spp_vs_no_spp"]["delta"]["mean"] == pytest.approx(-3.0)
    assert effects["spp_vs_no_spp"]["interval"]["high"] < 0  # 18 of 600 images, all one way...
    assert effects["spp_vs_no_spp"]["verdict"] == "not established"  # ...but one seed never establishes it
    assert "one seed cannot show the seed-to-seed spread" in effects["spp_vs_no_spp"]["sentence"]
    markdown = report.render_markdown(summary)
    assert "37.00 (n=1)" in markdown
    assert "| -3.00 [" in markdown  # the effect's estimate and interval


def test_parent_network_paper_numbers() -> None:
    summary = report.summarise(make_results(network="overfeat7_cpu"))
    assert summary["paper"]["network"] == "overfeat7"
    deltas = {e["key"]: e["paper_delta"] for e in summary["effects"]}
    assert deltas["spp_vs_no_spp"] == pytest.approx(30.36 - 32.01, abs=1e-9)
    assert deltas["full_vs_crop_multi"] == pytest.approx(31.25 - 32.57, abs=1e-9)
    # Convnet*-5 has Table 2 numbers but no Table 3 in the paper: Table 3 falls back to ZF-5, labelled so.
    summary = report.summarise(make_results(network="convnet5_cpu"))
    assert summary["paper"]["network"] == "convnet5"
    assert summary["paper"]["table3_network"] == "zf5"


def test_write_report(tmp_path, results, summary) -> None:
    paths = report.write_report(results, tmp_path / "out")
    assert set(paths) == {"markdown", "json", "test_sizes_plot", "training_curves_plot"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())
    for key in ("test_sizes_plot", "training_curves_plot"):
        assert paths[key].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads(paths["json"].read_text()) == summary
    markdown = paths["markdown"].read_text()
    assert "QUICK MODE" not in markdown
    ns_10view = pct(TOP1["no_spp"]["10view"])
    assert f"{statistics.mean(ns_10view):.2f} ± {statistics.stdev(ns_10view):.2f} (n=3)" in markdown
    diffs = EXPECTED_EFFECTS["spp_vs_no_spp"][0]
    interval = {e["key"]: e for e in summary["effects"]}["spp_vs_no_spp"]["interval"]
    assert f"{statistics.mean(diffs):+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]" in markdown
    assert ", ".join(f"{d:+.2f}" for d in diffs) in markdown  # the per-seed deltas beside it
    assert "35.99" in markdown and "38.01" in markdown and "-1.01" in markdown
    t3_multi = pct(TOP1["spp_multi"]["full"])
    assert f"{statistics.mean(t3_multi):.2f} ± {statistics.stdev(t3_multi):.2f} (n=3)" in markdown
    assert "full image (Table 3)" in markdown
    # A GitHub table: each table row has as many cells as its header.
    table = [line for line in markdown.splitlines() if line.startswith("| method | 1-crop top-1")]
    assert len(table) == 1


def test_quick_mode_banner(tmp_path) -> None:
    paths = report.write_report(make_results(quick=True), tmp_path)
    first = paths["markdown"].read_text().split("\n## ")[0]
    assert "QUICK MODE" in first and "not evidence" in first


def test_atomic_writes_leave_no_temp_files(tmp_path, results, monkeypatch) -> None:
    report.write_report(results, tmp_path)
    report.write_report(results, tmp_path)  # overwriting works too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(report.FILES.values())

    failing = tmp_path / "failing"

    def refuse(src, dst) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(results, failing)
    assert list(failing.iterdir()) == []


def _without(results: dict, path: str) -> dict:
    broken = copy.deepcopy(results)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]
    return broken


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("settings", "missing key 'settings'"),
        ("runs", "missing key 'runs'"),
        ("timing", "missing key 'timing'"),
        ("settings.network", "missing key 'settings.network'"),
        ("settings.preprocess.short_side", "settings.preprocess.short_side"),
        ("runs.0.eval", r"missing key 'runs\[0\].eval'"),
    ],
)
def test_missing_keys_raise(results, path, message) -> None:
    with pytest.raises(ValueError, match=message):
        report.summarise(_without(results, path))


def test_no_runs_of_a_variant_raises(results, tmp_path) -> None:
    broken = copy.deepcopy(results)
    broken["runs"] = [r for r in broken["runs"] if r["variant"] != "spp_multi"]
    with pytest.raises(ValueError, match="no runs of variant 'spp_multi'"):
        report.write_report(broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_missing_full_image_eval_raises(results) -> None:
    broken = copy.deepcopy(results)
    run = next(r for r in broken["runs"] if r["variant"] == "spp_single")
    run["eval"] = [e for e in run["eval"] if not (e["mode"] == "full" and e["size"] == SHORT)]
    with pytest.raises(ValueError, match="no 'full' evaluation at size 128"):
        report.summarise(broken)


def test_error_messages_are_one_line(results) -> None:
    with pytest.raises(ValueError) as info:
        report.summarise(_without(results, "settings.seeds"))
    assert "\n" not in str(info.value)
    assert os.linesep not in str(info.value)


def test_module_does_not_touch_the_global_matplotlib_backend(results, tmp_path) -> None:
    import matplotlib

    before = matplotlib.get_backend()
    report.write_report(results, tmp_path)
    assert matplotlib.get_backend() == before


def test_report_json_path_type(results, tmp_path) -> None:
    paths = report.write_report(results, str(tmp_path))  # a str out_dir is accepted too
    assert all(isinstance(p, Path) for p in paths.values())

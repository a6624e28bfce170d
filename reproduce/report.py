"""The reproduction report: the paper's Tables 2 and 3, the three effects as paired per-seed deltas, plots.

`summarise(results)` turns the results dict of `sppnet reproduce` into the numbers (errors in %, deltas in
percentage points) that `write_report` saves as report.json and renders as report.md with PNG plots. A delta is
measured minus reference, so negative means fewer errors: the effect appears. Verdicts never claim more than
the seeds show (PAPER.md section 6: a reproduction states the deltas it measured).
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppnet.core.atomic import write_atomic
from sppnet.core.errors import InvalidInput
from sppnet.reproduce.stats import Interval, monitored, paired_bootstrap, seed_interval

FORMAT = 2
VARIANTS = ("no_spp", "spp_single", "spp_multi")
SPP_VARIANTS = ("spp_single", "spp_multi")
LABELS = {"no_spp": "no SPP", "spp_single": "SPP single-size", "spp_multi": "SPP multi-size"}
SHORT_LABELS = {"no_spp": "no SPP", "spp_single": "SPP single", "spp_multi": "SPP multi"}
# The network whose paper numbers stand in when a network has none of its own (PAPER.md section 6 asks for
# ZF-5's effects). The numbers themselves are kept with each network (sppnet.core.networks.PaperResult).
FALLBACK_PAPER_NETWORK = "zf5"

REQUIRED_SETTINGS = ("network", "epochs", "seeds", "quick", "train_sizes", "test_sizes", "preprocess")
REQUIRED_RUN = ("variant", "seed", "history", "eval")
FILES = {
    "markdown": "report.md",
    "json": "report.json",
    "test_sizes_plot": "test_sizes.png",
    "training_curves_plot": "training_curves.png",
}


@dataclass(frozen=True)
class Effect:
    """One paired comparison: `measured` minus `reference` top-1 error, seed by seed."""

    key: str
    title: str
    metric: str
    measured: tuple[str, str]  # (variant, eval view: "10view", "crop" or "full")
    reference: tuple[str, str]


EFFECTS = (
    Effect(
        "spp_vs_no_spp", "SPP single-size vs no SPP", "10-view top-1", ("spp_single", "10view"), ("no_spp", "10view")
    ),
    Effect(
        "multi_vs_single",
        "SPP multi-size vs single-size",
        "10-view top-1",
        ("spp_multi", "10view"),
        ("spp_single", "10view"),
    ),
    Effect(
        "full_vs_crop_single",
        "full image vs 1 crop, SPP single-size",
        "top-1",
        ("spp_single", "full"),
        ("spp_single", "crop"),
    ),
    Effect(
        "full_vs_crop_multi",
        "full image vs 1 crop, SPP multi-size",
        "top-1",
        ("spp_multi", "full"),
        ("spp_multi", "crop"),
    ),
)


# --- numbers ------------------------------------------------------------------------------------------------


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers as a JSON-ready dict: per-variant errors (%), Table 3, effects, test sizes, curves.

    Raises ValueError (one line) when a required key is missing, a variant has no runs or a needed evaluation
    is absent.
    """
    settings, runs = _validate(results)
    views = _views(settings)
    paper = _paper_reference(str(settings["network"]))
    per_variant = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in VARIANTS}

    # errors[variant][view][top] = {seed: error %}
    errors: dict[str, dict[str, dict[str, dict[Any, float]]]] = {}
    variants: dict[str, Any] = {}
    for variant, vruns in per_variant.items():
        wanted = ("crop", "10view", "full") if variant in SPP_VARIANTS else ("crop", "10view")
        errors[variant] = {
            view: {
                top: {r["seed"]: 100.0 * _eval(r, view, views[view])[f"{top}_err"] for r in vruns}
                for top in ("top1", "top5")
            }
            for view in wanted
        }
        variants[variant] = {
            "label": LABELS[variant],
            "seeds": [r["seed"] for r in vruns],
            "train_sizes": list(settings["train_sizes"].get(variant, [])),
            "train_seconds": _stat([r["train_seconds"] for r in vruns if r.get("train_seconds") is not None]),
            **{view: {top: _stat(errors[variant][view][top].values()) for top in ("top1", "top5")} for view in wanted},
            "paper_10view": paper["table2"][variant],
        }

    table3 = {
        variant: {
            "crop_top1": variants[variant]["crop"]["top1"],
            "full_top1": variants[variant]["full"]["top1"],
            "paper_crop_top1": paper["table3"][variant][0],
            "paper_full_top1": paper["table3"][variant][1],
        }
        for variant in SPP_VARIANTS
    }
    effects = [_effect(effect, per_variant, views, paper) for effect in EFFECTS]

    summary = {
        "format": FORMAT,
        "network": settings["network"],
        "quick": bool(settings["quick"]),
        "seeds": list(settings["seeds"]),
        "epochs": settings["epochs"],
        "crop_size": views["crop"],
        "full_image_size": views["full"],
        "paper": {
            "network": paper["network"],
            "label": paper["label"],
            "table3_network": paper["table3_network"],
            "table3_label": paper["table3_label"],
        },
        "variants": variants,
        "table3": table3,
        "effects": effects,
        "test_sizes": {v: _test_sizes(per_variant[v], views["full"]) for v in SPP_VARIANTS},
        "curves": {v: _curves(per_variant[v]) for v in VARIANTS},
        "convergence": [_convergence(run) for v in VARIANTS for run in per_variant[v]],
        "monitored": _monitored_name(runs),
        "settings": settings,
        "timing": results["timing"],
    }
    # One JSON round trip: what report.json holds is exactly this (tuples become lists, no NaN slips in).
    return json.loads(json.dumps(summary, allow_nan=False))


def _validate(results: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(results, dict):
        raise InvalidInput(f"results must be a dict, got {type(results).__name__}")
    for key in ("format", "settings", "runs", "timing"):
        if key not in results:
            raise InvalidInput(f"results: missing key {key!r}")
    if results["format"] != FORMAT:
        raise InvalidInput(f"results: format {results['format']!r} is not supported (this report reads {FORMAT})")
    settings = results["settings"]
    for key in REQUIRED_SETTINGS:
        if key not in settings:
            raise InvalidInput(f"results: missing key 'settings.{key}'")
    if not isinstance(settings["preprocess"], dict) or "short_side" not in settings["preprocess"]:
        raise InvalidInput("results: missing key 'settings.preprocess.short_side' (the full-image test size)")
    if "total_seconds" not in results["timing"]:
        raise InvalidInput("results: missing key 'timing.total_seconds'")
    runs = results["runs"]
    seen: set[tuple[str, Any]] = set()
    for i, run in enumerate(runs):
        for key in REQUIRED_RUN:
            if key not in run:
                raise InvalidInput(f"results: missing key 'runs[{i}].{key}'")
        if run["variant"] not in VARIANTS:
            raise InvalidInput(f"results: runs[{i}] has unknown variant {run['variant']!r}; expected one of {VARIANTS}")
        if (run["variant"], run["seed"]) in seen:
            raise InvalidInput(f"results: two runs of {run['variant']} with seed {run['seed']}")
        seen.add((run["variant"], run["seed"]))
    for variant in VARIANTS:
        if not any(run["variant"] == variant for run in runs):
            raise InvalidInput(f"results: no runs of variant {variant!r}")
    return settings, runs


def _views(settings: dict[str, Any]) -> dict[str, int | None]:
    """Test size of each view: the crop (None: the one crop eval a run has) and the full image's short side."""
    crop = settings["preprocess"].get("crop")
    return {"crop": crop, "10view": crop, "full": int(settings["preprocess"]["short_side"])}


def _eval(run: dict[str, Any], mode: str, size: int | None) -> dict[str, Any]:
    entries = [e for e in run["eval"] if e["mode"] == mode and (size is None or e["size"] == size)]
    where = f"run {run['variant']} seed {run['seed']}"
    if not entries:
        at = "" if size is None else f" at size {size}"
        raise InvalidInput(f"results: {where} has no {mode!r} evaluation{at}")
    if len(entries) > 1:
        raise InvalidInput(f"results: {where} has {len(entries)} {mode!r} evaluations; set settings.preprocess.crop")
    return entries[0]


def _stat(values: Iterable[float]) -> dict[str, Any] | None:
    """Mean, sample std (ddof=1; None for one value), min, max, n and the values; None for no values."""
    values = [float(v) for v in values]
    if not values:
        return None
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def _paper_reference(network: str) -> dict[str, Any]:
    """Paper Table 2 and 3 numbers for `network` (kept with its spec), its parent's for a CPU preset, else ZF-5's."""
    from sppnet.core.networks import NETWORKS

    spec = NETWORKS.get(network)
    if spec is not None and spec.paper is None and spec.preset_of is not None:
        spec = NETWORKS[spec.preset_of]
    if spec is None or spec.paper is None:
        spec = NETWORKS[FALLBACK_PAPER_NETWORK]
    paper = spec.paper
    assert paper is not None
    table3_spec = spec if paper.crop_vs_full_single is not None else NETWORKS[FALLBACK_PAPER_NETWORK]
    table3 = table3_spec.paper
    assert table3 is not None and table3.crop_vs_full_single is not None and table3.crop_vs_full_multi is not None
    table2 = {"no_spp": paper.no_spp, "spp_single": paper.spp_single_size, "spp_multi": paper.spp_multi_size}
    return {
        "network": spec.name,
        "label": paper.label,
        "table2": {v: {"top1": t1, "top5": t5} for v, (t1, t5) in table2.items()},
        "table3": {"spp_single": table3.crop_vs_full_single, "spp_multi": table3.crop_vs_full_multi},
        "table3_network": table3_spec.name,
        "table3_label": table3.label,
    }


def _paper_delta(effect: Effect, paper: dict[str, Any]) -> tuple[float, str]:
    (mv, mview), (rv, rview) = effect.measured, effect.reference
    if mview == rview == "10view":
        a, b = paper["table2"][mv]["top1"], paper["table2"][rv]["top1"]
        return round(a - b, 2), paper["label"]
    crop, full = paper["table3"][mv]
    return round(full - crop, 2), paper["table3_label"]


def _effect(
    effect: Effect, runs: dict[str, list[dict[str, Any]]], views: dict[str, Any], paper: dict[str, Any]
) -> dict[str, Any]:
    """One paired effect: per-seed deltas, and the mean with its bootstrap interval over seeds and test images."""
    (mv, mview), (rv, rview) = effect.measured, effect.reference
    measured = {r["seed"]: _correct(r, mview, views[mview]) for r in runs[mv]}
    reference = {r["seed"]: _correct(r, rview, views[rview]) for r in runs[rv]}
    seeds = [seed for seed in measured if seed in reference]
    if not seeds:
        raise InvalidInput(f"results: no seed has runs of both {mv} and {rv}, so {effect.key} has no paired delta")
    lengths = {len(measured[s]) for s in seeds} | {len(reference[s]) for s in seeds}
    if len(lengths) != 1:
        raise InvalidInput(f"results: {effect.key} pairs evaluations of different test sets (sizes {sorted(lengths)})")
    wrong_m = 1.0 - np.array([measured[s] for s in seeds], dtype=np.float64)
    wrong_r = 1.0 - np.array([reference[s] for s in seeds], dtype=np.float64)
    interval = paired_bootstrap(wrong_m, wrong_r)
    delta = _stat(100.0 * float((wrong_m[k] - wrong_r[k]).mean()) for k in range(len(seeds)))
    assert delta is not None
    seeds_only = seed_interval(delta["values"])
    paper_delta, paper_label = _paper_delta(effect, paper)
    return {
        "key": effect.key,
        "title": effect.title,
        "metric": effect.metric,
        "measured": {"variant": mv, "view": mview},
        "reference": {"variant": rv, "view": rview},
        "seeds": seeds,
        "delta": delta,
        "interval": interval.to_json(),
        "seed_interval": None if seeds_only is None else list(seeds_only),
        "paper_delta": paper_delta,
        "paper_network": paper_label,
        "verdict": interval.verdict,
        "sentence": _sentence(effect, interval, delta, seeds_only, paper_delta, paper_label),
    }


def _correct(run: dict[str, Any], view: str, size: int | None) -> list[int]:
    entry = _eval(run, view, size)
    if "correct" not in entry:
        raise InvalidInput(
            f"results: run {run['variant']} seed {run['seed']} has no per-image results for {view!r}: evaluate with "
            "keep_predictions=True (the effects' intervals resample test images)"
        )
    return list(entry["correct"])


def _sentence(
    effect: Effect,
    interval: Interval,
    delta: dict[str, Any],
    seeds_only: tuple[float, float] | None,
    paper_delta: float,
    paper_label: str,
) -> str:
    n = interval.seeds
    measured = (
        f"{_num(interval.mean, signed=True)} pp, 95% interval [{_num(interval.low, signed=True)}, "
        f"{_num(interval.high, signed=True)}] over {n} paired seed{'s' if n != 1 else ''} and {interval.images} test "
        "images"
    )
    head = f"{effect.title} ({effect.metric}): {measured} (paper {paper_label}: {paper_delta:+.2f} pp)."
    verdict = interval.verdict
    if n < 2:
        why = "one seed cannot show the seed-to-seed spread, so nothing is established; run three or more seeds."
    elif verdict == "appears":
        why = "the whole interval is below 0: fewer errors, beyond what test-image sampling and seeds explain."
    elif verdict == "reversed":
        why = "the whole interval is above 0: more errors, the opposite of the paper's effect."
    else:
        why = (
            f"the interval includes 0, so these {n} seeds and {interval.images} test images do not establish it "
            f"(its half-width, {(interval.high - interval.low) / 2:.2f} pp, is about the smallest effect they could "
            "show)."
        )
    spread = ""
    if seeds_only is not None:
        low, high = seeds_only
        agrees = (low < 0 < high) == (verdict == "not established")
        spread = (
            f" Over seeds alone (t interval of the {n} per-seed deltas, std {delta['std']:.2f} pp): "
            f"[{_num(low, signed=True)}, {_num(high, signed=True)}]"
            + (
                "."
                if agrees
                else ", which disagrees: with this few seeds the bootstrap is optimistic, so hold the verdict loosely."
            )
        )
    return f"{head} Verdict: {verdict}; {why}{spread}"


def _test_sizes(runs: Sequence[dict[str, Any]], full_size: int) -> list[dict[str, Any]]:
    sizes = sorted({e["size"] for r in runs for e in r["eval"] if e["mode"] == "full"})
    rows = []
    for size in sizes:
        entries = [e for r in runs for e in r["eval"] if e["mode"] == "full" and e["size"] == size]
        rows.append(
            {
                "size": size,
                "full_image": size == full_size,
                "top1": _stat(100.0 * e["top1_err"] for e in entries),
                "top5": _stat(100.0 * e["top5_err"] for e in entries if e.get("top5_err") is not None),
                "images": max((e["n"] for e in entries if "n" in e), default=None),
            }
        )
    return rows


def _images(size: int, by_size: dict[str, dict[int, dict[str, Any]]]) -> str:
    """How many test images a size's row was measured on (the Table 3 size on all, others on a subset)."""
    counts = {row[size].get("images") for row in by_size.values() if size in row} - {None}
    return "/".join(str(c) for c in sorted(counts)) or "n/a"


def _convergence(run: dict[str, Any]) -> dict[str, Any]:
    """How one run ended: why it stopped, after how many epochs, its last monitored error and last quarter's gain."""
    errors = [100.0 * e for e in monitored(run["history"])]
    span = max(1, -(-len(errors) // 4))
    gain = min(errors[:-span]) - min(errors) if len(errors) > span else None
    stopped = run.get("stopped") or {"reason": "budget", "epochs_run": len(run["history"])}
    return {
        "variant": run["variant"],
        "seed": run["seed"],
        "reason": stopped["reason"],
        "epochs_run": stopped.get("epochs_run", len(run["history"])),
        "lr_drops": stopped.get("lr_drops", []),
        "final_top1": errors[-1] if errors else None,
        "last_quarter_gain_pp": gain,
    }


def _has_error(row: dict[str, Any]) -> bool:
    return row.get("val_top1_err", row.get("test_top1_err")) is not None


def _monitored_name(runs: Sequence[dict[str, Any]]) -> str:
    return "validation" if any("val_top1_err" in h for r in runs for h in r["history"]) else "test"


def _curves(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch: train loss and the monitored top-1 error (%, validation or test) over seeds; an epoch missing a
    value in a run skips it."""
    epochs = sorted({h["epoch"] for r in runs for h in r["history"]})
    rows = []
    for epoch in epochs:
        records = [h for r in runs for h in r["history"] if h["epoch"] == epoch]
        rows.append(
            {
                "epoch": epoch,
                "sizes": sorted({h["size"] for h in records if h.get("size") is not None}),
                "train_loss": _stat(h["train_loss"] for h in records if h.get("train_loss") is not None),
                "monitored_top1": _stat(100.0 * e for e in monitored([h for h in records if _has_error(h)])),
            }
        )
    return rows


# --- markdown -----------------------------------------------------------------------------------------------


def _num(x: float, signed: bool = False) -> str:
    x = 0.0 if round(x, 2) == 0 else x  # no "-0.00"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _pm(stat: dict[str, Any] | None, signed: bool = False) -> str:
    """'mean ± std (n=3)', or 'mean (n=1)' for one seed; 'n/a' for none."""
    if stat is None:
        return "n/a"
    if stat["std"] is None:
        return f"{_num(stat['mean'], signed)} (n={stat['n']})"
    return f"{_num(stat['mean'], signed)} ± {stat['std']:.2f} (n={stat['n']})"


def _paper(x: float | None, signed: bool = False) -> str:
    return "n/a" if x is None else _num(x, signed)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{seconds:.1f} s ({h}h {m:02d}m {s:02d}s)"


def render_markdown(summary: dict[str, Any]) -> str:
    """report.md from `summarise`'s output, linking the plots `write_report` saves beside it."""
    paper, variants, settings = summary["paper"], summary["variants"], summary["settings"]
    network = summary["network"]
    lines = [f"# SPP-net reproduction: {network}", ""]
    if summary["quick"]:
        lines += [
            "> **QUICK MODE: a smoke run. These numbers only show that the pipeline runs end to end; they are not "
            "evidence for or against any effect.**",
            "",
        ]
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines += [
        f"Network `{network}`, {summary['epochs']} epochs, seeds {seeds}. Errors are in %, as mean ± sample std "
        "(ddof=1) over seeds; deltas are in percentage points (pp), measured minus reference, paired seed by "
        "seed and image by image, so a negative delta means fewer errors. Each effect's 95% interval is a percentile "
        "bootstrap that resamples seeds and test images; an effect appears when its whole interval is below 0. "
        "Paper numbers are ImageNet 2012 val "
        f"({paper['label']}; PAPER.md section 6): compare the direction and rough size of the effects, not the "
        "error levels.",
        "",
        "## The three effects",
        "",
    ]
    if summary["quick"]:
        lines += ["Smoke run: the verdicts below follow the same rule as a full run but say nothing about SPP.", ""]
    lines += _table(
        [
            "effect",
            "metric",
            "measured Δ (pp) [95% interval]",
            "per-seed Δ (pp)",
            "seeds-only t interval",
            "paper Δ (pp)",
            "verdict",
        ],
        (
            [
                e["title"],
                e["metric"],
                f"{_num(e['interval']['mean'], signed=True)} [{_num(e['interval']['low'], signed=True)}, "
                f"{_num(e['interval']['high'], signed=True)}]",
                ", ".join(_num(v, signed=True) for v in e["delta"]["values"]),
                "n/a"
                if e["seed_interval"] is None
                else f"[{_num(e['seed_interval'][0], signed=True)}, {_num(e['seed_interval'][1], signed=True)}]",
                f"{e['paper_delta']:+.2f} ({e['paper_network']})",
                e["verdict"],
            ]
            for e in summary["effects"]
        ),
    )
    lines += [""] + [f"- {e['sentence']}" for e in summary["effects"]] + [""]

    lines += [f"## Error rates (as paper Table 2; crop {summary['crop_size'] or 'as evaluated'})", ""]
    label = paper["label"]
    lines += _table(
        [
            "method",
            "1-crop top-1",
            "1-crop top-5",
            "10-view top-1",
            "10-view top-5",
            f"paper {label} 10-view top-1",
            f"paper {label} 10-view top-5",
        ],
        (
            [
                LABELS[v],
                _pm(variants[v]["crop"]["top1"]),
                _pm(variants[v]["crop"]["top5"]),
                _pm(variants[v]["10view"]["top1"]),
                _pm(variants[v]["10view"]["top5"]),
                _paper(variants[v]["paper_10view"]["top1"]),
                _paper(variants[v]["paper_10view"]["top5"]),
            ]
            for v in VARIANTS
        ),
    )

    t3 = paper["table3_label"]
    lines += [
        "",
        f"## Full image vs 1 center crop (as paper Table 3, top-1; full image short side {summary['full_image_size']})",
        "",
    ]
    effects = {e["key"]: e for e in summary["effects"]}
    lines += _table(
        ["method", "1 crop", "full image", "Δ (pp)", f"paper {t3} 1 crop", f"paper {t3} full image", "paper Δ (pp)"],
        (
            [
                LABELS[v],
                _pm(row["crop_top1"]),
                _pm(row["full_top1"]),
                _pm(effects[f"full_vs_crop_{v.removeprefix('spp_')}"]["delta"], signed=True),
                _paper(row["paper_crop_top1"]),
                _paper(row["paper_full_top1"]),
                _paper(effects[f"full_vs_crop_{v.removeprefix('spp_')}"]["paper_delta"], signed=True),
            ]
            for v, row in summary["table3"].items()
        ),
    )

    lines += ["", "## Testing at other sizes (full image, top-1)", ""]
    sizes = sorted({row["size"] for v in SPP_VARIANTS for row in summary["test_sizes"][v]})
    by_size = {v: {row["size"]: row for row in summary["test_sizes"][v]} for v in SPP_VARIANTS}
    lines += _table(
        ["test size", *(LABELS[v] for v in SPP_VARIANTS), "test images", "note"],
        (
            [
                str(size),
                *(_pm(by_size[v][size]["top1"]) if size in by_size[v] else "n/a" for v in SPP_VARIANTS),
                _images(size, by_size),
                _size_note(size, summary),
            ]
            for size in sizes
        ),
    )
    lines += [
        "",
        f"![top-1 error vs test size]({FILES['test_sizes_plot']})",
        "",
        "## Training curves and convergence",
        "",
        "Mean over seeds per variant, shaded from min to max.",
        "",
        f"![training curves]({FILES['training_curves_plot']})",
        "",
        f"Stopping rule: {settings.get('stop') or 'none: every run trains its ' + str(summary['epochs']) + ' epochs'}.",
        "",
    ]
    watched = summary["monitored"]
    lines += _table(
        ["run", "stopped", "epochs run", "lr drops", f"final {watched} top-1", "gain over its last quarter (pp)"],
        (
            [
                f"{LABELS[c['variant']]}, seed {c['seed']}",
                "converged" if c["reason"] == "converged" else "at its epoch budget",
                str(c["epochs_run"]),
                "; ".join(c["lr_drops"]) or "none",
                "n/a" if c["final_top1"] is None else _num(c["final_top1"]),
                "n/a" if c["last_quarter_gain_pp"] is None else _num(c["last_quarter_gain_pp"], signed=True),
            ]
            for c in summary["convergence"]
        ),
    )
    lines += ["", "## Settings and timing", ""]
    timing = summary["timing"]
    train_sizes = "; ".join(f"{LABELS[v]} {variants[v]['train_sizes']}" for v in VARIANTS)
    per_variant_time = "; ".join(f"{LABELS[v]} {_pm(variants[v]['train_seconds'])}" for v in VARIANTS)
    settings_rows = [
        ("network", f"`{network}` (paper numbers: {paper['label']}, Table 3: {t3})"),
        ("quick", "yes (smoke run, not evidence)" if summary["quick"] else "no"),
        ("epochs", str(summary["epochs"])),
        ("device, precision", f"{settings.get('device', 'cpu')}, {settings.get('precision', 'fp32')}"),
        ("seeds", seeds),
        ("train sizes", train_sizes),
        ("test sizes", ", ".join(str(s) for s in settings["test_sizes"])),
        ("preprocess", f"`{json.dumps(settings['preprocess'], sort_keys=True)}`"),
        ("data", f"`{json.dumps(settings.get('data'), sort_keys=True)}`"),
        ("total time", _duration(timing["total_seconds"])),
        ("train seconds per run", per_variant_time),
        ("cpu count", str(timing.get("cpu_count", "n/a"))),
        ("torch threads", str(timing.get("torch_threads", "n/a"))),
    ]
    lines += _table(["setting", "value"], ([k, v.replace("|", "\\|")] for k, v in settings_rows))
    return "\n".join(lines) + "\n"


def _size_note(size: int, summary: dict[str, Any]) -> str:
    notes = []
    if size == summary["full_image_size"]:
        notes.append("full image (Table 3)")
    trained = [SHORT_LABELS[v] for v in SPP_VARIANTS if size in summary["variants"][v]["train_sizes"]]
    if trained:
        notes.append("training size of " + ", ".join(trained))
    return "; ".join(notes)


# --- plots --------------------------------------------------------------------------------------------------


def _figure(ncols: int) -> tuple[Any, Any]:
    # A Figure on its own Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * ncols, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


COLOURS = {"no_spp": "tab:gray", "spp_single": "tab:blue", "spp_multi": "tab:orange"}


def plot_test_sizes(summary: dict[str, Any]) -> bytes:
    """PNG: full-image top-1 error vs test size per SPP variant, mean line and min-max band; training sizes marked."""
    fig, (ax,) = _figure(1)
    for v in SPP_VARIANTS:
        rows = [row for row in summary["test_sizes"][v] if row["top1"] is not None]
        x = [row["size"] for row in rows]
        ax.plot(x, [row["top1"]["mean"] for row in rows], marker="o", color=COLOURS[v], label=LABELS[v])
        ax.fill_between(
            x, [row["top1"]["min"] for row in rows], [row["top1"]["max"] for row in rows], color=COLOURS[v], alpha=0.2
        )
    trained = sorted({s for v in SPP_VARIANTS for s in summary["variants"][v]["train_sizes"]})
    for i, size in enumerate(trained):
        ax.axvline(size, color="k", linestyle=":", linewidth=1, label="training size" if i == 0 else None)
    ax.axvline(summary["full_image_size"], color="tab:green", linestyle="--", linewidth=1, label="full image (Table 3)")
    ax.set_xlabel("test size (short side)")
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(f"{summary['network']}: full-image top-1 error vs test size")
    ax.legend()
    return _png(fig)


def plot_training_curves(summary: dict[str, Any]) -> bytes:
    """PNG: train loss and test top-1 error per epoch, mean over seeds per variant, min-max shaded."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(2)
    labels = ("train loss", f"{summary.get('monitored', 'test')} top-1 error (%)")
    for ax, key, ylabel in zip(axes, ("train_loss", "monitored_top1"), labels, strict=True):
        for v in VARIANTS:
            rows = [row for row in summary["curves"][v] if row[key] is not None]
            x = [row["epoch"] for row in rows]
            ax.plot(x, [row[key]["mean"] for row in rows], color=COLOURS[v], label=LABELS[v])
            ax.fill_between(
                x, [row[key]["min"] for row in rows], [row[key]["max"] for row in rows], color=COLOURS[v], alpha=0.2
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(f"{summary['network']}: training curves")
    return _png(fig)


# --- files --------------------------------------------------------------------------------------------------


def write_report(
    results: dict[str, Any],
    out_dir: Path,
    *,
    sections: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.json and the two PNG plots into `out_dir`; returns {kind: path}.

    `sections` are further markdown sections appended to report.md (the main job's export, engines, runtime and
    detection stages), `extra` further keys of report.json. Everything is computed before the first file is
    written, so invalid results leave `out_dir` untouched.
    """
    summary = summarise(results)
    record = summary | (extra or {})
    markdown = "\n".join([render_markdown(summary), *sections])
    contents: dict[str, Callable[[], bytes]] = {
        "json": lambda: (json.dumps(record, indent=1, allow_nan=False) + "\n").encode(),
        "markdown": lambda: markdown.encode(),
        "test_sizes_plot": lambda: plot_test_sizes(summary),
        "training_curves_plot": lambda: plot_training_curves(summary),
    }
    data = {kind: make() for kind, make in contents.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, blob in data.items():
        paths[kind] = out_dir / FILES[kind]
        write_atomic(paths[kind], blob)
    return paths

"""The main job's detection stage: a built-in VOC-layout set, the pipeline in every mode, and the report section
laid out like the paper's detection table (mAP +- bootstrap standard deviation over test images)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sppnet.core.atomic import write_atomic
from sppnet.core.runs import load_model, load_preprocess
from sppnet.reproduce.detection.builtin_detection import make_detection_dataset
from sppnet.reproduce.detection.pipeline import MODE_NAMES, MODES, DetectConfig, format_table, read_split, run_detection
from sppnet.reproduce.detection.proposals import ProposalCache, ProposalSettings


def detection_stage(
    out: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    images: int = 200,
    source: str = "fashion-mnist",
    max_proposals: int = 500,
    finetune_lr: float = 1e-2,  # 100x the paper's: ~1/600 of its 300k iterations fit the CPU budget
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Make (or reuse) the built-in detection set under `out/detection`, run every mode, write detection.json."""
    root = Path(out) / "detection"
    data = root / "data"
    manifest_path = data / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("n"), manifest.get("source", {}).get("name")) != (images, source):
            raise ValueError(f"{data} holds another detection set: remove it or use another --out")
    else:
        log(f"making the built-in detection set ({source}, {images} images) in {data}")
        manifest = make_detection_dataset(data, source=source, n=images, seed=0)
    classes = manifest["classes"]
    model, pre = load_model(run_dir), load_preprocess(run_dir)
    config = DetectConfig.for_input_size(
        pre.crop, proposals=ProposalSettings(max_proposals=max_proposals), finetune_lr=finetune_lr
    )
    splits = {s: read_split(data, s, classes, log) for s in ("train", "val", "test")}
    began = time.perf_counter()
    results = run_detection(model, pre, splits, classes, ProposalCache(root / "proposals"), config, MODES, log)
    results |= {
        "seconds": time.perf_counter() - began,
        "run_dir": str(run_dir),
        "images": {s: len(v) for s, v in splits.items()},
        "config": {
            "scales": list(config.scales),
            "single_scale": config.single_scale,
            "target": config.target,
            "max_proposals": max_proposals,
            "finetune_lr": finetune_lr,
            "finetune_epochs": config.finetune_epochs,
        },
    }
    write_atomic(root / "detection.json", (json.dumps(results, indent=1) + "\n").encode())
    return results


def detection_markdown(results: dict[str, Any]) -> str:
    """The report's detection section."""
    c = results["config"]
    lines = [
        "## Detection (built-in VOC-layout set)",
        "",
        f"Backbone `{results['run_dir']}`; images train/val/test {results['images']['train']}/"
        f"{results['images']['val']}/{results['images']['test']}; selective search (fast) up to {c['max_proposals']} "
        f"windows per image; scales {c['scales']} (single {c['single_scale']}; the paper's times the network's "
        f"input size / 224), window target {c['target']} px; fc fine-tuning lr {c['finetune_lr']} for "
        f"{c['finetune_epochs']} passes over the foreground windows, snapshot chosen on val. VOC07 11-point mAP (%) "
        "on the test split, +- the standard deviation over 200 bootstrap resamples of the test images:",
        "",
        format_table(results),
        "",
        "| method | test feature s / image | windows / image | fine-tune val accuracy |",
        "|---|---|---|---|",
    ]
    for mode, row in results["modes"].items():
        per_image = row["test_feature_seconds"] / max(row["test_images"], 1)
        lines.append(
            f"| {MODE_NAMES[mode]} | {per_image:.3f} | {row['test_windows'] / max(row['test_images'], 1):.0f} | "
            f"{row['finetune']['best_val_accuracy']:.3f} |"
        )
    lines += ["", f"The stage took {results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"

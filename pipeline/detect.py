"""Stage 7, detect (opt-in): the paper's detection experiment (PAPER.md section 7) on a built-in VOC-layout set,
every mode, on the classification backbone; reported like the paper's detection table (mAP +- the bootstrap
standard deviation over test images). A finished stage whose backbone and settings match is reused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppnet.core.atomic import write_atomic
from sppnet.core.errors import InvalidInput
from sppnet.core.manifest import read_run_info
from sppnet.core.runs import load_model, load_preprocess
from sppnet.reproduce.detection.builtin_detection import make_detection_dataset
from sppnet.reproduce.detection.pipeline import MODE_NAMES, MODES, DetectConfig, format_table, read_split, run_detection
from sppnet.reproduce.detection.proposals import ProposalCache, ProposalSettings

FINETUNE_LR = 1e-2  # 100x the paper's: about 1/600 of its 300k iterations fit the CPU budget
RESULTS = "detection.json"


@dataclass(frozen=True)
class DetectResult:
    """The detection table's numbers (`run_detection`'s record) with the stage's settings and time."""

    record: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.record

    def markdown(self) -> str:
        """The report's detection section."""
        r, c = self.record, self.record["config"]
        lines = [
            "## Detection (built-in VOC-layout set)",
            "",
            f"Backbone `{r['run_dir']}`; images train/val/test {r['images']['train']}/{r['images']['val']}/"
            f"{r['images']['test']}; selective search (fast) up to {c['max_proposals']} windows per image; scales "
            f"{c['scales']} (single {c['single_scale']}; the paper's times the network's input size / 224), window "
            f"target {c['target']} px; fc fine-tuning lr {c['finetune_lr']} for {c['finetune_epochs']} passes over "
            "the foreground windows, snapshot chosen on val. VOC07 11-point mAP (%) on the test split, +- the "
            "standard deviation over 200 bootstrap resamples of the test images:",
            "",
            format_table(r),
            "",
            "| method | test feature s / image | windows / image | fine-tune val accuracy |",
            "|---|---|---|---|",
        ]
        for mode, row in r["modes"].items():
            images = max(row["test_images"], 1)
            lines.append(
                f"| {MODE_NAMES[mode]} | {row['test_feature_seconds'] / images:.3f} | "
                f"{row['test_windows'] / images:.0f} | {row['finetune']['best_val_accuracy']:.3f} |"
            )
        lines += ["", f"The stage took {r['seconds'] / 60:.1f} min."]
        return "\n".join(lines) + "\n"


def detection_stage(
    out: Path,
    run_dir: Path,
    *,
    images: int = 200,
    source: str = "fashion-mnist",
    max_proposals: int = 500,
    log: Callable[[str], None] = print,
) -> DetectResult:
    """Make (or reuse) the built-in detection set under `out/detection`, run every mode, write detection.json."""
    root = out / "detection"
    data = root / "data"
    backbone = read_run_info(run_dir).card.weights.sha256
    settings = {"images": images, "source": source, "max_proposals": max_proposals, "backbone_sha256": backbone}
    if (root / RESULTS).is_file():
        done = json.loads((root / RESULTS).read_text())
        if done.get("settings") == settings:
            log(f"detection: reusing {root / RESULTS}")
            return DetectResult(done)
    manifest_path = data / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("n"), manifest.get("source", {}).get("name")) != (images, source):
            raise InvalidInput(f"{data} holds another detection set: remove it or use another --out")
    else:
        log(f"making the built-in detection set ({source}, {images} images) in {data}")
        manifest = make_detection_dataset(data, source=source, n=images, seed=0)
    classes = manifest["classes"]
    model, pre = load_model(run_dir), load_preprocess(run_dir)
    config = DetectConfig.for_input_size(
        pre.crop, proposals=ProposalSettings(max_proposals=max_proposals), finetune_lr=FINETUNE_LR
    )
    splits = {s: read_split(data, s, classes, log) for s in ("train", "val", "test")}
    began = time.perf_counter()
    results = run_detection(model, pre, splits, classes, ProposalCache(root / "proposals"), config, MODES, log)
    results |= {
        "seconds": time.perf_counter() - began,
        "run_dir": str(run_dir),
        "settings": settings,
        "images": {s: len(v) for s, v in splits.items()},
        "config": {
            "scales": list(config.scales),
            "single_scale": config.single_scale,
            "target": config.target,
            "max_proposals": max_proposals,
            "finetune_lr": FINETUNE_LR,
            "finetune_epochs": config.finetune_epochs,
        },
    }
    write_atomic(root / RESULTS, (json.dumps(results, indent=1) + "\n").encode())
    return DetectResult(results)

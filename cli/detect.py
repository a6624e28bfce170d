"""`sppnet detect train|test|image`: SPP-net detection (PAPER.md section 7)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


def detect_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `detect train` and `bench detect`: the windows and the scales."""
    parser.add_argument("--max-proposals", type=int, default=2000, help="selective search windows per image (2000)")
    parser.add_argument(
        "--paper-scales",
        action="store_true",
        help="the paper's pixel scales (480..1200, single 688) instead of scaling them by the network's input size",
    )


def detect_config(args: argparse.Namespace, input_size: int) -> object:
    """The DetectConfig the shared detection options describe, for a network whose crop is `input_size`."""
    from sppnet.reproduce.detection.pipeline import DetectConfig
    from sppnet.reproduce.detection.proposals import ProposalSettings

    changes: dict[str, object] = {"proposals": ProposalSettings(max_proposals=args.max_proposals)}
    if "epochs" in args:  # `detect train` only: `bench detect` does not fine-tune
        changes |= {"finetune_epochs": args.epochs, "finetune_lr": args.lr}
    if args.paper_scales:
        return replace(DetectConfig(), **changes)
    return DetectConfig.for_input_size(input_size, **changes)


def register(sub: argparse._SubParsersAction) -> None:
    det = sub.add_parser("detect", help="SPP-net detection (PAPER.md section 7): train, test, image")
    det_sub = det.add_subparsers(dest="detect", required=True, metavar="WHAT")
    dtr = det_sub.add_parser("train", help="fine-tune fc, train SVMs and box regressors on a VOC-layout train split")
    dtr.add_argument("--data", required=True, type=Path, metavar="DIR", help="VOCdevkit, its VOC2007, or data make's")
    dtr.add_argument("--checkpoint", required=True, type=Path, metavar="RUN", help="the classification run")
    dtr.add_argument("--out", required=True, type=Path, metavar="OUT")
    dtr.add_argument("--mode", choices=["spp-1", "spp-5", "rcnn"], default="spp-1")
    detect_arguments(dtr)
    dtr.add_argument("--epochs", type=float, default=10.0, help="fc fine-tuning passes over the foreground (10)")
    dtr.add_argument("--lr", type=float, default=1e-4, help="fc fine-tuning learning rate (the paper's 1e-4)")
    dtr.set_defaults(run=train)
    dte = det_sub.add_parser("test", help="AP of a trained detector on a split (VOC07 11-point and all-point)")
    dte.add_argument("--detector", required=True, type=Path, metavar="OUT")
    dte.add_argument("--data", required=True, type=Path, metavar="DIR")
    dte.add_argument("--split", default="test")
    dte.add_argument("--json", action="store_true", help="the AP table as JSON")
    dte.set_defaults(run=test)
    dim = det_sub.add_parser("image", help="detections on one image")
    dim.add_argument("image", type=Path, metavar="IMAGE")
    dim.add_argument("--detector", required=True, type=Path, metavar="OUT")
    dim.add_argument("--column", default="ftfc7 bb", help="pool5, fc7, ftfc7 or 'ftfc7 bb' (default)")
    dim.add_argument("--threshold", type=float, default=0.0, help="lowest SVM score shown (0)")
    dim.add_argument("--json", action="store_true")
    dim.set_defaults(run=image)


def train(args: argparse.Namespace) -> None:
    from sppnet.core.runs import load_preprocess
    from sppnet.reproduce.detection.commands import train_detector

    config = detect_config(args, load_preprocess(args.checkpoint).crop)
    print(f"wrote {train_detector(args.data, args.checkpoint, args.out, args.mode, config)}")


def test(args: argparse.Namespace) -> None:
    from sppnet.reproduce.detection.commands import test_detector

    row = test_detector(args.detector, args.data, args.split, log=None if args.json else print)
    if args.json:
        print(json.dumps(row))
        return
    for column, result in row["columns"].items():
        print(
            f"{column:10} mAP {100 * result['mAP_11point']:5.1f} (11-point), {100 * result['mAP_all_point']:5.1f} "
            f"(all-point), bootstrap std {100 * result['bootstrap_std']:.1f}"
        )


def image(args: argparse.Namespace) -> None:
    from sppnet.reproduce.detection.commands import detect_image

    found, proposals = detect_image(args.detector, args.image, args.column, args.threshold)
    for score, name, box in found:
        record = {"class": name, "score": round(score, 4), "box": box}
        print(json.dumps(record) if args.json else f"{name:12} {score:7.3f}  {box}")
    if not found and not args.json:
        print(f"no detection scored >= {args.threshold} among {proposals} proposals")

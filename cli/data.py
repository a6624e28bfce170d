"""`sppnet data make`: the built-in classification or detection dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data", required=True, metavar="WHAT")
    make = data_sub.add_parser("make", help="generate the built-in dataset (ImageFolder or VOC layout + manifest)")
    make.add_argument("--out", required=True, type=Path, metavar="DIR")
    make.add_argument("--task", choices=["classification", "detection"], default="classification")
    make.add_argument("--source", choices=["fashion-mnist", "shapes"], default="fashion-mnist")
    make.add_argument("--n", type=int, default=3000, help="images in all (3000)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--fashion-mnist-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="idx files (default /usr/share/datasets/fashion-mnist)",
    )
    make.set_defaults(run=make_data)


def make_data(args: argparse.Namespace) -> None:
    options = {"source": args.source, "n": args.n, "seed": args.seed, "fashion_mnist_dir": args.fashion_mnist_dir}
    if args.task == "detection":
        from sppnet.reproduce.detection.builtin_detection import make_detection_dataset

        made = make_detection_dataset(args.out, **options)
        print(f"wrote {args.out}: VOC layout, {made['n']} images, classes {', '.join(made['classes'])}")
        return
    from sppnet.reproduce.builtin_data import make_classification_dataset

    manifest = make_classification_dataset(args.out, **options)
    counts = {split: sum(per_class.values()) for split, per_class in manifest["counts"].items()}
    print(f"wrote {args.out}: {counts} images from {args.source}, seed {args.seed}")

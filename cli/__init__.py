"""The `sppnet` command: one entry point, a subcommand per job; errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sppnet.reproduce.bins import RULES
from sppnet.reproduce.models import NETWORKS


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '180x240' -> (180, 240) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is not H or HxW with positive integers (e.g. 224 or 180x240)")
    return (sizes[0], sizes[-1])


def _int_list(text: str, what: str, example: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what} {text!r} are not comma-separated integers >= 1 (e.g. {example})")
    return values


def parse_levels(text: str) -> tuple[int, ...]:
    """'6,3,2,1' -> (6, 3, 2, 1)."""
    return _int_list(text, "levels", "6,3,2,1")


def parse_sizes(text: str) -> tuple[int, ...]:
    """'224,180' -> (224, 180)."""
    return _int_list(text, "sizes", "224,180")


def _describe(args: argparse.Namespace) -> None:
    from sppnet.reproduce.describe import describe, format_table

    height, width = args.size
    rows = describe(
        args.network, height, width, spp=not args.no_spp, num_classes=args.classes, levels=args.levels, rule=args.rule
    )
    if args.json:
        print(json.dumps([{"layer": r.name, "type": r.kind, "output": r.output, "params": r.params} for r in rows]))
    else:
        print(format_table(args.network, height, width, rows))


def _bench_spp(args: argparse.Namespace) -> None:
    from sppnet.reproduce.bench_spp import bench_spp, format_rows

    rows = bench_spp(args.sizes, args.batch, args.channels, args.levels, args.rule, args.repeats)
    if args.json:
        print(json.dumps([r.to_json() for r in rows]))
    else:
        print(format_rows(rows, args.batch, args.channels, args.levels))


def _data_make(args: argparse.Namespace) -> None:
    from sppnet.reproduce.builtin_data import make_classification_dataset

    if args.task != "classification":
        raise ValueError(f"--task {args.task}: only classification datasets exist so far")
    manifest = make_classification_dataset(
        Path(args.out), source=args.source, n=args.n, seed=args.seed, fashion_mnist_dir=args.fashion_mnist_dir
    )
    counts = {split: sum(per_class.values()) for split, per_class in manifest["counts"].items()}
    print(f"wrote {args.out}: {counts} images from {args.source}, seed {args.seed}")


def _train(args: argparse.Namespace) -> None:
    from sppnet.reproduce.solver import SolverConfig
    from sppnet.reproduce.train import TrainConfig, default_preprocess, train

    solver = SolverConfig(base_lr=args.lr, milestones=tuple(args.milestones or ()))
    config = TrainConfig(
        model=args.model,
        spp=not args.no_spp,
        levels=args.levels,
        rule=args.rule,
        sizes=args.sizes,
        size_schedule=args.size_schedule,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        dropout=args.dropout,
        init_std=args.init_std,
        solver=solver,
        preprocess=default_preprocess(args.model, args.sizes, args.short_side),
        on_bad=args.on_bad,
    )
    train(config, args.data, args.out, resume=args.resume, progress=sys.stderr.isatty())


def _evaluate(args: argparse.Namespace) -> None:
    from sppnet.reproduce.datasets import builtin_split, load_images
    from sppnet.reproduce.evaluate import evaluate
    from sppnet.reproduce.trained import load_model, load_preprocess

    model, pre = load_model(args.run_dir), load_preprocess(args.run_dir)
    images, kept, bad = load_images(builtin_split(args.data, args.split), on_bad="skip")
    for item in bad:
        print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
    labels = [sample.label for sample in kept.samples]
    result = evaluate(model, images, labels, mode=args.mode, pre=pre, size=args.size)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(
            f"{args.mode} at {result.size or 'scales ' + ','.join(map(str, result.scales))}: "
            f"top-1 error {100 * result.top1_err:.2f}%, "
            f"top-5 error {100 * result.top5_err:.2f}% on {result.n} images"
        )


def _reproduce(args: argparse.Namespace) -> None:
    from sppnet.reproduce.main_job import ReproduceConfig, reproduce

    changes = {
        k: v
        for k, v in {"source": args.source, "seeds": args.seeds, "epochs": args.epochs, "images": args.images}.items()
        if v is not None
    }
    job = ReproduceConfig.quick_run(**changes) if args.quick else ReproduceConfig(**changes)
    reproduce(job, args.out)


def _bench_train(args: argparse.Namespace) -> None:
    from sppnet.reproduce.bench_train import bench_train, format_rows
    from sppnet.reproduce.train import TrainConfig, default_preprocess, load_data

    config = TrainConfig(
        model=args.model,
        sizes=args.sizes,
        batch_size=args.batch_size,
        preprocess=default_preprocess(args.model, args.sizes),
    )
    rows = bench_train(config, load_data(args.data, config), args.sizes, args.batches)
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_rows(rows, args.model))


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="sppnet", description="SPP-net: reproduce, export, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    desc = sub.add_parser("describe", help="print a network's layer table with output sizes and parameter counts")
    desc.add_argument("network", metavar="NAME", help=f"one of: {', '.join(NETWORKS)}")
    desc.add_argument("--size", type=parse_size, default=(224, 224), metavar="H[xW]", help="input size (224)")
    desc.add_argument("--no-spp", action="store_true", help="the paper's no-SPP baseline (pool5 to 6x6)")
    desc.add_argument("--classes", type=int, default=1000, help="fc8 outputs (1000)")
    desc.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1), help="pyramid (6,3,2,1)")
    desc.add_argument("--rule", choices=RULES, default="adaptive", help="bin rule (adaptive)")
    desc.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    desc.set_defaults(run=_describe)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data", required=True, metavar="WHAT")
    make = data_sub.add_parser("make", help="generate the built-in dataset (ImageFolder layout + manifest)")
    make.add_argument("--out", required=True, metavar="DIR")
    make.add_argument("--task", choices=["classification"], default="classification")
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
    make.set_defaults(run=_data_make)

    tr = sub.add_parser("train", help="train a network, Caffe-style, single- or multi-size")
    tr.add_argument("--model", required=True, metavar="NAME", help=f"one of: {', '.join(NETWORKS)}")
    tr.add_argument("--data", required=True, metavar="DIR", help="DIR/train/<class>/..., DIR/test/<class>/...")
    tr.add_argument("--out", required=True, metavar="RUN")
    tr.add_argument("--sizes", type=parse_sizes, default=(224,), help="training sizes; two or more = multi-size")
    tr.add_argument(
        "--size-schedule",
        choices=["alternate", "random"],
        default="alternate",
        help="alternate whole epochs between sizes, or draw one in [min, max] per epoch",
    )
    tr.add_argument("--epochs", type=int, default=70)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=0.01)
    tr.add_argument("--milestones", type=parse_sizes, default=None, help="epochs at which lr /= 10")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dropout", type=float, default=0.5)
    tr.add_argument("--init-std", type=float, default=0.01, help="Gaussian weight init (Caffe: 0.01)")
    tr.add_argument("--short-side", type=int, default=None, help="resize before cropping (crop * 256/224)")
    tr.add_argument("--no-spp", action="store_true", help="the no-SPP baseline (one size)")
    tr.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1))
    tr.add_argument("--rule", choices=RULES, default="adaptive")
    tr.add_argument("--on-bad", choices=["skip", "error"], default="skip", help="bad images: skip or stop")
    tr.add_argument("--resume", action="store_true", help="continue RUN from its last finished epoch")
    tr.set_defaults(run=_train)

    ev = sub.add_parser("evaluate", help="top-1/top-5 error of a trained run")
    ev.add_argument("run_dir", metavar="RUN")
    ev.add_argument("--data", required=True, metavar="DIR")
    ev.add_argument("--split", default="test")
    ev.add_argument("--mode", choices=["crop", "10view", "full", "multiview"], default="crop")
    ev.add_argument("--size", type=int, default=None, help="crop/10view: resize views to S; full: short side S")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(run=_evaluate)

    rep = sub.add_parser("reproduce", help="the paper's experiment on the built-in data, with a report")
    rep.add_argument("--quick", action="store_true", help="a smoke run (300 images, 2 epochs, 1 seed)")
    rep.add_argument("--out", default="artifacts/reproduce", metavar="DIR", help="(artifacts/reproduce)")
    rep.add_argument("--source", choices=["fashion-mnist", "shapes"], default=None)
    rep.add_argument("--seeds", type=parse_sizes, default=None, help="training seeds (0,1,2)")
    rep.add_argument("--epochs", type=int, default=None, help="(20)")
    rep.add_argument("--images", type=int, default=None, help="built-in dataset size (3000)")
    rep.set_defaults(run=_reproduce)

    bench = sub.add_parser("bench", help="benchmarks that print ratios measured side by side in one run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    spp = bench_sub.add_parser("spp", help="SPP forward+backward vs a per-bin loop and a single max-pool")
    spp.add_argument(
        "--sizes",
        type=lambda t: [parse_size(s) for s in t.split(",")],
        default=[(13, 13), (10, 10)],
        metavar="HxW,...",
        help="conv5 sizes (13x13,10x10: ZF-5 at 224/180)",
    )
    spp.add_argument("--batch", type=int, default=32)
    spp.add_argument("--channels", type=int, default=256)
    spp.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1))
    spp.add_argument("--rule", choices=RULES, default="adaptive")
    spp.add_argument("--repeats", type=int, default=20)
    spp.add_argument("--json", action="store_true")
    spp.set_defaults(run=_bench_spp)
    bt = bench_sub.add_parser("train", help="training images/s per size, data loading vs compute")
    bt.add_argument("--data", required=True, metavar="DIR", help="a dataset as `sppnet data make` writes it")
    bt.add_argument("--model", default="zf5_cpu", metavar="NAME")
    bt.add_argument("--sizes", type=parse_sizes, default=(112, 90))
    bt.add_argument("--batch-size", type=int, default=64)
    bt.add_argument("--batches", type=int, default=8, help="batches timed per part and size (8)")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(run=_bench_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a ValueError becomes `sppnet: error: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as err:
        print(f"sppnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "sppnet: interrupted (a training run continues from its last finished epoch with --resume)", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`sppnet train`, `sppnet evaluate` and `sppnet reproduce`: the paper's classification experiment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sppnet.cli.args import parse_epochs, parse_levels, parse_seeds, parse_sizes
from sppnet.core.bins import RULES
from sppnet.core.devices import DEVICES, TRAIN_PRECISIONS
from sppnet.core.networks import NETWORKS

RESUME = "a training run continues from its last finished epoch with --resume"
REPRODUCE_RESUME = "run the same command again: finished runs are reused and an interrupted one resumes"


def register(sub: argparse._SubParsersAction) -> None:
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
    tr.add_argument("--milestones", type=parse_epochs, default=None, help="epochs at which lr /= 10")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dropout", type=float, default=0.5)
    tr.add_argument("--init-std", type=float, default=0.01, help="Gaussian weight init (Caffe: 0.01)")
    tr.add_argument("--short-side", type=int, default=None, help="resize before cropping (crop * 256/224)")
    tr.add_argument("--no-spp", action="store_true", help="the no-SPP baseline (one size)")
    tr.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1))
    tr.add_argument("--rule", choices=RULES, default="adaptive")
    tr.add_argument("--on-bad", choices=["skip", "error"], default="skip", help="bad images: skip or stop")
    tr.add_argument("--resume", action="store_true", help="continue RUN from its last finished epoch")
    device_arguments(tr, training=True)
    tr.add_argument("--workers", type=int, default=None, help="batch-making processes (0 on the CPU, <= 8 on a GPU)")
    tr.add_argument(
        "--plateau",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="lr / 10 when validation top-1 stalls for EPOCHS (then 1), at the latest at --milestones; converged at "
        "the plateau after two drops (off: drops at --milestones only)",
    )
    tr.add_argument("--val-images", type=int, default=0, help="training images held out to watch (0: the test split)")
    tr.set_defaults(run=train, interrupted=RESUME)

    ev = sub.add_parser("evaluate", help="top-1/top-5 error of a run")
    ev.add_argument("run_dir", metavar="RUN")
    ev.add_argument("--data", required=True, metavar="DIR")
    ev.add_argument("--split", default="test")
    ev.add_argument("--mode", choices=["crop", "10view", "full", "multiview"], default="crop")
    ev.add_argument("--size", type=int, default=None, help="crop/10view: resize views to S; full: short side S")
    ev.add_argument("--json", action="store_true")
    device_arguments(ev, training=False)
    ev.set_defaults(run=evaluate)

    rep = sub.add_parser("reproduce", help="the paper's experiment on the built-in data, exported and served, reported")
    rep.add_argument("--quick", action="store_true", help="a smoke run (300 images, 2 epochs, 1 seed)")
    rep.add_argument("--out", default="artifacts/reproduce", type=Path, metavar="DIR", help="(artifacts/reproduce)")
    rep.add_argument("--source", choices=["fashion-mnist", "shapes"], default=None)
    rep.add_argument("--seeds", type=parse_seeds, default=None, help="training seeds (0,1,2)")
    rep.add_argument("--epochs", type=int, default=None, help="the budget of each run (10)")
    rep.add_argument("--images", type=int, default=None, help="built-in dataset size (14000)")
    rep.add_argument("--test-images", type=int, default=None, help="of which test images (5000)")
    rep.add_argument(
        "--with-detection",
        action="store_true",
        help="also the detection experiment on a built-in VOC-layout set (about 10 more minutes on 2 cores)",
    )
    rep.add_argument("--network", default=None, metavar="NAME", help="(zf5_cpu); zf5 with its paper sizes on a GPU")
    rep.add_argument(
        "--fashion-mnist-dir", type=Path, default=None, metavar="DIR", help="the idx files (Debian's package)"
    )
    device_arguments(rep, training=True)
    rep.set_defaults(run=reproduce, interrupted=REPRODUCE_RESUME)


def device_arguments(parser: argparse.ArgumentParser, *, training: bool) -> None:
    """--device (and, for training, --precision): where a command computes."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when present, else cpu")
    if training:
        parser.add_argument(
            "--precision",
            choices=TRAIN_PRECISIONS,
            default="fp32",
            help="fp32, or bf16 autocast (fp32 master weights, Caffe's solver unchanged)",
        )


def train(args: argparse.Namespace) -> None:
    from sppnet.core.networks import get_network
    from sppnet.reproduce.solver import SolverConfig
    from sppnet.reproduce.stats import PlateauRule
    from sppnet.reproduce.train import TrainConfig, load_data, train

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
        solver=SolverConfig(base_lr=args.lr, milestones=tuple(args.milestones or ())),
        preprocess=get_network(args.model).default_preprocess(args.sizes, args.short_side),
        on_bad=args.on_bad,
        precision=args.precision,
        plateau=None if args.plateau is None else PlateauRule(patience=args.plateau),
    )
    data = load_data(args.data, config)
    if args.val_images:
        data = data.hold_out(args.val_images)
    options = {"resume": args.resume, "progress": sys.stderr.isatty(), "device": args.device, "workers": args.workers}
    train(config, args.data, args.out, data=data, **options)


def evaluate(args: argparse.Namespace) -> None:
    from sppnet.reproduce.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, args.data, args.split, mode=args.mode, size=args.size, device=args.device)
    if args.json:
        print(json.dumps(result.to_json()))
        return
    where = result.size or "scales " + ",".join(map(str, result.scales or ()))
    print(
        f"{args.mode} at {where}: top-1 error {100 * result.top1_err:.2f}%, "
        f"top-5 error {100 * result.top5_err:.2f}% on {result.n} images"
    )


def reproduce(args: argparse.Namespace) -> None:
    from sppnet.pipeline.config import ReproduceConfig, paper_network
    from sppnet.pipeline.job import run_job

    changes = {"source": args.source, "seeds": args.seeds, "epochs": args.epochs, "images": args.images}
    changes |= {"test_images": args.test_images}
    changes = {k: v for k, v in changes.items() if v is not None}
    changes |= {"with_detection": args.with_detection, "device": args.device, "precision": args.precision}
    changes |= {"fashion_mnist_dir": args.fashion_mnist_dir}
    if args.network is not None:
        changes |= paper_network(args.network)
    job = ReproduceConfig.quick_run(**changes) if args.quick else ReproduceConfig(**changes)
    run_job(job, args.out)

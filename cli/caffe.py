"""`sppnet caffe import` and `sppnet caffe export`: Caffe models in and out (sppnet.export.caffe)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sppnet.cli.args import parse_size

RERUN = "each file is renamed into place whole (the run's model.json last): run it again"


def parse_bgr(text: str) -> tuple[float, float, float]:
    """'104,117,123' -> (104.0, 117.0, 123.0): a B,G,R mean."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"mean {text!r} is not three comma-separated numbers B,G,R (e.g. 128,128,128)")
    return values  # type: ignore[return-value]


def register(sub: argparse._SubParsersAction) -> None:
    caffe = sub.add_parser("caffe", help="import Caffe models as runs; export runs as Caffe models")
    commands = caffe.add_subparsers(dest="caffe_command", required=True, metavar="{import,export}")

    imp = commands.add_parser(
        "import",
        help="a prototxt (V2, V1, V0 or the SPP-net release's layout) + caffemodel -> a run directory",
        description="Every other command then takes the run as it takes a trained one. Preprocessing defaults to "
        "the SPP-net release's: BGR, scalar mean 128, scale 1.",
    )
    imp.add_argument("prototxt", type=Path, metavar="NET.prototxt")
    imp.add_argument("caffemodel", type=Path, metavar="WEIGHTS.caffemodel")
    imp.add_argument("--out", required=True, type=Path, metavar="RUN")
    mean = imp.add_mutually_exclusive_group()
    mean.add_argument("--mean-bgr", type=parse_bgr, default=None, metavar="B,G,R", help="channel means (128,128,128)")
    mean.add_argument("--mean", type=Path, default=None, metavar="MEAN.binaryproto", help="Caffe's mean image")
    imp.add_argument("--scale", type=float, default=1.0, help="multiplies the mean-subtracted input (1)")
    imp.add_argument("--classes", type=Path, default=None, metavar="FILE", help="class names, one per line")
    imp.add_argument(
        "--input-size", type=parse_size, default=None, metavar="HxW", help="the run's size (default: the prototxt's)"
    )
    imp.add_argument(
        "--dropout-scaling",
        choices=["auto", "train", "test"],
        default="auto",
        help="auto: the release's layout means its fork's test-time scaling (x (1 - ratio)), else BVLC's (auto)",
    )
    imp.set_defaults(run=import_, interrupted=RERUN)

    exp = commands.add_parser("export", help="a run -> deploy.prototxt + weights.caffemodel for stock BVLC Caffe")
    exp.add_argument("run_dir", type=Path, metavar="RUN")
    exp.add_argument("--out", required=True, type=Path, metavar="DIR")
    exp.add_argument("--size", type=parse_size, default=None, metavar="HxW", help="input size (the run's)")
    exp.set_defaults(run=export, interrupted=RERUN)


def import_(args: argparse.Namespace) -> None:
    from sppnet.core.manifest import read_run_info
    from sppnet.export.caffe import import_caffe

    path = import_caffe(
        args.prototxt,
        args.caffemodel,
        args.out,
        mean_bgr=args.mean_bgr,
        mean_file=args.mean,
        scale=args.scale,
        classes=args.classes,
        input_size=args.input_size,
        dropout_scaling=args.dropout_scaling,
    )
    info = read_run_info(args.out)
    origin = info.origin
    print(
        f"wrote {path}: {info.card.network} from Caffe {origin['format']}, {info.card.num_classes} classes, "
        f"pyramid {list(info.card.levels)} ({info.card.rule}), dropout scaled at {origin['dropout']['scaling']}"
    )


def export(args: argparse.Namespace) -> None:
    from sppnet.export.caffe import export_caffe

    prototxt, caffemodel = export_caffe(args.run_dir, args.out, size=args.size)
    print(f"wrote {prototxt} and {caffemodel}")

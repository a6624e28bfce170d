"""`sppnet bench spp|export|runtime|detect|train`: benchmarks that print ratios measured side by side in one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sppnet.cli.args import parse_levels, parse_size_list, parse_sizes
from sppnet.cli.detect import detect_arguments, detect_config
from sppnet.cli.export import export_arguments, export_config
from sppnet.core.bins import RULES
from sppnet.engines.runtime import BACKENDS


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print ratios measured side by side in one run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    spp = bench_sub.add_parser("spp", help="SPP forward+backward vs a per-bin loop and a single max-pool")
    spp.add_argument(
        "--sizes",
        type=parse_size_list,
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
    spp.set_defaults(run=bench_spp)

    be = bench_sub.add_parser("export", help="ONNX export and engine build time per file, and sizes")
    be.add_argument(
        "--networks", type=lambda t: t.split(","), default=["zf5_cpu"], metavar="NAME,...", help="(zf5_cpu)"
    )
    export_arguments(be)
    be.add_argument("--out", type=Path, default=Path("artifacts/bench-export"), metavar="DIR")
    be.add_argument("--no-build", action="store_true", help="export only")
    be.add_argument("--keep", action="store_true", help="keep the files (default: removed after timing)")
    be.add_argument("--json", action="store_true")
    be.set_defaults(run=bench_export)

    br = bench_sub.add_parser(
        "runtime",
        help="dispatcher vs direct model calls vs PyTorch eager, mixed sizes; with --device, the serving streams",
    )
    br.add_argument("--engines", required=True, metavar="DIR", help="an engine dir, ONNX export or run")
    br.add_argument("--backend", choices=BACKENDS, default="auto")
    br.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None, help="(fp32; fp16 on a GPU)")
    br.add_argument("--images", type=int, default=None, help="stream length (96; with --device 2048)")
    br.add_argument("--max-size", type=int, default=256, help="largest random side (256)")
    br.add_argument("--repeats", type=int, default=None, help="(9; with --device 3)")
    br.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    serving = br.add_argument_group("serving streams (--device)")
    serving.add_argument(
        "--device",
        default=None,
        metavar="cpu|cuda",
        help="bare engine, runtime from arrays and from JPEG files, each against PyTorch eager and compiled",
    )
    serving.add_argument("--batch", type=int, default=None, help="batch of the fixed-scale streams")
    serving.add_argument("--workers", type=int, default=None, help="decoding processes")
    serving.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    serving.add_argument("--no-jpeg", action="store_true", help="leave the JPEG stream out")
    br.add_argument("--json", action="store_true")
    br.set_defaults(run=bench_runtime)

    bd = bench_sub.add_parser("detect", help="seconds per image: SPP 1 and 5 scales vs R-CNN mode (conv, fc)")
    bd.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    bd.add_argument("--checkpoint", required=True, type=Path, metavar="RUN")
    bd.add_argument("--repeats", type=int, default=3)
    bd.add_argument("--json", action="store_true")
    detect_arguments(bd)
    bd.set_defaults(run=bench_detect)

    bt = bench_sub.add_parser("train", help="training images/s per size, data loading vs compute")
    bt.add_argument("--data", required=True, metavar="DIR", help="a dataset as `sppnet data make` writes it")
    bt.add_argument("--model", default="zf5_cpu", metavar="NAME")
    bt.add_argument("--sizes", type=parse_sizes, default=(112, 90))
    bt.add_argument("--batch-size", type=int, default=64)
    bt.add_argument("--batches", type=int, default=8, help="batches timed per part and size (8)")
    bt.add_argument("--device", type=lambda t: t.split(","), default=["cpu"], metavar="D[,D]", help="cpu,cuda (cpu)")
    bt.add_argument(
        "--precision", type=lambda t: t.split(","), default=["fp32"], metavar="P[,P]", help="fp32,bf16 (fp32)"
    )
    bt.add_argument("--workers", type=int, default=None, help="batch-making processes (0 on the CPU, <= 8 on a GPU)")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(run=bench_train)


def bench_spp(args: argparse.Namespace) -> None:
    from sppnet.reproduce.bench_spp import bench_spp, format_rows

    rows = bench_spp(args.sizes, args.batch, args.channels, args.levels, args.rule, args.repeats)
    text = format_rows(rows, args.batch, args.channels, args.levels)
    print(json.dumps([r.to_json() for r in rows]) if args.json else text)


def bench_export(args: argparse.Namespace) -> None:
    from sppnet.core.errors import BuildError
    from sppnet.export.bench_export import bench_export, format_rows
    from sppnet.export.trt_module import load_backend

    try:
        builder = load_backend().describe()
    except BuildError as e:
        if not args.no_build:
            raise
        builder = f"none ({e})"
    rows = bench_export(args.networks, args.out, config=export_config(args), build=not args.no_build, keep=args.keep)
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_rows(rows, builder))


def bench_runtime(args: argparse.Namespace) -> None:
    from sppnet.engines.bench_runtime import bench_runtime, bench_serving, format_bench

    if args.device is None:
        result = bench_runtime(
            args.engines,
            count=args.images or 96,
            repeats=args.repeats or 9,
            precision=args.precision or "fp32",
            backend=args.backend,
            max_size=args.max_size,
            torch_reference=not args.no_torch,
        )
    else:
        result = bench_serving(
            args.engines,
            device=args.device,
            precision=args.precision,
            backend=args.backend,
            count=args.images or 2048,
            batch=args.batch,
            repeats=args.repeats or 3,
            workers=args.workers,
            contenders=("eager fp32", "eager fp16") + (() if args.no_compile else ("compiled fp16",)),
            jpeg=not args.no_jpeg,
        )
    print(json.dumps(result.to_json()) if args.json else format_bench(result))


def bench_detect(args: argparse.Namespace) -> None:
    from sppnet.core.runs import load_model, load_preprocess
    from sppnet.reproduce.detection.bench_detect import bench_detect, format_timings

    model, pre = load_model(args.checkpoint), load_preprocess(args.checkpoint)
    config = detect_config(args, pre.crop)
    rows = bench_detect(model, pre, args.images, proposals=args.max_proposals, config=config, repeats=args.repeats)
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_timings(rows, len(args.images)))


def bench_train(args: argparse.Namespace) -> None:
    from sppnet.core.networks import get_network
    from sppnet.reproduce.bench_train import bench_train, format_rows
    from sppnet.reproduce.train import TrainConfig, load_data

    preprocess = get_network(args.model).default_preprocess(args.sizes)
    config = TrainConfig(model=args.model, sizes=args.sizes, batch_size=args.batch_size, preprocess=preprocess)
    data = load_data(args.data, config, lambda line: print(line, file=sys.stderr))  # stdout holds the table or JSON
    rows = bench_train(
        config, data, args.sizes, args.batches, devices=args.device, precisions=args.precision, workers=args.workers
    )
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_rows(rows, args.model))

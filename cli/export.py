"""`sppnet export`, `sppnet parity` and `sppnet build`: ONNX models, their check against PyTorch, engines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sppnet.cli.args import parse_precisions, parse_scales

RERUN = "nothing half-written is left (files are renamed into place, the manifest last): run it again"


def export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `export` and `bench export` share."""
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=None,
        metavar="S[,HxW...]",
        help="fixed-size models (default: the run's training sizes)",
    )
    parser.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the dynamic-size model with the SPP decomposed into standard ops (default on)",
    )
    parser.add_argument(
        "--plugin",
        action="store_true",
        help="also the dynamic model's plugin form (a custom node only full TensorRT with the sppnet plugin builds)",
    )
    parser.add_argument(
        "--precision", type=parse_precisions, default=("fp32", "fp16"), metavar="P[,P]", help="fp32,fp16 (both)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the engines take (32)")
    parser.add_argument("--opt-batch", type=int, default=8, help="batch the engines are tuned for (8)")
    parser.add_argument(
        "--max-size", type=int, default=None, help="dynamic model's largest H and W (2 x largest scale)"
    )


def export_config(args: argparse.Namespace) -> object:
    """The ExportConfig the shared export options describe."""
    from sppnet.export.onnx_export import ExportConfig

    return ExportConfig(
        scales=args.scales or (),
        dynamic=args.dynamic,
        plugin=args.plugin,
        precisions=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        max_size=args.max_size,
    )


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="ONNX models per scale and a dynamic-size model, with a manifest")
    ex.add_argument("--checkpoint", type=Path, default=None, metavar="RUN", help="a run (RUN/model.json)")
    ex.add_argument("--network", default=None, metavar="NAME", help="with no --checkpoint: untrained weights")
    ex.add_argument("--classes", type=int, default=None, help="untrained: fc8 outputs (1000)")
    ex.add_argument("--seed", type=int, default=None, help="untrained: init seed (0)")
    export_arguments(ex)
    ex.add_argument("--out", required=True, type=Path, metavar="DIR")
    ex.set_defaults(run=export, interrupted=RERUN)

    par = sub.add_parser("parity", help="ONNX Runtime vs PyTorch for every file of an export")
    par.add_argument("--onnx", required=True, type=Path, metavar="DIR", help="an export directory")
    par.add_argument(
        "--checkpoint", type=Path, default=None, metavar="RUN", help="the run exported (default: the manifest's)"
    )
    par.add_argument("--sizes", type=int, default=50, help="random sizes for the dynamic models (50)")
    par.add_argument("--batch", type=int, default=4, help="images per fixed-size check (4)")
    par.add_argument("--seed", type=int, default=0)
    par.add_argument("--json", action="store_true")
    par.set_defaults(run=parity)

    bu = sub.add_parser(
        "build",
        help="engines from an ONNX export: TensorRT (tensorrt, else tensorrt_rtx), or compiled PyTorch (torch_aoti)",
    )
    bu.add_argument("--onnx", required=True, type=Path, metavar="DIR", help="an `sppnet export` directory")
    bu.add_argument("--out", required=True, type=Path, metavar="ENGINE_DIR")
    bu.add_argument("--precision", type=parse_precisions, default=None, metavar="P[,P]", help="(all exported)")
    bu.add_argument("--kind", choices=["fixed", "dynamic"], action="append", default=None, help="(both)")
    bu.add_argument("--workspace-mb", type=int, default=4096, help="builder scratch memory (4096)")
    bu.add_argument(
        "--compute-capability",
        action="append",
        default=None,
        metavar="X.Y",
        help="TensorRT-RTX target GPUs, repeatable (its defaults: Ampere and later)",
    )
    bu.add_argument(
        "--builder",
        choices=["tensorrt", "tensorrt_rtx", "torch_aoti"],
        default=None,
        help="(the first TensorRT importable); torch_aoti: AOTInductor packages for the GPU (or CPU) it runs on",
    )
    aoti = bu.add_argument_group("torch_aoti")
    aoti.add_argument("--device", default=None, metavar="cuda|cpu", help="what the packages run on (the GPU if any)")
    aoti.add_argument("--checkpoint", type=Path, default=None, metavar="RUN", help="the run exported (the manifest's)")
    aoti.add_argument("--scalar", action="store_true", help="scalar CPU kernels (a dynamic CPU package builds faster)")
    bu.set_defaults(run=build, interrupted=RERUN)


def export(args: argparse.Namespace) -> None:
    from sppnet.core.errors import InvalidInput
    from sppnet.export.onnx_export import export_onnx, source_from_run, source_untrained

    if args.checkpoint is not None:
        if args.classes is not None or args.seed is not None:
            raise InvalidInput(
                "--classes and --seed are for untrained weights (--network NAME): drop them with --checkpoint"
            )
        source = source_from_run(args.checkpoint, args.network)
    elif args.network is not None:
        source = source_untrained(args.network, num_classes=args.classes or 1000, seed=args.seed or 0)
    else:
        raise InvalidInput("say what to export: --checkpoint RUN (a run) or --network NAME (untrained weights)")
    path = export_onnx(source, args.out, export_config(args), progress=print)
    print(f"wrote {path}")


def parity(args: argparse.Namespace) -> int:
    from sppnet.engines.compare import format_summary, summarise
    from sppnet.engines.parity import check_export
    from sppnet.export.onnx_export import source_of_export

    model = source_of_export(args.onnx, args.checkpoint).model
    summary = summarise(check_export(model, args.onnx, dynamic_count=args.sizes, batch=args.batch, seed=args.seed))
    print(json.dumps(summary) if args.json else format_summary(summary))
    if all(s["ok"] for s in summary):
        return 0
    print("sppnet: parity: ONNX Runtime differs from PyTorch beyond the tolerance (rows marked NO)", file=sys.stderr)
    return 1


def build(args: argparse.Namespace) -> None:
    if args.builder == "torch_aoti":
        from sppnet.export.aoti_builder import build_aoti_engines

        path = build_aoti_engines(
            args.onnx,
            args.out,
            precisions=args.precision,
            kinds=args.kind,
            device=args.device,
            checkpoint=args.checkpoint,
            vectorize=not args.scalar,
            progress=print,
        )
        print(f"wrote {path}")
        return
    from sppnet.export.build import build_engines

    path = build_engines(
        args.onnx,
        args.out,
        precisions=args.precision,
        kinds=args.kind,
        workspace_mb=args.workspace_mb,
        compute_capabilities=args.compute_capability,
        builder=args.builder,
        progress=print,
    )
    print(f"wrote {path}")

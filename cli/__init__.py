"""The `sppnet` command: one entry point, a subcommand per job; errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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


def parse_levels(text: str) -> tuple[int, ...]:
    """'6,3,2,1' -> (6, 3, 2, 1)."""
    try:
        levels = tuple(int(p) for p in text.split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"levels {text!r} are not comma-separated bin counts >= 1 (e.g. 6,3,2,1)")
    return levels


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a ValueError becomes `sppnet: error: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as err:
        print(f"sppnet: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`sppnet describe`: a network's layer table with output sizes and parameter counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sppnet.cli.args import parse_levels, parse_size
from sppnet.core.bins import DEFAULT_LEVELS, RULES
from sppnet.core.networks import NETWORKS


def register(sub: argparse._SubParsersAction) -> None:
    desc = sub.add_parser("describe", help="print a network's layer table with output sizes and parameter counts")
    desc.add_argument("network", metavar="NAME|RUN", help=f"one of: {', '.join(NETWORKS)}; or a run directory")
    desc.add_argument("--size", type=parse_size, default=(224, 224), metavar="H[xW]", help="input size (224)")
    desc.add_argument("--no-spp", action="store_true", help="the paper's no-SPP baseline (pool5 to 6x6)")
    desc.add_argument("--classes", type=int, default=None, help="fc8 outputs (1000)")
    desc.add_argument("--levels", type=parse_levels, default=None, help="pyramid (6,3,2,1)")
    desc.add_argument("--rule", choices=RULES, default=None, help="bin rule (adaptive)")
    desc.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    desc.set_defaults(run=describe)


def describe(args: argparse.Namespace) -> None:
    from sppnet.core.describe import describe, describe_model, format_table

    height, width = args.size
    if Path(args.network).is_dir():  # a run: its own network (an imported one, say), as trained or imported
        from sppnet.core.errors import InvalidInput
        from sppnet.core.manifest import read_run_info

        if args.no_spp or any(v is not None for v in (args.classes, args.levels, args.rule)):
            raise InvalidInput(
                "--no-spp, --classes, --levels and --rule describe a named network; a run is described as it was "
                "trained: drop them"
            )
        card = read_run_info(args.network).card
        network = card.network_spec()
        rows = describe_model(network, card.model, height, width)
    else:
        network = args.network
        rows = describe(
            network,
            height,
            width,
            spp=not args.no_spp,
            num_classes=args.classes or 1000,
            levels=args.levels or DEFAULT_LEVELS,
            rule=args.rule or "adaptive",
        )
    if args.json:
        print(json.dumps([{"layer": r.name, "type": r.kind, "output": r.output, "params": r.params} for r in rows]))
    else:
        print(format_table(network, height, width, rows))

"""The `sppnet` command: one entry point, one module per command group, thin handlers over library functions.

Every error a user can cause or fix (`sppnet.core.errors.SppnetError`) is printed as one line,
`sppnet: error: ...`, with exit status 2; anything else is a bug and keeps its traceback. `infer` exits 1 when
some images failed and others did not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sppnet.cli import bench, caffe, data, describe, detect, export, serve, train
from sppnet.core.errors import SppnetError, one_line

COMMAND_GROUPS = (describe, data, train, export, serve, detect, caffe, bench)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options, each group registered by its module."""
    parser = argparse.ArgumentParser(prog="sppnet", description="SPP-net: reproduce, export, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args) or 0
    except SppnetError as err:
        print(f"sppnet: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        message = getattr(args, "interrupted", "nothing was left half-written")
        print(f"sppnet: interrupted ({message})", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``albu-defects`` command line: ``demo``, ``bank build|stats``, ``synth``, ``preview``.

Each sub-command is a thin wrapper: parse arguments, call the library, print a short summary.
Bad arguments end with a one-line error (exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo

    out = write_demo(args.out, seed=args.seed)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="albu-defects",
        description="Defect-aware augmentations for industrial visual inspection (Albumentations plugin).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="write a picture of every augmentation on the bundled samples")
    demo.add_argument("--out", default="demo.png", help="output picture (default: demo.png)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(handler=_cmd_demo)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``albu-defects`` console script."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI ping from a CLI run
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"albu-defects {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

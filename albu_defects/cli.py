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


def _cmd_bank_build(args: argparse.Namespace) -> int:
    import warnings

    from .bank import DefectBank, format_stats

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank = DefectBank.from_folder(
            args.root, layout=args.layout, mask_threshold=args.threshold, margin=args.margin, progress=not args.quiet
        )
    for warning in caught:  # one line each, without the source location noise
        print(f"warning: {warning.message}", file=sys.stderr)
    out = bank.save(args.out, copy_free=args.copy_free)
    print(format_stats(bank.stats()))
    print(f"wrote {out}: {len(bank)} defects in {len(bank.classes)} classes, {bank.num_free} defect-free images")
    return 0


def _cmd_bank_stats(args: argparse.Namespace) -> int:
    from collections import Counter

    from .bank import DefectBank, format_stats

    bank = DefectBank.load(args.bank)
    print(format_stats(bank.stats()))
    for reason, count in sorted(Counter(s.reason for s in bank.skipped).items()):
        names = ", ".join(s.source_id for s in bank.skipped if s.reason == reason)
        print(f"skipped at build ({reason}): {count}: {names}")
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

    bank = commands.add_parser("bank", help="build a defect bank from image+mask folders, or show its statistics")
    bank_commands = bank.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    build = bank_commands.add_parser("build", help="build a defect bank from ROOT and save it to BANK")
    build.add_argument("root", metavar="ROOT", help="dataset folder (MT_<Class>/Imgs or images/ + masks/)")
    build.add_argument("-o", "--out", required=True, metavar="BANK", help="bank folder to write")
    build.add_argument("--threshold", type=float, default=127, help="mask pixels > threshold are defect (127)")
    build.add_argument("--layout", default="auto", choices=["auto", "magnetic_tile", "generic"], help="(auto)")
    build.add_argument("--margin", type=int, default=8, help="pixels of context around each defect (8)")
    build.add_argument("--copy-free", action="store_true", help="copy the defect-free images into the bank")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(handler=_cmd_bank_build)
    stats = bank_commands.add_parser("stats", help="print the per-class table of a saved bank")
    stats.add_argument("bank", metavar="BANK", help="bank folder written by 'bank build'")
    stats.set_defaults(handler=_cmd_bank_stats)

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

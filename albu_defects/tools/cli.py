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

    out = write_demo(args.out, seed=args.seed, only=args.only)
    print(f"wrote {out}")
    return 0


def _cmd_bank_build(args: argparse.Namespace) -> int:
    import warnings

    from albu_defects.bank import DefectBank, format_stats

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

    from albu_defects.bank import DefectBank, format_stats

    bank = DefectBank.load(args.bank)
    print(format_stats(bank.stats()))
    for reason, count in sorted(Counter(s.reason for s in bank.skipped).items()):
        names = ", ".join(s.source_id for s in bank.skipped if s.reason == reason)
        print(f"skipped at build ({reason}): {count}: {names}")
    return 0


def _per_class_values(text: str, classes: Sequence[str], option: str) -> list[float]:
    """``"0.2,0.5,..."`` (one number per class, in bank order) or ``"Crack=0.5,Fray=2"`` (every class named)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        if parts and all("=" in part for part in parts):
            named = {key.strip(): float(value) for key, value in (part.split("=", 1) for part in parts)}
            unknown, missing = sorted(set(named) - set(classes)), [c for c in classes if c not in named]
            if unknown or missing:
                raise ValueError(
                    f"{option} must name every class {list(classes)}; missing {missing}, unknown {unknown}"
                )
            return [named[c] for c in classes]
        values = [float(part) for part in parts]
    except ValueError as error:
        if option in str(error):
            raise
        raise ValueError(f"{option} must be numbers separated by commas, or class=number pairs; got {text!r}") from None
    if len(values) != len(classes):
        raise ValueError(f"{option} needs {len(classes)} values (one per class {list(classes)}), got {len(values)}")
    return values


def _cmd_synth(args: argparse.Namespace) -> int:
    from albu_defects.bank import resolve_bank
    from albu_defects.core.class_weights import losses_to_probabilities
    from albu_defects.methods.guided_crop.synthesis import synthesize_to_folder

    bank = resolve_bank(args.bank)
    if args.weights is not None and args.losses is not None:
        raise ValueError("give --weights or --losses, not both")
    weights: object = "uniform"
    if args.losses is not None:
        losses = _per_class_values(args.losses, bank.classes, "--losses")
        weights = losses_to_probabilities(losses, args.mode, args.temperature, args.floor)
    elif args.weights in ("uniform", "inverse_frequency"):
        weights = args.weights
    elif args.weights is not None:
        weights = _per_class_values(args.weights, bank.classes, "--weights")
    path = synthesize_to_folder(
        bank,
        args.out,
        args.n,
        weights,
        args.seed,
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
        max_defects=args.max_defects,
    )
    print(f"wrote {args.n} images, masks and {path}")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from .preview import write_preview

    out = write_preview(
        args.pipeline,
        args.images,
        args.out,
        seed=args.seed,
        samples=args.samples,
        height=args.height,
        mask_threshold=args.mask_threshold,
    )
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
    demo.add_argument("--only", metavar="PANEL", help="one row only, e.g. poisson_paste, contextmix (default: all)")
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

    synth = commands.add_parser(
        "synth", help="write Guided-Crop images + class masks pasted on a bank's defect-free images, with a manifest"
    )
    synth.add_argument("bank", metavar="BANK", help="bank folder written by 'bank build'")
    synth.add_argument("-n", type=int, default=500, help="number of images (500)")
    synth.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder (images/, masks/, manifest)")
    synth.add_argument(
        "--weights",
        help="class probabilities: uniform (default), inverse_frequency, one number per class 'a,b,...' "
        "or 'Class=number,...'",
    )
    synth.add_argument(
        "--losses", help="per-class validation losses ('a,b,...' or 'Class=loss,...'), mapped as ClassWeights.update"
    )
    synth.add_argument("--mode", default="proportional", choices=["proportional", "softmax"], help="--losses mapping")
    synth.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for --losses (1.0)")
    synth.add_argument("--floor", type=float, default=0.1, help="share of the uniform probability kept (0.1)")
    synth.add_argument("--max-defects", type=int, default=3, help="at most this many defects per image (3)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (0); the output depends only on it")
    synth.add_argument("--workers", type=int, default=None, help="threads (default: CPUs, at most 8)")
    synth.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(handler=_cmd_synth)

    preview = commands.add_parser(
        "preview",
        help="apply a saved pipeline (YAML/JSON) to images and draw a grid with masks and boxes",
        description="Apply a saved pipeline to images (masks found beside them: <stem>.png next to a "
        "non-png image, <stem>_mask.*, or a masks/ folder beside the images folder) and draw one row per "
        "image: the input, then --samples draws, masks tinted by class, boxes drawn. Batch pipelines "
        "(BatchCompose, DynamicLabelInjection) run on all images as one batch; ContextMix gets the other "
        "images as partners. Details: help(albu_defects.tools.preview).",
    )
    preview.add_argument("pipeline", metavar="PIPELINE", help="pipeline saved with A.save (.yaml, .yml or .json)")
    preview.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders (searched recursively)")
    preview.add_argument("-o", "--out", default="preview.png", help="output picture (default: preview.png)")
    preview.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    preview.add_argument("--samples", type=int, default=3, help="draws per image (default: 3)")
    preview.add_argument("--height", type=int, default=160, help="tile height in pixels (default: 160)")
    preview.add_argument(
        "--mask-threshold", type=float, default=127, help="masks with values above it are binary (default: 127)"
    )
    preview.set_defaults(handler=_cmd_preview)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``albu-defects`` console script."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI ping from a CLI run
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, OSError) as error:  # bad input or an unreadable file: one line, no traceback
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"albu-defects {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

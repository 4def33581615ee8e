"""Start-up time of the ``albu-defects`` command line against ``python -c "import numpy, cv2"`` (issue 14, sec. 3).

Every command runs as a fresh process, in interleaved rounds (one run of each per round, so load
from other processes hits them alike); the table gives the median wall time and the ratio to the
peer measured in the same rounds. Target: ``albu-defects --help`` and ``albu-defects bank stats
BANK`` within 2x of the peer. ``import albumentations`` is timed too: the cost the bank commands
no longer pay (albumentations 2.0.8 imports torch whenever torch is installed).

The bank is the full Magnetic Tile bank when ``../shared/data/magnetic_tile`` is there, else the
bundled samples' bank, built once into a temporary folder.

    python benchmarks/bench_cli.py [--repeats 15] [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MAGNETIC_TILE_ROOT, markdown_table, write_section

TARGET = 2.0


def console_script() -> list[str]:
    """The installed ``albu-defects`` script beside this Python, else ``python -m albu_defects``."""
    script = Path(sys.executable).with_name("albu-defects")
    return [str(script)] if script.exists() else [sys.executable, "-m", "albu_defects"]


def build_bank(folder: Path) -> tuple[Path, str]:
    import albu_defects as ad
    from albu_defects.data import sample_root

    full = MAGNETIC_TILE_ROOT.is_dir()
    root = MAGNETIC_TILE_ROOT if full else sample_root()
    bank = ad.DefectBank.from_folder(root, progress=False).save(folder / "bank")
    what = "the Magnetic Tile bank (1,344 images)" if full else "the bundled samples' bank (12 images)"
    return Path(bank), what


def run_ms(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds (15)")
    parser.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    args = parser.parse_args()

    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "ALBUMENTATIONS_NO_TELEMETRY": "1"}
    folder = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    try:
        bank, what = build_bank(folder)
        cli = console_script()
        commands = {
            'python -c "import numpy, cv2" (peer)': [sys.executable, "-c", "import numpy, cv2"],
            "albu-defects --help": [*cli, "--help"],
            "albu-defects bank stats BANK": [*cli, "bank", "stats", str(bank)],
            'python -c "import albu_defects"': [sys.executable, "-c", "import albu_defects"],
            'python -c "import albumentations" (not paid by the above)': [
                sys.executable,
                "-c",
                "import albumentations",
            ],
        }
        for command in commands.values():  # warm the page cache
            run_ms(command, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(run_ms(command, env))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    peer = statistics.median(next(iter(times.values())))
    targeted = {"albu-defects --help", "albu-defects bank stats BANK"}
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / peer
        met = ("yes" if ratio <= TARGET else "NO") if name in targeted else ""
        rows.append(
            [name, f"{median:.0f}", f"{min(values):.0f}", f"{ratio:.2f}x", f"<= {TARGET:g}x" if met else "", met]
        )
    table = markdown_table(["command (fresh process)", "median ms", "min ms", "x peer", "target", "met"], rows)
    body = (
        f"{args.repeats} interleaved rounds, one fresh process per command and round; the bank is {what}; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end (on {os.cpu_count()} cores: other processes "
        "shared them, which slows every row alike). "
        f"The command line imports only what a command needs: `--help` and the bank commands import neither "
        f"albumentations nor torch (checked by tests/tools/test_cli_imports.py).\n\n{table}"
    )
    print(body)
    if args.write:
        write_section("bench_cli", "Command-line start-up (issue 14, sec. 3)", body)


if __name__ == "__main__":
    main()

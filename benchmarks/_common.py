"""Shared benchmark plumbing: timing, machine description, and writing a section of RESULTS.md.

Each ``bench_*.py`` prints its table and, with ``--write``, replaces its own section of
``RESULTS.md`` (between ``<!-- name -->`` and ``<!-- /name -->``), so scripts never clobber each
other's results.
"""

from __future__ import annotations

import importlib.util
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = Path(__file__).resolve().parents[1]
#: "Today's main" of issue 14: the commit the speed targets are measured against.
BASE_REF = "72696d0"
SCRATCH = Path(os.environ.get("TMPDIR", "/tmp")) / "albu_defects_bench"


def _find_magnetic_tile() -> Path:
    """``../shared/data/magnetic_tile`` beside the checkout (or beside a parent folder, for git worktrees)."""
    if "ALBU_DEFECTS_MT_ROOT" in os.environ:
        return Path(os.environ["ALBU_DEFECTS_MT_ROOT"])
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:
        if (parent / "shared" / "data" / "magnetic_tile").is_dir():
            return parent / "shared" / "data" / "magnetic_tile"
    return here.parents[2] / "shared" / "data" / "magnetic_tile"


MAGNETIC_TILE_ROOT = _find_magnetic_tile()


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def interleaved_times_ms(
    fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times (ms) of ``repeats`` calls of each ``fns[name]()``, timed in interleaved rounds.

    One call of every function per round, so load from other processes hits all of them alike
    and their ratios stay meaningful on a busy machine. Take the median (or, on a very noisy
    machine, the minimum) of each list.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def machine_info() -> str:
    """One line naming the machine and the versions that matter."""
    import albumentations
    import cv2
    import numpy
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    versions = [
        f"Python {platform.python_version()}",
        f"numpy {numpy.__version__}",
        f"scipy {scipy.__version__}",
        f"OpenCV {cv2.__version__}",
        f"albumentations {albumentations.__version__}",
    ]
    try:
        import torch

        versions.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{cpu}, {os.cpu_count()} cores; " + ", ".join(versions) + (f"; commit {commit}" if commit else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, command: str | None = None) -> None:
    """Replace (or append) the ``name`` section of RESULTS.md with ``body``, stamped with machine and command."""
    command = command or "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    stamp = time.strftime("%Y-%m-%d")
    section = (
        f"<!-- {name} -->\n## {title}\n\n"
        f"Measured {stamp} on: {machine_info()}.\n\nCommand: `{command}`\n\n{body.strip()}\n<!-- /{name} -->"
    )
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Benchmark results\n\nWritten by the scripts in `benchmarks/` (run by hand, `--write`).\n"
    )
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def base_checkout(ref: str = BASE_REF, path: Path | None = None) -> Path:
    """A folder holding today's main ``albu_defects`` package (to put on PYTHONPATH or load with
    :func:`load_package`): ``path`` itself (a checkout or a copy), else ``git archive`` of
    ``ref``'s ``albu_defects`` unpacked into the benchmarks' scratch folder (once)."""
    if path is not None:
        if not (path / "albu_defects" / "__init__.py").is_file():
            raise SystemExit(f"{path} holds no albu_defects package")
        return path
    target = SCRATCH / f"base-{ref}"
    if not (target / "albu_defects" / "__init__.py").is_file():
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "albu_defects"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise SystemExit(f"git archive {ref} failed ({archive.stderr.decode().strip()}); pass a copy of it instead")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
    return target


def load_package(folder: Path, name: str) -> ModuleType:
    """Import the ``albu_defects`` package found in ``folder`` under another top-level ``name``, beside
    the one in use. Only for versions whose modules import each other relatively (72696d0 does):
    an absolute ``albu_defects`` import inside it would bind to this checkout's modules and time a
    mix of both versions, so such a package is refused (time it in a subprocess instead, as
    ``bench_dli`` does)."""
    absolute = re.compile(r"^(from|import)\s+albu_defects\b", re.MULTILINE)  # at module level
    mixed = sorted(
        str(path.relative_to(folder))
        for path in (folder / "albu_defects").rglob("*.py")
        if absolute.search(path.read_text(encoding="utf-8"))
    )
    if mixed:
        raise SystemExit(
            f"{folder} imports albu_defects absolutely ({', '.join(mixed[:3])}, ...): load it in a subprocess"
        )
    spec = importlib.util.spec_from_file_location(
        name, folder / "albu_defects" / "__init__.py", submodule_search_locations=[str(folder / "albu_defects")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

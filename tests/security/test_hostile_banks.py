"""Hostile and corrupt banks (issue 12 items 3-6): every one ends in one clear ValueError, fast and small.

Each case of :data:`hostile.CASES` is built in a temp folder and opened four ways (``DefectBank.load``,
``albu-defects bank stats``, a transform using it, ``albu-defects synth``), each in a child forked
from a preloaded interpreter with a memory limit (``RLIMIT_AS``: 512 MB above the child's start) and
an alarm (20 s; a FIFO opened for reading blocks forever, and the alarm ends it). The child's audit
hook records every ``open`` of a path under a folder beside the bank and any unpickling: both must
stay empty. The error must be a ``ValueError`` (the CLI: exit status 2 and one error line, no
traceback) naming the bank's path and the field at fault, and must never suggest ``allow_pickle``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import record
from .hostile import CASES, Places, small_spec
from .runner import CODE_ROOT

ACTIONS = ("load", "stats", "transform", "synth")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile_cache")


@pytest.fixture
def places(tmp_path, cache_dir) -> Places:
    places = Places(tmp_path / "outside", tmp_path / "external", cache_dir)
    places.outside.mkdir()
    places.external.mkdir()
    return places


def hostile_bank(name: str, tmp_path: Path, places: Places) -> Path:
    bank = small_spec().write(tmp_path / "bank")
    CASES[name].make(bank, places)
    return bank


def describe(reply: dict) -> str:
    return json.dumps(reply, indent=1)[:3000]


def check_clean_child(reply: dict) -> dict:
    """The child ended by itself (no hang, no crash) and read nothing forbidden, unpickled nothing."""
    if reply["how"] == "signal" and reply["value"] == 14:
        pytest.fail(f"hang: still running after the 20 s alarm\n{describe(reply)}")
    assert reply["how"] == "exit" and reply["value"] == 0, describe(reply)
    result = reply["result"]
    assert result["events"] == [], f"read outside the bank or ran code: {result['events']}"
    return result


def names_bank_and_field(message: str, bank: Path, fields: tuple[str, ...]) -> bool:
    return (str(bank) in message or str(bank.resolve()) in message) and any(f in message for f in fields)


def check_one_clear_error(reply: dict, action: str, bank: Path, fields: tuple[str, ...]) -> None:
    result = check_clean_child(reply)
    if action in ("load", "transform"):
        assert result["outcome"] == "ValueError", describe(reply)
        message = result["message"]
    else:  # the command line: exit status 2, one line on stderr, no traceback
        assert result["outcome"] == "ok", describe(reply)
        value = result["value"]
        lines = [line for line in value["stderr"].splitlines() if line.strip()]
        assert value["exit"] == 2 and len(lines) == 1, describe(reply)
        message = lines[0]
        assert message.startswith("albu-defects ") and "error:" in message, message
    assert names_bank_and_field(message, bank, fields), f"the error should name {bank} and one of {fields}: {message}"
    assert "allow_pickle" not in message, f"never invite a user to unpickle a file: {message}"


def test_a_valid_bank_opens_every_way(fork_runner, tmp_path):
    """The control: the untouched bank loads, prints its statistics, feeds a transform and synth."""
    bank = small_spec().write(tmp_path / "bank")
    for action in ACTIONS:
        reply = fork_runner.run(action, bank=bank, out=tmp_path / f"synth_{action}", forbidden=(tmp_path / "x",))
        result = check_clean_child(reply)
        assert result["outcome"] == "ok", describe(reply)
        if action in ("stats", "synth"):
            assert result["value"]["exit"] == 0, describe(reply)
    assert fork_runner.run("load", bank=bank)["result"]["value"] == {"entries": 2, "free": 1}


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_bank_ends_in_one_clear_value_error(fork_runner, tmp_path, places, name, action):
    bank = hostile_bank(name, tmp_path, places)
    reply = fork_runner.run(action, bank=bank, out=tmp_path / "synth_out", forbidden=(places.outside,))
    record("hostile bank openings", reply=reply)
    check_one_clear_error(reply, action, bank, CASES[name].fields)
    assert not (tmp_path / "synth_out").exists(), "synth wrote output from a bank it should have refused"


def test_loading_opens_regular_files_only(fork_runner, tmp_path, places):
    """A FIFO swapped in *after* a successful load (as a free file) is refused when read, not waited on."""
    bank = small_spec().write(tmp_path / "bank")
    reply = fork_runner.run("load_free", bank=bank)
    assert check_clean_child(reply)["value"] == {"free": [[30, 30]]}
    free = bank / "free" / "000000.npy"
    free.unlink()
    os.mkfifo(free)
    reply = fork_runner.run("load_free", bank=bank)
    result = check_clean_child(reply)
    assert result["outcome"] == "ValueError" and "000000.npy" in result["message"], describe(reply)


def write_generic_dataset(root: Path) -> Path:
    """The generic layout: one image with a class-1 square, one defect-free image."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 5:12] = 1
    for stem, m in (("a", mask), ("b", np.zeros_like(mask))):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), m)
    return root


def _deep_classes(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")


def _fifo_classes(path: Path) -> None:
    os.mkfifo(path)


def _nan_classes(path: Path) -> None:
    path.write_text('{"1": NaN}', encoding="utf-8")


@pytest.mark.parametrize("action", ["build", "cli_build"])
@pytest.mark.parametrize("make", [_deep_classes, _fifo_classes, _nan_classes], ids=["deep", "fifo", "nan"])
def test_hostile_classes_json_at_build(fork_runner, tmp_path, make, action):
    root = write_generic_dataset(tmp_path / "data")
    make(root / "classes.json")
    reply = fork_runner.run(action, root=root, out=tmp_path / "bank")
    record("hostile dataset builds", reply=reply)
    result = check_clean_child(reply)
    if action == "build":
        assert result["outcome"] == "ValueError", describe(reply)
        message = result["message"]
    else:
        lines = [line for line in result["value"]["stderr"].splitlines() if line.strip()]
        assert result["value"]["exit"] == 2 and len(lines) == 1, describe(reply)
        message = lines[0]
    assert str(root / "classes.json") in message or str((root / "classes.json").resolve()) in message, message
    assert not (tmp_path / "bank").exists()


@pytest.mark.parametrize("name", ["index_json_deeply_nested"])
def test_cli_prints_one_error_line(tmp_path, places, name):
    """The real command line in a fresh interpreter (the forked runs above cover every case the same way)."""
    bank = hostile_bank(name, tmp_path, places)
    env = {**os.environ, "PYTHONPATH": str(CODE_ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "albu_defects", "bank", "stats", str(bank)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("albu-defects bank: error: ")
    assert names_bank_and_field(lines[0], bank, CASES[name].fields), lines[0]

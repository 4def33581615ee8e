"""Never lose a user's files (issue 12 items 1, 2, 7).

- ``DefectBank.save`` / ``bank build -o`` replace only a folder that is provably a bank, keep every
  file the bank did not write, and save through a symlink into the bank behind it.
- ``bank build -o`` and ``synth --overwrite`` are killed (SIGKILL) at seeded moments of their writing
  window; after every kill the path holds the old bank or the new one (never neither), no foreign file
  is gone, and a manifest present describes exactly the (visible) files beside it, byte for byte as
  the run it names wrote them. Stale temporaries (hidden names) may survive a kill; the next complete
  run leaves none.

The command lines run in children forked from a preloaded interpreter (``_forkrunner.py``: the
``python -m albu_defects`` entry point without paying the import per kill), which watches the output
folders and sends SIGKILL a seeded delay after the first change it sees.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import albu_defects as ad

from .conftest import record
from .runner import CODE_ROOT, ForkRunner

#: Kill points per writer: one at the first change seen, then seeded uniform delays over the window.
KILLS = int(os.environ.get("ALBU_DEFECTS_SAFETY_KILLS", "10"))
SEED = 12


def write_dataset(root: Path, free: int = 40) -> Path:
    """A Magnetic Tile layout: 3 Crack and 2 Fray images with masks, ``free`` defect-free 320x320 images."""
    rng = np.random.default_rng(0)
    for name, count in (("Crack", 3), ("Fray", 2), ("Free", free)):
        folder = root / f"MT_{name}" / "Imgs"
        folder.mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (320, 320), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{name.lower()}{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if name != "Free":
                mask = np.zeros((320, 320), np.uint8)
                y, x = rng.integers(20, 250, 2)
                mask[y : y + 30, x : x + 40] = 255
                cv2.imwrite(str(folder / f"{name.lower()}{i}.png"), mask)
    return root


def small_bank(seed: int = 0, margin: int = 2) -> ad.DefectBank:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (40, 50), dtype=np.uint8) for _ in range(3)]
    masks = [np.zeros((40, 50), np.uint8) for _ in range(3)]
    masks[0][5:10, 5:12] = 1
    masks[1][20:30, 30:40] = 2
    return ad.DefectBank.from_arrays(images, masks, class_names=["a", "b"], margin=margin)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative): file contents, ``None`` for folders."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        found[rel] = None if path.is_dir() else path.read_bytes()
    return found


def fingerprint(bank: ad.DefectBank) -> str:
    """Hash of everything a bank holds (crops, masks, boxes, classes, margin, defect-free pixels)."""
    digest = hashlib.sha256(repr((bank.classes, bank.margin, len(bank), bank.num_free)).encode())
    for entry in bank.entries:
        digest.update(repr((entry.class_id, entry.source_id, entry.bbox, entry.source_hw)).encode())
        digest.update(entry.crop.tobytes() + entry.mask.tobytes())
    for i in range(bank.num_free):
        digest.update(np.ascontiguousarray(bank.load_free(i)).tobytes())
    return digest.hexdigest()


def bank_files(bank: Path) -> set[str]:
    """The files a saved bank's index names (relative to the bank), with the index itself."""
    index = json.loads((bank / "index.json").read_text(encoding="utf-8"))
    return {"index.json", index["arrays"], *(ref["file"] for ref in index["free"] if "file" in ref)}


def visible_files(root: Path) -> set[str]:
    """Files under ``root`` whose path has no hidden (dot) component: what a user sees."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


# --------------------------------------------------------------------------------------------------
# Item 1: only a provable bank is replaced, and only the bank's own files


@pytest.mark.parametrize(
    "index_text",
    ['{"title": "my thesis", "chapters": 5}', '{"format": "albu-defects-bank", "version": 1, "entr', "[1, 2, 3]"],
    ids=["other_json", "truncated_bank_index", "json_list"],
)
def test_save_refuses_a_folder_that_is_not_provably_a_bank(tmp_path, index_text):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "index.json").write_text(index_text)
    (project / "thesis.tex").write_text("\\chapter{Results}")
    (project / "src" / "main.py").write_text("print('hi')")
    before = snapshot(project)
    with pytest.raises(ValueError, match="not a defect bank") as caught:
        small_bank().save(project)
    assert str(project) in str(caught.value)
    assert snapshot(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"], "save left something beside the folder"


def test_cli_build_refuses_a_project_folder(fork_runner: ForkRunner, tmp_path):
    data = write_dataset(tmp_path / "data", free=2)
    project = tmp_path / "project"
    project.mkdir()
    (project / "index.json").write_text('{"pages": 3}')
    (project / "thesis.tex").write_text("text")
    before = snapshot(project)
    reply = fork_runner.run("cli", argv=["bank", "build", str(data), "-o", str(project), "--quiet"])
    value = reply["result"]["value"]
    lines = [line for line in value["stderr"].splitlines() if line.strip() and not line.startswith("warning:")]
    assert value["exit"] == 2 and len(lines) == 1 and str(project) in lines[0], value
    assert snapshot(project) == before


def test_files_a_user_keeps_inside_a_bank_survive_saving_over_it(fork_runner: ForkRunner, tmp_path):
    target = tmp_path / "bank"
    small_bank(0).save(target)
    (target / "notes.txt").write_text("bank built from line 3")
    (target / "experiments").mkdir()
    (target / "experiments" / "run1.csv").write_text("a,b\n1,2\n")
    reply = fork_runner.run("cli", argv=["synth", str(target), "-n", "3", "-o", str(target / "synth"), "--quiet"])
    assert reply["result"]["value"]["exit"] == 0, reply
    user = {k: v for k, v in snapshot(target).items() if k.split("/")[0] in ("notes.txt", "experiments", "synth")}
    assert len(user) > 6
    replacement = small_bank(1, margin=3)
    replacement.save(target)
    after = snapshot(target)
    assert {k: after.get(k) for k in user} == user, "save deleted or changed files the bank did not write"
    assert fingerprint(ad.DefectBank.load(target)) == fingerprint(replacement)
    assert set(visible_files(target)) == bank_files(target) | {k for k, v in user.items() if v is not None}


def test_saving_through_a_symlink_updates_the_bank_behind_it(tmp_path):
    real = tmp_path / "storage" / "bank"
    real.parent.mkdir()
    small_bank(0).save(real)
    link = tmp_path / "bank_link"
    link.symlink_to(real, target_is_directory=True)
    replacement = small_bank(1, margin=3)
    saved = replacement.save(link)
    assert link.is_symlink() and link.resolve() == real.resolve(), "the link was replaced"
    assert fingerprint(ad.DefectBank.load(real)) == fingerprint(replacement)
    assert Path(saved).resolve() == real.resolve()
    assert sorted(p.name for p in real.parent.iterdir()) == ["bank"], "temporaries left beside the bank"


def test_saving_a_loaded_bank_over_its_own_folder(tmp_path):
    """Stored defect-free files are read from the old bank while the new one is written over it."""
    target = tmp_path / "bank"
    small_bank(0).save(target)
    loaded = ad.DefectBank.load(target)
    expected = fingerprint(loaded)
    loaded.save(target)
    assert fingerprint(ad.DefectBank.load(target)) == expected
    assert visible_files(target) == bank_files(target)


# --------------------------------------------------------------------------------------------------
# Items 2 and 7: interrupted writers


def completed(reply: dict) -> bool:
    """The command ran to its end and succeeded (exit status 0 of the CLI in the child)."""
    return reply["how"] == "exit" and reply["value"] == 0 and reply.get("result", {}).get("exit") == 0


def kill_delays(window_s: float) -> list[float]:
    rng = np.random.default_rng(SEED)
    return [0.0, *sorted(float(d) for d in rng.uniform(0.0, window_s, KILLS - 1))]


def check_unchanged(foreign: dict[Path, bytes]) -> None:
    for path, content in foreign.items():
        assert path.is_file() and path.read_bytes() == content, f"foreign file {path} was deleted or changed"


@pytest.mark.slow  # real CLI subprocesses killed at KILLS points (seconds; CI runs them)
def test_killed_bank_build_leaves_the_old_or_the_new_bank(fork_runner: ForkRunner, tmp_path):
    data = write_dataset(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    target = work / "bank"
    expected = {
        margin: fingerprint(ad.DefectBank.from_folder(data, margin=margin, progress=False)) for margin in (8, 4)
    }

    def build(margin: int, delay_s: float | None) -> dict:
        argv = ["bank", "build", data, "-o", target, "--margin", str(margin), "--copy-free", "--quiet"]
        reply = fork_runner.kill_cli(argv, watch=[work], delay_s=delay_s)
        assert reply["killed"] or completed(reply), reply
        return reply

    build(8, None)
    foreign = {
        work / "beside.txt": b"next to the bank",
        target / "notes.txt": b"kept inside the bank",
        target / "runs" / "r1.txt": b"a user's run log",
    }
    for path, content in foreign.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)

    calibration = build(4, None)  # how long the writing lasts: the kill points spread over it
    assert calibration["window_s"], calibration
    assert fingerprint(ad.DefectBank.load(target)) == expected[4]
    check_unchanged(foreign)

    outcomes = []
    for i, delay in enumerate(kill_delays(calibration["window_s"])):
        margin = (8, 4)[i % 2]
        reply = build(margin, delay)
        outcomes.append(reply["killed"])
        record("bank build kill points", 1)
        record("bank build interrupts", int(reply["killed"]))
        check_unchanged(foreign)
        assert (target / "index.json").is_file(), f"kill {i} ({delay:.3f} s in) left no bank at {target}"
        assert fingerprint(ad.DefectBank.load(target)) in expected.values(), f"kill {i} left a mixed bank"

    build(8, None)
    assert fingerprint(ad.DefectBank.load(target)) == expected[8]
    check_unchanged(foreign)
    assert sorted(p.name for p in work.iterdir()) == ["bank", "beside.txt"], "stale temporaries beside the bank"
    inside = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert inside == bank_files(target) | {"notes.txt", "runs/r1.txt"}, "stale files inside the bank"
    assert sum(outcomes) >= KILLS // 2, f"too few kills landed while writing: {outcomes}"


def read_manifest_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def check_synth_folder(out: Path, runs: dict[str, Path], foreign: dict[Path, bytes]) -> str | None:
    """A present manifest describes exactly the visible files beside it, as its run wrote them.

    Returns the run the folder holds, or ``None`` between runs (no manifest).
    """
    check_unchanged(foreign)
    foreign_rel = {p.relative_to(out).as_posix() for p in foreign if out in p.parents}
    ours = visible_files(out) - foreign_rel - {"manifest.json", "manifest.csv"}
    found = None
    for name in ("manifest.json", "manifest.csv"):
        if not (out / name).exists():
            continue
        content = (out / name).read_bytes()
        matches = [run for run, ref in runs.items() if (ref / name).read_bytes() == content]
        assert matches, f"{name} matches no complete run"
        run = matches[0]
        assert found in (None, run), "manifest.json and manifest.csv come from different runs"
        found = run
        rows = read_manifest_csv(runs[run] / "manifest.csv")[1:]
        described = {row[1] for row in rows} | {row[2] for row in rows}
        assert ours == described, (
            f"{name} of run {run} describes {len(described)} files; on disk: "
            f"{sorted(ours - described)[:5]} not described, {sorted(described - ours)[:5]} missing"
        )
        for rel in described:
            assert (out / rel).read_bytes() == (runs[run] / rel).read_bytes(), f"{rel} is not what run {run} wrote"
    return found


@pytest.mark.slow  # real CLI subprocesses killed at KILLS points (seconds; CI runs them)
def test_killed_synth_overwrite_never_leaves_a_manifest_describing_other_files(fork_runner: ForkRunner, tmp_path):
    data = write_dataset(tmp_path / "data", free=6)
    bank = tmp_path / "bank"
    ad.DefectBank.from_folder(data, progress=False).save(bank, copy_free=True)
    specs = {"A": ("0", "14"), "B": ("1", "8")}  # the second run writes fewer images

    def synth(out: Path, run: str, delay_s: float | None, watch: Path | None = None) -> dict:
        seed, n = specs[run]
        argv = ["synth", bank, "-o", out, "-n", n, "--seed", seed, "--workers", "2", "--quiet", "--overwrite"]
        reply = fork_runner.kill_cli(argv, watch=[watch or out.parent], delay_s=delay_s)
        assert reply["killed"] or completed(reply), json.dumps(reply, indent=1)[-3000:]
        return reply

    runs = {}
    for run in specs:
        runs[run] = tmp_path / f"reference_{run}"
        runs[run].mkdir()
        synth(runs[run], run, None, watch=runs[run])

    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    synth(out, "A", None, watch=out)
    foreign = {out / "README.txt": b"synthetic set for the line-3 model", out / "images" / "mine.png": b"not ours"}
    for path, content in foreign.items():
        path.write_bytes(content)
    assert check_synth_folder(out, runs, foreign) == "A"

    calibration = synth(out, "B", None, watch=out)
    assert calibration["window_s"], calibration
    assert check_synth_folder(out, runs, foreign) == "B"

    killed = []
    for i, delay in enumerate(kill_delays(calibration["window_s"])):
        reply = synth(out, "AB"[i % 2], delay, watch=out)
        killed.append(reply["killed"])
        record("synth kill points", 1)
        record("synth --overwrite interrupts", int(reply["killed"]))
        check_synth_folder(out, runs, foreign)

    synth(out, "A", None, watch=out)
    assert check_synth_folder(out, runs, foreign) == "A"
    hidden = [p for p in out.rglob("*") if any(part.startswith(".") for part in p.relative_to(out).parts)]
    assert hidden == [], f"stale temporaries after a complete run: {hidden[:5]}"
    assert sum(killed) >= KILLS // 2, f"too few kills landed while writing: {killed}"


def test_synth_overwrite_with_fewer_images_lists_every_file(fork_runner: ForkRunner, tmp_path):
    data = write_dataset(tmp_path / "data", free=3)
    bank = tmp_path / "bank"
    ad.DefectBank.from_folder(data, progress=False).save(bank, copy_free=True)
    out = tmp_path / "out"
    for n in ("6", "3"):
        argv = ["synth", str(bank), "-o", str(out), "-n", n, "--quiet", "--overwrite"]
        assert fork_runner.run("cli", argv=argv)["result"]["value"]["exit"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {item[key] for item in manifest["items"] for key in ("image", "mask")}
    assert visible_files(out) - {"manifest.json", "manifest.csv"} == listed


def test_synth_overwrite_never_overwrites_files_it_did_not_write(fork_runner: ForkRunner, tmp_path):
    data = write_dataset(tmp_path / "data", free=3)
    bank = tmp_path / "bank"
    ad.DefectBank.from_folder(data, progress=False).save(bank, copy_free=True)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000000.png").write_bytes(b"a user's own image")
    before = snapshot(out)
    argv = ["synth", str(bank), "-o", str(out), "-n", "2", "--quiet", "--overwrite"]
    value = fork_runner.run("cli", argv=argv)["result"]["value"]
    assert value["exit"] == 2 and "images/000000.png" in value["stderr"], value
    assert snapshot(out) == before


def test_temporaries_of_0_1_0_saves_are_reported_not_deleted(tmp_path):
    """0.1.0 saved through .<name>.tmp-* / .<name>.old-* folders that a kill could leave: named, kept."""
    target = tmp_path / "bank"
    small_bank(0).save(target)
    stale = [tmp_path / ".bank.tmp-0123abcd", tmp_path / ".bank.old-89abcdef"]
    for folder in stale:
        folder.mkdir()
        (folder / "index.json").write_text("{}")
    with pytest.warns(ad.DefectBankWarning, match=r"\.bank\.old-89abcdef, \.bank\.tmp-0123abcd"):
        small_bank(1).save(target)
    assert all((folder / "index.json").is_file() for folder in stale)


def test_one_save_at_a_time(tmp_path):
    from albu_defects.core.writing import folder_lock

    target = tmp_path / "bank"
    small_bank(0).save(target)
    with folder_lock(target, "a test into"), pytest.raises(ValueError, match="another process is writing"):
        small_bank(1).save(target)
    assert fingerprint(ad.DefectBank.load(target)) == fingerprint(small_bank(0))
    assert visible_files(target) == bank_files(target)


def test_synth_into_a_folder_holding_other_images(fork_runner: ForkRunner, tmp_path):
    """images/ already exists (a user's file in it, no manifest): the first run writes beside it."""
    data = write_dataset(tmp_path / "data", free=3)
    bank = tmp_path / "bank"
    ad.DefectBank.from_folder(data, progress=False).save(bank, copy_free=True)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "mine.png").write_bytes(b"a user's own image")
    argv = ["synth", str(bank), "-o", str(out), "-n", "2", "--quiet", "--overwrite"]
    assert fork_runner.run("cli", argv=argv)["result"]["value"]["exit"] == 0
    assert (out / "images" / "mine.png").read_bytes() == b"a user's own image"
    assert visible_files(out) == {"images/mine.png", "manifest.json", "manifest.csv"} | {
        f"{kind}/00000{i}.png" for kind in ("images", "masks") for i in (0, 1)
    }


def test_saving_over_a_bank_never_deletes_through_a_link(tmp_path):
    """A bank whose data folder was replaced by a link out of it: the save removes nothing behind the link."""
    target = tmp_path / "bank"
    small_bank(0).save(target)
    data = target / json.loads((target / "index.json").read_text())["arrays"].split("/")[0]
    elsewhere = tmp_path / "elsewhere"
    data.rename(elsewhere)
    data.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    replacement = small_bank(1, margin=3)
    replacement.save(target)
    assert snapshot(elsewhere) == before
    assert fingerprint(ad.DefectBank.load(target)) == fingerprint(replacement)


def _exec_kill(argv: list, watch: Path, delay_s: float | None, timeout_s: float = 300) -> dict:
    """``python -m albu_defects ARGV`` in a fresh interpreter (``subprocess``, no preloading);
    SIGKILL ``delay_s`` after anything under ``watch`` first changes (``None``: let it finish)."""

    def listing() -> set:
        seen = set()
        for folder, dirs, files in os.walk(watch):  # the writer renames and deletes meanwhile: skip what vanished
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    info = os.lstat(os.path.join(folder, name))
                    seen.add((folder, name, info.st_size, info.st_mtime_ns))
        return seen

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CODE_ROOT), os.environ.get("PYTHONPATH", "")])}
    before = listing()
    command = [sys.executable, "-m", "albu_defects", *map(str, argv)]
    errors = watch.parent / f"stderr-{os.getpid()}-{time.monotonic_ns()}.txt"  # a file: a full pipe would block it
    with open(errors, "wb") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    start, changed = time.monotonic(), None
    while process.poll() is None:
        now = time.monotonic()
        if changed is None and listing() != before:
            changed = now
        late = now - start > timeout_s
        if late or (changed is not None and delay_s is not None and now >= changed + delay_s):
            process.kill()
            process.wait()
            assert not late, f"{command} did not end in {timeout_s} s"
            return {"killed": True}
        time.sleep(0.002)
    message = errors.read_text(errors="replace")
    assert process.returncode == 0, f"{command} failed ({process.returncode}): {message[-2000:]}"
    return {"killed": False, "window_s": None if changed is None else time.monotonic() - changed}


@pytest.mark.slow  # fresh interpreters (each pays the imports): a few kill points only
def test_freshly_started_cli_writers_killed_keep_the_invariants(fork_runner: ForkRunner, tmp_path):
    """The kill tests above fork a preloaded interpreter; here ``bank build -o`` and ``synth --overwrite``
    run as ordinary ``python -m albu_defects`` processes, SIGKILLed at seeded points of their writing."""
    data = write_dataset(tmp_path / "data", free=6)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "bank"
    expected = {m: fingerprint(ad.DefectBank.from_folder(data, margin=m, progress=False)) for m in (8, 4)}
    build = ["bank", "build", data, "-o", target, "--copy-free", "--quiet", "--margin"]
    window = _exec_kill([*build, "4"], work, None)["window_s"]
    assert window, "bank build changed nothing under its output folder"
    foreign = {work / "beside.txt": b"next to the bank", target / "notes.txt": b"kept inside the bank"}
    for path, content in foreign.items():
        path.write_bytes(content)
    rng = np.random.default_rng(SEED)
    killed = []
    for i, delay in enumerate([0.0, *rng.uniform(0.0, window, 2)]):
        killed.append(_exec_kill([*build, str((8, 4)[i % 2])], work, float(delay))["killed"])
        record("fresh-process kill points", 1)
        record("fresh-process interrupts", int(killed[-1]))
        check_unchanged(foreign)
        assert fingerprint(ad.DefectBank.load(target)) in expected.values(), f"kill {i} left no bank or a mixed one"

    specs = {"A": ("0", "8"), "B": ("1", "5")}
    runs = {}
    for run, (seed, n) in specs.items():
        runs[run] = tmp_path / f"reference_{run}"
        argv = ["synth", target, "-o", runs[run], "-n", n, "--seed", seed, "--workers", "2", "--quiet"]
        assert fork_runner.run("cli", argv=[str(a) for a in argv], timeout_s=120)["result"]["value"]["exit"] == 0
    out = work / "out"

    def synth(run: str, delay_s: float | None) -> dict:
        seed, n = specs[run]
        argv = ["synth", target, "-o", out, "-n", n, "--seed", seed, "--workers", "2", "--quiet", "--overwrite"]
        return _exec_kill(argv, work, delay_s)

    window = synth("B", None)["window_s"]
    assert window, "synth changed nothing under its output folder"
    assert check_synth_folder(out, runs, foreign) == "B"
    for i, delay in enumerate([0.0, *rng.uniform(0.0, window, 1)]):
        killed.append(synth("AB"[i % 2], float(delay))["killed"])
        record("fresh-process kill points", 1)
        record("fresh-process interrupts", int(killed[-1]))
        check_synth_folder(out, runs, foreign)
    assert sum(killed) >= 3, f"too few kills landed while writing: {killed}"

"""A preloaded interpreter that runs each security check in a forked child, under limits.

Started once per test session (``tests/security/runner.py`` talks to it): it imports the library
once (seconds), then forks a child per request (milliseconds), so dozens of hostile banks and
interrupted writers cost seconds in all. Protocol: one JSON request per line on stdin, one JSON
reply per line on the file descriptor given as ``argv[1]`` (stdout and stderr stay free for the
children's noise).

Requests
    ``{"kind": "run", "action": ..., "args": {...}, "timeout_s": s, "budget_mb": mb, "forbidden": [dir, ...],
    "result": path}``: run one action in a child whose address space may grow by at most
    ``budget_mb`` (``RLIMIT_AS``; an allocation beyond it raises ``MemoryError``) and which the kernel
    ends after ``timeout_s`` (``SIGALRM``, default action: even a blocking ``open()`` of a FIFO ends).
    An audit hook records every ``open`` of a path under a ``forbidden`` folder and any unpickling or
    process start. Reply: how the child ended and what it recorded.

    ``{"kind": "kill", "argv": [...], "watch": [dir, ...], "delay_s": s | null, "result": path}``: run the
    command line (``python -m albu_defects`` argv, in the child) and poll the ``watch`` folders; once
    anything in them changes (the writer started writing), wait ``delay_s`` and SIGKILL the child
    (``null``: let it finish, to measure the writing window). Reply: whether it was killed, and when.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import runpy
import signal
import sys
import time
import traceback

import albumentations as A  # preload (the children use both)
import numpy as np

import albu_defects as ad

_NOTED_EVENTS = ("pickle.find_class", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.fork")


def _address_space() -> int:
    """This process's virtual memory size in bytes (the quantity RLIMIT_AS bounds)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _resident() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cli(argv: list[str]) -> dict:
    """``python -m albu_defects ARGV`` in this process: exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    saved = sys.argv
    sys.argv = ["albu-defects", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module("albu_defects", run_name="__main__", alter_sys=False)
            except SystemExit as done:
                code = done.code
    finally:
        sys.argv = saved
    return {
        "exit": code if isinstance(code, int) or code is None else str(code),
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
    }


def _transform(bank: str) -> dict:
    pipeline = A.Compose([ad.InjectDefect(bank=bank, p=1.0)], seed=0)
    image = np.full((64, 64), 128, np.uint8)
    out = pipeline(image=image, mask=np.zeros((64, 64), np.uint8))
    return {"shape": list(out["image"].shape)}


def _load(bank: str) -> dict:
    loaded = ad.DefectBank.load(bank)
    return {"entries": len(loaded), "free": loaded.num_free}


def _load_free(bank: str) -> dict:
    loaded = ad.DefectBank.load(bank)
    return {"free": [list(loaded.load_free(i).shape) for i in range(loaded.num_free)]}


def _build(root: str) -> dict:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = ad.DefectBank.from_folder(root, progress=False)
    return {"entries": len(built)}


ACTIONS = {
    "load": lambda a: _load(a["bank"]),
    "load_free": lambda a: _load_free(a["bank"]),
    "transform": lambda a: _transform(a["bank"]),
    "stats": lambda a: _cli(["bank", "stats", a["bank"]]),
    "synth": lambda a: _cli(["synth", a["bank"], "-n", "2", "-o", a["out"], "--quiet", "--workers", "1"]),
    "build": lambda a: _build(a["root"]),
    "cli_build": lambda a: _cli(["bank", "build", a["root"], "-o", a["out"], "--quiet"]),
    "cli": lambda a: _cli(a["argv"]),
}


def _child_run(request: dict) -> None:
    forbidden = tuple(os.path.join(os.path.realpath(d), "") for d in request.get("forbidden", ()))
    events: list[list[str]] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and forbidden and isinstance(args[0], (str, bytes)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(forbidden) or os.path.realpath(path).startswith(forbidden):
                events.append(["open", path])
        elif event.startswith(_NOTED_EVENTS):
            events.append([event, repr(args)[:200]])

    budget = int(request.get("budget_mb", 512)) << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.alarm(int(request.get("timeout_s", 20)))
    sys.addaudithook(hook)
    resident = _resident()
    start = time.perf_counter()
    result: dict = {}
    try:
        result["value"] = ACTIONS[request["action"]](request["args"])
        result["outcome"] = "ok"
    except BaseException as error:  # everything is reported, nothing escapes the child
        result["outcome"] = "ValueError" if isinstance(error, ValueError) else type(error).__name__
        result["exception"] = type(error).__name__
        result["message"] = str(error)[:4000]
        result["traceback"] = traceback.format_exc()[-4000:]
    result["seconds"] = time.perf_counter() - start
    # peak resident growth: ru_maxrss (KiB) is the child's peak, counting what it shares with the runner
    result["peak_growth_mb"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - resident) / 2**20
    result["events"] = events[:50]
    with open(request["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def _wait(pid: int, deadline: float) -> tuple[str, int]:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return "killed_by_runner", signal.SIGKILL
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    return "exit", os.WEXITSTATUS(status)


def _fork(target, request: dict) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            target(request)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _run(request: dict) -> dict:
    start = time.monotonic()
    pid = _fork(_child_run, request)
    how, value = _wait(pid, start + float(request.get("timeout_s", 20)) + 30)
    reply = {"how": how, "value": value, "seconds": time.monotonic() - start}
    if os.path.exists(request["result"]):
        with open(request["result"], encoding="utf-8") as handle:
            reply["result"] = json.load(handle)
    return reply


def _listing(roots: list[str]) -> set:
    """Every path under the watched folders with its size and mtime (and the folders' own entries)."""
    seen = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    seen.add((path, info.st_size, info.st_mtime_ns))
    return seen


def _child_cli(request: dict) -> None:
    signal.alarm(int(request.get("timeout_s", 120)))
    result = _cli(request["argv"])
    with open(request["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def _kill(request: dict) -> dict:
    roots = request["watch"]
    before = _listing(roots)
    start = time.monotonic()
    pid = _fork(_child_cli, request)
    changed = None
    killed = False
    status = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if changed is None and _listing(roots) != before:
            changed = now
        if changed is not None and request.get("delay_s") is not None and now >= changed + request["delay_s"]:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            killed = True
            break
        if now - start > float(request.get("timeout_s", 120)) + 30:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"how": "killed_by_runner"}
        time.sleep(0.0005)
    end = time.monotonic()
    reply = {
        "killed": killed,
        "how": "signal" if os.WIFSIGNALED(status) else "exit",
        "value": os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status),
        "seconds": end - start,
        "changed_after_s": None if changed is None else changed - start,
        "window_s": None if changed is None else end - changed,
    }
    if not killed and os.path.exists(request["result"]):
        with open(request["result"], encoding="utf-8") as handle:
            reply["result"] = json.load(handle)
    return reply


def main() -> None:
    replies = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # stray prints (children, C libraries) must not reach the reply channel
    replies.write(json.dumps({"ready": True, "albu_defects": ad.__file__}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = _run(request) if request["kind"] == "run" else _kill(request)
        except Exception as error:  # a broken request: say so, keep serving
            reply = {"how": "runner_error", "error": repr(error)}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()

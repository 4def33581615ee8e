"""Client of ``_forkrunner.py``: a preloaded interpreter that forks one child per check, under limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import albu_defects

RUNNER = Path(__file__).with_name("_forkrunner.py")
#: The code under test: the folder holding the ``albu_defects`` this test session imported.
CODE_ROOT = Path(albu_defects.__file__).resolve().parents[1]


class ForkRunner:
    """Sends requests to one long-lived runner process; each request runs in a fresh forked child."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        read_end, write_end = os.pipe()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(CODE_ROOT), os.environ.get("PYTHONPATH", "")]),
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "ALBUMENTATIONS_NO_TELEMETRY": "1",
        }
        self.log = scratch / "runner.log"  # the children's noise, and the runner's own traceback if it dies
        self._log_handle = open(self.log, "wb")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER), str(write_end)],
            stdin=subprocess.PIPE,
            stderr=self._log_handle,
            stdout=subprocess.DEVNULL,
            pass_fds=(write_end,),
            env=env,
            text=True,
        )
        os.close(write_end)
        self.replies = os.fdopen(read_end, encoding="utf-8")
        hello = self._reply()
        if Path(hello["albu_defects"]).resolve() != Path(albu_defects.__file__).resolve():
            raise RuntimeError(f"the runner imported {hello['albu_defects']}, not {albu_defects.__file__}")

    def _reply(self) -> dict[str, Any]:
        line = self.replies.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the fork runner ended (exit status {self.process.poll()}):\n{tail}")
        return json.loads(line)

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        request["result"] = str(self.scratch / f"result-{uuid.uuid4().hex}.json")
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def run(
        self,
        action: str,
        *,
        timeout_s: int = 20,
        budget_mb: int = 512,
        forbidden: tuple[Path, ...] = (),
        **args: Any,
    ) -> dict[str, Any]:
        """Run ``action`` (see ``_forkrunner.ACTIONS``) in a child limited to ``budget_mb`` more address space."""
        return self._send(
            {
                "kind": "run",
                "action": action,
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
                "timeout_s": timeout_s,
                "budget_mb": budget_mb,
                "forbidden": [str(p) for p in forbidden],
            }
        )

    def kill_cli(
        self, argv: list[str], watch: list[Path], delay_s: float | None, timeout_s: int = 120
    ) -> dict[str, Any]:
        """Run ``python -m albu_defects ARGV`` in a child; SIGKILL it ``delay_s`` after ``watch`` first changes."""
        return self._send(
            {
                "kind": "kill",
                "argv": [str(a) for a in argv],
                "watch": [str(p) for p in watch],
                "delay_s": delay_s,
                "timeout_s": timeout_s,
            }
        )

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.replies.close()
        self._log_handle.close()

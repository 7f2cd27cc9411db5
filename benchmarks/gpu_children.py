"""Children of gpu_check.py, each bounded: started in a session of their own (so one over its budget is
stopped with everything it started), this checkout first on their path, the T4 pretence only where asked."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRETEND = "CIFAR_PRETEND_CAPABILITY"  # cifar_cli.runtime: a lower compute capability, to imitate a T4


def child_env(pretend: str | None = None) -> dict[str, str]:
    """The environment of every child: this checkout first on the path; the capability pretended only
    where a step asks for it."""
    env = {k: v for k, v in os.environ.items() if k != PRETEND}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if pretend:
        env[PRETEND] = pretend
    return env


def start(cmd: list[str], log: Path, env: dict[str, str], stdout: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        err.write(f"$ {shlex.join(cmd)}\n")
    err, out = log.open("a"), (stdout.open("w") if stdout else None)
    try:  # its own session: a child over its budget is stopped with everything it started
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out or err, stderr=err, start_new_session=True)
    finally:
        err.close()
        if out:
            out.close()


def finish(proc: subprocess.Popen, deadline: float) -> int | None:
    """The child's exit code, or None when it ran past `deadline` (it is then killed, with its group)."""
    try:
        return proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def run_child(cmd: list[str], log: Path, timeout: float, env: dict[str, str],
              stdout: Path | None = None) -> tuple[int | None, float]:
    started = time.monotonic()
    rc = finish(start(cmd, log, env, stdout), started + timeout)
    return rc, round(time.monotonic() - started, 2)


def cifar(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifar_cli", *args]


def ran(rc: int | None) -> str:
    return "timed out" if rc is None else f"exit code {rc}"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

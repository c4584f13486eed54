"""Run generated code against its tests where it can do no harm.

The program runs in a fresh temporary directory, in its own process group,
under ``python -I`` (no user site, no ``PYTHON*`` variables), with an empty
environment, CPU-time, address-space and file-size limits, and a wall-clock
limit after which the whole group is killed. The network is cut twice: in a
new network namespace (``unshare -rn``: only a loopback that is down) where
the kernel allows one, and by a prelude that makes ``socket`` refuse to
connect or bind. Output goes to a file in the temporary directory (so a
printing loop fills the file-size limit, not this process's memory); the
last lines are kept for the verdict.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout"]

# Runs before the program: its limits (set here, not in a preexec_fn, which is unsafe in a threaded parent),
# and a socket module made useless (defence in depth: the namespace is the real barrier).
_PRELUDE = """\
import resource as _resource
for _limit, _value in ((_resource.RLIMIT_CPU, {cpu}), (_resource.RLIMIT_AS, {memory}), (_resource.RLIMIT_FSIZE, {files}), (_resource.RLIMIT_CORE, 0)):
    _resource.setrlimit(_limit, (_value, _value))
del _resource, _limit, _value
import socket as _socket
def _no_network(*_args, **_kwargs):
    raise OSError("network access is disabled in the sandbox")
for _name in ("connect", "connect_ex", "bind", "sendto"):
    setattr(_socket.socket, _name, _no_network)
_socket.create_connection = _no_network
_socket.getaddrinfo = _no_network
del _socket, _no_network, _name
"""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """How much one program may use."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 8
    memory_bytes: int = 1 << 30
    file_bytes: int = 8 << 20


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """The verdict: ``passed`` when the program exited 0 within its limits."""

    status: Status
    output_tail: str
    isolated_network: bool

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``source`` (a Python program: the code and its asserts) and say whether it passed."""
    with tempfile.TemporaryDirectory(prefix="modelyard-sandbox-") as tmp:
        work = Path(tmp)
        prelude = _PRELUDE.format(cpu=limits.cpu_seconds, memory=limits.memory_bytes, files=limits.file_bytes)
        (work / "program.py").write_text(prelude + "\n" + source, encoding="utf-8")
        isolated = network_namespace_available()
        command = (["unshare", "-rn", "--"] if isolated else []) + [sys.executable, "-I", "program.py"]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        with (work / "output.txt").open("wb") as output:
            process = subprocess.Popen(
                command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                code = process.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return SandboxResult("timeout", _tail(work / "output.txt"), isolated)
            finally:
                _kill_group(process)  # anything the program left running in its group
        return SandboxResult("passed" if code == 0 else "failed", _tail(work / "output.txt"), isolated)


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` can create a network namespace here (it needs user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "--", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    data = path.read_bytes()[-limit:]
    return data.decode("utf-8", errors="replace")

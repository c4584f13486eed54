"""The code sandbox: passing and failing programs, and the limits a generated program cannot get past."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from modelyard.training.sandbox import SandboxLimits, network_namespace_available, run_program
from modelyard.training.scoring import code_score, extract_code

FAST = SandboxLimits(wall_seconds=5.0, cpu_seconds=3, memory_bytes=512 << 20)


def test_a_program_whose_asserts_hold_passes_and_one_whose_asserts_fail_does_not() -> None:
    assert run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n", FAST).passed
    failed = run_program("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n", FAST)
    assert failed.status == "failed" and "AssertionError" in failed.output_tail


def test_an_endless_loop_is_killed_at_the_time_limit() -> None:
    result = run_program("while True:\n    pass\n", SandboxLimits(wall_seconds=1.5, cpu_seconds=60))
    assert result.status == "timeout"


def test_a_child_process_left_running_is_killed_with_its_group() -> None:
    # the program starts a sleeper and exits at once; the group kill must not leave it behind
    source = "import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\nprint(child.pid)\n"
    result = run_program(source, FAST)
    assert result.passed
    pid = int(result.output_tail.split()[-1])
    deadline = time.monotonic() + 5.0  # SIGKILL is delivered asynchronously: poll the process's state, not a fixed sleep
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_memory_beyond_the_limit_fails() -> None:
    result = run_program("blob = bytearray(2 << 30)\n", SandboxLimits(wall_seconds=5.0, cpu_seconds=3, memory_bytes=256 << 20))
    assert result.status == "failed" and "MemoryError" in result.output_tail


def test_the_program_cannot_reach_the_network() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a port the program could reach if it had the network
        port = listener.getsockname()[1]
        result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", FAST)
        assert result.status == "failed" and "disabled in the sandbox" in result.output_tail
        if not network_namespace_available():
            pytest.skip("no user namespaces here: only the socket prelude guards the network")
        # past the prelude (the raw _socket module), the namespace still has no route to this machine's loopback
        raw = f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nprint('connected')\n"
        reached = run_program(raw, FAST)
        assert reached.status == "failed" and "connected" not in reached.output_tail


def test_files_are_written_in_a_temporary_directory_that_goes_away() -> None:
    result = run_program("import os\nopen('x.txt', 'w').write('1')\nprint(os.getcwd())\n", FAST)
    assert result.passed
    workdir = result.output_tail.strip().splitlines()[-1]
    assert "modelyard-sandbox-" in workdir
    import os

    assert not os.path.exists(workdir)


def test_code_is_taken_from_the_first_python_block() -> None:
    answer = "Here it is:\n```python\ndef f():\n    return 1\n```\nand a test:\n```python\nassert f() == 2\n```"
    assert extract_code(answer).strip() == "def f():\n    return 1"
    assert extract_code("def f():\n    return 1").startswith("def f()")  # no fence: the whole answer
    assert extract_code("```\ndef g(): pass\n```") .strip() == "def g(): pass"
    assert extract_code("```python\ndef h():\n    return 3\n").strip() == "def h():\n    return 3"  # cut off before the closing fence
    assert code_score(answer, "", "assert f() == 1", FAST) == 1.0
    assert code_score(answer, "", "assert f() == 2", FAST) == 0.0


def test_cpu_time_beyond_the_limit_ends_the_program_before_the_wall_clock_does() -> None:
    result = run_program("while True:\n    pass\n", SandboxLimits(wall_seconds=20.0, cpu_seconds=1))
    assert result.status == "failed"  # SIGXCPU at one CPU second, not the 20 s wall limit

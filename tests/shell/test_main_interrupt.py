"""
``python -m twisted_sipnat resolve`` and Ctrl-C: exit status 130 (128 + SIGINT) and one line on stderr, never a
traceback, whether the SIGINT comes while the binding is kept alive or while the address is still being resolved.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from typing import List

import pytest

pytestmark = pytest.mark.timeout(60)


def start(*args: str) -> subprocess.Popen[str]:
    # A shell that runs this in the background may have SIGINT ignored; the child gets the default, as at a
    # terminal, so Python and the reactor install their handlers.
    return subprocess.Popen(
        [sys.executable, "-m", "twisted_sipnat", "resolve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def interrupt(process: subprocess.Popen[str]) -> List[str]:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    return err.splitlines()


def test_ctrlCWhileKeepingAliveExits130WithOneLine() -> None:
    process = start("--interval", "0.2")
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("keepalive 1 answered"):
            break
    err = interrupt(process)
    assert process.returncode == 130  # the old command: 0, and nothing said
    assert err == ["python -m twisted_sipnat resolve: interrupted"]


def test_ctrlCWhileResolvingExits130WithOneLine() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a STUN server that never answers
    silent.bind(("127.0.0.1", 0))
    try:
        process = start(f"127.0.0.1:{silent.getsockname()[1]}")
        deadline = time.monotonic() + 20
        silent.settimeout(20)
        silent.recvfrom(2048)  # the first Binding request: the command is resolving now
        assert time.monotonic() < deadline
        err = interrupt(process)
    finally:
        silent.close()
    assert process.returncode == 130  # the old command: 1, "CancelledError"
    assert err == ["python -m twisted_sipnat resolve: interrupted"]

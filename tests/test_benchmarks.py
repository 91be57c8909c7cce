"""
The benchmarks under ``benchmarks/`` keep working: each runs once at a tiny size in its own process (they pin
CPUs and run the global reactor).  The figures are never asserted -- only that a run completes, every flow
stays alive and every line the documentation quotes is printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script: str, args: List[str]) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script)] + args,
        capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.timeout(150)
def test_keepalive_scale_runs() -> None:
    out = run("keepalive_scale.py", ["--size", "300", "--interval", "0.5", "--cycles", "2", "--sockets", "2",
                                     "--floor-count", "1000", "--floor-seconds", "0.2"])
    for line in ("keepalives/s sustained", "CPU per 1,000 keepalives", "memory per flow", "timer slip",
                 "floor (build + sendto)", "paced floor", "Twisted round-trip floor", "reactor wake-ups", "projection, 100,000 flows"):
        assert line in out, out
    assert " 0 flow failures" in out and "300 flows still alive" in out, out


@pytest.mark.timeout(150)
def test_keepalive_logic_runs() -> None:
    out = run("keepalive_logic.py", ["--size", "300", "--sockets", "2", "--seconds", "2"])
    for line in ("logic per keepalive", "floor (build + sendto)", "ratio to floor", "memory per answered flow"):
        assert line in out, out
    assert "0 flow failures" in out, out


@pytest.mark.timeout(150)
def test_resolve_throughput_runs() -> None:
    out = run("resolve_throughput.py", ["--size", "1", "--workers", "1,2", "--no-coturn", "--concurrency", "20",
                                        "--sockets", "2", "--gen-sockets", "8"])
    assert "twisted_sipnat, 1 worker(s)" in out and "twisted_sipnat, 2 worker(s)" in out, out
    assert "(CPU by process:" in out, out  # two processes answered
    assert "resolutions/s" in out and "failures 0" in out, out


@pytest.mark.timeout(150)
def test_scrape_cost_runs() -> None:
    out = run("scrape_cost.py", ["--flows", "50", "--scrapes", "2"])
    assert "flows=50 scrape=" in out, out


@pytest.mark.timeout(150)
def test_edge_floods_runs() -> None:
    out = run("edge_floods.py", ["--idle", "40", "--slowloris", "10", "--header-kb", "8", "--stun", "10",
                                 "--stun-kb", "8", "--requests", "1", "--after", "0.5"])
    for line in ("(a) edge: 40 idle", "(b) edge: 10 x 8 KB partial header", "(c) stun --tcp: 10 x 8 KB partial",
                 "legit answered 1/1", "RSS"):
        assert line in out, out


@pytest.mark.timeout(150)
def test_edge_registrar_runs() -> None:
    out = run("edge_registrar.py", ["--count", "300", "--max-registrations", "200"])
    for line in ("registry size after the flood: 200 bindings; 100 refused with 503", "pending reactor timers: 1",
                 "memory per binding", "REGISTERs handled", "after 3600 s: 0 bindings, 0 pending timers"):
        assert line in out, out


def test_longterm_tables_runs() -> None:
    out = run("longterm_tables.py", ["--overfill", "2"])
    assert "learned credentials: 1024 entries (bound 1024)" in out, out
    assert "failure cache: 4096 entries (bound 4096)" in out, out

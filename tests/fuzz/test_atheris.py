"""
The atheris harness (``atheris_stun.py``): its target runs on the RFC 5769 seeds in every test run, and the
``fuzz`` run (``tox -e fuzz``, where atheris is installed) runs it coverage-guided for
``SIPNAT_ATHERIS_RUNS`` inputs (default 200,000), which must end without a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given

from . import atheris_stun
from .stunstrategies import stunLike
from .support import ciSettings

HARNESS = Path(__file__).resolve().parent / "atheris_stun.py"
RUNS = int(os.environ.get("SIPNAT_ATHERIS_RUNS", "200000"))


def test_harness_target_accepts_the_seeds() -> None:
    atheris_stun.load(instrument=False)
    seeds = atheris_stun.seeds()
    assert len(seeds) >= 4
    for seed in seeds:
        atheris_stun.TestOneInput(seed)


@ciSettings
@given(stunLike)
def test_harness_target_without_atheris(data: bytes) -> None:
    atheris_stun.load(instrument=False)
    atheris_stun.TestOneInput(data)


@pytest.mark.fuzz
def test_atheris_finds_no_crash(tmp_path: Path) -> None:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as e:  # the fuzz env installs it: its absence is a broken environment, not a skip
        pytest.fail(f"atheris is not importable in this environment ({e}); tox -e fuzz installs it")
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-atheris_runs={RUNS}", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path,
    )
    tail = result.stderr[-3000:]
    crashes = list(tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, f"atheris found a crash ({crashes}):\n{tail}"
    assert f"Done {RUNS} " in result.stderr, tail

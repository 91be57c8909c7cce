"""``python -m twisted_sipnat resolve``: the README's main job."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol

from twisted_sipnat import STUNErrorResponse, stun
from twisted_sipnat.__main__ import parseArguments, resolveCommand
from twisted_sipnat.service.stunserver import STUNRole
from twisted_sipnat.testing import bindingResponse

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twisted_sipnat", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_ciCommandResolvesAndKeepsAlive() -> None:
    """Exactly what CI runs."""
    result = _run("resolve", "--count", "2", "--interval", "0.5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("public address: 127.0.0.1:")
    assert lines[1].startswith("STUN server:    127.0.0.1:") and lines[1].endswith("(embedded responder)")
    assert lines[2].startswith("round trip:") and lines[2].endswith(" ms")
    public = lines[0].split(": ", 1)[1]
    answered = [line for line in lines if line.startswith("keepalive ") and " answered: " in line]
    assert len(answered) == 2
    assert all(f"public address {public}" in line for line in answered)
    assert sum(1 for line in lines if " sent to " in line) == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["resolve", "stuns:stun.example.com"], "stuns:"),
        (["resolve", "192.0.2.1:99999"], "port"),
    ],
)
def test_badServerIsOneLineError(args: Any, needle: str) -> None:
    result = _run(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert needle in result.stderr


@pytest.mark.parametrize("args", [["resolve", "--interval", "0"], ["resolve", "--count", "0"], ["resolve", "--count", "x"], []])
def test_badArgumentsAreRefused(args: Any) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_parseArgumentsDefaults() -> None:
    args = parseArguments(["resolve"])
    assert (args.server, args.count, args.interval) == (None, None, 25.0)
    args = parseArguments(["resolve", "stun:[2001:db8::1]:3479", "--count", "3", "--interval", "2.5"])
    assert (args.server, args.count, args.interval) == ("stun:[2001:db8::1]:3479", 3, 2.5)


@pytest_twisted.ensureDeferred
async def test_resolveAgainstANamedServer() -> None:
    from twisted.internet import reactor

    server = STUNRole(reactor, udp=(0, "127.0.0.1"), rateLimit=None)
    server.startService()
    out = io.StringIO()
    try:
        host, port = server.address()
        args = parseArguments(["resolve", f"{host}:{port}", "--count", "1", "--interval", "0.2"])
        assert await resolveCommand(reactor, args, out) == 0
    finally:
        await server.stopService()
    text = out.getvalue()
    assert f"STUN server:    {host}:{port}\n" in text
    assert "keepalive 1 answered: public address " in text


class _ErrorServer(protocol.DatagramProtocol):
    """Answers every Binding request with 403."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        request = stun.decode(data)
        self.transport.write(bindingResponse(request, error=(403, "Forbidden")), addr)


@pytest_twisted.ensureDeferred
async def test_errorResponseFailsTheCommand() -> None:
    from twisted.internet import reactor

    port = reactor.listenUDP(0, _ErrorServer(), interface="127.0.0.1")
    before = set(reactor.getDelayedCalls())
    try:
        args = parseArguments(["resolve", f"127.0.0.1:{port.getHost().port}", "--count", "1"])
        with pytest.raises(STUNErrorResponse) as info:
            await resolveCommand(reactor, args, io.StringIO())
        assert info.value.code == 403
    finally:
        await port.stopListening()
    assert set(reactor.getDelayedCalls()) <= before


class _UnusableServer(protocol.DatagramProtocol):
    """Answers with an unknown comprehension-required attribute (0x0030): an answer the client must discard."""

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        request = stun.decode(data)
        self.transport.write(bindingResponse(request, ("192.0.2.1", 4), extra=[stun.RawAttribute(0x0030, b"abcd")]),
                             addr)


@pytest_twisted.ensureDeferred
async def test_an_unusable_answer_is_reported_as_such_not_as_no_answer() -> None:
    """Issue 12: the error line said "no STUN answer ... after 0.0 s" when an answer had come."""
    from twisted.internet import reactor

    from twisted_sipnat import STUNTimeout
    from twisted_sipnat.errors import UnusableSTUNAnswer

    port = reactor.listenUDP(0, _UnusableServer(), interface="127.0.0.1")
    try:
        args = parseArguments(["resolve", f"127.0.0.1:{port.getHost().port}", "--count", "1"])
        with pytest.raises(STUNTimeout) as info:
            await resolveCommand(reactor, args, io.StringIO())
        assert isinstance(info.value, UnusableSTUNAnswer)
        line = f"python -m twisted_sipnat resolve: {info.value}"  # what main() prints
        assert "no STUN answer" not in line and "0x0030" in line and "comprehension-required" in line
    finally:
        await port.stopListening()

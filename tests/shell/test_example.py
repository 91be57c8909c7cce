"""examples/useragent.py against the edge role on loopback."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, List

import pytest_twisted
from twisted.internet import task
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol, STUNTimeout
from twisted_sipnat.service.edge import EdgeRole

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "useragent.py"


def _loadExample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sipnat_example_useragent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _waitFor(condition: Any, reactor: Any, timeout: float = 10.0) -> None:
    waited = 0.0
    while not condition():
        await task.deferLater(reactor, 0.02)
        waited += 0.02
        assert waited < timeout, "condition never became true"


@pytest_twisted.ensureDeferred
async def test_exampleRegistersAndKeepsAliveAgainstTheEdge() -> None:
    """Run the example as a program, the way its docstring says."""
    from twisted.internet import reactor, utils

    edge = EdgeRole(reactor, udp=(0, "127.0.0.1"), domain="example.com", flowTimer=1)
    edge.startService()
    registered: List[str] = []
    original = edge.registry.register

    def register(*a: Any) -> Any:
        result = original(*a)
        registered.extend(b.aor for b in result.registered)
        return result

    edge.registry.register = register  # type: ignore[method-assign]
    try:
        host, port = edge.udp.address()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, [str(EXAMPLE), "--registrar", f"{host}:{port}", "--aor", "alice@example.com", "--count", "2"],
            env=env, path=str(ROOT))
    finally:
        await edge.stopService()
    text = out.decode()
    assert code == 0, err.decode()
    assert "keepalive 2 answered" in text
    assert "Flow-Timer 1" in text, "the Flow-Timer from the 200 OK was used"
    assert registered == ["sip:alice@example.com"]
    assert edge.registry.lookup("sip:alice@example.com", reactor.seconds()) == [], "unregistered on the way out"
    assert b"Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_exampleReRegistersAfterFlowFailure() -> None:
    from twisted.internet import reactor

    example = _loadExample()
    edge = EdgeRole(reactor, udp=(0, "127.0.0.1"), domain="example.com", flowTimer=2)
    edge.startService()
    controller = NATTraversalController(NATSettings(), reactor=reactor)
    agent = example.makeUserAgentClass()(reactor, controller, "bob@example.com", edge.udp.address())
    agent.retryDelay = lambda: 0.05
    shared = SharedDatagramProtocol(sipProtocol=agent, controller=controller)
    port = reactor.listenUDP(0, shared, interface="127.0.0.1")
    before = set(reactor.getDelayedCalls())
    try:
        agent.start(shared)
        await _waitFor(lambda: agent.registrations == 1, reactor)
        assert agent.flowTimer == 2
        assert agent.publicAddress.port == port.getHost().port
        agent.flowFailure(Failure(STUNTimeout((edge.udp.address(),), 39.5)))
        await _waitFor(lambda: agent.registrations == 2, reactor)
        assert agent.failures == 1
        assert edge.registry.lookup("sip:bob@example.com", reactor.seconds())
    finally:
        await agent.stop()
        await port.stopListening()
        await edge.stopService()
    assert len(edge.registry) == 0
    leftover = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    assert leftover == [], leftover

"""
End-to-end state machine for the keepalive machinery, through the controller, with a Clock and fake transports:
two UDP contexts (STUN keepalives) on one ``SharedDatagramProtocol`` and one TCP context (CRLFCRLF pings) on a
``SharedStreamProtocol`` over ``StringTransport``.  Hypothesis drives random sequences of ``socketIdle``, SIP
writes (on TCP: messages written in arbitrary partial chunks), clock advances, keepalive answers and losses,
pongs, ``updateNextHop``, ``refreshNATBinding`` and ``freeResources``.

Invariants, after every step:

- nothing of the controller's is written while the SIP stack holds the socket (``socketIdle(False)``);
- on TCP the output, read back by ``IncomingSplitter`` in the server role, holds exactly the SIP bytes the stack
  wrote, in order (so no ping ever landed inside a SIP message), plus whole pings;
- at most one held keepalive per context, and only for live contexts;
- every flow fails at most once, the observer is told only after the flow stopped, and a TCP flow whose ping
  got no pong within ``pongTimeout`` has failed;
- nothing is logged with a traceback, no timer loops, and after ``freeResources()`` no timer is left.

(tests/core/test_arbitration.py has the arbiter-level machines; this one covers the controller and the shells.)
"""

from __future__ import annotations

import errno
import random
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_sipnat import NATSettings, NATTraversalController, SharedStreamFactory, stun
from twisted_sipnat.core.sipframing import IncomingSplitter, Ping, SIPData
from twisted_sipnat.protocols import SharedDatagramProtocol
from twisted_sipnat.testing import FakeDatagramTransport, bindingResponse

from .support import CI_EXAMPLES, FUZZ_EXAMPLES, DatagramRecorder, LoopDetector, StreamRecorder, watchingLogs

HOPS = [("198.51.100.1", 5060), ("198.51.100.2", 5060)]
TCP_PEER = ("198.51.100.3", 5060)
MAPPED = ("203.0.113.1", 40000)
PONG_TIMEOUT = 3.0


class HoldCheckingTransport(FakeDatagramTransport):
    """
    A UDP port that fails the machine when a keepalive (STUN or CRLFs) is written while the SIP stack holds it;
    while ``down``, every write raises ENETUNREACH as ``udp.Port.write`` does when the interface is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.down = False
        self.violations: List[bytes] = []

    def write(self, packet: bytes, addr: Any = None) -> None:
        if self.held and (stun.isSTUN(packet) or not packet.strip(b"\r\n")):
            self.violations.append(bytes(packet))
        if self.down:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        super().write(packet, addr)


class TrackingObserver:
    """Checks, when told of a failure, that its flow has already stopped; counts flows started and failed."""

    def __init__(self, machine: KeepaliveMachine, name: str) -> None:
        self.machine = machine
        self.name = name
        self.started = 0
        self.failures: List[Failure] = []

    def flowFailure(self, reason: Failure) -> None:
        self.failures.append(reason)
        machine = self.machine
        if machine.controller.isKeepingAlive(self):
            machine.problems.append(f"{self.name}: told of a failure while its flow still runs")
        if len(self.failures) > self.started:
            machine.problems.append(f"{self.name}: {len(self.failures)} failures for {self.started} flows")
        if self is machine.tcpObserver:
            machine.pingOutstandingAt = None

    def __repr__(self) -> str:
        return f"<{self.name}>"


class KeepaliveMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.problems: List[str] = []
        self.logs = watchingLogs()
        self.watcher = self.logs.__enter__()
        self.clock = Clock()
        self.heap = LoopDetector()
        self.controller = NATTraversalController(
            NATSettings(udpKeepaliveInterval=10, tcpKeepaliveInterval=10, pongTimeout=PONG_TIMEOUT),
            reactor=self.clock, rng=random.Random(0), timers=self.heap,
        )
        # UDP
        self.udpTransport = HoldCheckingTransport()
        self.udpSip = DatagramRecorder()
        self.udp = SharedDatagramProtocol(sipProtocol=self.udpSip, controller=self.controller, clock=self.clock)
        self.udp.makeConnection(self.udpTransport)  # type: ignore[arg-type]
        self.udpObservers = [TrackingObserver(self, "udp-a"), TrackingObserver(self, "udp-b")]
        # TCP
        factory = SharedStreamFactory(Factory.forProtocol(StreamRecorder), controller=self.controller)
        self.tcp = factory.buildProtocol(IPv4Address("TCP", *TCP_PEER))
        self.tcpTransport = StringTransport(peerAddress=IPv4Address("TCP", *TCP_PEER))
        self.tcp.makeConnection(self.tcpTransport)
        self.tcpObserver = TrackingObserver(self, "tcp")
        self.held: Dict[str, bool] = {"udp": False, "tcp": False}
        self.sipWritten = bytearray()  # what the SIP stack wrote on TCP
        self.outgoing = bytearray()  # SIP bytes the stack has yet to write on TCP
        self.pings = 0
        self.pingsAtHold = 0
        self.pingOutstandingAt: Optional[float] = None
        self.udpAnswered = 0

    def teardown(self) -> None:
        self.logs.__exit__(None, None, None)

    # -- helpers ------------------------------------------------------------------------------------------------

    def observers(self) -> List[TrackingObserver]:
        return self.udpObservers + [self.tcpObserver]

    def tcpOutput(self) -> Tuple[bytes, int]:
        written = self.tcpTransport.value()
        splitter = IncomingSplitter(role="server")
        events = splitter.feed(written)
        # an unfinished header block (the stream's tail) is held by the splitter, not handed out yet
        held = written[len(written) - splitter.buffered :] if splitter.buffered else b""
        sip = b"".join(e.data for e in events if type(e) is SIPData) + held
        return sip, sum(1 for e in events if type(e) is Ping)

    def notePings(self) -> None:
        _, pings = self.tcpOutput()
        if pings > self.pings and self.pingOutstandingAt is None and self.controller.isKeepingAlive(self.tcpObserver):
            self.pingOutstandingAt = self.clock.seconds()
        self.pings = pings

    # -- rules --------------------------------------------------------------------------------------------------

    @rule(which=st.integers(0, 1), hop=st.integers(0, 1), flowTimer=st.sampled_from([None, 5.0, 12.0]))
    def refreshUDP(self, which: int, hop: int, flowTimer: Optional[float]) -> None:
        observer = self.udpObservers[which]
        assert self.controller.refreshNATBinding(self.udp, observer, HOPS[hop], flowTimer=flowTimer)
        observer.started += 1

    @rule()
    def refreshTCP(self) -> None:
        assert self.controller.refreshNATBinding(self.tcp, self.tcpObserver)
        self.tcpObserver.started += 1
        self.pingOutstandingAt = None

    @rule(which=st.integers(0, 1), hop=st.integers(0, 1))
    def updateNextHop(self, which: int, hop: int) -> None:
        self.controller.updateNextHop(HOPS[hop], self.udpObservers[which])

    @rule(sock=st.sampled_from(["udp", "tcp"]), idle=st.booleans())
    def socketIdle(self, sock: str, idle: bool) -> None:
        socket = self.udp if sock == "udp" else self.tcp
        if not idle and not self.held[sock] and sock == "tcp":
            self.pingsAtHold = self.tcpOutput()[1]
        self.held[sock] = not idle
        self.udpTransport.held = self.held["udp"]
        before = len(self.udpTransport.written)
        self.controller.socketIdle(idle, socket)
        if sock == "udp":
            released = len(self.udpTransport.written) - before
            live = sum(1 for o in self.udpObservers if self.controller.isKeepingAlive(o))
            if released > live:
                self.problems.append(f"socketIdle(True) released {released} keepalives for {live} contexts")
        self.notePings()

    @rule(body=st.binary(max_size=30).map(lambda b: b.replace(b"\r\n\r\n", b"\r\n\r\n" * 2)))
    def queueSIPMessage(self, body: bytes) -> None:
        self.outgoing += b"MESSAGE sip:b@example.com SIP/2.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    @precondition(lambda self: bool(self.outgoing))
    @rule(n=st.integers(1, 80))
    def writeSIP(self, n: int) -> None:
        chunk, self.outgoing = bytes(self.outgoing[:n]), self.outgoing[n:]
        self.sipWritten += chunk
        self.tcp.wrappedProtocol.transport.write(chunk)  # type: ignore[attr-defined]
        self.notePings()

    @rule()
    def writeSIPDatagram(self) -> None:
        if self.udpTransport.down:
            return  # the SIP stack's own writes would raise too; that is its business
        transport: Any = self.udpSip.transport
        transport.write(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n", HOPS[0])

    @rule(down=st.booleans())
    def network(self, down: bool) -> None:
        self.udpTransport.down = down

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.9, 3.1, 7.0, 12.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)
        self.notePings()

    @rule(lose=st.booleans(), rebound=st.booleans())
    def answerUDP(self, lose: bool, rebound: bool) -> None:
        requests = self.udpTransport.stunRequests()
        self.udpTransport.clear()
        if lose:
            return
        mapped = ("203.0.113.2", 50000) if rebound else MAPPED
        for message, addr in requests:
            self.udp.datagramReceived(bindingResponse(message, mapped), addr)

    @rule()
    def pong(self) -> None:
        self.tcp.dataReceived(b"\r\n")
        self.pingOutstandingAt = None

    @rule(which=st.integers(0, 2))
    def freeOne(self, which: int) -> None:
        observer = self.observers()[which]
        self.controller.freeResources(observer)
        if observer is self.tcpObserver:
            self.pingOutstandingAt = None

    @rule()
    def freeAll(self) -> None:
        self.controller.freeResources()
        self.pingOutstandingAt = None
        if self.clock.getDelayedCalls():
            self.problems.append(f"timers left after freeResources(): {self.clock.getDelayedCalls()}")

    # -- invariants ----------------------------------------------------------------------------------------------

    @invariant()
    def noProblems(self) -> None:
        assert self.problems == []
        assert self.udpTransport.violations == [], "keepalive written on UDP while the SIP stack held the socket"
        assert not self.heap.looped, "timer loop in the controller"
        assert self.watcher.failures == [], "\n".join(self.watcher.failures)

    @invariant()
    def tcpOutputIsTheSIPStreamPlusPings(self) -> None:
        sip, pings = self.tcpOutput()
        assert sip == bytes(self.sipWritten), "a keepalive inside a SIP message, or SIP bytes lost"
        if self.held["tcp"]:
            assert pings == self.pingsAtHold, "a ping written while the SIP stack held the connection"

    @invariant()
    def heldKeepalivesBelongToLiveContexts(self) -> None:
        for shared in (self.udp, self.tcp):
            keys = shared.arbiter.heldKeys
            live = [k for k in keys if not getattr(k, "stopped", False) and not getattr(k, "done", False)]
            assert live == list(keys), f"held keepalives of stopped contexts: {keys}"
        assert self.udp.arbiter.held <= 2 and self.tcp.arbiter.held <= 1

    @invariant()
    def tcpPongTimeoutIsReported(self) -> None:
        at = self.pingOutstandingAt
        if at is not None and self.controller.isKeepingAlive(self.tcpObserver):
            assert self.clock.seconds() <= at + PONG_TIMEOUT + 1e-6, "no pong within pongTimeout, yet no failure"

    @invariant()
    def failuresAtMostOnePerFlow(self) -> None:
        for observer in self.observers():
            assert len(observer.failures) <= observer.started


TestKeepaliveMachine = KeepaliveMachine.TestCase
TestKeepaliveMachine.settings = settings(
    max_examples=max(25, CI_EXAMPLES // 3), stateful_step_count=40, deadline=None
)


@pytest.mark.fuzz
class TestKeepaliveMachineLong(KeepaliveMachine.TestCase):  # type: ignore[misc,name-defined,valid-type]
    settings = settings(max_examples=max(100, FUZZ_EXAMPLES // 10), stateful_step_count=60, deadline=None)

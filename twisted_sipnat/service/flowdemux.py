"""
The client role's SIP side of its one UDP socket, shared by every flow: who gets which datagram.

Why one socket for several flows: over UDP a flow is the pair (local socket, next hop) (RFC 5626 §3.2), and a
user agent's flows to different edges leave from the same port, so that its NAT binding is the one its
keepalives refresh.  The :class:`~twisted_sipnat.protocols.SharedDatagramProtocol` hands every datagram that is
not STUN here; this protocol gives each response to the flow whose next hop sent it (its REGISTER client, its
OPTIONS pinger), and answers requests itself (:func:`twisted_sipnat.core.sip.uas.answerRequest`).

What it believes: only its flows' next hops.  A request from any other address is dropped, never answered (a
spoofed source would make the user agent a reflector), and so is what is malformed: counted, and said in one
rate-limited line per interval (:class:`~twisted_sipnat.core.ratelimit.DropTally`), never a traceback.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, List, Optional, Protocol, Tuple

from twisted.internet import protocol
from twisted.logger import Logger

from ..core.ratelimit import DropTally, RateLimit
from ..core.sip.error import SIPParseError
from ..core.sip.message import Request, Response
from ..core.sip.register import readMessage
from ..core.sip.uas import answerRequest
from ..protocols import sendDatagram

__all__ = ["REQUEST_BURST", "REQUEST_RATE", "FlowDemux", "RequestOutcome", "logRequest"]

HostPort = Tuple[str, int]

log = Logger(namespace="twisted_sipnat.client")

#: The ``result`` label of ``sipnat_client_requests_total``: a 200 to OPTIONS, a 480, an ACK (never
#: answered), a request from an address that is no flow's next hop (dropped), one over the per-hop rate.
RequestOutcome = ("options", "unavailable", "ack", "stranger", "rate_limited")

#: Requests a next hop may have answered per second (and in a burst), on any flow: far above what a registrar
#: sends a UA (an OPTIONS now and then, a call), low enough that a flood costs one log line per interval, not one
#: each.
REQUEST_RATE = 10.0
REQUEST_BURST = 20


class DemuxFlow(Protocol):
    """What :class:`FlowDemux` needs of a flow (:class:`twisted_sipnat.service.clientflow.ClientFlow`)."""

    @property
    def nextHop(self) -> HostPort: ...

    def datagramReceived(self, data: bytes, message: Response, addr: HostPort) -> None: ...

    def attach(self, transport: Any) -> None: ...

    def detach(self) -> None: ...


def logRequest(request: Request, source: HostPort, response: Optional[Response]) -> None:
    """
    The info line of a request that reached the user agent on a flow (UDP here, TCP/TLS in
    :mod:`~twisted_sipnat.service.sipstreamclient`) and what it was answered: ``sip.request.received``.
    """
    host, port = source
    log.info("{method} received from {host}:{port}: {answer}", method=request.method[:32], host=host, port=port,
             answer=f"{response.code} {response.reason}" if response is not None else "no answer",
             source=f"{host}:{port}", sipnat_event="sip.request.received")


def _hostPort(addr: Any) -> Optional[HostPort]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class FlowDemux(protocol.DatagramProtocol):
    """The ``sipProtocol`` of the client role's shared socket (module docstring)."""

    noisy = False

    def __init__(self, clock: Callable[[], float], dropInterval: float = 10.0) -> None:
        self._clock = clock
        self.flows: List[DemuxFlow] = []
        self.stats: Counter[str] = Counter()
        self.dropped = DropTally("SIP datagrams", interval=dropInterval)
        #: Per next hop (only they are answered, so a few sources: the table is bounded by the flows).
        self.rateLimit = RateLimit(REQUEST_RATE, REQUEST_BURST, maxSources=64)

    def add(self, flow: DemuxFlow) -> None:
        self.flows.append(flow)
        if self.transport is not None:
            flow.attach(self.transport)

    def remove(self, flow: DemuxFlow) -> None:
        if flow in self.flows:
            self.flows.remove(flow)
            flow.detach()

    def startProtocol(self) -> None:
        for flow in self.flows:
            flow.attach(self.transport)

    def stopProtocol(self) -> None:
        for flow in self.flows:
            flow.detach()
        line = self.dropped.flush(self._clock())
        if line is not None:
            log.warn(line, sipnat_event="sipnat.client.dropped")

    def _flowAt(self, addr: Optional[HostPort]) -> Optional[DemuxFlow]:
        for flow in self.flows:
            if addr is not None and flow.nextHop == addr:
                return flow
        return None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data and not data.strip(b"\r\n"):
            self.stats["keepalives.received"] += 1  # CRLFs only: a keepalive, not a message (RFC 3261 §7.5)
            return
        source = _hostPort(addr)
        flow = self._flowAt(source)
        try:
            message = readMessage(data)
        except SIPParseError as e:
            self.stats["dropped.malformed"] += 1
            self._drop(source, f"malformed or not UTF-8; the latest: {e.reason}")
            return
        if isinstance(message, Request):
            self._request(message, source, flow is not None)
        elif flow is None:
            self.stats["dropped.unmatched"] += 1  # a response from no next hop of ours
            self._drop(source, "a response from an address that is no next hop")
        else:
            flow.datagramReceived(data, message, source)  # type: ignore[arg-type]

    def _request(self, request: Request, source: Optional[HostPort], fromHop: bool) -> None:
        if not fromHop or source is None:
            self.stats["requests.stranger"] += 1
            self._drop(source, f"a {request.method[:16]} request from an address that is no next hop")
            return
        if not self.rateLimit.allow(source[0], self._clock()):
            self.stats["requests.rate_limited"] += 1
            self._drop(source, f"requests over {REQUEST_RATE:g}/s from a next hop")
            return
        response = answerRequest(request)
        logRequest(request, source, response)
        if response is None:
            self.stats["requests.ack" if request.method == "ACK" else "requests.unanswerable"] += 1
            return
        self.stats["requests.options" if response.code == 200 else "requests.unavailable"] += 1
        if self.transport is not None:
            sendDatagram(self.transport, response.toBytes(), source, self.stats, "a response")

    def _drop(self, source: Optional[HostPort], why: str) -> None:
        line = self.dropped.drop(source[0] if source is not None else "?", self._clock())
        if line is not None:
            log.warn("{summary} ({why})", summary=line, why=why, sipnat_event="sipnat.client.dropped")

    def requestFigures(self) -> List[Tuple[str, int]]:
        """``(result, count)`` for ``sipnat_client_requests_total``."""
        s = self.stats
        return [("options", s["requests.options"]), ("unavailable", s["requests.unavailable"]),
                ("ack", s["requests.ack"]), ("stranger", s["requests.stranger"]),
                ("rate_limited", s["requests.rate_limited"])]

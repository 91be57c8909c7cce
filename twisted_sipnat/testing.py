"""
Test doubles for SIP stacks that use twisted_sipnat (as ``treq.testing`` ships its own).

- :class:`FakeDatagramTransport`: a UDP transport that records what is written, so a test can read the STUN
  requests the controller sent and feed back answers;
- :func:`sharedDatagramSocket`: a :class:`~twisted_sipnat.protocols.SharedDatagramProtocol` connected to one;
- :func:`bindingResponse`: the answer a STUN server would give to a request the controller wrote, with the knobs
  a test needs (error codes, wrong transaction ID, bad FINGERPRINT, integrity);
- :class:`RecordingObserver`: an :class:`~twisted_sipnat.interfaces.IBindingObserver` that keeps its flow
  failures;
- :class:`ShutdownClock`: a ``Clock`` with the reactor's system event triggers, to play a reactor shutdown.

Everything runs with ``twisted.internet.task.Clock`` and no sockets.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from .core import stun
from .interfaces import IBindingObserver
from .protocols import SharedDatagramProtocol

HostPort = Tuple[str, int]


@implementer(IUDPTransport)
class FakeDatagramTransport:
    """A UDP port that records writes as ``(data, (host, port))`` in :attr:`written`."""

    def __init__(self, host: str = "192.0.2.10", port: int = 5060) -> None:
        self.host = host
        self.port = port
        self.written: List[Tuple[bytes, HostPort]] = []
        self.connected: Optional[HostPort] = None
        self.stopped = False

    def write(self, packet: bytes, addr: Any = None) -> None:
        if addr is None:
            if self.connected is None:
                raise ValueError("no destination for an unconnected UDP write")
            addr = self.connected
        self.written.append((bytes(packet), (addr[0], addr[1])))

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def getHost(self) -> Any:
        cls = IPv6Address if ":" in self.host else IPv4Address
        return cls("UDP", self.host, self.port)

    def stopListening(self) -> None:
        self.stopped = True

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    # -- reading what was written ------------------------------------------------------------------------------

    def stunRequests(self, to: Optional[HostPort] = None) -> List[Tuple[stun.Message, HostPort]]:
        """The STUN requests written so far (decoded), optionally only those sent ``to`` an address."""
        found = []
        for data, addr in self.written:
            if stun.isSTUN(data) and (to is None or addr == to):
                message = stun.decode(data)
                if message.messageClass == stun.REQUEST:
                    found.append((message, addr))
        return found

    def clear(self) -> None:
        del self.written[:]


@implementer(IBindingObserver)
class RecordingObserver:
    """One flow's observer that records every ``flowFailure`` reason (a ``Failure``) in :attr:`failures`."""

    def __init__(self, name: str = "observer") -> None:
        self.name = name
        self.failures: List[Failure] = []

    def flowFailure(self, reason: Failure) -> None:  # type: ignore[override]
        self.failures.append(reason)

    def __repr__(self) -> str:
        return f"<RecordingObserver {self.name}>"


def sharedDatagramSocket(
    controller: Any = None,
    sipProtocol: Any = None,
    host: str = "192.0.2.10",
    port: int = 5060,
    **kwargs: Any,
) -> Tuple[SharedDatagramProtocol, FakeDatagramTransport]:
    """A started :class:`SharedDatagramProtocol` on a :class:`FakeDatagramTransport`."""
    shared = SharedDatagramProtocol(sipProtocol=sipProtocol, controller=controller, **kwargs)
    transport = FakeDatagramTransport(host, port)
    shared.makeConnection(transport)  # type: ignore[arg-type]
    return shared, transport


def bindingResponse(
    request: stun.Message,
    mapped: Optional[HostPort] = ("203.0.113.1", 40000),
    *,
    error: Optional[Tuple[int, str]] = None,
    alternate: Optional[HostPort] = None,
    key: Optional[bytes] = None,
    fingerprint: bool = True,
    transactionId: Optional[bytes] = None,
    extra: Sequence[Any] = (),
    corruptFingerprint: bool = False,
) -> bytes:
    """
    Encode the answer to ``request``: a success with XOR-MAPPED-ADDRESS ``mapped``, or an error response
    (``error=(code, reason)``, plus ALTERNATE-SERVER for a 300).  ``key`` adds MESSAGE-INTEGRITY,
    ``transactionId`` overrides the ID (for spoofing tests) and ``corruptFingerprint`` flips the CRC.
    """
    tid = transactionId if transactionId is not None else request.transactionId
    attributes: List[Any] = list(extra)
    if error is not None:
        attributes.insert(0, stun.ErrorCode(error[0], error[1]))
        if alternate is not None:
            attributes.append(stun.AlternateServer(alternate[0], alternate[1]))
        messageClass = stun.ERROR
    else:
        if mapped is not None:
            attributes.insert(0, stun.XorMappedAddress(mapped[0], mapped[1]))
        messageClass = stun.SUCCESS
    data = stun.Message(stun.BINDING, messageClass, tid, attributes).encode(key=key, fingerprint=fingerprint)
    if corruptFingerprint:
        data = data[:-1] + bytes([data[-1] ^ 0xFF])
    return data


def answerAll(
    shared: SharedDatagramProtocol,
    transport: FakeDatagramTransport,
    mapped: HostPort = ("203.0.113.1", 40000),
    **kwargs: Any,
) -> int:
    """Answer every STUN request written so far (each from the address it went to); returns how many."""
    requests = transport.stunRequests()
    transport.clear()
    for message, addr in requests:
        shared.datagramReceived(bindingResponse(message, mapped, **kwargs), addr)
    return len(requests)


def requestsOf(written: Iterable[Tuple[bytes, HostPort]]) -> List[bytes]:
    """Only the STUN datagrams among ``written``."""
    return [data for data, _ in written if stun.isSTUN(data)]


class NamingClock(Clock):
    """
    A Clock whose ``resolve`` (``IReactorCore.resolve``) answers host names from a table and records every
    question, so a controller's name look-ups run on the Clock with no DNS.  A name not in the table fails with
    ``twisted.names.error.DNSNameError``.
    """

    def __init__(self, addresses: Dict[str, str]) -> None:
        super().__init__()
        self.addresses = addresses
        self.asked: List[str] = []

    def resolve(self, name: str, timeout: Any = None) -> defer.Deferred[str]:
        from twisted.names.error import DNSNameError

        self.asked.append(name)
        if name in self.addresses:
            return defer.succeed(self.addresses[name])
        return defer.fail(DNSNameError(name))


class SRVTable:
    """
    A twisted.names-style resolver answering ``lookupService`` from a table ``{"_stun._udp.example.com":
    [(priority, weight, port, target), ...]}`` (RFC 2782 records), for the controller's ``dnsResolver``.
    """

    def __init__(self, records: Dict[str, List[Tuple[int, int, int, str]]]) -> None:
        self.records = records
        self.asked: List[str] = []

    def lookupService(self, name: str) -> defer.Deferred[Any]:
        from twisted.names import dns
        from twisted.names.error import DNSNameError

        self.asked.append(name)
        if name not in self.records:
            return defer.fail(DNSNameError(name))
        answers = [
            dns.RRHeader(name=name, type=dns.SRV, payload=dns.Record_SRV(priority, weight, port, target))
            for priority, weight, port, target in self.records[name]
        ]
        return defer.succeed((answers, [], []))


class ShutdownClock(Clock):
    """
    A ``Clock`` with the system event triggers of ``IReactorCore`` (``addSystemEventTrigger``,
    ``removeSystemEventTrigger``, ``fireSystemEvent``), so that a test plays a reactor shutdown:
    ``fireSystemEvent("shutdown")`` runs the "before", then the "during", then the "after" triggers, in the
    order they were added (a real reactor closes its sockets in "during").  Deferreds a trigger returns are
    not waited for.
    """

    def __init__(self) -> None:
        super().__init__()
        self._triggers: Dict[Tuple[str, str], List[Tuple[Any, Callable[..., Any], Any, Any]]] = {}
        self._handles = 0

    def addSystemEventTrigger(self, phase: str, eventType: str, callable: Callable[..., Any], *args: Any,
                              **kwargs: Any) -> Any:
        if phase not in ("before", "during", "after"):
            raise KeyError(f"no such phase {phase!r}")
        self._handles += 1
        handle = (phase, eventType, self._handles)
        self._triggers.setdefault((phase, eventType), []).append((handle, callable, args, kwargs))
        return handle

    def removeSystemEventTrigger(self, triggerID: Any) -> None:
        phase, eventType, _ = triggerID
        entries = self._triggers.get((phase, eventType), [])
        for index, entry in enumerate(entries):
            if entry[0] == triggerID:
                del entries[index]
                return
        raise ValueError("Tried to remove a trigger that doesn't exist.")

    def fireSystemEvent(self, eventType: str) -> None:
        for phase in ("before", "during", "after"):
            for _, callable, args, kwargs in self._triggers.pop((phase, eventType), []):
                callable(*args, **kwargs)

    def triggerCount(self, eventType: str = "shutdown") -> int:
        """How many triggers wait for ``eventType``, in every phase."""
        return sum(len(v) for (_, event), v in self._triggers.items() if event == eventType)

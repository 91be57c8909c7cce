"""twisted_sipnat.service.sipstream: SIP over TCP at the edge, on a StringTransport."""

from __future__ import annotations

from typing import Any, List

from twisted_sipnat.service.sipstream import SIPStreamProtocol


class _Registry:
    def __init__(self) -> None:
        self.registered: List[Any] = []
        self.unregistered: List[str] = []

    def unregisterAddress(self, domainURL: Any, logicalURL: Any, physicalURL: Any) -> Any:
        from twisted.internet import defer

        self.unregistered.append(logicalURL.toString())
        return defer.succeed(None)

    def registerAddress(self, domainURL: Any, logicalURL: Any, physicalURL: Any) -> Any:
        from twisted.internet import defer

        self.registered.append((logicalURL.toString(), physicalURL.toString()))
        return defer.succeed(None)


def _streamEdge() -> Any:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport


    registry = _Registry()
    edge = SIPStreamProtocol(registry, flowTimer=None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
    edge.makeConnection(transport)
    return edge, transport, registry


_UTF8_REGISTER = (
    "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:40000;branch=z9hG4bK1\r\n"
    'From: "Zoë" <sip:zoe@example.com>;tag=1\r\nTo: "Zoë" <sip:zoe@example.com>\r\nCall-ID: u@x\r\n'
    "CSeq: 1 REGISTER\r\nContact: <sip:zoe@192.0.2.10:40000;transport=tcp>\r\nContent-Length: 0\r\n\r\n"
).encode()


def test_edge_stream_waits_for_a_character_split_between_reads() -> None:
    edge, transport, registry = _streamEdge()
    cut = _UTF8_REGISTER.index("ë".encode()) + 1  # inside the two-byte character
    edge.dataReceived(_UTF8_REGISTER[:cut])
    edge.dataReceived(_UTF8_REGISTER[cut:])
    assert transport.value().startswith(b"SIP/2.0 200 OK\r\n")
    assert not transport.disconnecting
    assert len(registry.registered) == 1


def test_edge_stream_closes_on_bytes_that_are_not_utf8() -> None:
    edge, transport, registry = _streamEdge()
    edge.dataReceived(b"REGISTER sip:\xff\xfe SIP/2.0\r\n")
    assert transport.disconnecting and transport.value() == b""


def test_edge_stream_unregisters_on_expires_zero() -> None:
    edge, transport, registry = _streamEdge()
    edge.dataReceived(_UTF8_REGISTER.replace(b"Content-Length: 0", b"Expires: 0\r\nContent-Length: 0"))
    assert transport.value().startswith(b"SIP/2.0 200 OK\r\n")
    assert registry.registered == [] and registry.unregistered == ["sip:zoe@example.com"]

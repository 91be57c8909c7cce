"""
The client role's REGISTER client under attack: forged responses and junk datagrams on its SIP port.

- A response is believed only when it carries this REGISTER's branch (RFC 3261 §17.1.3): someone who learnt
  the Call-ID and guesses the CSeq (all the old client compared) can neither complete nor fail the
  registration.
- No datagram raises or earns a traceback; what is dropped is counted, and said in one line per interval.
"""

from __future__ import annotations

from typing import Any, List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from twisted_sipnat.core.sip import Request, parse, responseTo
from twisted_sipnat.service.sipclient import RegisterClient
from twisted_sipnat.testing import FakeDatagramTransport

REGISTRAR = ("192.0.2.1", 5060)
ATTACKER = ("203.0.113.66", 5060)


def started() -> Any:
    clock = Clock()
    ua = RegisterClient(clock, "alice@example.com", REGISTRAR)
    transport = FakeDatagramTransport("192.0.2.10", 5060)
    ua.makeConnection(transport)  # type: ignore[arg-type]
    d = ua.register(("198.51.100.7", 40000))
    request = parse(transport.written[0][0])
    assert isinstance(request, Request)
    return clock, ua, d, request


@settings(max_examples=200, deadline=None)
@given(
    branch=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=16),
    code=st.integers(min_value=200, max_value=699),
)
def test_aForgedFinalResponseWithTheRightCallIdAndCSeqIsNotBelieved(branch: str, code: int) -> None:
    clock, ua, d, request = started()
    forged = responseTo(request, code)
    forged.headers.set("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{branch};rport")
    ua.datagramReceived(forged.toBytes(), ATTACKER)
    assert not d.called and ua.pending  # the old client: called back (2xx) or errbacked (>= 300)
    ua.datagramReceived(responseTo(request, 200).toBytes(), REGISTRAR)
    assert d.called and not ua.pending
    assert clock.getDelayedCalls() == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=30))
def test_noDatagramRaisesOrLogsATraceback(datagrams: List[bytes]) -> None:
    events: List[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, ua, d, request = started()
        for data in datagrams:
            ua.datagramReceived(data, ATTACKER)
        assert ua.pending and not d.called
        ua.stop()
        d.addErrback(lambda failure: None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_failure") is not None]
    counted = sum(ua.stats[k] for k in ("dropped.malformed", "dropped.request", "dropped.unmatched",
                                        "keepalives.received"))
    assert counted == len(datagrams)
    drops = [e for e in events if e.get("sipnat_event") == "sipnat.client.dropped"]
    assert len(drops) <= 1  # all within one instant: at most the first line, never one per datagram

"""
The per-source rate limits' own tables: a flood from many (spoofed) sources keeps each at its bound, which is an
option (``--rate-limit-sources``) and a metric (``sipnat_rate_limit_sources{protocol}``).
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.service.sipedgesupport import EdgeHarness
from tests.sipedgekit import register
from twisted_sipnat import stun
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.options import Options, edgeArguments, stunArguments
from twisted_sipnat.service.stunserver import STUNRole


def test_edgeSIPAndSTUNRateLimitsStayAtTheirBoundUnderASpoofedFlood(clock: Clock) -> None:
    harness = EdgeHarness(clock, domain="example.com", rateLimitSources=100)
    for i in range(1000):
        source = (f"198.51.{i // 256}.{i % 256}", 5060)
        harness.datagram(stun.Message(stun.BINDING, stun.REQUEST).encode(), source)
        harness.datagram(register(f"u{i}", callId=f"c{i}"), source)
    figures = harness.figures()
    assert figures.get("sipnat_rate_limit_sources", protocol="stun") == 100
    assert figures.get("sipnat_rate_limit_sources", protocol="sip") == 100
    assert figures.get("sipnat_stun_requests_total", result="answered") == 1000  # each forgotten source: a fresh bucket
    harness.stop()


def test_stunRoleRateLimitStaysAtItsBound() -> None:
    role = STUNRole(Clock(), udp=(0, "127.0.0.1"), rateLimitSources=50)
    assert role.responder.rateLimit is not None
    for i in range(500):
        role.responder.respond(stun.Message(stun.BINDING, stun.REQUEST).encode(), (f"203.0.113.{i % 250}", 1000 + i))
    figures = Figures()
    role.reportFigures(figures)
    assert figures.get("sipnat_rate_limit_sources", protocol="stun") == 50


@pytest.mark.parametrize("role", ["edge", "stun"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_badRateLimitSourcesIsOneLineNamingTheOption(role: str, value: str) -> None:
    options = Options()
    options.parseOptions([role, "--rate-limit-sources", value])
    with pytest.raises(InvalidSettingsError) as caught:
        (edgeArguments if role == "edge" else stunArguments)(options.subOptions, 1)
    assert caught.value.key == "rate-limit-sources" and "\n" not in str(caught.value)

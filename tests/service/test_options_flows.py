"""The client role's options for several flows: --next-hop repeated, SRV without it, --keepalive options/auto,
--max-flows, and the RFC 5626 §4.5 backoff figures; each bad value one line naming its option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from twisted_sipnat.core.recovery import RecoveryPolicy
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.options import Options, clientArguments
from twisted_sipnat.service.siphops import SIPHops


def arguments(*args: str, tmp: Path) -> Any:
    options = Options()
    options.parseOptions(["client", "--state-dir", str(tmp), *args])
    return clientArguments(options, options.subOptions)


def refused(*args: str, tmp: Path) -> InvalidSettingsError:
    with pytest.raises(InvalidSettingsError) as info:
        arguments(*args, tmp=tmp)
    return info.value


def test_nextHopRepeatedIsOneFlowEach(tmp_path: Path) -> None:
    kw = arguments("--next-hop", "192.0.2.1:5060", "-n", "192.0.2.2:5062", "--register", "alice@example.com",
                   tmp=tmp_path)
    assert kw["nextHop"] == [("192.0.2.1", 5060), ("192.0.2.2", 5062)] and kw["srv"] is None
    assert refused("--next-hop", "192.0.2.1:5060", "--next-hop", "192.0.2.1:5060", tmp=tmp_path).key == "next-hop"
    assert refused("--next-hop", "192.0.2.1:5060", "--next-hop", "edge.example:5060", tmp=tmp_path).key == "next-hop"


def test_withoutNextHopTheAORDomainsSRVRecords(tmp_path: Path) -> None:
    kw = arguments("--register", "alice@example.com", "--max-flows", "3", tmp=tmp_path)
    srv = kw["srv"]
    assert isinstance(srv, SIPHops) and (srv.domain, srv.maxFlows, srv.service) == ("example.com", 3, "_sip._udp")
    assert kw["nextHop"] == []
    assert refused(tmp=tmp_path).key == "next-hop", "nothing to register and no next hop"
    for bad in ("0", "two", "-1"):
        assert refused("--register", "alice@example.com", "--max-flows", bad, tmp=tmp_path).key == "max-flows"


def test_keepaliveOptionsNeedsAnAORAndAutoIsTheControllersMethod(tmp_path: Path) -> None:
    kw = arguments("--next-hop", "192.0.2.1:5060", "--register", "alice@example.com", "--keepalive", "options",
                   tmp=tmp_path)
    assert kw["keepalive"] == "options"
    assert kw["settings"]["default"].udpKeepaliveMethod == "stun", "the controller's method is left alone"
    assert refused("--next-hop", "192.0.2.1:5060", "--keepalive", "options", tmp=tmp_path).key == "keepalive"
    auto = arguments("--next-hop", "192.0.2.1:5060", "--keepalive", "auto", tmp=tmp_path)
    assert auto["settings"]["default"].udpKeepaliveMethod == "auto"
    bad = refused("--next-hop", "192.0.2.1:5060", "--keepalive", "sometimes", tmp=tmp_path)
    assert bad.key == "keepalive" and "\n" not in str(bad)


def test_backoffFigures(tmp_path: Path) -> None:
    base = ["--next-hop", "192.0.2.1:5060"]
    assert arguments(*base, tmp=tmp_path)["recovery"] is None, "the RFC's figures"
    assert arguments(*base, "--backoff-base", "2", tmp=tmp_path)["recovery"] == RecoveryPolicy(2.0, 2.0, 1800.0)
    kw = arguments(*base, "--backoff-base-all-failed", "10", "--backoff-base-some-up", "20", "--backoff-max", "600",
                   tmp=tmp_path)
    assert kw["recovery"] == RecoveryPolicy(10.0, 20.0, 600.0)
    assert refused(*base, "--backoff-max", "60", tmp=tmp_path).key == "backoff-base-some-up", "its 90 s exceed 60"
    assert refused(*base, "--backoff-base-some-up", "0", tmp=tmp_path).key == "backoff-base-some-up"
    assert refused(*base, "--backoff-base-all-failed", "x", tmp=tmp_path).key == "backoff-base-all-failed"


def test_twistdBuildsOneFlowPerNextHopOrAnSRVRole(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from twisted_sipnat.service.client import ClientRole
    from twisted_sipnat.tap import buildService

    def build(*args: str) -> ClientRole:
        options = Options()
        options.parseOptions(["client", "--listen", "udp:0", "--state-dir", str(tmp_path), *args])
        role = buildService(options, Clock())
        assert isinstance(role, ClientRole)
        return role

    two = build("--next-hop", "192.0.2.1:5060", "--next-hop", "192.0.2.2:5060", "--register", "alice@example.com",
                "--keepalive", "options", "--backoff-base-some-up", "45")
    assert [(f.key, f.nextHop, f.registerClient.registration.regId) for f in two.flows  # type: ignore[union-attr]
            ] == [(1, ("192.0.2.1", 5060), 1), (2, ("192.0.2.2", 5060), 2)]
    instances = {f.registerClient.registration.instance for f in two.flows}  # type: ignore[union-attr]
    assert len(instances) == 1 and None not in instances, "one +sip.instance for every flow"
    assert two.keepalive == "options" and two.recovery.policy == RecoveryPolicy(30.0, 45.0, 1800.0)
    srv = build("--register", "alice@example.com")
    assert srv.flows == [] and isinstance(srv.srv, SIPHops) and srv.srv.reactor is srv.reactor


def test_networkPollWatchesTheHostForTheRoleAndZeroTurnsItOff(tmp_path: Path) -> None:
    """
    The role hears the host's network changes (issue 14): by default it looks every 2 s and a change is the
    controller's ``networkChanged``; ``--network-poll 0`` turns the watch off, a negative value is one line.
    """
    from twisted.internet.task import Clock

    from twisted_sipnat.service.client import ClientRole

    base = ["--next-hop", "192.0.2.1:5060"]
    assert arguments(*base, tmp=tmp_path)["networkPoll"] == 2.0
    assert arguments(*base, "--network-poll", "0", tmp=tmp_path)["networkPoll"] is None
    assert refused(*base, "--network-poll", "-1", tmp=tmp_path).key == "network-poll"
    role = ClientRole(Clock(), **arguments(*base, "--network-poll", "0.5", tmp=tmp_path))
    watcher = role.networkWatcher
    assert watcher is not None and watcher.interval == 0.5 and watcher.parent is role
    assert watcher.onChange == role.controller.networkChanged
    assert ClientRole(Clock(), **arguments(*base, "--network-poll", "0", tmp=tmp_path)).networkWatcher is None

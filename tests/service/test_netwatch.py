"""
The network watcher (``service/netwatch.py``) with a Clock and a fake ``/proc/net`` (files in a tmp dir): it
calls back once per change of the host's addresses or default routes, within its interval, and never for a look
that finds the same state (the contract's ``networkChanged`` must not be called in a loop).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from tests.addresses import HOP
from twisted_sipnat import MappedAddressChanged, NATSettings, NATTraversalController
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.figures import Figures
from twisted_sipnat.service.netwatch import NetworkWatcher, hostAddresses
from twisted_sipnat.testing import RecordingObserver, answerAll, bindingResponse, sharedDatagramSocket

ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def fibTrie(addresses: Sequence[str]) -> str:
    """A ``fib_trie`` as Linux writes it: each local address a leaf followed by ``/32 host LOCAL``."""
    lines = ["Main:", "  +-- 0.0.0.0/0 3 0 5", "     |-- 0.0.0.0", "        /0 universe UNICAST",
             "     +-- 127.0.0.0/8 2 0 2", "           |-- 127.0.0.0", "              /8 host LOCAL",
             "           |-- 127.0.0.1", "              /32 host LOCAL"]
    for address in addresses:
        network = ".".join(address.split(".")[:3]) + ".0"
        lines += [f"     +-- {network}/24 2 0 2", f"           |-- {network}", "              /24 link UNICAST",
                  f"           |-- {address}", "              /32 host LOCAL",
                  f"        |-- {network[:-1]}255", "           /32 link BROADCAST"]
    return "\n".join(lines + ["Local:"] + lines[1:]) + "\n"


def hexAddress(address: str) -> str:
    return "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))


ZERO6 = "0" * 32


def route6(destination: str, length: str, gateway: str, iface: str) -> str:
    return f"{destination} {length} {ZERO6} 00 {gateway} 00000400 00000002 00000000 00000003 {iface:>8}\n"


def writeRoot(root: Path, addresses: Sequence[str] = ("192.0.2.10",), gateways: Sequence[Tuple[str, str]] = (
        ("eth0", "192.0.2.1"),), inet6: Sequence[str] = (), gateways6: Sequence[Tuple[str, str]] = ()) -> Path:
    root.mkdir(exist_ok=True)
    (root / "fib_trie").write_text(fibTrie(addresses))
    routes = [f"{iface}\t00000000\t{hexAddress(gw)}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" for iface, gw in gateways]
    routes += ["eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"]  # a link route, not a default one
    (root / "route").write_text(ROUTE_HEADER + "".join(routes))
    (root / "if_inet6").write_text("00000000000000000000000000000001 01 80 10 80       lo\n"
                                   + "".join(f"{a} 02 40 00 80     eth0\n" for a in inet6))
    (root / "ipv6_route").write_text(
        route6("fe800000000000000000000000000000", "40", ZERO6, "eth0")  # a link route
        + "".join(route6(ZERO6, "00", gw, iface) for iface, gw in gateways6)
        + f"{ZERO6} 00 {ZERO6} 00 {ZERO6} ffffffff 00000001 00000000 00200200       lo\n")  # the reject route
    return root


class Calls:
    def __init__(self) -> None:
        self.at: List[float] = []
        self.clock: Any = None

    def __call__(self) -> None:
        self.at.append(self.clock.seconds())


def started(root: Path, clock: Clock, interval: float = 2.0) -> Tuple[NetworkWatcher, Calls]:
    calls = Calls()
    calls.clock = clock
    watcher = NetworkWatcher(clock, calls, root=root, interval=interval)
    watcher.startService()
    return watcher, calls


def test_the_snapshot_holds_local_ipv4_ipv6_and_default_routes_only(tmp_path: Path) -> None:
    root = writeRoot(tmp_path / "net", ["192.0.2.10", "198.51.100.7"], inet6=["20010db8000000000000000000000001"],
                     gateways6=[("eth0", "fe800000000000000000000000000001")])
    snapshot = hostAddresses(root)
    assert snapshot == frozenset({
        ("inet", "127.0.0.1"), ("inet", "192.0.2.10"), ("inet", "198.51.100.7"),
        ("inet6", "00000000000000000000000000000001", "lo"), ("inet6", "20010db8000000000000000000000001", "eth0"),
        ("default", "eth0", "010200C0"), ("default6", "eth0", "fe800000000000000000000000000001"),
    })
    assert ("inet", "192.0.2.0") not in snapshot and ("inet", "192.0.2.255") not in snapshot


def test_without_fib_trie_nothing_can_be_told_and_ipv6_or_routes_missing_are_empty(tmp_path: Path) -> None:
    assert hostAddresses(tmp_path / "absent") is None
    root = writeRoot(tmp_path / "net")
    (root / "if_inet6").unlink()
    (root / "route").unlink()
    (root / "ipv6_route").unlink()
    assert hostAddresses(root) == frozenset({("inet", "127.0.0.1"), ("inet", "192.0.2.10")})


def test_an_added_address_calls_back_once_within_the_interval(tmp_path: Path, clock: Clock) -> None:
    root = writeRoot(tmp_path / "net")
    watcher, calls = started(root, clock)
    clock.advance(2.0)
    clock.advance(2.0)
    assert calls.at == []
    clock.advance(0.5)
    writeRoot(root, ["192.0.2.10", "192.0.2.11"])
    changedAt = clock.seconds()
    clock.advance(1.5)
    assert calls.at == [6.0] and calls.at[0] - changedAt <= watcher.interval
    for _ in range(5):
        clock.advance(2.0)
    assert calls.at == [6.0], "the same state again is no change"
    watcher.stopService()


@pytest.mark.parametrize("change", ["address removed", "default route moved", "ipv6 added", "gateway changed",
                                    "ipv6 default route added"])
def test_every_kind_of_change_calls_back(tmp_path: Path, clock: Clock, change: str) -> None:
    root = writeRoot(tmp_path / "net", ["192.0.2.10", "192.0.2.11"])
    watcher, calls = started(root, clock, interval=1.0)
    if change == "address removed":
        writeRoot(root, ["192.0.2.10"])
    elif change == "default route moved":
        writeRoot(root, ["192.0.2.10", "192.0.2.11"], gateways=[("wlan0", "192.0.2.1")])
    elif change == "ipv6 added":
        writeRoot(root, ["192.0.2.10", "192.0.2.11"], inet6=["20010db8000000000000000000000002"])
    elif change == "gateway changed":
        writeRoot(root, ["192.0.2.10", "192.0.2.11"], gateways=[("eth0", "192.0.2.254")])
    else:
        writeRoot(root, ["192.0.2.10", "192.0.2.11"], gateways6=[("eth0", "fe800000000000000000000000000001")])
    clock.advance(1.0)
    assert calls.at == [1.0]
    watcher.stopService()


def test_the_change_is_logged_with_what_was_added_and_removed(tmp_path: Path, clock: Clock) -> None:
    root = writeRoot(tmp_path / "net", ["192.0.2.10"])
    watcher, calls = started(root, clock, interval=1.0)
    writeRoot(root, ["192.0.2.20"])
    logged: List[Any] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    (event,) = [e for e in logged if e.get("sipnat_event") == "sipnat.netwatch.changed"]
    assert event["added"] == "inet 192.0.2.20" and event["removed"] == "inet 192.0.2.10"
    assert event["log_namespace"] == "twisted_sipnat.netwatch"
    watcher.stopService()


def test_a_failing_callback_is_logged_and_the_watch_goes_on(tmp_path: Path, clock: Clock) -> None:
    root = writeRoot(tmp_path / "net")
    seen: List[float] = []

    def broken() -> None:
        seen.append(clock.seconds())
        raise RuntimeError("boom")

    watcher = NetworkWatcher(clock, broken, root=root, interval=1.0)
    logged: List[Any] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        watcher.startService()
        writeRoot(root, ["192.0.2.11"])
        clock.advance(1.0)
        writeRoot(root, ["192.0.2.12"])
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        watcher.stopService()
    assert seen == [1.0, 2.0]
    errors = [e for e in logged if e.get("sipnat_event") == "sipnat.netwatch.error"]
    assert len(errors) == 2 and all(e["log_failure"].check(RuntimeError) for e in errors)


def test_an_unreadable_root_is_said_once_and_reported_as_no_change(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "net"
    logged: List[Any] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        watcher, calls = started(root, clock, interval=1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        writeRoot(root)
        clock.advance(1.0)  # the first readable look: nothing to compare it with
        writeRoot(root, ["192.0.2.11"])
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        watcher.stopService()
    unavailable = [e for e in logged if e.get("sipnat_event") == "sipnat.netwatch.unavailable"]
    assert len(unavailable) == 1 and str(root) in unavailable[0]["root"]
    assert calls.at == [4.0]


def test_stopping_leaves_no_delayed_call_and_counts_are_figures(tmp_path: Path, clock: Clock) -> None:
    root = writeRoot(tmp_path / "net")
    watcher, calls = started(root, clock, interval=1.0)
    writeRoot(root, ["192.0.2.11"])
    clock.advance(1.0)
    figures = Figures()
    watcher.reportFigures(figures)
    assert figures.get("sipnat_network_changes_total") == 1
    watcher.stopService()
    assert clock.getDelayedCalls() == []
    writeRoot(root, ["192.0.2.12"])
    clock.advance(5.0)
    assert calls.at == [1.0]


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_a_bad_interval_is_one_line(interval: float) -> None:
    with pytest.raises(InvalidSettingsError) as e:
        NetworkWatcher(Clock(), lambda: None, interval=interval)
    assert "\n" not in str(e.value) and "interval" in str(e.value)


@settings(max_examples=40, deadline=None)
@given(states=st.lists(st.sets(st.sampled_from(["192.0.2.10", "192.0.2.11", "198.51.100.3", "203.0.113.9"]),
                               min_size=1), min_size=1, max_size=12))
def test_one_call_per_look_that_differs_from_the_one_before(tmp_path_factory: Any, states: List[Any]) -> None:
    clock = Clock()
    root = writeRoot(tmp_path_factory.mktemp("net"), sorted(states[0]))
    watcher, calls = started(root, clock, interval=1.0)
    expected = []
    for i, state in enumerate(states[1:], start=1):
        writeRoot(root, sorted(state))
        clock.advance(1.0)
        if state != states[i - 1]:
            expected.append(float(i))
    watcher.stopService()
    assert calls.at == expected


def test_wired_to_the_controller_a_rebinding_shows_within_the_poll_and_one_round_trip(tmp_path: Path,
                                                                                     clock: Clock) -> None:
    """
    Issue 14: "a rebinding is noticed only at the next keepalive, up to 25 s later".  With the watcher calling
    ``networkChanged``, a new default route (the host moved networks, and its NAT rebound the flow) is heard at
    the next poll, the keepalive leaves at once, and its answer's new mapping fails the flow -- 2 s after the
    change instead of up to 25 s.
    """

    root = writeRoot(tmp_path / "net")
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(14))
    controller.addressAssigned = lambda host: host == "192.0.2.10"  # type: ignore[method-assign]
    shared, transport = sharedDatagramSocket(controller)
    observer = RecordingObserver()
    watcher = NetworkWatcher(clock, controller.networkChanged, root=root, interval=2.0)
    watcher.startService()
    try:
        rebindingWithin(clock, controller, shared, transport, observer, watcher, root)
    finally:
        watcher.stopService()
        controller.freeResources()


def rebindingWithin(clock: Clock, controller: Any, shared: Any, transport: Any, observer: Any,
                    watcher: NetworkWatcher, root: Path) -> None:
    controller.refreshNATBinding(shared, observer, HOP)
    while not transport.written:
        clock.advance(0.5)
    answerAll(shared, transport, ("203.0.113.1", 40000))  # the baseline
    clock.advance(0.5)
    writeRoot(root, gateways=[("wlan0", "192.0.2.1")])
    changedAt = clock.seconds()
    while not transport.stunRequests():
        clock.advance(0.1)
        assert clock.seconds() - changedAt <= watcher.interval + 1e-9
    (request, addr), = transport.stunRequests()
    clock.advance(0.02)
    shared.datagramReceived(bindingResponse(request, ("203.0.113.1", 40001)), addr)
    (failure,) = observer.failures
    assert failure.check(MappedAddressChanged)
    assert clock.seconds() - changedAt <= watcher.interval + 0.1
    assert observer.failures[0].value.new.port == 40001

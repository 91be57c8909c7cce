"""
Fixtures of the ``lab`` tests: one netns NAT lab per session (always torn down, stale labs of dead sessions
removed first), coturn and Kamailio in ``pub``, and a factory running any driver script in any namespace — the
extension point for later roles (twistd client/edge, RFC 5780 discovery): ``runDriver(lab.lan, "x.py", [...])``.

Not root, a missing tool or a peer that will not start FAILS the test with the reason; nothing here skips.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

HERE = Path(__file__).resolve().parent
# netlab beside this file, peerkit in ../interop; make the imports independent of pytest's import mode.
for _path in (HERE, HERE.parent / "interop"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import netlab  # noqa: E402
import peerkit  # noqa: E402
from netlab import Driver, NetLab  # noqa: E402
from peerkit import PeerError, PeerProcess, RunningPeer  # noqa: E402

COTURN_PORT = 3478
KAMAILIO_PORT = 5060
RESPONDER_PORT = 4478
UDP_TIMEOUT = 3


def namespaceReady(lab: NetLab, ns: str) -> peerkit.ReadyCheck:
    """A ReadyCheck polling with hand-built STUN from inside ``ns`` (the host cannot reach the lab)."""

    def ready(process: PeerProcess, server: peerkit.HostPort, deadline: float) -> peerkit.BindingAnswer:
        budget = max(0.5, deadline - time.monotonic())
        result = lab.run(
            ns,
            [sys.executable, str(HERE.parent / "interop" / "peerkit.py"), "probe", server[0], str(server[1]),
             "--deadline", f"{budget:.1f}"],
            check=False,
            timeout=budget + 10,
        )
        if result.returncode != 0:
            dead = process.deadReason()
            raise PeerError(
                f"{process.name} did not answer STUN at {server[0]}:{server[1]} in {ns}: "
                f"{result.stdout.strip()} {result.stderr.strip()}\n{dead or process.logTail()}"
            )
        event = json.loads(result.stdout.strip().splitlines()[-1])
        answer = peerkit.BindingAnswer(event["type"], b"", tuple(event["mapped"]) if event["mapped"] else None)
        answer.software = event["software"]
        return answer

    return ready


@pytest.fixture(scope="session")
def lab() -> Iterator[NetLab]:
    """The lab, built once; removed at the end of the session whatever happened (and at interpreter exit)."""
    reasons = netlab.missingPrerequisites()
    if reasons:
        pytest.fail("the netns NAT lab cannot run here: " + "; ".join(reasons), pytrace=False)
    netlab.removeStaleLabs()
    instance = NetLab(udpTimeout=UDP_TIMEOUT)
    try:
        instance.up()
    except netlab.LabError as e:
        pytest.fail(f"building the lab failed: {e}", pytrace=False)
    atexit.register(instance.down)
    try:
        yield instance
    finally:
        instance.down()


@pytest.fixture(autouse=True)
def _labReset(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each lab test: endpoint-independent mapping, no impairment, empty conntrack, default timeouts."""
    yield
    if "lab" in request.fixturenames:
        instance: NetLab = request.getfixturevalue("lab")
        instance.clearImpairment()
        instance.setMode("eim")
        instance.setUdpTimeout(UDP_TIMEOUT)
        instance.setTcpEstablishedTimeout(None)


def _startInPub(lab: NetLab, start: Callable[..., RunningPeer], what: str, **kwargs: Any) -> RunningPeer:
    try:
        peer = start(prefix=lab.prefixFor(lab.pub), ready=namespaceReady(lab, lab.pub), **kwargs)
    except PeerError as e:
        pytest.fail(f"{what} is needed for this lab test: {e}", pytrace=False)
    lab.track(peer.process.process)
    return peer


@pytest.fixture(scope="session")
def labCoturn(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """coturn in ``pub`` on 203.0.113.20 and .21, port 3478 (two addresses: RFC 5780 OTHER-ADDRESS)."""
    peer = _startInPub(
        lab,
        peerkit.startCoturn,
        "coturn",
        workDir=tmp_path_factory.mktemp("labcoturn"),
        listen=[netlab.PUB_ADDR, netlab.PUB_ADDR2],
        port=COTURN_PORT,
    )
    with peer:
        yield peer




@pytest.fixture(scope="session")
def labSecureCoturn(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """
    coturn in ``pub`` on 203.0.113.20:3490 with ``--secure-stun --lt-cred-mech`` (RFC 8489 §9.2 long-term
    credentials required for Binding), realm :data:`netlab.SECURE_REALM` and the user :data:`netlab.SECURE_USER`.
    """
    work = tmp_path_factory.mktemp("labsecurecoturn")
    peer = _startInPub(
        lab,
        peerkit.startCoturn,
        "coturn",
        workDir=work,
        listen=[netlab.PUB_ADDR],
        port=netlab.SECURE_COTURN_PORT,
        extra=peerkit.coturnLongTermArguments(work, netlab.SECURE_REALM, [netlab.SECURE_USER]),
    )
    with peer:
        yield peer


@pytest.fixture(scope="session")
def labKamailio(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPeer]:
    """Kamailio as the RFC 5626 edge in ``pub`` on 203.0.113.20:5060 (UDP with STUN, and TCP)."""
    peer = _startInPub(
        lab,
        peerkit.startKamailio,
        "Kamailio",
        workDir=tmp_path_factory.mktemp("labkamailio"),
        host=netlab.PUB_ADDR,
        port=KAMAILIO_PORT,
    )
    with peer:
        yield peer


@pytest.fixture
def labKamailioFactory(lab: NetLab, tmp_path: Path) -> Iterator[Callable[[], RunningPeer]]:
    """A private Kamailio in ``pub`` on 203.0.113.21 for a test that stops it; all stopped at teardown."""
    started: List[RunningPeer] = []

    def make() -> RunningPeer:
        peer = _startInPub(
            lab,
            peerkit.startKamailio,
            "Kamailio",
            workDir=tmp_path / f"kamailio{len(started)}",
            host=netlab.PUB_ADDR2,
            port=KAMAILIO_PORT + 10 + len(started),
        )
        started.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in started:
            peer.stop()


RunDriver = Callable[..., Driver]


@pytest.fixture
def runDriver(lab: NetLab) -> Iterator[RunDriver]:
    """
    ``runDriver(ns, script, args=(), name=None, ready=True)``: start ``drivers/<script>`` (or ``"-m module"``,
    e.g. a twistd role) in namespace ``ns`` and (by default) wait for its ``ready`` event; every driver is
    stopped at teardown.  This is the extension point for the twistd client/edge roles and RFC 5780 discovery:
    write a driver that prints JSON lines, start it here, wait on its events with ``expect``/``collect``.
    """
    drivers: List[Driver] = []

    def start(ns: str, script: str, args: Sequence[str] = (), name: Optional[str] = None, ready: bool = True) -> Driver:
        driver = Driver(lab, ns, script, args, name)
        drivers.append(driver)
        if ready:
            driver.expectEvent("ready", timeout=15)
        return driver

    try:
        yield start
    finally:
        for driver in drivers:
            driver.stop()


@pytest.fixture
def natClient(lab: NetLab, runDriver: RunDriver) -> Callable[..., Driver]:
    """
    ``natClient(port=0, **settings)``: the library's client (drivers/natclient.py) in ``lan`` on 192.0.2.10,
    with ``NATSettings(**settings)``.
    """

    def start(port: int = 0, **settings: Any) -> Driver:
        return runDriver(
            lab.lan, "natclient.py", ["--bind", f"{netlab.LAN_ADDR}:{port}", "--settings", json.dumps(settings)]
        )

    return start


@pytest.fixture
def responder(lab: NetLab, runDriver: RunDriver) -> Driver:
    """Our own STUN responder role (``SharedDatagramProtocol(stunResponder=True)``) in ``pub``."""
    return runDriver(lab.pub, "responder.py", ["--listen", f"{netlab.PUB_ADDR}:{RESPONDER_PORT}"])


def namespaceSIPReady(lab: NetLab, ns: str) -> peerkit.ReadyCheck:
    """
    A ReadyCheck polling with hand-built SIP OPTIONS from inside ``ns`` (``peerkit.py probe-sip``): for a
    registrar that does not answer STUN (Kamailio without its stun module), where :func:`namespaceReady` would
    wait in vain.  The answer it returns carries no mapped address.
    """

    def ready(process: PeerProcess, server: peerkit.HostPort, deadline: float) -> peerkit.BindingAnswer:
        budget = max(0.5, deadline - time.monotonic())
        result = lab.run(
            ns,
            [sys.executable, str(HERE.parent / "interop" / "peerkit.py"), "probe-sip", server[0], str(server[1]),
             "--deadline", f"{budget:.1f}"],
            check=False,
            timeout=budget + 10,
        )
        if result.returncode != 0:
            raise PeerError(
                f"{process.name} did not answer OPTIONS at {server[0]}:{server[1]} in {ns}: "
                f"{result.stdout.strip()} {result.stderr.strip()}\n{process.deadReason() or process.logTail()}"
            )
        answer = peerkit.BindingAnswer(0, b"", None)
        answer.software = json.loads(result.stdout.strip().splitlines()[-1])["status"]
        return answer

    return ready


@pytest.fixture
def labRegistrarFactory(lab: NetLab, tmp_path: Path) -> Iterator[Callable[..., RunningPeer]]:
    """
    ``make(settings)``: Kamailio as a registrar with digest auth (tests/data/kamailio/registrar.cfg) in ``pub``,
    ready once it answers STUN (``settings.stun``) or else SIP OPTIONS; every one started is stopped at teardown.
    """
    started: List[RunningPeer] = []

    def make(settings: peerkit.RegistrarSettings) -> RunningPeer:
        ready = namespaceReady(lab, lab.pub) if settings.stun else namespaceSIPReady(lab, lab.pub)
        try:
            peer = peerkit.startKamailioRegistrar(tmp_path / f"registrar{len(started)}", settings, ready,
                                                  prefix=lab.prefixFor(lab.pub))
        except PeerError as e:
            pytest.fail(f"Kamailio (registrar) is needed for this lab test: {e}", pytrace=False)
        lab.track(peer.process.process)
        started.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in started:
            peer.stop()

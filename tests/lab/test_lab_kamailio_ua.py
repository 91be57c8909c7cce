"""
Issue 14's proof against a registrar no one here wrote: the twistd **client role** in ``lan``, behind the real
netfilter NAT (3 s UDP conntrack timeout), registering with **Kamailio** in ``pub`` as a registrar that
challenges every REGISTER (its ``auth`` module, ``pv_auth_check`` against a plain-text password), keeps the
binding in ``usrloc`` with RFC 5626 outbound (``registrar`` + ``outbound``) and relays requests to the AOR over
the registered flow (``lookup`` + ``t_relay``): tests/data/kamailio/registrar.cfg.

The role runs as ``twistd -n sipnat client ...`` exactly as an operator types it (drivers/twistdrole.py), with
``--register sip:alice@example.com --user alice --password-file F --state-dir TMP``.  What the tests know they
read from three places that must agree: the role's structured log, Kamailio's log (one ``registrar: ...`` line
per REGISTER and per relayed request), and the router's conntrack table; a request sent from the public side
(SIPp) is also counted where it arrives, by an iptables rule in ``lan`` on the user agent's own port.

Over UDP, TCP and TLS (``--transport``; TLS verifies Kamailio's certificate, made here, against the AOR's domain
with ``--ca-certs``); for the streams the router's timeout for established TCP connections is cut to 3 s too.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import netlab
import peerkit
import pytest
from netlab import Driver, NetLab
from peerkit import RegistrarSettings, RunningPeer

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

DOMAIN = "example.com"
USER = "alice"
PASSWORD = "wonderland"
AOR = f"sip:{USER}@{DOMAIN}"
# Not 5060/5062: the session's Kamailio edge (conftest.labKamailio) and test_lab_roles' edge role hold those.
REGISTRAR = (netlab.PUB_ADDR, 5070)
REGISTRAR_TLS_PORT = 5071
PLAIN_REGISTRAR = (netlab.PUB_ADDR, 5080)  # the same registrar without its stun module
CLIENT = (netlab.LAN_ADDR, 5060)
SIPP = (netlab.PUB_ADDR2, 5090)
#: The registrar's Flow-Timer (RFC 5626 §4.4.1): keepalives every 80-100 % of 2 s, inside the NAT's 3 s.
FLOW_TIMER = 2
#: How long after registering the request from the public side is sent (the issue's "60 s after registering").
REACHABLE_AFTER = 60.0

RoleEvent = Dict[str, Any]


def named(name: str) -> Callable[[RoleEvent], bool]:
    return lambda e: e.get("event") == name


def hostPort(event: RoleEvent) -> Tuple[str, int]:
    fields = event["fields"]
    return (fields["host"], fields["port"])


def failuresIn(events: Sequence[RoleEvent]) -> List[RoleEvent]:
    return [e for e in events
            if e.get("event") in ("flow.failure", "sipnat.client.flowFailure", "sipnat.client.failed",
                                  "sipnat.client.retry") or e.get("failure")]


# -- Kamailio ------------------------------------------------------------------------------------------------


def registrarSettings(address: Tuple[str, int], stun: bool, tmp: Path) -> RegistrarSettings:
    """The lab registrar; with STUN it also gets its TLS listener (a certificate made here, as test_tls_edge does)."""
    if not stun:
        return RegistrarSettings(address[0], address[1], DOMAIN, USER, PASSWORD, FLOW_TIMER, stun=False)
    certificate, key = selfSignedCertificate(tmp, address[0])
    return RegistrarSettings(address[0], address[1], DOMAIN, USER, PASSWORD, FLOW_TIMER, stun=True,
                             tlsPort=REGISTRAR_TLS_PORT, certificate=certificate, key=key)


def selfSignedCertificate(directory: Path, address: str) -> Tuple[Path, Path]:
    """A self-signed certificate for ``address`` and its key, as PEM files (Kamailio's TLS listener)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN),
                                                    x509.IPAddress(ipaddress.ip_address(address))]), False)
        .sign(key, hashes.SHA256())
    )
    certPath, keyPath = directory / "registrar.crt", directory / "registrar.key"
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyPath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certPath, keyPath


class RegistrarLog:
    """Kamailio's ``registrar: ...`` lines (registrar.cfg's xlog) written since this object was made."""

    def __init__(self, peer: RunningPeer) -> None:
        self.path = peer.process.logPath
        self.offset = self.path.stat().st_size

    def lines(self) -> List[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        return [line.split("registrar: ", 1)[1] for line in text.splitlines() if "<script>: registrar: " in line]

    def registers(self) -> List[str]:
        return [line for line in self.lines() if line.startswith("REGISTER ")]

    def relayed(self) -> List[str]:
        return [line for line in self.lines() if " relayed to " in line]


# -- the client role ------------------------------------------------------------------------------------------


def clientCommandLine(registrar: Tuple[str, int], passwordFile: Path, stateDir: Path, *extra: str,
                      transport: str = "udp", caCerts: Optional[Path] = None) -> List[str]:
    """``twistd sipnat client`` registering alice with ``registrar`` over ``transport``."""
    argv = [
        "client", "--listen", f"udp:{CLIENT[1]}:interface={CLIENT[0]}",
        "--next-hop", f"{registrar[0]}:{registrar[1]}", "--register", AOR, "--user", USER,
        "--password-file", str(passwordFile), "--state-dir", str(stateDir), "--transport", transport, *extra,
    ]
    if caCerts is not None:
        argv += ["--ca-certs", str(caCerts)]
    return argv


def startClient(runDriver: Callable[..., Driver], lab: NetLab, tmp: Path, registrar: Tuple[str, int],
                password: str, *extra: str, transport: str = "udp", caCerts: Optional[Path] = None,
                config: Optional[Path] = None) -> Driver:
    """
    The client role in ``lan``, its password in a 0600 file and its instance ID in a state dir of its own;
    ``config`` is the plugin's ``--config`` (NATSettings), which comes before the role's name.
    """
    passwordFile = tmp / "password"
    passwordFile.write_text(password + "\n")
    passwordFile.chmod(0o600)
    argv = clientCommandLine(registrar, passwordFile, tmp / "state", *extra, transport=transport, caCerts=caCerts)
    if config is not None:
        argv = ["--config", str(config), *argv]
    return runDriver(lab.lan, "twistdrole.py", argv, name="twistd sipnat client")


class Flow:
    """
    Where the role's flow to the registrar is: its local address (the UDP socket, or the connection the role
    logged as ``sipnat.client.connected``), conntrack's protocol for it, and the Contact the role registers.
    """

    def __init__(self, client: Driver, transport: str) -> None:
        self.transport = transport
        self.proto = "udp" if transport == "udp" else "tcp"
        if transport == "udp":
            self.local = CLIENT
        else:
            connected = client.expect(named("sipnat.client.connected"), 10.0, "the flow's connection")
            host, _, port = connected["fields"]["local"].rpartition(":")
            self.local = (host.strip("[]"), int(port))
            assert self.local[0] == CLIENT[0], connected
        scheme = "sips" if transport == "tls" else "sip"
        parameter = ";transport=tcp" if transport == "tcp" else ""
        self.contact = f"{scheme}:{USER}@{self.local[0]}:{self.local[1]}{parameter};ob"


def registered(client: Driver, log: RegistrarLog, lab: NetLab, registrar: Tuple[str, int],
               timeout: float = 10.0, transport: str = "udp") -> Tuple[Flow, Tuple[str, int]]:
    """
    One authenticated outbound registration as the role, Kamailio and the router tell it; returns the public
    address (the 200's ``received``/``rport``, which is conntrack's mapping of the flow), with the flow.

    The role: a REGISTER, Kamailio's 401 answered, a second REGISTER, "outbound honoured" (``Require:
    outbound`` in the 200), registered with the registrar's Flow-Timer, keepalives started.  Kamailio: the
    first REGISTER challenged for want of credentials, the second saved with our
    ``;ob``, ``reg-id=1`` and ``+sip.instance``, from the NAT's public address.
    """
    flow = Flow(client, transport)
    done = client.expect(named("sipnat.client.registered"), timeout, "the REGISTER 200")
    assert done["fields"]["flowTimer"] == FLOW_TIMER, done
    # (the first REGISTER may be logged before the driver's "ready": read the whole history)
    history = client.history
    assert len([e for e in history if e.get("event") == "sipnat.client.register.sent"]) == 2, history
    retries = [e for e in history if e.get("event") == "sipnat.client.register.retry"]
    assert len(retries) == 1 and "401" in retries[0]["text"], retries
    outbound = [e for e in history if e.get("event") == "sipnat.client.outbound"]
    assert [e["fields"]["state"] for e in outbound] == ["honoured"], outbound
    client.expect(named("sipnat.client.keepalive.started"), 2.0, "keepalives started")
    entry = lab.mappingFor(flow.local, registrar, proto=flow.proto)
    assert entry is not None and entry.publicAddress[0] == netlab.NAT_OUTSIDE, lab.snapshot()
    public = entry.publicAddress
    registers = log.registers()
    assert len(registers) == 2, registers
    assert "cseq 1: challenged (no credentials)" in registers[0], registers
    source = f"from {public[0]}:{public[1]} cseq 2: saved <{flow.contact}>;reg-id=1;"
    assert source in registers[1] and "+sip.instance=\"<urn:uuid:" in registers[1], registers
    return flow, public


def flowKeptUp(client: Driver, lab: NetLab, registrar: Tuple[str, int], public: Tuple[str, int], duration: float,
               kind: str, flow: Optional[Flow] = None) -> int:
    """
    ``duration`` seconds of SIP silence: keepalives of ``kind`` go out, nothing fails or retries, and the router
    keeps the very same mapping (it would expire after ``lab.udpTimeout`` without them).  Returns how many
    keepalives were sent.  On a stream the keepalives are CRLF pings, answered by pongs that carry no address.
    """
    local, proto = (flow.local, flow.proto) if flow is not None else (CLIENT, "udp")
    sent = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        events = client.collect(min(1.0, max(0.0, end - time.monotonic())))
        assert failuresIn(events) == [], events
        for event in events:
            if event.get("event") == "keepalive.sent":
                assert event["fields"]["kind"] == kind, event
                sent += 1
            elif event.get("event") == "keepalive.answered" and proto == "udp":
                assert hostPort(event) == public, event
        entry = lab.mappingFor(local, registrar, proto=proto)
        assert entry is not None and entry.publicAddress == public, lab.snapshot()
    return sent


def atLeast(duration: float) -> int:
    """The fewest keepalives ``duration`` seconds must hold: one per Flow-Timer, less one for where the window cuts."""
    return int(duration // FLOW_TIMER) - 1


# -- a request from the public side ---------------------------------------------------------------------------


class ArrivalCounter:
    """
    An iptables rule in ``lan`` counting the datagrams that reach the user agent's SIP port carrying
    ``needle``: proof that a request got through the NAT to the user agent, whatever the user agent does with
    it.  A rule without a target only counts.
    """

    def __init__(self, lab: NetLab, needle: str, local: Tuple[str, int] = CLIENT, proto: str = "udp") -> None:
        self.lab = lab
        self.rule = ["INPUT", "-p", proto, "-d", local[0], "--dport", str(local[1]), "-m", "string",
                     "--string", needle, "--algo", "bm", "-m", "comment", "--comment", "kamlab-arrivals"]
        lab.run(lab.lan, ["iptables", "-I", *self.rule])

    def count(self) -> int:
        listing = self.lab.run(self.lab.lan, ["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout
        for line in listing.splitlines():
            if "kamlab-arrivals" in line:
                return int(line.split()[0])
        raise AssertionError(f"the counting rule is gone:\n{listing}")

    def remove(self) -> None:
        self.lab.run(self.lab.lan, ["iptables", "-D", *self.rule], check=False)


def optionsToAlice(lab: NetLab, registrar: Tuple[str, int], tmp: Path) -> str:
    """
    SIPp in ``pub`` (203.0.113.21, not the registrar's address) sends ``OPTIONS sip:alice@example.com`` to
    Kamailio (tests/data/sipp/kamailio-options.xml); returns the final status line it received.
    """
    trace = tmp / "sipp-messages.log"
    argv = [peerkit.requireTool("sipp", "sip-tester"), "-sf", str(peerkit.dataPath("sipp/kamailio-options.xml")),
            "-m", "1", "-t", "u1", "-i", SIPP[0], "-p", str(SIPP[1]), "-s", USER, "-key", "domain", DOMAIN,
            "-nostdin", "-timeout", "20s", "-timeout_error", "-trace_msg", "-message_file", str(trace),
            f"{registrar[0]}:{registrar[1]}"]
    result = lab.run(lab.pub, argv, check=False, timeout=30)
    text = trace.read_text(errors="replace") if trace.exists() else ""
    statuses = [s for s in re.findall(r"^\s*(SIP/2\.0 [2-6]\d\d [^\r\n]*)", text, re.M)]
    assert result.returncode == 0 and statuses, (
        f"SIPp exited {result.returncode}: {result.stdout[-2000:]}{result.stderr[-2000:]}\n{text[-3000:]}")
    return statuses[-1].strip()


def reachedTheUserAgent(client: Driver, lab: NetLab, registrar: Tuple[str, int], public: Tuple[str, int],
                        log: RegistrarLog, tmp: Path, flow: Optional[Flow] = None) -> str:
    """
    A request from the public side reaches the user agent behind the NAT: Kamailio looks alice up and relays
    the OPTIONS to the flow's public address, the request arrives at the user agent's port in ``lan`` (counted
    there by iptables where it can be read: not inside TLS), the role answers it, and SIPp gets the user agent's
    200 back through Kamailio.  Returns the status.
    """
    flow = flow if flow is not None else Flow(client, "udp")
    arrivals = None if flow.transport == "tls" else ArrivalCounter(lab, f"OPTIONS {flow.contact.split(';')[0]}",
                                                                    flow.local, flow.proto)
    try:
        status = optionsToAlice(lab, registrar, tmp)
        arrived = arrivals.count() if arrivals is not None else None
    finally:
        if arrivals is not None:
            arrivals.remove()
    relayed = log.relayed()
    assert len(relayed) == 1 and relayed[0].startswith(f"OPTIONS for {AOR} relayed to {flow.contact} via "), relayed
    assert f"{public[0]}:{public[1]}" in relayed[0], (relayed, public)
    if arrived is not None:
        assert arrived >= 1, f"the OPTIONS never reached the user agent's port; router: {lab.snapshot()}"
    assert status == "SIP/2.0 200 OK", status
    seen = client.expect(named("sip.request.received"), 5.0, "the role's answer to the OPTIONS")
    assert seen["fields"]["method"] == "OPTIONS", seen
    if flow.transport == "udp":
        assert seen["fields"]["source"] == f"{registrar[0]}:{registrar[1]}", seen
    return status


# -- the tests -----------------------------------------------------------------------------------------------


@pytest.fixture
def registrar(labRegistrarFactory: Callable[[RegistrarSettings], RunningPeer], tmp_path: Path) -> RunningPeer:
    """Kamailio with digest auth, outbound and its stun module (and UDP, TCP, TLS listeners) on 203.0.113.20:5070."""
    return labRegistrarFactory(registrarSettings(REGISTRAR, True, tmp_path / "tls"))


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_registersWithDigestAuthAndIsReachable60SecondsLater(
    lab: NetLab, runDriver: Callable[..., Driver], registrar: RunningPeer, tmp_path: Path, record_property: Any,
    transport: str
) -> None:
    """
    (a) Kamailio challenges, the role answers the 401 and registers with outbound over ``transport``; for 60 s
    (20 conntrack timeouts) its keepalives every 1.6-2 s (the 200's Flow-Timer: 2) keep the flow: STUN answered
    by Kamailio's stun module with the same mapped address on UDP, CRLF pings (``ping``) answered by pongs on TCP and TLS;
    the router keeps the same mapping; then an OPTIONS to the AOR sent from the public side is relayed by
    Kamailio over that flow, reaches the user agent behind the NAT and is answered 200.
    """
    stream = transport != "udp"
    hop = (REGISTRAR[0], REGISTRAR_TLS_PORT) if transport == "tls" else REGISTRAR
    caCerts = tmp_path / "tls" / "registrar.crt" if transport == "tls" else None
    if stream:
        lab.setTcpEstablishedTimeout(lab.udpTimeout)
    try:
        log = RegistrarLog(registrar)
        client = startClient(runDriver, lab, tmp_path, hop, PASSWORD, transport=transport, caCerts=caCerts)
        flow, public = registered(client, log, lab, hop, transport=transport)
        registeredAt = time.monotonic()
        sent = flowKeptUp(client, lab, hop, public, REACHABLE_AFTER, "ping" if stream else "stun", flow)
        assert sent >= atLeast(REACHABLE_AFTER), f"{sent} keepalives in {REACHABLE_AFTER:g} s"
        assert log.registers()[2:] == [], "no REGISTER beyond the first registration"
        status = reachedTheUserAgent(client, lab, REGISTRAR, public, log, tmp_path, flow)  # SIPp: over UDP
    finally:
        if stream:
            lab.setTcpEstablishedTimeout(None)
    record_property(f"kamailioReachableAfter_{transport}", round(time.monotonic() - registeredAt, 1))
    record_property(f"kamailioOptionsStatus_{transport}", status)


def test_aWrongPasswordFailsOnceAndDoesNotLoop(
    lab: NetLab, runDriver: Callable[..., Driver], registrar: RunningPeer, tmp_path: Path
) -> None:
    """
    (b) A wrong password: Kamailio challenges the first REGISTER (no credentials) and the second (a wrong
    password: ``pv_auth_check`` -2) with a fresh nonce; the role says so in one warning line naming the 401 and waits the RFC
    5626 §4.5 backoff (at least 50 % of its 30 s base) before anything else: no third REGISTER, no loop.
    """
    log = RegistrarLog(registrar)
    client = startClient(runDriver, lab, tmp_path, REGISTRAR, "not-" + PASSWORD)
    failed = client.expect(named("sipnat.client.failed"), 10.0, "the authentication failure")
    assert failed["level"] == "warn" and "401" in failed["text"], failed
    retry = client.expect(named("sipnat.client.retry"), 2.0, "the backoff")
    assert retry["fields"]["delay"] >= 15.0, retry
    quiet = client.collect(12.0)
    assert [e for e in quiet if e.get("event") in ("sipnat.client.register.sent", "sipnat.client.failed",
                                                   "sipnat.client.registered")] == [], quiet
    sentByRole = [e for e in client.history if e.get("event") == "sipnat.client.register.sent"]
    assert len(sentByRole) == 2, sentByRole
    registers = log.registers()
    assert len(registers) == 2, registers
    assert "cseq 1: challenged (no credentials)" in registers[0], registers
    assert "cseq 2: challenged (auth check -2)" in registers[1], registers


@pytest.mark.parametrize("keepalive", ["crlf", "auto"])
def test_noFlowFailureLoopWithARegistrarThatDoesNotAnswerSTUN(
    lab: NetLab, runDriver: Callable[..., Driver], labRegistrarFactory: Callable[[RegistrarSettings], RunningPeer],
    tmp_path: Path, keepalive: str, record_property: Any
) -> None:
    """
    (c) Kamailio without its stun module (it answers no STUN at all), ``--keepalive crlf`` or ``auto``: the role
    registers (outbound first: it needs no STUN answer to start) and keeps the flow up on CRLF keepalives across
    five conntrack timeouts with no flow failure and no second registration, and the AOR is still reachable.
    With ``auto`` the first STUN keepalive times out toward a hop that never answered one (``rto`` 0.1 from a
    config file: 7.9 s instead of 39.5 s), the flow goes on with CRLF, said once, and no failure is reported
    meanwhile (the CRLF datagrams sent beside the unanswered STUN keep the mapping).
    """
    plain = labRegistrarFactory(registrarSettings(PLAIN_REGISTRAR, False, tmp_path / "tls"))
    probe = lab.run(lab.pub, [sys.executable, str(Path(peerkit.__file__)), "probe", PLAIN_REGISTRAR[0],
                              str(PLAIN_REGISTRAR[1]), "--deadline", "1"], check=False)
    assert probe.returncode == 1, f"this registrar must not answer STUN: {probe.stdout}"
    log = RegistrarLog(plain)
    config = None
    if keepalive == "auto":
        config = tmp_path / "sipnat.ini"
        config.write_text("[default]\nrto = 0.1\n")
    client = startClient(runDriver, lab, tmp_path, PLAIN_REGISTRAR, PASSWORD, "--keepalive", keepalive,
                         config=config)
    flow, public = registered(client, log, lab, PLAIN_REGISTRAR)
    if keepalive == "auto":
        startedAt = time.monotonic()
        before: List[RoleEvent] = []
        while not any(e.get("event") == "keepalive.fallback" for e in before):
            assert time.monotonic() - startedAt < 20.0, f"no fallback to CRLF within 20 s: {before}"
            before += client.collect(1.0)
            assert failuresIn(before) == [], before
            entry = lab.mappingFor(CLIENT, PLAIN_REGISTRAR)
            assert entry is not None and entry.publicAddress == public, lab.snapshot()
        record_property("autoFallbackAfter", round(time.monotonic() - startedAt, 1))
    sent = flowKeptUp(client, lab, PLAIN_REGISTRAR, public, 5 * lab.udpTimeout, "crlf")
    assert sent >= atLeast(5 * lab.udpTimeout), sent
    fallbacks = [e for e in client.history if e.get("event") == "keepalive.fallback"]
    assert len(fallbacks) == (1 if keepalive == "auto" else 0), fallbacks
    assert log.registers()[2:] == [], "no REGISTER beyond the first registration"
    reachedTheUserAgent(client, lab, PLAIN_REGISTRAR, public, log, tmp_path)


# -- two edges ------------------------------------------------------------------------------------------------

#: The project's own edge role beside Kamailio, on the other public address's neighbour port.
EDGE = (netlab.PUB_ADDR, 5066)


def startEdge(runDriver: Callable[..., Driver], lab: NetLab) -> Driver:
    return runDriver(lab.pub, "twistdrole.py",
                     ["edge", "--udp", f"udp:{EDGE[1]}:interface={EDGE[0]}", "--tcp", "none", "--domain", DOMAIN,
                      "--flow-timer", str(FLOW_TIMER)], name="twistd sipnat edge")


def flowEvent(name: str, flow: int) -> Callable[[RoleEvent], bool]:
    return lambda e: e.get("event") == name and e.get("fields", {}).get("flow") == flow


def answeredThrough(client: Driver, lab: NetLab, target: Tuple[str, int], tmp: Path) -> None:
    """An OPTIONS to alice sent by SIPp from the public side to ``target`` is answered 200 by the user agent."""
    status = optionsToAlice(lab, target, tmp)
    assert status == "SIP/2.0 200 OK", (target, status)
    client.expect(named("sip.request.received"), 5.0, f"the OPTIONS through {target[0]}:{target[1]}")


def test_twoEdgesKeepTheAORReachableWhenOneStops(
    lab: NetLab, runDriver: Callable[..., Driver], registrar: RunningPeer, tmp_path: Path, record_property: Any
) -> None:
    """
    (d) Two flows (RFC 5626 §4.2: ``--next-hop`` twice, reg-id 1 and 2, one instance): Kamailio (digest auth)
    and the project's edge role.  Both register, and the AOR is reachable through each.  Stop the edge: its flow
    fails on its unanswered STUN keepalives (``rto`` 0.1 from a config file: 7.9 s) while Kamailio's stays up,
    and the AOR stays reachable through Kamailio meanwhile.  Start the edge again: the failed flow is back on its
    own within the §4.5 backoff (``--backoff-base 2``: 2-4 s after its first failure, 90 s without the option)
    and the AOR is reachable through the edge again.
    """
    config = tmp_path / "sipnat.ini"
    config.write_text("[default]\nrto = 0.1\n")
    edge = startEdge(runDriver, lab)
    client = startClient(runDriver, lab, tmp_path, REGISTRAR, PASSWORD, "--next-hop", f"{EDGE[0]}:{EDGE[1]}",
                         "--backoff-base", "2", config=config)
    for flow in (1, 2):  # in whichever order they come: one already read while waiting for the other is history
        predicate = flowEvent("sipnat.client.registered", flow)
        done = next((e for e in client.history if predicate(e)), None) or client.expect(
            predicate, 10.0, f"flow {flow} registered")
        assert done["fields"]["flowTimer"] == FLOW_TIMER, done
    stored = next((e for e in edge.history if named("sipnat.edge.registered")(e)), None) or edge.expect(
        named("sipnat.edge.registered"), 2.0, "the edge's binding")
    assert stored["fields"]["aor"] == AOR, stored
    answeredThrough(client, lab, REGISTRAR, tmp_path)
    answeredThrough(client, lab, EDGE, tmp_path)

    edge.stop()
    stoppedAt = time.monotonic()
    failed = client.expect(flowEvent("sipnat.client.flowFailure", 2), 15.0, "the edge's flow failure")
    record_property("twoEdgesFailureAfter", round(time.monotonic() - stoppedAt, 1))
    assert [e for e in client.history if flowEvent("sipnat.client.flowFailure", 1)(e)] == [], "flow 1 is untouched"
    answeredThrough(client, lab, REGISTRAR, tmp_path)  # reachable through the other flow meanwhile
    assert failed["level"] == "warn", failed

    startEdge(runDriver, lab)
    restartedAt = time.monotonic()
    back = client.expect(flowEvent("sipnat.client.registered", 2), 20.0, "the edge's flow back")
    record_property("twoEdgesBackAfterRestart", round(time.monotonic() - restartedAt, 1))
    assert back["fields"]["flowTimer"] == FLOW_TIMER, back
    assert [e for e in client.history if flowEvent("sipnat.client.flowFailure", 1)(e)] == [], "flow 1 is untouched"
    answeredThrough(client, lab, EDGE, tmp_path)

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

Over UDP: the role has no ``--transport`` yet on this branch (the registrar listens on UDP, TCP and TLS already);
:func:`clientCommandLine` is where the transport goes once it has.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

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

#: Whether the role answers requests that reach it on a flow (RFC 3261 §8.2: OPTIONS 200, others 480).  The
#: request's arrival at the user agent's port is proven either way; with answering, SIPp must get the user
#: agent's 200 through Kamailio, without it Kamailio's own 408 (the relay's Timer F, 5 s in registrar.cfg).
ROLE_ANSWERS_REQUESTS = importlib.util.find_spec("twisted_sipnat.core.sip.uas") is not None

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


def clientCommandLine(registrar: Tuple[str, int], passwordFile: Path, stateDir: Path, *extra: str) -> List[str]:
    """
    ``twistd sipnat client`` registering alice with ``registrar`` over UDP.  The one place a transport goes:
    once the role has ``--transport tcp|tls``, the TCP and TLS cases add it here (and use the registrar's TLS
    port, :data:`REGISTRAR_TLS_PORT`, for TLS).
    """
    return [
        "client", "--listen", f"udp:{CLIENT[1]}:interface={CLIENT[0]}",
        "--next-hop", f"{registrar[0]}:{registrar[1]}", "--register", AOR, "--user", USER,
        "--password-file", str(passwordFile), "--state-dir", str(stateDir), *extra,
    ]


def startClient(runDriver: Callable[..., Driver], lab: NetLab, tmp: Path, registrar: Tuple[str, int],
                password: str, *extra: str) -> Driver:
    """The client role in ``lan``, its password in a 0600 file and its instance ID in a state dir of its own."""
    passwordFile = tmp / "password"
    passwordFile.write_text(password + "\n")
    passwordFile.chmod(0o600)
    return runDriver(lab.lan, "twistdrole.py", clientCommandLine(registrar, passwordFile, tmp / "state", *extra),
                     name="twistd sipnat client")


def registered(client: Driver, log: RegistrarLog, lab: NetLab, registrar: Tuple[str, int],
               timeout: float = 10.0) -> Tuple[str, int]:
    """
    One authenticated outbound registration as the role, Kamailio and the router tell it; returns the public
    address (the 200's ``received``/``rport``, which is conntrack's mapping of the flow).

    The role: a REGISTER, Kamailio's 401 answered, a second REGISTER, "outbound honoured" (``Require:
    outbound`` in the 200), registered with the registrar's Flow-Timer, keepalives started.  Kamailio: the
    first REGISTER challenged for want of credentials, the second saved with our
    ``;ob``, ``reg-id=1`` and ``+sip.instance``, from the NAT's public address.
    """
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
    entry = lab.mappingFor(CLIENT, registrar)
    assert entry is not None and entry.publicAddress[0] == netlab.NAT_OUTSIDE, lab.snapshot()
    public = entry.publicAddress
    registers = log.registers()
    assert len(registers) == 2, registers
    assert "cseq 1: challenged (no credentials)" in registers[0], registers
    source = f"from {public[0]}:{public[1]} cseq 2: saved <sip:{USER}@{CLIENT[0]}:{CLIENT[1]};ob>;reg-id=1;"
    assert source in registers[1] and "+sip.instance=\"<urn:uuid:" in registers[1], registers
    return public


def flowKeptUp(client: Driver, lab: NetLab, registrar: Tuple[str, int], public: Tuple[str, int], duration: float,
               kind: str) -> int:
    """
    ``duration`` seconds of SIP silence: keepalives of ``kind`` go out, nothing fails or retries, and the router
    keeps the very same mapping (it would expire after ``lab.udpTimeout`` without them).  Returns how many
    keepalives were sent.
    """
    sent = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        events = client.collect(min(1.0, max(0.0, end - time.monotonic())))
        assert failuresIn(events) == [], events
        for event in events:
            if event.get("event") == "keepalive.sent":
                assert event["fields"]["kind"] == kind, event
                sent += 1
            elif event.get("event") == "keepalive.answered":
                assert hostPort(event) == public, event
        entry = lab.mappingFor(CLIENT, registrar)
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

    def __init__(self, lab: NetLab, needle: str) -> None:
        self.lab = lab
        self.rule = ["INPUT", "-p", "udp", "-d", CLIENT[0], "--dport", str(CLIENT[1]), "-m", "string",
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
                        log: RegistrarLog, tmp: Path) -> str:
    """
    A request from the public side reaches the user agent behind the NAT: Kamailio looks alice up and relays
    the OPTIONS to the flow's public address, the datagram arrives at 192.0.2.10:5060 in ``lan``, and SIPp gets
    the user agent's 200 (or, where the role does not answer requests, Kamailio's 408).  Returns the status.
    """
    arrivals = ArrivalCounter(lab, f"OPTIONS sip:{USER}@")  # the Request-URI is the Contact by now
    try:
        status = optionsToAlice(lab, registrar, tmp)
        arrived = arrivals.count()
    finally:
        arrivals.remove()
    relayed = log.relayed()
    contact = f"sip:{USER}@{CLIENT[0]}:{CLIENT[1]};ob"
    assert relayed == [f"OPTIONS for {AOR} relayed to {contact} via sip:{public[0]}:{public[1]}"], relayed
    assert arrived >= 1, f"the OPTIONS never reached the user agent's port; router: {lab.snapshot()}"
    if ROLE_ANSWERS_REQUESTS:
        assert status == "SIP/2.0 200 OK", status
        seen = client.expect(named("sip.request.received"), 5.0, "the role's answer to the OPTIONS")
        assert seen["fields"]["source"] == f"{registrar[0]}:{registrar[1]}", seen
    else:
        assert status.startswith("SIP/2.0 408"), status
    return status


# -- the tests -----------------------------------------------------------------------------------------------


@pytest.fixture
def registrar(labRegistrarFactory: Callable[[RegistrarSettings], RunningPeer], tmp_path: Path) -> RunningPeer:
    """Kamailio with digest auth, outbound and its stun module (and UDP, TCP, TLS listeners) on 203.0.113.20:5070."""
    return labRegistrarFactory(registrarSettings(REGISTRAR, True, tmp_path / "tls"))


def test_registersWithDigestAuthAndIsReachable60SecondsLater(
    lab: NetLab, runDriver: Callable[..., Driver], registrar: RunningPeer, tmp_path: Path, record_property: Any
) -> None:
    """
    (a) Kamailio challenges, the role answers the 401 and registers with outbound; for 60 s (20 conntrack
    timeouts) its STUN keepalives every 1.6-2 s (the 200's Flow-Timer: 2) are answered by Kamailio's stun
    module with the same mapped address and the router keeps the same mapping; then an OPTIONS to the AOR sent
    from the public side is relayed by Kamailio over that flow and reaches the user agent behind the NAT.
    """
    log = RegistrarLog(registrar)
    client = startClient(runDriver, lab, tmp_path, REGISTRAR, PASSWORD)
    public = registered(client, log, lab, REGISTRAR)
    registeredAt = time.monotonic()
    sent = flowKeptUp(client, lab, REGISTRAR, public, REACHABLE_AFTER, "stun")
    assert sent >= atLeast(REACHABLE_AFTER), f"{sent} keepalives in {REACHABLE_AFTER:g} s"
    assert log.registers()[2:] == [], "no REGISTER beyond the first registration"
    status = reachedTheUserAgent(client, lab, REGISTRAR, public, log, tmp_path)
    record_property("kamailioReachableAfter", round(time.monotonic() - registeredAt, 1))
    record_property("kamailioOptionsStatus", status)


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


def test_noFlowFailureLoopWithARegistrarThatDoesNotAnswerSTUN(
    lab: NetLab, runDriver: Callable[..., Driver], labRegistrarFactory: Callable[[RegistrarSettings], RunningPeer],
    tmp_path: Path
) -> None:
    """
    (c) Kamailio without its stun module (it answers no STUN at all) and ``--keepalive crlf``: the role
    registers (outbound first: it needs no STUN answer to start), keeps the flow up on CRLF keepalives across
    five conntrack timeouts with no flow failure and no second registration, and the AOR is still reachable.
    """
    plain = labRegistrarFactory(registrarSettings(PLAIN_REGISTRAR, False, tmp_path / "tls"))
    probe = lab.run(lab.pub, [sys.executable, str(Path(peerkit.__file__)), "probe", PLAIN_REGISTRAR[0],
                              str(PLAIN_REGISTRAR[1]), "--deadline", "1"], check=False)
    assert probe.returncode == 1, f"this registrar must not answer STUN: {probe.stdout}"
    log = RegistrarLog(plain)
    client = startClient(runDriver, lab, tmp_path, PLAIN_REGISTRAR, PASSWORD, "--keepalive", "crlf")
    public = registered(client, log, lab, PLAIN_REGISTRAR)
    sent = flowKeptUp(client, lab, PLAIN_REGISTRAR, public, 5 * lab.udpTimeout, "crlf")
    assert sent >= atLeast(5 * lab.udpTimeout), sent
    assert log.registers()[2:] == [], "no REGISTER beyond the first registration"
    reachedTheUserAgent(client, lab, PLAIN_REGISTRAR, public, log, tmp_path)

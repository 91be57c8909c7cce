"""
Plain-Python tools for the interop and lab tests: hand-built STUN Binding requests, a minimal response reader,
free-port finding, and the lifecycle of real third-party peers (coturn, Kamailio, SIPp) run as child processes.

Why hand-built STUN here rather than :mod:`twisted_sipnat.core.stun`: these helpers prove the *fixtures* (that a
peer really answers) independently of the library under test, so a codec bug cannot make a broken peer look
healthy or a healthy peer look broken.  The request is the RFC 8489 §5 minimum: a 20-byte header (type 0x0001
Binding request, length 0, magic cookie 0x2112A442, 12 random transaction-ID bytes) and no attributes.

Nothing here imports Twisted: the lab runs these helpers inside network namespaces through ``ip netns exec``,
and a readiness probe must not depend on a reactor.  Run as a script, it is that probe::

    python peerkit.py probe HOST PORT [--deadline SECONDS] [--bind HOST:PORT]

prints one JSON line with the mapped address and exits 0, or exits 1 after the deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C

#: The repository root (tests/interop/peerkit.py -> parents[2]).  It holds the tests' data helper (tests.data:
#: the Kamailio config, the SIPp scenarios), so it goes on the import path when this file runs as a script, in a
#: lab namespace or under the benchmarks; appended, so it never shadows the installed package.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from tests.data import dataPath  # noqa: E402

#: SIPp's REGISTER scenario (one REGISTER, expecting 200), for :func:`sippArgv`.
SIPP_REGISTER = dataPath("sipp/register.xml")

HostPort = Tuple[str, int]


def family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal, else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class PeerError(Exception):
    """A peer could not be started, did not answer in time, or a tool is missing; the message says which."""


# --------------------------------------------------------------------------------------------------------------
# STUN by hand


def bindingRequest() -> Tuple[bytes, bytes]:
    """Return ``(transactionId, datagram)`` for an attribute-less Binding request (RFC 8489 §5, §6.1)."""
    tid = os.urandom(12)
    return tid, struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + tid


def bindingRequestWithFingerprint() -> Tuple[bytes, bytes]:
    """
    ``(transactionId, datagram)`` for a Binding request carrying FINGERPRINT (RFC 8489 §14.7: CRC-32 of the
    message up to the attribute, XOR 0x5354554E, with the header length already counting the attribute).
    """
    tid = os.urandom(12)
    header = struct.pack("!HHI", BINDING_REQUEST, 8, MAGIC_COOKIE) + tid
    crc = (zlib.crc32(header) ^ 0x5354554E) & 0xFFFFFFFF
    return tid, header + struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)


@dataclass
class BindingAnswer:
    """What a peer put in a Binding response, as far as the tests care."""

    messageType: int
    transactionId: bytes
    mapped: Optional[HostPort]
    attributeTypes: List[int] = field(default_factory=list)
    software: Optional[str] = None
    responseOrigin: Optional[HostPort] = None
    otherAddress: Optional[HostPort] = None

    @property
    def hasFingerprint(self) -> bool:
        return ATTR_FINGERPRINT in self.attributeTypes

    def asDict(self) -> Dict[str, object]:
        return {
            "type": self.messageType,
            "mapped": list(self.mapped) if self.mapped else None,
            "attributes": [f"0x{t:04x}" for t in self.attributeTypes],
            "software": self.software,
            "fingerprint": self.hasFingerprint,
            "responseOrigin": list(self.responseOrigin) if self.responseOrigin else None,
            "otherAddress": list(self.otherAddress) if self.otherAddress else None,
        }


def _address(value: bytes, xor: bool, tid: bytes) -> Optional[HostPort]:
    """Decode a (XOR-)MAPPED-ADDRESS-shaped value (RFC 8489 §14.1-14.2), IPv4 or IPv6; ``None`` if malformed."""
    if len(value) < 4:
        return None
    kind = value[1]
    port = struct.unpack("!H", value[2:4])[0]
    if xor:
        port ^= MAGIC_COOKIE >> 16
    if kind == 0x01 and len(value) >= 8:
        raw = value[4:8]
        if xor:
            raw = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", MAGIC_COOKIE), strict=True))
        return socket.inet_ntop(socket.AF_INET, raw), port
    if kind == 0x02 and len(value) >= 20:
        raw = value[4:20]
        if xor:
            raw = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", MAGIC_COOKIE) + tid, strict=True))
        return socket.inet_ntop(socket.AF_INET6, raw), port
    return None


def readBindingAnswer(data: bytes, tid: bytes) -> Optional[BindingAnswer]:
    """
    Parse a Binding response for transaction ``tid``; ``None`` when ``data`` is not one (wrong ID, not STUN,
    truncated).  Never raises on wire input: a probe that crashed on a peer's odd reply would hide the reply.
    """
    if len(data) < 20:
        return None
    mtype, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC_COOKIE or data[8:20] != tid or len(data) < 20 + length:
        return None
    answer = BindingAnswer(mtype, tid, None)
    xorMapped: Optional[HostPort] = None
    plainMapped: Optional[HostPort] = None
    offset = 20
    end = 20 + length
    while offset + 4 <= end:
        atype, alen = struct.unpack("!HH", data[offset : offset + 4])
        value = data[offset + 4 : offset + 4 + alen]
        answer.attributeTypes.append(atype)
        if atype == ATTR_XOR_MAPPED_ADDRESS:
            xorMapped = _address(value, True, tid)
        elif atype == ATTR_MAPPED_ADDRESS:
            plainMapped = _address(value, False, tid)
        elif atype == ATTR_SOFTWARE:
            answer.software = value.decode("utf-8", "replace").rstrip("\0")
        elif atype == ATTR_RESPONSE_ORIGIN:
            answer.responseOrigin = _address(value, False, tid)
        elif atype == ATTR_OTHER_ADDRESS:
            answer.otherAddress = _address(value, False, tid)
        offset += 4 + alen + (-alen % 4)
    answer.mapped = xorMapped or plainMapped
    return answer


def stunUDP(
    server: HostPort,
    sock: Optional[socket.socket] = None,
    timeout: float = 1.0,
    fingerprint: bool = False,
) -> Tuple[BindingAnswer, HostPort]:
    """
    Send one Binding request over UDP from ``sock`` (a fresh ephemeral socket if ``None``) and wait up to
    ``timeout`` for its answer; returns ``(answer, localAddress)``.  Raises :class:`PeerError` on silence.
    """
    own = sock is None
    if sock is None:
        sock = socket.socket(family(server[0]), socket.SOCK_DGRAM)
    try:
        tid, request = bindingRequestWithFingerprint() if fingerprint else bindingRequest()
        sock.sendto(request, server)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError(f"no STUN answer from {server[0]}:{server[1]} within {timeout:g} s")
            sock.settimeout(remaining)
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            answer = readBindingAnswer(data, tid)
            if answer is not None and source[:2] == server:
                local = sock.getsockname()
                return answer, (local[0], local[1])
    finally:
        if own:
            sock.close()


def stunTCP(server: HostPort, timeout: float = 1.0) -> BindingAnswer:
    """One Binding request over a fresh TCP connection (RFC 8489 §6.2.2); :class:`PeerError` on failure."""
    tid, request = bindingRequest()
    try:
        with socket.create_connection(server, timeout=timeout) as conn:
            conn.sendall(request)
            data = b""
            deadline = time.monotonic() + timeout
            while len(data) < 20 or len(data) < 20 + struct.unpack("!H", data[2:4])[0]:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = conn.recv(2048)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        raise PeerError(f"STUN over TCP to {server[0]}:{server[1]} failed: {e}") from e
    answer = readBindingAnswer(data, tid)
    if answer is None:
        raise PeerError(f"no STUN answer over TCP from {server[0]}:{server[1]}: got {data!r}")
    return answer


def waitForSTUN(server: HostPort, deadline: float, what: str, alive: Callable[[], Optional[str]]) -> BindingAnswer:
    """
    Poll ``server`` with Binding requests until one is answered or ``deadline`` (``time.monotonic()``) passes;
    ``alive()`` returns a reason string when the peer process has already died, which ends the wait at once.
    """
    last = "never polled"
    while time.monotonic() < deadline:
        dead = alive()
        if dead:
            raise PeerError(f"{what} exited before answering STUN: {dead}")
        try:
            return stunUDP(server, timeout=0.2)[0]
        except (PeerError, OSError) as e:
            last = str(e)
    raise PeerError(f"{what} did not answer STUN on {server[0]}:{server[1]} in time ({last})")


# --------------------------------------------------------------------------------------------------------------
# ports


def freePort(host: str = "127.0.0.1", span: int = 1) -> int:
    """
    A port on ``host`` free for both UDP and TCP, together with the ``span - 1`` ports after it (coturn also
    takes port+1 as its RFC 5780 alternate).  The OS picks the candidate, so parallel sessions rarely collide;
    the peer fixture still checks that the peer really answers.
    """
    for _ in range(200):
        probe = socket.socket(family(host), socket.SOCK_DGRAM)
        probe.bind((host, 0))
        base = probe.getsockname()[1]
        probe.close()
        if base + span > 65535:
            continue
        held: List[socket.socket] = []
        try:
            for p in range(base, base + span):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(family(host), kind)
                    held.append(s)
                    s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise PeerError(f"no free UDP+TCP port span of {span} on {host}")


# --------------------------------------------------------------------------------------------------------------
# processes


def requireTool(name: str, package: str) -> str:
    """The absolute path of ``name``, or :class:`PeerError` naming the apt package that provides it."""
    path = shutil.which(name) or next(
        (str(Path(d) / name) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (Path(d) / name).exists()), None
    )
    if path is None:
        raise PeerError(f"{name} not found: install the Debian package {package!r} (bash .ci/install-peers)")
    return path


class PeerProcess:
    """
    A peer run in the foreground as a child, in its own session (process group), so :meth:`stop` ends it and
    every child it forked (Kamailio forks workers) by that one group id — never by name.
    """

    def __init__(self, name: str, argv: Sequence[str], logPath: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.logPath = logPath
        self._log = open(logPath, "wb")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def deadReason(self) -> Optional[str]:
        """``None`` while running, else the exit status and the log's tail."""
        code = self.process.poll()
        if code is None:
            return None
        return f"exit status {code}; log tail:\n{self.logTail()}"

    def logTail(self, lines: int = 25) -> str:
        try:
            text = self.logPath.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 3.0) -> Optional[int]:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; idempotent; returns the exit status."""
        code = stopProcessGroup(self.process, grace)
        if not self._log.closed:
            self._log.close()
        return code


def stopProcessGroup(process: subprocess.Popen[bytes], grace: float = 3.0) -> Optional[int]:
    """
    Stop a child started with ``start_new_session=True`` and everything it forked, by its process group id:
    SIGTERM, SIGKILL after ``grace`` seconds, then SIGKILL for any worker that outlived the leader.  Idempotent;
    returns the exit status.
    """
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(grace)
    # Workers forked by the group leader may outlive it by a moment; make sure none is left.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return process.returncode


def coturnArgv(listen: Sequence[str], port: int, pidFile: Path, prefix: Sequence[str] = (),
               extra: Sequence[str] = ()) -> List[str]:
    """
    coturn as a plain STUN server (``-S``): no config file (``-n``), no CLI, no TLS/DTLS, logging to stdout.
    With two ``-L`` addresses it also answers RFC 5780 requests (OTHER-ADDRESS, RESPONSE-ORIGIN).  ``extra``
    is appended (see :func:`coturnLongTermArguments`).
    """
    argv = list(prefix) + [requireTool("turnserver", "coturn"), "-n", "-S", "--no-cli", "--no-tls", "--no-dtls"]
    for address in listen:
        argv += ["-L", address]
    argv += ["-p", str(port), "--log-file", "stdout", "--simple-log", "--pidfile", str(pidFile)]
    return argv + list(extra)


def coturnLongTermArguments(workDir: Path, realm: str, users: Sequence[Tuple[str, str]]) -> List[str]:
    """
    coturn's options for STUN with long-term credentials (RFC 8489 §9.2): ``--secure-stun`` (a Binding request
    needs authentication too: an unsigned one is answered 401 with REALM and NONCE), ``--lt-cred-mech``, the
    realm, one ``--user name:password`` per user, and its user database in ``workDir`` rather than the system
    one.  coturn then *answers* every request, so readiness is any Binding answer, a 401 included.
    """
    argv = ["--secure-stun", "--lt-cred-mech", "--realm", realm, "--userdb", str(workDir / "turndb")]
    for name, password in users:
        argv += ["--user", f"{name}:{password}"]
    return argv


#: Kamailio as an RFC 5626-style edge: registrar + usrloc, CRLF pings answered on TCP (``tcp_crlf_ping``), and
#: STUN Binding answered on the SIP UDP port by its ``stun`` module.  A template (tests/data/kamailio/edge.cfg)
#: whose ``@HOST@``, ``@PORT@`` and ``@MODULES@`` :func:`writeKamailioConfig` fills in.
KAMAILIO_TEMPLATE = dataPath("kamailio/edge.cfg")


def kamailioModules() -> str:
    """The packaged module directory (Debian multiarch path first)."""
    for candidate in sorted(Path("/usr/lib").glob("*/kamailio/modules")) + [Path("/usr/lib/kamailio/modules")]:
        if (candidate / "stun.so").exists():
            return str(candidate)
    raise PeerError("Kamailio's stun.so module not found: install the Debian package 'kamailio'")


def writeKamailioConfig(directory: Path, host: str, port: int) -> Path:
    """Write the edge config into ``directory`` and check it with ``kamailio -c`` (fails with its output)."""
    binary = requireTool("kamailio", "kamailio")
    cfg = directory / "kamailio.cfg"
    text = KAMAILIO_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (("@HOST@", host), ("@PORT@", str(port)), ("@MODULES@", kamailioModules())):
        text = text.replace(placeholder, value)
    cfg.write_text(text)
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise PeerError(f"kamailio -c rejected {cfg}:\n{check.stdout}{check.stderr}")
    return cfg


def kamailioArgv(cfg: Path, runDir: Path, prefix: Sequence[str] = ()) -> List[str]:
    """
    ``-DD``: stay in the foreground but still fork the workers (``-D`` alone would also stop the forking),
    ``-E``: log to stderr.  ``-Y`` keeps its runtime files out of /run, so parallel instances do not collide.
    """
    runDir.mkdir(parents=True, exist_ok=True)
    return list(prefix) + [
        requireTool("kamailio", "kamailio"),
        "-f",
        str(cfg),
        "-P",
        str(runDir / "kamailio.pid"),
        "-Y",
        str(runDir),
        "-E",
        "-DD",
    ]


def sippArgv(scenario: Path, target: HostPort, transport: str, localHost: str, localPort: int) -> List[str]:
    """SIPp running ``scenario`` once (``-m 1``) over ``u1``/``t1``, bounded by its own global timeout."""
    return [
        requireTool("sipp", "sip-tester"),
        "-sf",
        str(scenario),
        "-m",
        "1",
        "-t",
        transport,
        "-i",
        localHost,
        "-p",
        str(localPort),
        "-nostdin",
        "-timeout",
        "10s",
        "-timeout_error",
        f"{target[0]}:{target[1]}",
    ]


@dataclass
class RunningPeer:
    """A started peer: where it listens, its process, and what its first STUN answer looked like."""

    name: str
    address: HostPort
    process: PeerProcess
    firstAnswer: BindingAnswer

    def stop(self) -> None:
        self.process.stop()

    @property
    def running(self) -> bool:
        return self.process.deadReason() is None

    def __enter__(self) -> RunningPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: ``ready(process, server, deadline)`` waits until the peer answers STUN at ``server`` (raising
#: :class:`PeerError` if it does not by ``deadline``); the lab swaps in a probe run inside a namespace.
ReadyCheck = Callable[[PeerProcess, HostPort, float], BindingAnswer]


def loopbackReady(process: PeerProcess, server: HostPort, deadline: float) -> BindingAnswer:
    return waitForSTUN(server, deadline, process.name, process.deadReason)


def _whenReady(process: PeerProcess, server: HostPort, ready: ReadyCheck, startDeadline: float) -> RunningPeer:
    """The started peer once it answers STUN at ``server``; a peer that never does is stopped, not left behind."""
    try:
        answer = ready(process, server, time.monotonic() + startDeadline)
    except BaseException:
        process.stop()
        raise
    return RunningPeer(process.name, server, process, answer)


def startCoturn(
    workDir: Path,
    listen: Sequence[str] = ("127.0.0.1",),
    port: Optional[int] = None,
    prefix: Sequence[str] = (),
    ready: ReadyCheck = loopbackReady,
    startDeadline: float = 10.0,
    extra: Sequence[str] = (),
) -> RunningPeer:
    """
    coturn as a plain STUN server on ``listen`` (a free UDP+TCP port, and port+1, its RFC 5780 alternate);
    ``extra``: more options (:func:`coturnLongTermArguments`).
    """
    workDir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = freePort(listen[0], span=2)
    argv = coturnArgv(listen, port, workDir / "turnserver.pid", prefix, extra)
    process = PeerProcess("coturn", argv, workDir / "coturn.log")
    return _whenReady(process, (listen[0], port), ready, startDeadline)


def startKamailio(
    workDir: Path,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    prefix: Sequence[str] = (),
    ready: ReadyCheck = loopbackReady,
    startDeadline: float = 10.0,
) -> RunningPeer:
    """Kamailio as an RFC 5626 edge on ``host``; ready when its stun module answers on the SIP UDP port."""
    workDir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = freePort(host)
    cfg = writeKamailioConfig(workDir, host, port)
    process = PeerProcess("kamailio", kamailioArgv(cfg, workDir / "run", prefix), workDir / "kamailio.log")
    return _whenReady(process, (host, port), ready, startDeadline)


# --------------------------------------------------------------------------------------------------------------
# Kamailio as a registrar with digest authentication (tests/data/kamailio/registrar.cfg)

#: Kamailio as a single-box RFC 5626 edge and registrar that challenges every REGISTER (RFC 3261 §22) and checks
#: the answer against one plain-text user; see the template's header for its placeholders and defines.
KAMAILIO_REGISTRAR_TEMPLATE = dataPath("kamailio/registrar.cfg")


@dataclass(frozen=True)
class RegistrarSettings:
    """What one Kamailio registrar is made of: where it listens, its one user, and whether it answers STUN."""

    host: str
    port: int
    domain: str = "example.com"
    user: str = "alice"
    password: str = "wonderland"
    flowTimer: int = 2
    stun: bool = True
    tlsPort: Optional[int] = None
    certificate: Optional[Path] = None
    key: Optional[Path] = None
    tcpLifetime: int = 30

    @property
    def defines(self) -> List[str]:
        """The ``kamailio -A`` defines the template's ``#!ifdef`` blocks test."""
        names = (["WITH_STUN"] if self.stun else []) + (["WITH_TLS"] if self.tlsPort is not None else [])
        return [arg for name in names for arg in ("-A", name)]


def writeKamailioRegistrarConfig(directory: Path, settings: RegistrarSettings) -> Path:
    """Write the registrar config into ``directory`` and check it with ``kamailio -c`` (fails with its output)."""
    binary = requireTool("kamailio", "kamailio")
    if settings.tlsPort is not None and (settings.certificate is None or settings.key is None):
        raise PeerError("a TLS listener needs a certificate and its key")
    cfg = directory / "registrar.cfg"
    values = {
        "@HOST@": settings.host, "@PORT@": str(settings.port), "@TLSPORT@": str(settings.tlsPort or 0),
        "@MODULES@": kamailioModules(), "@DOMAIN@": settings.domain, "@USER@": settings.user,
        "@PASSWORD@": settings.password, "@FLOWTIMER@": str(settings.flowTimer),
        "@TCPLIFETIME@": str(settings.tcpLifetime), "@CERT@": str(settings.certificate or ""),
        "@KEY@": str(settings.key or ""),
    }
    text = KAMAILIO_REGISTRAR_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    cfg.write_text(text)
    check = subprocess.run([binary, "-c", "-f", str(cfg), *settings.defines], capture_output=True, text=True,
                           timeout=30)
    if check.returncode != 0:
        raise PeerError(f"kamailio -c rejected {cfg}:\n{check.stdout}{check.stderr}")
    return cfg


def sipOptionsRequest(target: HostPort, local: HostPort) -> Tuple[str, bytes]:
    """``(branch, datagram)``: an OPTIONS to the server itself (RFC 3261 §11), hand-built like the STUN above."""
    branch = "z9hG4bK" + os.urandom(6).hex()
    tag = os.urandom(4).hex()
    lines = [
        f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0",
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@{local[0]}>;tag={tag}",
        f"To: <sip:{target[0]}:{target[1]}>",
        f"Call-ID: {os.urandom(8).hex()}@{local[0]}",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
    ]
    return branch, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def sipOptionsUDP(server: HostPort, sock: socket.socket, timeout: float) -> str:
    """
    Send one OPTIONS from ``sock`` and return the status line of the response carrying its branch; raises
    :class:`PeerError` on silence.  The readiness check of a registrar that does not answer STUN.
    """
    local = sock.getsockname()
    branch, request = sipOptionsRequest(server, (local[0], local[1]))
    sock.sendto(request, server)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerError(f"no SIP answer from {server[0]}:{server[1]} within {timeout:g} s")
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            continue
        text = data.decode("utf-8", "replace")
        if source[:2] == server and text.startswith("SIP/2.0 ") and branch in text:
            return text.split("\r\n", 1)[0]


def startKamailioRegistrar(
    workDir: Path,
    settings: RegistrarSettings,
    ready: ReadyCheck,
    prefix: Sequence[str] = (),
    startDeadline: float = 10.0,
) -> RunningPeer:
    """Kamailio as a registrar with digest auth; ``ready`` polls it (STUN, or SIP OPTIONS without the stun module)."""
    workDir.mkdir(parents=True, exist_ok=True)
    cfg = writeKamailioRegistrarConfig(workDir, settings)
    argv = kamailioArgv(cfg, workDir / "run", prefix) + settings.defines
    process = PeerProcess("kamailio registrar", argv, workDir / "kamailio.log")
    return _whenReady(process, (settings.host, settings.port), ready, startDeadline)


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="STUN readiness probe (hand-built Binding requests)")
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe")
    probe.add_argument("host")
    probe.add_argument("port", type=int)
    probe.add_argument("--deadline", type=float, default=5.0)
    probe.add_argument("--bind", default=None, help="HOST:PORT to send from")
    sipProbe = sub.add_parser("probe-sip", help="poll with SIP OPTIONS (a registrar that does not answer STUN)")
    sipProbe.add_argument("host")
    sipProbe.add_argument("port", type=int)
    sipProbe.add_argument("--deadline", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "probe-sip":
        return _probeSIP(args.host, args.port, args.deadline)
    sock = socket.socket(family(args.host), socket.SOCK_DGRAM)
    if args.bind:
        host, _, port = args.bind.rpartition(":")
        sock.bind((host, int(port)))
    deadline = time.monotonic() + args.deadline
    last = ""
    while time.monotonic() < deadline:
        try:
            answer, local = stunUDP((args.host, args.port), sock=sock, timeout=0.25)
        except (PeerError, OSError) as e:
            last = str(e)
            continue
        print(json.dumps({"event": "answer", "local": list(local), **answer.asDict()}), flush=True)
        return 0
    print(json.dumps({"event": "timeout", "error": last}), flush=True)
    return 1


def _probeSIP(host: str, port: int, budget: float) -> int:
    """``probe-sip``: one JSON line with the status line of the first answered OPTIONS (exit 0), or exit 1."""
    deadline = time.monotonic() + budget
    last = ""
    with socket.socket(family(host), socket.SOCK_DGRAM) as route:
        route.connect((host, port))  # no packet: the name of the address the route uses, for the Via
        source = route.getsockname()[0]
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        while time.monotonic() < deadline:
            try:
                status = sipOptionsUDP((host, port), sock, timeout=0.25)
            except (PeerError, OSError) as e:
                last = str(e)
                continue
            print(json.dumps({"event": "answer", "status": status, "type": 0, "mapped": None, "software": None}),
                  flush=True)
            return 0
    print(json.dumps({"event": "timeout", "error": last}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


async def waitUntil(condition: Callable[[], Any], timeout: float = 15.0) -> None:
    """In a pytest-twisted test: let the reactor run until ``condition()`` is true, failing after ``timeout`` s."""
    from twisted.internet import reactor, task

    waited = 0.0
    while not condition():
        await task.deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
        waited += 0.05
        assert waited < timeout, "condition never became true"

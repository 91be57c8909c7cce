"""
A real netfilter NAT between network namespaces, built and torn down by the test session (plain Python +
subprocess; needs root, ``ip``, ``iptables``, ``conntrack``).

Topology (RFC 5737 documentation addresses only, and only inside namespaces made here)::

    <P>-lan 192.0.2.10/24  ⇄  <P>-nat 192.0.2.1/24 | 203.0.113.1/24 (masquerade)  ⇄  <P>-pub 203.0.113.20 + .21

``<P>`` is ``sl<pid>`` of the pytest process, so parallel sessions never share a namespace, and a later session
can tell that a leftover lab belongs to a dead process and remove it (:func:`removeStaleLabs`).

Mapping modes (RFC 4787 terms):

- ``"eim"``: plain MASQUERADE, which keeps the source port when it is free: endpoint-independent mapping, and an
  expired binding comes back on the *same* port, so expiry is invisible as a port change;
- ``"random"``: MASQUERADE ``--random`` over 20000-60000: every new conntrack entry (every new destination, and
  every re-creation after expiry or a flush) gets a fresh port: address-and-port-dependent mapping, where expiry
  and rebinding show as a new public port.

The conntrack UDP timeouts are per network namespace; they are shortened in ``nat`` only, so binding expiry
shows within seconds while the host is untouched.

Impairment: ``tc qdisc netem`` on the router's interfaces when the kernel has ``sch_netem``; otherwise loss is
made with iptables' ``statistic`` match in the router's FORWARD chain (delay/jitter need netem and are refused
with a clear error).  Either way the loss happens in the router, on the path under test.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

LAN_ADDR = "192.0.2.10"
NAT_INSIDE = "192.0.2.1"
NAT_OUTSIDE = "203.0.113.1"
PUB_ADDR = "203.0.113.20"
PUB_ADDR2 = "203.0.113.21"
#: The long-term-credential coturn of the lab (conftest ``labSecureCoturn``): its port, realm and one user.  Here,
#: not in conftest, because a test importing ``conftest`` gets whichever directory's conftest was loaded first.
SECURE_COTURN_PORT = 3490
SECURE_REALM = "lab.sipnat.test"
SECURE_USER = ("alice", "lab-s3cret")

REQUIRED_TOOLS = {"ip": "iproute2", "iptables": "iptables", "conntrack": "conntrack", "tc": "iproute2"}

HostPort = Tuple[str, int]


class LabError(Exception):
    """The lab could not be built or driven; the message carries the failing command and its output."""


def _which(name: str) -> Optional[str]:
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missingPrerequisites() -> List[str]:
    """Why the lab cannot run here (not root, a tool missing), as readable reasons; empty when it can."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("the lab needs root (network namespaces, iptables, conntrack)")
    for tool, package in REQUIRED_TOOLS.items():
        if _which(tool) is None:
            reasons.append(f"{tool} not found: install the Debian package {package!r} (bash .ci/install-peers)")
    return reasons


def sh(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output (not just a status) when ``check`` and it fails."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout} s: {' '.join(argv)}") from e
    if check and result.returncode != 0:
        raise LabError(f"failed ({result.returncode}): {' '.join(argv)}\n{result.stdout}{result.stderr}")
    return result


def _pidAlive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killNamespaceProcesses(ns: str) -> None:
    """SIGKILL every process in ``ns`` by its pid (``ip netns pids``): nothing survives the namespace."""
    result = sh(["ip", "netns", "pids", ns], check=False)
    for token in result.stdout.split():
        if token.isdigit():
            try:
                os.kill(int(token), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def listNamespaces() -> List[str]:
    result = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


_LAB_NS = re.compile(r"^sl(\d+)-(lan|nat|pub)$")


def removeStaleLabs() -> List[str]:
    """Delete labs left by test sessions whose process is gone (a crash, a SIGKILL); returns what was removed."""
    removed = []
    for ns in listNamespaces():
        match = _LAB_NS.match(ns)
        if match and not _pidAlive(int(match.group(1))):
            _killNamespaceProcesses(ns)
            sh(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    return removed


@dataclass(frozen=True)
class ConntrackEntry:
    """
    One line of ``conntrack -L``: the original direction (what the lan host sent) and the reply direction
    (what the peer answers to).  For a masqueraded flow, ``reply`` destination is the public mapping.
    """

    proto: str
    timeout: int
    origSrc: HostPort
    origDst: HostPort
    replySrc: HostPort
    replyDst: HostPort
    flags: Tuple[str, ...]

    @property
    def publicAddress(self) -> HostPort:
        """The address and port the NAT allocated (where the peer's replies go)."""
        return self.replyDst


_FIELD = re.compile(r"(\w+)=(\S+)")


def parseConntrack(text: str) -> List[ConntrackEntry]:
    """Parse ``conntrack -L`` text (default output format) for UDP/TCP entries; other lines are ignored."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("udp", "tcp"):
            continue
        proto = parts[0]
        timeout = int(parts[2]) if parts[2].isdigit() else -1
        fields = _FIELD.findall(line)
        src = [v for k, v in fields if k == "src"]
        dst = [v for k, v in fields if k == "dst"]
        sport = [int(v) for k, v in fields if k == "sport"]
        dport = [int(v) for k, v in fields if k == "dport"]
        if len(src) < 2 or len(dst) < 2 or len(sport) < 2 or len(dport) < 2:
            continue
        flags = tuple(p.strip("[]") for p in parts if p.startswith("[") and p.endswith("]"))
        entries.append(
            ConntrackEntry(
                proto,
                timeout,
                (src[0], sport[0]),
                (dst[0], dport[0]),
                (src[1], sport[1]),
                (dst[1], dport[1]),
                flags,
            )
        )
    return entries


class NetLab:
    """The three namespaces, the router's NAT rules and conntrack, and the processes run inside them."""

    def __init__(self, prefix: Optional[str] = None, udpTimeout: int = 3) -> None:
        self.prefix = prefix or f"sl{os.getpid()}"
        if len(self.prefix) + 3 > 15:
            raise LabError(f"prefix {self.prefix!r} too long for interface names")
        self.lan = f"{self.prefix}-lan"
        self.nat = f"{self.prefix}-nat"
        self.pub = f"{self.prefix}-pub"
        self.lanIf, self.natLanIf = f"{self.prefix}-l0", f"{self.prefix}-l1"
        self.natPubIf, self.pubIf = f"{self.prefix}-p0", f"{self.prefix}-p1"
        self.udpTimeout = udpTimeout
        self.mode = "eim"
        self.impairment: Optional[str] = None
        self._tcpDefault: Optional[int] = None
        self._processes: List[subprocess.Popen[Any]] = []

    # -- running things ------------------------------------------------------------------------------------

    def prefixFor(self, ns: str) -> List[str]:
        return ["ip", "netns", "exec", ns]

    def run(self, ns: str, argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` and wait for it."""
        return sh(self.prefixFor(ns) + list(argv), check=check, timeout=timeout)

    def track(self, process: subprocess.Popen[Any]) -> None:
        """Remember a process started in the lab so :meth:`down` ends it whatever the test did."""
        self._processes.append(process)

    # -- building ------------------------------------------------------------------------------------------

    def up(self) -> None:
        """Build the topology (~0.2 s).  On any error the half-built lab is removed before raising."""
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        for ns in (self.lan, self.nat, self.pub):
            sh(["ip", "netns", "add", ns])
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        sh(["ip", "link", "add", self.lanIf, "type", "veth", "peer", "name", self.natLanIf])
        sh(["ip", "link", "add", self.natPubIf, "type", "veth", "peer", "name", self.pubIf])
        sh(["ip", "link", "set", self.lanIf, "netns", self.lan])
        sh(["ip", "link", "set", self.natLanIf, "netns", self.nat])
        sh(["ip", "link", "set", self.natPubIf, "netns", self.nat])
        sh(["ip", "link", "set", self.pubIf, "netns", self.pub])
        self.run(self.lan, ["ip", "addr", "add", f"{LAN_ADDR}/24", "dev", self.lanIf])
        self.run(self.lan, ["ip", "link", "set", self.lanIf, "up"])
        self.run(self.lan, ["ip", "route", "add", "default", "via", NAT_INSIDE])
        self.run(self.nat, ["ip", "addr", "add", f"{NAT_INSIDE}/24", "dev", self.natLanIf])
        self.run(self.nat, ["ip", "addr", "add", f"{NAT_OUTSIDE}/24", "dev", self.natPubIf])
        self.run(self.nat, ["ip", "link", "set", self.natLanIf, "up"])
        self.run(self.nat, ["ip", "link", "set", self.natPubIf, "up"])
        self.run(self.nat, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for address in (PUB_ADDR, PUB_ADDR2):
            self.run(self.pub, ["ip", "addr", "add", f"{address}/24", "dev", self.pubIf])
        self.run(self.pub, ["ip", "link", "set", self.pubIf, "up"])
        # A rule in the raw table makes sure conntrack is loaded in this namespace, so its sysctls exist.
        self.run(self.nat, ["iptables", "-t", "raw", "-A", "PREROUTING", "-j", "ACCEPT"])
        self.setUdpTimeout(self.udpTimeout)
        self.setMode("eim")

    def setUdpTimeout(self, seconds: int) -> None:
        """Both UDP conntrack timeouts (unreplied and stream/assured) in the router only."""
        for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            self.run(self.nat, ["sysctl", "-qw", f"net.netfilter.{key}={seconds}"])
        self.udpTimeout = seconds

    def setTcpEstablishedTimeout(self, seconds: Optional[int]) -> None:
        """The router's idle timeout for established TCP entries; ``None`` restores the kernel default."""
        key = "net.netfilter.nf_conntrack_tcp_timeout_established"
        if self._tcpDefault is None:
            self._tcpDefault = int(self.sysctl(self.nat, key))
        self.run(self.nat, ["sysctl", "-qw", f"{key}={self._tcpDefault if seconds is None else seconds}"])

    def sysctl(self, ns: str, key: str) -> str:
        return self.run(ns, ["sysctl", "-n", key]).stdout.strip()

    def setMode(self, mode: str) -> None:
        """Replace the masquerade rules (``"eim"`` or ``"random"``) and flush conntrack so they take effect."""
        if mode not in ("eim", "random"):
            raise LabError(f"unknown NAT mode {mode!r}")
        self.run(self.nat, ["iptables", "-t", "nat", "-F", "POSTROUTING"])
        if mode == "random":
            for proto in ("udp", "tcp"):
                self.run(
                    self.nat,
                    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", self.natPubIf, "-p", proto,
                     "-j", "MASQUERADE", "--to-ports", "20000-60000", "--random"],
                )
        else:
            self.run(self.nat, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", self.natPubIf, "-j", "MASQUERADE"])
        self.mode = mode
        self.flushConntrack()

    # -- conntrack -----------------------------------------------------------------------------------------

    def conntrackEntries(self, proto: str = "udp") -> List[ConntrackEntry]:
        result = self.run(self.nat, ["conntrack", "-L", "-p", proto], check=False)
        return parseConntrack(result.stdout)

    def mappingFor(self, local: HostPort, remote: HostPort, proto: str = "udp") -> Optional[ConntrackEntry]:
        """The router's entry for ``local`` (lan) → ``remote`` (pub), or ``None`` when there is none (expired)."""
        for entry in self.conntrackEntries(proto):
            if entry.origSrc == local and entry.origDst == remote:
                return entry
        return None

    def snapshot(self) -> Dict[str, Any]:
        """The router's mode and UDP table, for assertion messages."""
        return {"mode": self.mode, "udp": [e.__dict__ for e in self.conntrackEntries("udp")]}

    def flushConntrack(self) -> None:
        """Forget every mapping: the next packet of each flow gets a new one (a NAT rebinding)."""
        self.run(self.nat, ["conntrack", "-F"], check=False)

    # -- impairment ----------------------------------------------------------------------------------------

    def netemAvailable(self) -> bool:
        probe = self.run(self.nat, ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
        if probe.returncode == 0:
            self.run(self.nat, ["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
            return True
        return False

    def impair(self, loss: float = 0.0, delay: float = 0.0, jitter: float = 0.0, directions: str = "both") -> str:
        """
        Lose a fraction ``loss`` of the packets the router forwards (and delay them by ``delay`` ± ``jitter``
        seconds where netem exists).  ``directions``: ``"out"`` (lan → pub), ``"in"`` (pub → lan) or ``"both"``.
        Returns the mechanism used (``"netem"`` or ``"iptables-statistic"``), for the test's record.
        """
        self.clearImpairment()
        interfaces = {"out": [self.natPubIf], "in": [self.natLanIf], "both": [self.natPubIf, self.natLanIf]}[directions]
        if self.netemAvailable():
            for interface in interfaces:
                argv = ["tc", "qdisc", "add", "dev", interface, "root", "netem"]
                if delay:
                    argv += ["delay", f"{delay * 1000:.0f}ms"] + ([f"{jitter * 1000:.0f}ms"] if jitter else [])
                if loss:
                    argv += ["loss", f"{loss * 100:g}%"]
                self.run(self.nat, argv)
            self.impairment = "netem"
        else:
            if delay or jitter:
                raise LabError("this kernel has no sch_netem: delay/jitter cannot be emulated (loss can)")
            for interface in interfaces:
                self.run(
                    self.nat,
                    ["iptables", "-I", "FORWARD", "-o", interface, "-m", "statistic", "--mode", "random",
                     "--probability", f"{loss:g}", "-j", "DROP"],
                )
            self.impairment = "iptables-statistic"
        return self.impairment

    def clearImpairment(self) -> None:
        for interface in (self.natPubIf, self.natLanIf):
            self.run(self.nat, ["tc", "qdisc", "del", "dev", interface, "root"], check=False)
        self.run(self.nat, ["iptables", "-F", "FORWARD"], check=False)
        self.impairment = None

    # -- teardown ------------------------------------------------------------------------------------------

    def down(self) -> None:
        """End every process started here and in the namespaces, then delete them.  Safe to call twice."""
        for process in self._processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    process.kill()
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._processes.clear()
        existing = set(listNamespaces())
        for ns in (self.lan, self.nat, self.pub):
            if ns in existing:
                _killNamespaceProcesses(ns)
                sh(["ip", "netns", "del", ns], check=False)


# ------------------------------------------------------------------------------------------------------------
# drivers: library code run inside a namespace, talking JSON lines

DRIVERS = Path(__file__).resolve().parent / "drivers"


def libraryPath() -> str:
    """The directory holding the twisted_sipnat the tests import, so drivers run the very same code."""
    import importlib.util

    spec = importlib.util.find_spec("twisted_sipnat")
    if spec is None or not spec.submodule_search_locations:
        raise LabError("twisted_sipnat is not importable from the test process")
    return str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)


class Driver:
    """
    A child Python process in a namespace (``ip netns exec NS python driver.py ...``): commands go to its stdin
    as JSON lines, events come back on stdout as JSON lines with a ``"t"`` timestamp from
    ``time.monotonic()`` (one clock for every process on the machine), read by a thread into a queue so the
    test can wait on them with a deadline.
    """

    def __init__(self, lab: NetLab, ns: str, script: str, args: Sequence[str] = (), name: Optional[str] = None) -> None:
        self.name = name or f"{script}@{ns}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([libraryPath(), str(DRIVERS.parent.parent / "interop")])
        env["PYTHONUNBUFFERED"] = "1"
        # "-m package.module" runs a module (e.g. a twistd role) instead of a script from drivers/; its output
        # need not be JSON: other lines arrive as {"event": "garbage", "line": ...} events.
        target = ["-m", script[2:].strip()] if script.startswith("-m") else [str(DRIVERS / script)]
        argv = lab.prefixFor(ns) + [sys.executable] + target + list(args)
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        lab.track(self.process)
        self.events: queue.Queue[Dict[str, Any]] = queue.Queue()
        self.history: List[Dict[str, Any]] = []
        self._stderr: List[str] = []
        threading.Thread(target=self._readStdout, daemon=True).start()
        threading.Thread(target=self._readStderr, daemon=True).start()

    def _readStdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line, "t": time.monotonic()}
            self.events.put(event)
        self.events.put({"event": "exited", "t": time.monotonic()})

    def _readStderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line.rstrip())

    def stderrTail(self, lines: int = 30) -> str:
        return "\n".join(self._stderr[-lines:])

    def send(self, command: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": command, **fields}) + "\n")
        self.process.stdin.flush()

    def describe(self) -> str:
        return (
            f"{self.name}: events so far: {json.dumps(self.history[-20:])}\n"
            f"stderr tail:\n{self.stderrTail()}"
        )

    def expect(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float, what: str) -> Dict[str, Any]:
        """The next event matching ``predicate`` within ``timeout`` seconds; AssertionError with context if none."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout:g} s\n{self.describe()}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.history.append(event)
            if predicate(event):
                return event
            if event.get("event") in ("exited", "crash"):
                raise AssertionError(f"driver ended while waiting for {what}\n{self.describe()}")

    def expectEvent(self, name: str, timeout: float) -> Dict[str, Any]:
        return self.expect(lambda e: e.get("event") == name, timeout, f"{name!r} event")

    def collect(self, duration: float) -> List[Dict[str, Any]]:
        """Every event within ``duration`` seconds (the test's way of letting time pass while watching)."""
        deadline = time.monotonic() + duration
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return seen
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                return seen
            self.history.append(event)
            seen.append(event)

    def call(self, command: str, reply: str, timeout: float = 10.0, **fields: Any) -> Dict[str, Any]:
        """Send a command and wait for the event that answers it (``reply`` or an ``error`` event)."""
        self.send(command, **fields)
        event = self.expect(lambda e: e.get("event") in (reply, "error"), timeout, f"{reply!r} after {command!r}")
        if event["event"] == "error":
            raise AssertionError(f"{command} failed in the driver: {event}\n{self.describe()}")
        return event

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(3)


def iterEvents(events: Sequence[Dict[str, Any]], name: str) -> Iterator[Dict[str, Any]]:
    return (e for e in events if e.get("event") == name)

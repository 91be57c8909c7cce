"""
The ``twistd sipnat`` command line: the ``usage.Options`` classes, and the checking of their values.

Parsing never touches the network and never imports the reactor (the twistd plugin imports this module for
``twistd sipnat --help``).  The ``...Arguments`` functions turn parsed options into the keyword arguments of a
role's constructor; a bad value raises :class:`~twisted_sipnat.errors.InvalidSettingsError` naming the option (or
the ``[section] key`` of the config file), which :func:`twisted_sipnat.tap.makeService` prints as one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from twisted.python import usage

from ..config import DEFAULT_SECTION, loadConfig, splitServerList
from ..core.addresses import isIPLiteral, parseHostPort

# The edge registrar's bounds and SIP rate limit defaults, defined where the registrar and the proxy are.
from ..core.proxy import DEFAULT_SIP_BURST, DEFAULT_SIP_RATE

# The STUN responder's per-source rate limit defaults, defined once, where the responder an edge gets by default
# is built.
from ..core.ratelimit import DEFAULT_RATE_LIMIT_SOURCES
from ..core.registrar import (
    DEFAULT_DEFAULT_EXPIRES,
    DEFAULT_MAX_CONTACTS,
    DEFAULT_MAX_EXPIRES,
    DEFAULT_MAX_REGISTRATIONS,
    DEFAULT_MIN_EXPIRES,
)
from ..core.responder import DEFAULT_RESPONDER_BURST, DEFAULT_RESPONDER_RATE
from ..errors import InvalidSettingsError
from ..settings import NATSettings

__all__ = [
    "ClientOptions",
    "EdgeOptions",
    "Options",
    "STUNOptions",
    "checkConfigUse",
    "checkFiguresUse",
    "clientArguments",
    "connectionLimitArguments",
    "edgeArguments",
    "edgeSIPArguments",
    "embeddedSettings",
    "parseMetrics",
    "parseNumber",
    "parseStatsInterval",
    "parseUDPDescription",
    "parseWorkers",
    "stunArguments",
]

_UDP = re.compile(r"udp:(?:port=)?(?P<port>[0-9]+)(?::interface=(?P<interface>.+))?", re.IGNORECASE)


def parseUDPDescription(text: str, key: str = "listen") -> Tuple[int, str]:
    """
    ``udp:PORT[:interface=ADDR]`` -> ``(port, interface)``; ``interface`` is ``""`` for every interface.

    Twisted has no ``udp:`` endpoint strings (UDP is not a stream), so this is a small syntax of our own in the
    same spirit: ``udp:5060``, ``udp:0`` (any free port), ``udp:5060:interface=127.0.0.1``,
    ``udp:5060:interface=::1``.  Errors are :class:`InvalidSettingsError` naming ``key``.
    """
    match = _UDP.fullmatch(text.strip())
    if match is None:
        raise InvalidSettingsError(key, text, "expected udp:PORT[:interface=ADDR]")
    port = int(match.group("port"))
    if port > 65535:
        raise InvalidSettingsError(key, text, "the port must be 0-65535")
    interface = match.group("interface") or ""
    if interface:
        interface = interface.strip("[]")
        if not isIPLiteral(interface):
            raise InvalidSettingsError(key, text, "the interface must be an IP address")
    return port, interface


def parseNumber(key: str, text: Optional[str], integer: bool = False) -> Optional[float]:
    """A finite number >= 0 from option ``key`` (``None`` stays ``None``); ``integer`` asks for a whole one."""
    if text is None:
        return None
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        raise InvalidSettingsError(key, text, "not a number" if not integer else "not a whole number") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise InvalidSettingsError(key, text, "must be a finite number >= 0")
    return value


def parseWorkers(sub: Mapping[str, Any]) -> int:
    """``--workers``: a whole number >= 1."""
    workers = parseNumber("workers", sub["workers"], integer=True)
    if workers is None or workers < 1:
        raise InvalidSettingsError("workers", sub["workers"], "must be a whole number >= 1")
    return int(workers)


#: The stream connection table's options (edge and stun roles; see ``docs/roles/edge.rst``, "Connection
#: limits"): the option, the ``ConnectionLimits`` field it sets, whether it is a whole number, its help.
CONNECTION_LIMIT_OPTIONS = (
    ("max-connections", "maxConnections", True,
     "Stream (TCP/TLS) connections at most; when full, a new one evicts the oldest that has not completed a "
     "message yet. Default: the open-file limit minus a reserve (max(128, limit/8))."),
    ("max-connections-per-source", "maxConnectionsPerSource", True,
     "Stream connections at most from one source IP (generous: clients behind a NAT share one). Default: 1024."),
    ("max-buffered-bytes", "maxBufferedBytes", True,
     "Bytes of partial messages all stream connections may hold together; over it, the connection holding "
     "the most is closed. Default: 8388608 (8 MiB)."),
    ("idle-timeout", "idleTimeout", False,
     "Seconds a stream connection may go without a whole message or keepalive before it is closed. "
     "Default (edge): 2 x --flow-timer + 10, else 250; (stun): 250."),
    ("handshake-timeout", "handshakeTimeout", False,
     "Seconds a new stream connection has to complete its first message (TLS handshake included). Default: 10."),
)

_CONNECTION_LIMIT_PARAMETERS = [[option, None, None, help] for option, _, _, help in CONNECTION_LIMIT_OPTIONS]


def connectionLimitArguments(sub: Mapping[str, Any]) -> Dict[str, Any]:
    """
    The connection-limit options given on the command line, by ``ConnectionLimits`` field name (the role
    fills in the defaults, :func:`twisted_sipnat.service.limits.connectionLimits`); a bad value is one line.
    """
    given: Dict[str, Any] = {}
    for option, name, whole, _ in CONNECTION_LIMIT_OPTIONS:
        value = parseNumber(option, sub.get(option), integer=whole)
        if value is None:
            continue
        if value <= 0:
            raise InvalidSettingsError(option, sub[option], "must be > 0")
        given[name] = int(value) if whole else value
    return given


#: The client role as an RFC 5626 user agent (``docs/roles/client.rst``, "Authentication" and "Outbound"):
#: digest credentials, the instance ID's state directory, the keepalive method (clientUAArguments).
CLIENT_UA_PARAMETERS = [
    ["user", None, None, "Digest user name (RFC 3261 section 22) for --register; default: the user part of the AOR "
                         "when a password is given."],
    ["password-file", None, None, "Read the digest password from the first line of this file."],
    ["password-env", None, None, "Read the digest password from this environment variable."],
    ["password", None, None, "The digest password itself (visible to every user in ps: prefer --password-file "
                             "or --password-env)."],
    ["state-dir", None, None, "Directory of the state file keeping the RFC 5626 instance ID (created 0600). "
                              "Default: $XDG_STATE_HOME/twisted-sipnat, else ~/.local/state/twisted-sipnat."],
    ["keepalive", "k", None, "Keepalive method: stun, crlf, options (a SIP OPTIONS to the next hop every "
                             "interval; needs --register) or auto (STUN until the next hop proves it does not "
                             "answer it, then CRLF). Same as --method for stun and crlf; give one of them."],
]

#: Several flows (``docs/roles/client.rst``, "Several flows"): SRV next hops, the RFC 5626 section 4.5 backoff.
CLIENT_FLOW_PARAMETERS = [
    ["max-flows", None, "2", "Without --next-hop: one flow per SIP SRV record of the AOR's domain "
                             "(_sip._udp), at most this many. Default: 2."],
    ["backoff-base-all-failed", None, None, "RFC 5626 section 4.5 base-time when every flow has failed, seconds. "
                                            "Default: 30 (or --backoff-base)."],
    ["backoff-base-some-up", None, None, "RFC 5626 section 4.5 base-time while another flow is up, seconds. "
                                         "Default: 90 (or --backoff-base)."],
    ["backoff-max", None, None, "RFC 5626 section 4.5 max-time, seconds. Default: 1800."],
    ["network-poll", None, "2", "Seconds between two looks at the host's addresses and default routes "
                                "(/proc/net); a change makes every flow send a keepalive at once, so a rebinding "
                                "or a lost address is found within a round trip. 0 turns it off. Default: 2."],
]
CLIENT_UA_FLAGS = [
    ["no-outbound", None, "REGISTER without the RFC 5626 outbound parameters (+sip.instance, reg-id, ;ob)."],
]

#: The client's flow transport (``docs/roles/client.rst``, "Transports"; clientTransportArguments).
CLIENT_TRANSPORT_PARAMETERS = [
    ["transport", None, "udp", "udp, tcp or tls: what REGISTER and the keepalives go out on (tcp, tls: one "
                               "connection to --next-hop, kept alive with CRLF pings; needs --register)."],
    ["ca-certs", None, None, "--transport tls: PEM file of the CAs to verify the next hop's certificate with "
                             "(default: the system's trust store)."],
]
CLIENT_TRANSPORT_FLAGS = [
    ["no-verify", None, "--transport tls without verifying the next hop's certificate (logged as a warning)."],
]


class ClientOptions(usage.Options):
    synopsis = "--next-hop HOST:PORT [--stun HOST[:PORT]]... [options]"
    longdesc = (
        "A SIP UA's side: bind the SIP socket, learn the public address with STUN (from --stun servers, "
        "else from the next hop itself), optionally REGISTER, and keep the NAT binding alive toward the next "
        "hop (RFC 5626). On a flow failure it resolves again after the RFC 5626 section 4.5 backoff."
    )
    optParameters = [
        ["listen", "l", "udp:5060", "The SIP socket: udp:PORT[:interface=ADDR]; udp:0 takes any free port."],
        ["domain", "d", DEFAULT_SECTION, "The SIP domain: the --config section whose NAT settings apply."],
        ["register", "r", None, "Address of record (user@domain) to REGISTER with the next hop; its Flow-Timer "
                                "(or Via keep) then sets the keepalive interval."],
        ["interval", "i", None, "UDP keepalive interval in seconds (keepalives every 80-100% of it; 0 disables). "
                                "Default: the config's udpKeepaliveInterval, else 25."],
        ["method", "m", None, "UDP keepalive method: stun (Binding request), crlf (CRLFCRLF datagram) or auto (stun, "
                              "crlf once a next hop that never answered STUN lets one time out). Default: stun."],
        ["backoff-base", None, None, "Base time in seconds of the RFC 5626 section 4.5 re-registration backoff "
                                     "(retries after 50-100% of base * 2^failures, failures >= 1). Default: 30."],
        ["metrics", None, None, "Serve Prometheus metrics at http://ADDR:PORT/metrics: tcp:PORT[:interface=ADDR]"
                                "."],
        ["stats-interval", None, None, "Log one info line with the same figures every S seconds."],
    ] + CLIENT_UA_PARAMETERS + CLIENT_FLOW_PARAMETERS + CLIENT_TRANSPORT_PARAMETERS
    optFlags = CLIENT_UA_FLAGS + CLIENT_TRANSPORT_FLAGS

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["stun"] = []
        self["next-hop"] = None
        self["next-hops"] = []

    def opt_next_hop(self, hop: str) -> None:
        """HOST:PORT (IP literal) of a next SIP hop to register with and keep the binding alive toward; repeat for one flow per hop (RFC 5626 section 4.2). Without it: the SRV records of the --register domain."""  # noqa: E501
        if self["next-hop"] is None:
            self["next-hop"] = hop
        self["next-hops"].append(hop)

    opt_n = opt_next_hop

    def opt_stun(self, server: str) -> None:
        """STUN server HOST[:PORT] or stun:HOST[:PORT] URI (RFC 7064); repeat for failover, tried in order. Default: the next hop answers STUN itself."""  # noqa: E501
        self["stun"].extend(splitServerList(server))

    opt_s = opt_stun


#: Both public roles: how many source addresses each per-source rate limit tracks (the least recently seen go).
_RATE_LIMIT_SOURCES = ["rate-limit-sources", None, f"{DEFAULT_RATE_LIMIT_SOURCES:d}",
                       "Source addresses each per-source rate limit tracks at most (then the oldest is forgotten)."]


class EdgeOptions(usage.Options):
    synopsis = "[--udp udp:5060] [--tcp tcp:5060] [--domain DOMAIN] [--flow-timer N]"
    longdesc = (
        "An RFC 5626 edge: a bounded in-memory registrar (RFC 3261 section 10.3, RFC 5626 outbound) and a "
        "stateless proxy to its registered user agents over UDP and TCP, answering STUN keepalives on the SIP "
        "port and CRLFCRLF pings with CRLF pongs."
    )
    optParameters = [
        ["udp", "u", "udp:5060", "UDP SIP socket: udp:PORT[:interface=ADDR]."],
        ["tcp", "t", "tcp:5060", "TCP SIP endpoint (a Twisted endpoint description), or 'none'."],
        ["domain", "d", "localhost", "The SIP domain the registrar accepts registrations for."],
        ["host", None, None, "Host written in the proxy's Via (default: the UDP interface, else 127.0.0.1)."],
        ["flow-timer", "f", None, "Send Flow-Timer: N (seconds) in REGISTER 200 OK responses (RFC 5626)."],
        ["workers", None, "1", "Processes sharing the UDP port (SO_REUSEPORT: the kernel keeps each flow on one "
                               "worker); TCP stays with the first.  Each worker has its own registrar."],
        ["metrics", None, None, "Serve Prometheus metrics at http://ADDR:PORT/metrics: tcp:PORT[:interface=ADDR]"
                                "; with --workers N, worker i (0 .. N-1) serves its own on PORT+i."],
        ["stats-interval", None, None, "Log one info line with the same figures every S seconds."],
        # The registrar's bounds and the SIP rate limit (edgeSIPArguments).
        ["max-registrations", None, f"{DEFAULT_MAX_REGISTRATIONS:d}",
         "Bindings the registrar holds in total; beyond it a new one gets 503 with Retry-After."],
        ["max-contacts", None, f"{DEFAULT_MAX_CONTACTS:d}", "Bindings of one address-of-record (beyond: 503)."],
        ["min-expires", None, f"{DEFAULT_MIN_EXPIRES:d}", "Shortest registration granted (shorter: 423 Min-Expires)."],
        ["max-expires", None, f"{DEFAULT_MAX_EXPIRES:d}", "Longest registration granted (longer asks are cut to it)."],
        ["default-expires", None, f"{DEFAULT_DEFAULT_EXPIRES:d}", "Registration granted when none is asked for."],
        ["sip-rate", None, f"{DEFAULT_SIP_RATE:g}", "SIP messages per second per source address (0: no limit)."],
        ["sip-burst", None, f"{DEFAULT_SIP_BURST:d}", "SIP rate limit: burst size per source address."],
        _RATE_LIMIT_SOURCES,
    ] + _CONNECTION_LIMIT_PARAMETERS
    optFlags = [["reuse-port", None, "Bind the UDP socket with SO_REUSEPORT (what every worker does)."]]


class STUNOptions(usage.Options):
    synopsis = "[--udp udp:3478] [--tcp tcp:3478] [--alternate ADDR:PORT] [--rate N --burst N | --no-rate-limit]"
    longdesc = "A standalone STUN Binding server (RFC 8489), with RFC 5780 alternate address/port when asked."
    optParameters = [
        ["udp", "u", "udp:3478", "UDP socket: udp:PORT[:interface=ADDR]."],
        ["tcp", "t", None, "Also serve STUN over TCP on this Twisted endpoint description (e.g. tcp:3478)."],
        ["alternate", "a", None, "ADDR:PORT of a second address of this host: enables RFC 5780 (OTHER-ADDRESS, "
                                 "CHANGE-REQUEST); needs --udp with interface= and a fixed port."],
        ["rate", None, f"{DEFAULT_RESPONDER_RATE:g}", "Rate limit: answers per second per source address."],
        ["burst", None, f"{DEFAULT_RESPONDER_BURST:d}", "Rate limit: burst size per source address."],
        ["software", None, None, "SOFTWARE attribute for responses (default: none)."],
        ["workers", None, "1", "Processes sharing the UDP port(s) (SO_REUSEPORT: the kernel keeps each flow on one "
                               "worker); TCP stays with the first."],
        ["metrics", None, None, "Serve Prometheus metrics at http://ADDR:PORT/metrics: tcp:PORT[:interface=ADDR]"
                                "; with --workers N, worker i (0 .. N-1) serves its own on PORT+i."],
        ["stats-interval", None, None, "Log one info line with the same figures every S seconds."],
        _RATE_LIMIT_SOURCES,
    ] + _CONNECTION_LIMIT_PARAMETERS
    optFlags = [["no-rate-limit", None, "Answer every request (not for a public address: STUN reflects floods)."],
                ["reuse-port", None, "Bind the UDP sockets with SO_REUSEPORT (what every worker does)."]]


class Options(usage.Options):
    synopsis = "[--config PATH] [client|edge|stun] [options]"
    longdesc = (
        "SIP NAT traversal: STUN public-address discovery and RFC 5626 keepalives. With no subcommand it runs "
        "an embedded default that needs no network: a STUN server on 127.0.0.1 and a client resolving against "
        "it and keeping the binding alive (every 80-100% of 5 s), logging each step."
    )
    optParameters = [
        ["config", "c", None, "Client and embedded default only: INI (or, on Python 3.11+, .toml) file with one section of NATSettings per SIP "
                              "domain; section 'default' for any other domain."],
        ["metrics", None, None, "Embedded default only (each subcommand has its own): serve Prometheus metrics at "
                                "http://ADDR:PORT/metrics: tcp:PORT[:interface=ADDR]."],
        ["stats-interval", None, None, "Embedded default only (each subcommand has its own): log one info line "
                                       "with the same figures every S seconds."],
    ]
    subCommands = [
        ["client", None, ClientOptions, "Resolve the public address and keep the NAT binding alive."],
        ["edge", None, EdgeOptions, "SIP registrar answering STUN and CRLF keepalives (RFC 5626 edge)."],
        ["stun", None, STUNOptions, "Standalone STUN Binding server."],
    ]


def checkConfigUse(options: Options) -> None:
    """``--config`` holds client settings: refuse it for the roles that would silently ignore it."""
    if options["config"] is not None and options.subCommand in ("edge", "stun"):
        raise InvalidSettingsError("config", options["config"],
                                   f"holds NAT settings for the client; the {options.subCommand} role does not read it")


_TCP = re.compile(r"tcp:(?:port=)?(?P<port>[0-9]+)(?::interface=(?P<interface>.+))?", re.IGNORECASE)


def parseMetrics(text: Optional[str], worker: int = 0, key: str = "metrics") -> Optional[str]:
    """
    ``--metrics tcp:PORT[:interface=ADDR]`` -> the Twisted endpoint description to listen on (``None`` stays
    ``None``).  Worker ``worker`` of ``--workers N`` listens on ``PORT + worker`` (``tcp:0``: each its own free
    port), so that every worker is a scrape target of its own.
    """
    if text is None:
        return None
    match = _TCP.fullmatch(text.strip())
    if match is None:
        raise InvalidSettingsError(key, text, "expected tcp:PORT[:interface=ADDR]")
    port = int(match.group("port"))
    if port and worker:
        port += worker
    if port > 65535:
        raise InvalidSettingsError(key, text, "the port must be 0-65535" + (f" (worker {worker}: {port})" if worker else ""))
    interface = (match.group("interface") or "").strip("[]")
    if interface and not isIPLiteral(interface):
        raise InvalidSettingsError(key, text, "the interface must be an IP address")
    escaped = interface.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}" if interface else f"tcp:{port}"


def parseStatsInterval(text: Optional[str]) -> Optional[float]:
    """``--stats-interval S``: seconds > 0 (``None`` stays ``None``)."""
    interval = parseNumber("stats-interval", text)
    if interval is not None and interval == 0:
        raise InvalidSettingsError("stats-interval", text, "must be > 0 seconds")
    return interval


def checkFiguresUse(options: Options) -> None:
    """``--metrics`` and ``--stats-interval`` before a subcommand would be silently ignored: refuse them."""
    if options.subCommand is None:
        return
    for key in ("metrics", "stats-interval"):
        if options[key] is not None:
            raise InvalidSettingsError(key, options[key],
                                       f"goes after the subcommand: twistd sipnat {options.subCommand} --{key} ...")


def _settingsFor(options: Options, domain: str) -> Dict[str, NATSettings]:
    """The ``{domain: NATSettings}`` for the client: the config file's, with the command line on top."""
    configured = loadConfig(options["config"]) if options["config"] else {}
    base = configured.get(domain) or configured.get(DEFAULT_SECTION) or NATSettings()
    return {**configured, domain: base}


def embeddedSettings(options: Options) -> Optional[Dict[str, NATSettings]]:
    """The embedded default's settings: the ``--config`` file's, or ``None`` for the role's own."""
    return _settingsFor(options, DEFAULT_SECTION) if options["config"] else None


#: Which command-line option a client setting comes from, so that an error names what the operator typed.
_CLIENT_SETTINGS = {"stunServers": "stun", "udpKeepaliveInterval": "interval", "udpKeepaliveMethod": "method"}


def clientArguments(options: Options, sub: ClientOptions) -> Dict[str, Any]:
    """The keyword arguments of :class:`~twisted_sipnat.service.client.ClientRole` (after ``reactor``)."""
    if sub["next-hop"] is None and sub["register"] is None:
        raise InvalidSettingsError("next-hop", None, "required: HOST:PORT of the next SIP hop")
    nextHops = []
    for text in sub["next-hops"]:
        hop = parseHostPort(text, "next-hop")
        if not isIPLiteral(hop[0]):
            raise InvalidSettingsError("next-hop", text, "must be an IP literal (UDP writes need one)")
        if hop in nextHops:
            raise InvalidSettingsError("next-hop", text, "given twice: one flow per next hop")
        nextHops.append(hop)
    listen = parseUDPDescription(sub["listen"], "listen")
    domain = sub["domain"]
    settings = _settingsFor(options, domain)
    changes: Dict[str, Any] = {}
    if sub["stun"]:
        changes["stunServers"] = tuple(sub["stun"])
    interval = parseNumber("interval", sub["interval"])
    if interval is not None:
        changes["udpKeepaliveInterval"] = interval
    if sub["method"] is not None and sub["keepalive"] is not None:
        raise InvalidSettingsError("keepalive", sub["keepalive"], "--method is the same option: give one of them")
    if sub["keepalive"] is not None and sub["keepalive"] != "options":
        changes["udpKeepaliveMethod"] = sub["keepalive"]
    named = {**_CLIENT_SETTINGS, "udpKeepaliveMethod": "keepalive" if sub["keepalive"] is not None else "method"}
    if sub["method"] is not None:
        changes["udpKeepaliveMethod"] = sub["method"]
    if changes:
        try:
            settings[domain] = dataclasses.replace(settings[domain], **changes)
        except InvalidSettingsError as e:
            raise InvalidSettingsError(named.get(e.key, e.key), e.value, e.why) from None
    backoffBase = parseNumber("backoff-base", sub["backoff-base"])
    if backoffBase is not None and backoffBase == 0:
        raise InvalidSettingsError("backoff-base", sub["backoff-base"], "must be > 0 seconds")
    return {"nextHop": nextHops, "settings": settings, "domain": domain, "listen": listen,
            "register": sub["register"], "backoffBase": backoffBase, **clientUAArguments(sub),
            **clientFlowArguments(sub, backoffBase), **clientTransportArguments(sub)}


def clientFlowArguments(sub: ClientOptions, backoffBase: Optional[float] = None) -> Dict[str, Any]:
    """
    The keyword arguments of :class:`~twisted_sipnat.service.client.ClientRole` for several flows: ``keepalive``
    (``"options"``: the role pings with OPTIONS), ``srv`` (the next hops from the AOR domain's SRV records when
    no ``--next-hop`` is given, RFC 3263 section 4.2) and ``recovery`` (the RFC 5626 section 4.5 figures).
    """
    from ..core.recovery import RecoveryPolicy
    from .siphops import SIPHops

    keepalive = "options" if sub["keepalive"] == "options" else None
    if keepalive is not None and sub["register"] is None:
        raise InvalidSettingsError("keepalive", "options", "OPTIONS pings are sent from the AOR: needs --register")
    maxFlows = int(parseNumber("max-flows", sub["max-flows"], integer=True) or 0)
    if maxFlows < 1:
        raise InvalidSettingsError("max-flows", sub["max-flows"], "must be a whole number >= 1")
    srv = None
    if not sub["next-hops"]:
        from ..core.sip.register import parseAOR

        srv = SIPHops(None, parseAOR(sub["register"]).host, maxFlows=maxFlows)
    figures = {key: parseNumber(key, sub[key]) for key in ("backoff-base-all-failed", "backoff-base-some-up",
                                                            "backoff-max")}
    recovery = None
    if backoffBase is not None or any(value is not None for value in figures.values()):
        def pick(key: str, default: float) -> float:
            value = figures[key]
            return value if value is not None else backoffBase if backoffBase is not None else default

        maxTime = figures["backoff-max"]
        if maxTime is None:
            maxTime = max(1800.0, backoffBase or 0.0)
        recovery = RecoveryPolicy(pick("backoff-base-all-failed", 30.0), pick("backoff-base-some-up", 90.0), maxTime)
    networkPoll = parseNumber("network-poll", sub["network-poll"])
    if networkPoll is not None and networkPoll < 0:
        raise InvalidSettingsError("network-poll", sub["network-poll"], "must be >= 0 seconds (0: off)")
    return {"keepalive": keepalive, "srv": srv, "recovery": recovery, "networkPoll": networkPoll or None}


def clientTransportArguments(sub: ClientOptions) -> Dict[str, Any]:
    """The ``transport`` of :class:`~twisted_sipnat.service.client.ClientRole`: a ``FlowTransport``, checked."""
    from .flowtransport import FlowTransport

    name = str(sub["transport"]).lower()
    return {"transport": FlowTransport(name, sub["ca-certs"], not sub["no-verify"])}


def clientUAArguments(sub: ClientOptions, environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """
    The user agent's keyword arguments of :class:`~twisted_sipnat.service.client.ClientRole`: ``credentials``
    (RFC 3261 §22), ``instance`` (the RFC 5626 §4.1 URN from the state file, only read or made when there is an
    AOR to register and outbound is not switched off), ``outbound``.
    """
    from ..core.sip.digest import Credentials
    from .identity import defaultStateDir, loadInstance, readPassword

    env = os.environ if environ is None else environ
    password = readPassword(sub["password"], sub["password-file"], sub["password-env"], env)
    if sub["user"] is not None and password is None:
        raise InvalidSettingsError("user", sub["user"], "needs --password-file, --password-env or --password")
    credentials = None
    if password is not None:
        if sub["register"] is None:
            raise InvalidSettingsError("password", "...", "credentials are for --register")
        user = sub["user"]
        if user is None:
            from ..core.sip.register import parseAOR

            user = parseAOR(sub["register"]).user
        credentials = Credentials(str(user), password)
    outbound = not sub["no-outbound"]
    instance = None
    if sub["register"] is not None and outbound:
        stateDir = Path(sub["state-dir"]) if sub["state-dir"] else defaultStateDir(env)
        instance = loadInstance(stateDir)
    return {"credentials": credentials, "instance": instance, "outbound": outbound}


def edgeArguments(sub: EdgeOptions, workers: int) -> Dict[str, Any]:
    """The keyword arguments of :class:`~twisted_sipnat.service.edge.EdgeRole` (after ``reactor``)."""
    flowTimer = parseNumber("flow-timer", sub["flow-timer"], integer=True)
    if flowTimer is not None and flowTimer < 1:
        raise InvalidSettingsError("flow-timer", sub["flow-timer"], "must be at least 1 second")
    tcp = sub["tcp"]
    return {
        "udp": parseUDPDescription(sub["udp"], "udp"),
        "tcp": None if tcp is None or tcp.lower() == "none" else tcp,
        "domain": sub["domain"],
        "host": sub["host"],
        "flowTimer": int(flowTimer) if flowTimer is not None else None,
        "reusePort": workers > 1 or bool(sub["reuse-port"]),
        "connectionLimits": connectionLimitArguments(sub),
        **edgeSIPArguments(sub),
    }


def edgeSIPArguments(sub: EdgeOptions) -> Dict[str, Any]:
    """The registrar's bounds and the SIP rate limit: whole numbers >= 1, ``--sip-rate 0`` for no limit."""
    values: Dict[str, Any] = {}
    for key, name in (("max-registrations", "maxRegistrations"), ("max-contacts", "maxContacts"),
                      ("min-expires", "minExpires"),
                      ("max-expires", "maxExpires"), ("default-expires", "defaultExpires"),
                      ("sip-burst", "sipBurst"), ("rate-limit-sources", "rateLimitSources")):
        value = parseNumber(key, sub[key], integer=True)
        if value is None or value < 1:
            raise InvalidSettingsError(key, sub[key], "must be a whole number >= 1")
        values[name] = int(value)
    if not values["minExpires"] <= values["defaultExpires"] <= values["maxExpires"]:
        raise InvalidSettingsError("default-expires", sub["default-expires"],
                                   "must be within --min-expires and --max-expires")
    rate = parseNumber("sip-rate", sub["sip-rate"])
    values["sipRate"] = rate if rate else None
    return values


def _wholeNumber(sub: Mapping[str, Any], key: str) -> int:
    value = parseNumber(key, sub[key], integer=True)
    if value is None or value < 1:
        raise InvalidSettingsError(key, sub[key], "must be a whole number >= 1")
    return int(value)


def stunArguments(sub: STUNOptions, workers: int) -> Dict[str, Any]:
    """The keyword arguments of :class:`~twisted_sipnat.service.stunserver.STUNRole` (after ``reactor``)."""
    rateLimit: Optional[Tuple[float, int]] = None
    if not sub["no-rate-limit"]:
        rate = parseNumber("rate", sub["rate"])
        burst = parseNumber("burst", sub["burst"], integer=True)
        if not rate or not burst:
            raise InvalidSettingsError("rate" if not rate else "burst", sub["rate"] if not rate else sub["burst"],
                                       "must be > 0 (use --no-rate-limit to switch the limit off)")
        rateLimit = (rate, int(burst))
    return {
        "udp": parseUDPDescription(sub["udp"], "udp"),
        "tcp": sub["tcp"],
        "alternate": parseHostPort(sub["alternate"], "alternate") if sub["alternate"] else None,
        "rateLimit": rateLimit,
        "rateLimitSources": _wholeNumber(sub, "rate-limit-sources"),
        "software": sub["software"],
        "reusePort": workers > 1 or bool(sub["reuse-port"]),
        "connectionLimits": connectionLimitArguments(sub),
    }

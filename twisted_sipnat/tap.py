"""
``twistd sipnat``: command-line options and :func:`makeService`.

::

    twistd -n sipnat                          # the embedded default: a STUN server on loopback + a client of it
    twistd -n sipnat client --next-hop 192.0.2.1:5060 --stun stun.example.com
    twistd -n sipnat edge --udp udp:5060 --tcp tcp:5060 --domain example.com --flow-timer 30
    twistd -n sipnat stun --udp udp:3478:interface=192.0.2.7 --alternate 192.0.2.8:3479
    twistd -n sipnat stun --udp udp:3478 --workers 4     # four processes on one port (SO_REUSEPORT)
    twistd -n sipnat --config sipnat.ini client --domain example.com --next-hop 192.0.2.1:5060

Parsing never touches the network and never imports the reactor: the plugin file names this module as a string,
and the roles (which need ``twisted.protocols.sip``, itself importing the reactor) load inside
:func:`makeService`.  Every value is checked there before anything is bound; a bad one ends the program with
one line naming the option or configuration key (``SystemExit``), not a traceback.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from twisted.python import usage

from .config import DEFAULT_SECTION, loadConfig, splitServerList
from .errors import InvalidSettingsError
from .settings import NATSettings

__all__ = ["ClientOptions", "EdgeOptions", "Options", "STUNOptions", "buildService", "makeService"]

#: The embedded default keeps alive this often (seconds) so that a first run shows keepalives within seconds;
#: real deployments use the RFC 5626 25 s default or what the registrar asks for.
EMBEDDED_INTERVAL = 5.0


def _number(key: str, text: Optional[str], integer: bool = False) -> Optional[float]:
    if text is None:
        return None
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        raise InvalidSettingsError(key, text, "not a number" if not integer else "not a whole number") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise InvalidSettingsError(key, text, "must be a finite number >= 0")
    return value


class ClientOptions(usage.Options):
    synopsis = "--next-hop HOST:PORT [--stun HOST[:PORT]]... [options]"
    longdesc = (
        "A SIP UA's side: bind the SIP socket, learn the public address with STUN (from --stun servers, "
        "else from the next hop itself), optionally REGISTER, and keep the NAT binding alive toward the next "
        "hop (RFC 5626). On a flow failure it resolves again after the RFC 5626 section 4.5 backoff."
    )
    optParameters = [
        ["listen", "l", "udp:5060", "The SIP socket: udp:PORT[:interface=ADDR]; udp:0 takes any free port."],
        ["next-hop", "n", None, "HOST:PORT (IP literal) of the next SIP hop to keep the binding alive toward. Required."],
        ["domain", "d", DEFAULT_SECTION, "The SIP domain: the --config section whose NAT settings apply."],
        ["register", "r", None, "Address of record (user@domain) to REGISTER with the next hop; its Flow-Timer "
                                "(or Via keep) then sets the keepalive interval."],
        ["interval", "i", None, "UDP keepalive interval in seconds (keepalives every 80-100% of it; 0 disables). "
                                "Default: the config's udpKeepaliveInterval, else 25."],
        ["method", "m", None, "UDP keepalive method: stun (Binding request) or crlf (CRLFCRLF datagram). Default: stun."],
        ["backoff-base", None, None, "Base time in seconds of the RFC 5626 section 4.5 re-registration backoff "
                                     "(retries after 50-100% of base * 2^failures, failures >= 1). Default: 30."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["stun"] = []

    def opt_stun(self, server: str) -> None:
        """STUN server HOST[:PORT] or stun:HOST[:PORT] URI (RFC 7064); repeat for failover, tried in order. Default: the next hop answers STUN itself."""  # noqa: E501
        self["stun"].extend(splitServerList(server))

    opt_s = opt_stun


class EdgeOptions(usage.Options):
    synopsis = "[--udp udp:5060] [--tcp tcp:5060] [--domain DOMAIN] [--flow-timer N]"
    longdesc = (
        "An RFC 5626 edge: twisted.protocols.sip.RegisterProxy with an in-memory registry on UDP, answering STUN "
        "keepalives on the SIP port, and SIP over TCP answering CRLFCRLF pings with CRLF pongs."
    )
    optParameters = [
        ["udp", "u", "udp:5060", "UDP SIP socket: udp:PORT[:interface=ADDR]."],
        ["tcp", "t", "tcp:5060", "TCP SIP endpoint (a Twisted endpoint description), or 'none'."],
        ["domain", "d", "localhost", "The SIP domain the registrar accepts registrations for."],
        ["host", None, None, "Host written in the proxy's Via (default: the UDP interface, else 127.0.0.1)."],
        ["flow-timer", "f", None, "Send Flow-Timer: N (seconds) in REGISTER 200 OK responses (RFC 5626)."],
        ["workers", None, "1", "Processes sharing the UDP port (SO_REUSEPORT: the kernel keeps each flow on one "
                               "worker); TCP stays with the first.  Each worker has its own registrar."],
    ]
    optFlags = [["reuse-port", None, "Bind the UDP socket with SO_REUSEPORT (what every worker does)."]]


class STUNOptions(usage.Options):
    synopsis = "[--udp udp:3478] [--tcp tcp:3478] [--alternate ADDR:PORT] [--rate N --burst N | --no-rate-limit]"
    longdesc = "A standalone STUN Binding server (RFC 8489), with RFC 5780 alternate address/port when asked."
    optParameters = [
        ["udp", "u", "udp:3478", "UDP socket: udp:PORT[:interface=ADDR]."],
        ["tcp", "t", None, "Also serve STUN over TCP on this Twisted endpoint description (e.g. tcp:3478)."],
        ["alternate", "a", None, "ADDR:PORT of a second address of this host: enables RFC 5780 (OTHER-ADDRESS, "
                                 "CHANGE-REQUEST); needs --udp with interface= and a fixed port."],
        ["rate", None, "20", "Rate limit: answers per second per source address."],
        ["burst", None, "40", "Rate limit: burst size per source address."],
        ["software", None, None, "SOFTWARE attribute for responses (default: none)."],
        ["workers", None, "1", "Processes sharing the UDP port(s) (SO_REUSEPORT: the kernel keeps each flow on one "
                               "worker); TCP stays with the first."],
    ]
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
    ]
    subCommands = [
        ["client", None, ClientOptions, "Resolve the public address and keep the NAT binding alive."],
        ["edge", None, EdgeOptions, "SIP registrar answering STUN and CRLF keepalives (RFC 5626 edge)."],
        ["stun", None, STUNOptions, "Standalone STUN Binding server."],
    ]


def _settingsFor(options: Options, domain: str) -> Dict[str, NATSettings]:
    """The ``{domain: NATSettings}`` for the client: the config file's, with the command line on top."""
    configured = loadConfig(options["config"]) if options["config"] else {}
    base = configured.get(domain) or configured.get(DEFAULT_SECTION) or NATSettings()
    return {**configured, domain: base}


def _clientService(reactor: Any, options: Options, sub: ClientOptions) -> Any:
    from .roles import ClientRole, parseHostPort, parseUDPDescription

    if sub["next-hop"] is None:
        raise InvalidSettingsError("next-hop", None, "required: HOST:PORT of the next SIP hop")
    nextHop = parseHostPort(sub["next-hop"], "next-hop")
    from .core.addresses import isIPLiteral

    if not isIPLiteral(nextHop[0]):
        raise InvalidSettingsError("next-hop", sub["next-hop"], "must be an IP literal (UDP writes need one)")
    listen = parseUDPDescription(sub["listen"], "listen")
    domain = sub["domain"]
    settings = _settingsFor(options, domain)
    changes: Dict[str, Any] = {}
    if sub["stun"]:
        changes["stunServers"] = tuple(sub["stun"])
    interval = _number("interval", sub["interval"])
    if interval is not None:
        changes["udpKeepaliveInterval"] = interval
    if sub["method"] is not None:
        changes["udpKeepaliveMethod"] = sub["method"]
    if changes:
        try:
            settings[domain] = dataclasses.replace(settings[domain], **changes)
        except InvalidSettingsError as e:
            names = {"stunServers": "stun", "udpKeepaliveInterval": "interval", "udpKeepaliveMethod": "method"}
            raise InvalidSettingsError(names.get(e.key, e.key), e.value, e.why) from None
    backoffBase = _number("backoff-base", sub["backoff-base"])
    if backoffBase is not None and backoffBase == 0:
        raise InvalidSettingsError("backoff-base", sub["backoff-base"], "must be > 0 seconds")
    return ClientRole(reactor, nextHop, settings, domain, listen=listen, register=sub["register"],
                      backoffBase=backoffBase)


def _edgeService(reactor: Any, sub: EdgeOptions) -> Any:
    from .roles import EdgeRole, parseUDPDescription

    flowTimer = _number("flow-timer", sub["flow-timer"], integer=True)
    if flowTimer is not None and flowTimer < 1:
        raise InvalidSettingsError("flow-timer", sub["flow-timer"], "must be at least 1 second")
    tcp = sub["tcp"]
    workers = _workers(sub)
    role = EdgeRole(
        reactor,
        udp=parseUDPDescription(sub["udp"], "udp"),
        tcp=None if tcp is None or tcp.lower() == "none" else tcp,
        domain=sub["domain"],
        host=sub["host"],
        flowTimer=int(flowTimer) if flowTimer is not None else None,
        reusePort=workers > 1 or bool(sub["reuse-port"]),
    )
    from .reuseport import withWorkers

    return withWorkers(reactor, role, role.udp, "edge", sub, workers, {"tcp": "none"})


def _workers(sub: Any) -> int:
    """``--workers``: a whole number >= 1."""
    workers = _number("workers", sub["workers"], integer=True)
    if workers is None or workers < 1:
        raise InvalidSettingsError("workers", sub["workers"], "must be a whole number >= 1")
    return int(workers)


def _stunService(reactor: Any, sub: STUNOptions) -> Any:
    from .roles import STUNRole, parseHostPort, parseUDPDescription

    rateLimit: Optional[Tuple[float, int]] = None
    if not sub["no-rate-limit"]:
        rate = _number("rate", sub["rate"])
        burst = _number("burst", sub["burst"], integer=True)
        if not rate or not burst:
            raise InvalidSettingsError("rate" if not rate else "burst", sub["rate"] if not rate else sub["burst"],
                                       "must be > 0 (use --no-rate-limit to switch the limit off)")
        rateLimit = (rate, int(burst))
    alternate = parseHostPort(sub["alternate"], "alternate") if sub["alternate"] else None
    workers = _workers(sub)
    role = STUNRole(
        reactor,
        udp=parseUDPDescription(sub["udp"], "udp"),
        tcp=sub["tcp"],
        alternate=alternate,
        rateLimit=rateLimit,
        software=sub["software"],
        reusePort=workers > 1 or bool(sub["reuse-port"]),
    )
    from .reuseport import withWorkers

    return withWorkers(reactor, role, role.listener, "stun", sub, workers, {"tcp": None})


def _embeddedService(reactor: Any, options: Options) -> Any:
    """The no-option default: STUN on 127.0.0.1 (any free port) and a client of it on loopback."""
    from twisted.application import service

    from .roles import ClientRole, STUNRole

    top = service.MultiService()
    stun = STUNRole(reactor, udp=(0, "127.0.0.1"))
    stun.setServiceParent(top)
    settings = _settingsFor(options, DEFAULT_SECTION)
    if not options["config"]:
        settings[DEFAULT_SECTION] = NATSettings(udpKeepaliveInterval=EMBEDDED_INTERVAL)
    client = ClientRole(reactor, stun.address, settings, DEFAULT_SECTION, listen=(0, "127.0.0.1"))
    client.setServiceParent(top)  # started after the STUN role, so stun.address() is known by then
    top.stun = stun  # type: ignore[attr-defined]
    top.client = client  # type: ignore[attr-defined]
    return top


def buildService(options: Options, reactor: Any) -> Any:
    """
    The service for parsed ``options`` on ``reactor``.  Raises :class:`InvalidSettingsError` naming the option
    or ``[section] key`` of the first bad value; nothing is bound until the service starts.
    """
    sub: Any = getattr(options, "subOptions", None)
    if options["config"] is not None and options.subCommand in ("edge", "stun"):
        raise InvalidSettingsError("config", options["config"],
                                   f"holds NAT settings for the client; the {options.subCommand} role does not read it")
    if options.subCommand == "client":
        return _clientService(reactor, options, sub)
    if options.subCommand == "edge":
        return _edgeService(reactor, sub)
    if options.subCommand == "stun":
        return _stunService(reactor, sub)
    return _embeddedService(reactor, options)


def makeService(options: Options) -> Any:
    """``IServiceMaker.makeService``: :func:`buildService` on the global reactor, bad values as one line."""
    from twisted.internet import reactor

    try:
        return buildService(options, reactor)
    except InvalidSettingsError as e:
        raise SystemExit(f"twistd sipnat: {e}") from None


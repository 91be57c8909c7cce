"""
The services that own ports: a UDP port (optionally bound with ``SO_REUSEPORT``) and a stream endpoint.

Each is an ``IService`` whose stop closes what its start opened, so a role made of them leaves no port behind.
The UDP one is Twisted's own ``twisted.application.internet.UDPServer`` (which binds in
``privilegedStartService``, before twistd drops privileges), with the bound address readable and the
``SO_REUSEPORT`` bind that lets worker processes share one port (:mod:`twisted_sipnat.service.workers`).

``SO_REUSEPORT``: Linux (3.9+) hashes every datagram's 4-tuple (source and destination address and port) to one
of the sockets bound to the port, so all datagrams of one client flow land on the same process (RFC 5626 flow
state is per flow: nothing needs to be shared) while different flows spread over the processes.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, List, NoReturn, Tuple

from twisted.application import internet, service
from twisted.internet import error as netError
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import InvalidSettingsError, ListenError

__all__ = ["StreamListener", "UDPListener", "listenFailed", "listenUDPReusePort", "reusePortSocket", "whyNotListening"]

HostPort = Tuple[str, int]

log = Logger(namespace="twisted_sipnat.listeners")


#: What the console says for the bind errors an operator meets (the rest: the system's own words).
_REASONS = {
    errno.EADDRINUSE: "port already in use",
    errno.EADDRNOTAVAIL: "address cannot be assigned (not an address of this host)",
    errno.EACCES: "permission denied (a port below 1024 needs privileges)",
    errno.EAFNOSUPPORT: "address family not supported",
}


def whyNotListening(error: BaseException) -> str:
    """The reason a listen failed, in a few words: ``CannotListenError`` and the ``OSError`` inside it."""
    if isinstance(error, netError.CannotListenError):
        error = error.socketError if isinstance(error.socketError, BaseException) else OSError(str(error.socketError))
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the interface ({error.strerror or error})"
    if isinstance(error, OSError):
        return _REASONS.get(error.errno or 0, error.strerror or str(error))
    return str(error) or type(error).__name__


def listenFailed(option: str, description: str, error: BaseException) -> NoReturn:
    """
    A listener of option ``option`` (``udp``, ``tcp``, ``listen``, ``metrics`` ...) could not bind
    ``description``: log one line that names the option and the reason, and raise :class:`ListenError`, which
    ends ``twistd`` with status 1 and no traceback.  Every listener of the roles calls this for its bind
    errors; a listener of another part (the metrics endpoint) should call it too, from its ``startService``.
    """
    failure = ListenError(option, description, whyNotListening(error))
    log.error("twistd sipnat: {failure}", failure=str(failure), sipnat_event="listen.failed")
    raise failure from None


def reusePortSocket(port: int, interface: str = "") -> socket.socket:
    """
    A non-blocking UDP socket bound to ``(interface, port)`` with ``SO_REUSEPORT``, so other processes (of the
    same user) can bind the same port and the kernel spreads flows over them.  IPv6 when ``interface`` is an
    IPv6 literal.  Raises ``OSError`` where the platform has no ``SO_REUSEPORT`` or the bind fails.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available on this platform")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listenUDPReusePort(
    reactor: Any, port: int, proto: protocol.AbstractDatagramProtocol, interface: str = "",
    maxPacketSize: int = 8192,
) -> Any:
    """
    Like ``reactor.listenUDP`` but with ``SO_REUSEPORT`` set before binding; returns the ``IListeningPort``.
    The reactor adopts a duplicate of the descriptor, so the socket made here is closed at once.
    """
    sock = reusePortSocket(port, interface)
    try:
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, proto, maxPacketSize)
    finally:
        sock.close()


class UDPListener(internet.UDPServer):
    """
    One UDP port as a service: Twisted's ``UDPServer`` on an explicit reactor, plus :meth:`address`.

    ``port`` is the ``IListeningPort`` while bound (``port.getHost().port`` is the real number after ``udp:0``),
    else ``None``.  ``reusePort`` binds with ``SO_REUSEPORT`` so worker processes can share the port.  A bind
    error raises from ``startService`` (or ``privilegedStartService``) before the service counts as running.
    """

    def __init__(self, reactor: Any, portNumber: int, proto: protocol.AbstractDatagramProtocol, interface: str = "",
                 reusePort: bool = False, option: str = "udp") -> None:
        internet.UDPServer.__init__(self, portNumber, proto, interface=interface, reactor=reactor)
        #: The option this port comes from, for the one line a failed bind prints (:func:`listenFailed`).
        self.option = option
        self.portNumber = portNumber
        self.protocol = proto
        self.interface = interface
        self.reusePort = reusePort

    @property
    def port(self) -> Any:
        """The listening port while bound, else ``None``."""
        return self._port

    def _getPort(self) -> Any:
        # UDPServer's one hook for how the port is made: reactor.listenUDP, or our SO_REUSEPORT bind.  Called
        # from privilegedStartService or startService; a bind error is the console's one line (listenFailed).
        try:
            if self.reusePort:
                return listenUDPReusePort(self.reactor, self.portNumber, self.protocol, self.interface)
            return internet.UDPServer._getPort(self)
        except (netError.CannotListenError, OSError) as e:
            description = f"udp:{self.portNumber}" + (f":interface={self.interface}" if self.interface else "")
            listenFailed(self.option, description, e)

    def startService(self) -> None:
        # Bind before marking running, so a failed bind leaves the service stopped (twistd reports the error).
        if self._port is None:
            self._port = self._getPort()
        internet.UDPServer.startService(self)

    def address(self) -> HostPort:
        """The bound ``(host, port)``; a wildcard interface reads as the loopback address of its family."""
        if self.port is None:
            raise RuntimeError("not listening")
        host = self.port.getHost()
        name = host.host
        if name in ("0.0.0.0", ""):
            name = "127.0.0.1"
        elif name == "::":
            name = "::1"
        return name, host.port


class StreamListener(service.Service):
    """
    A stream endpoint as a service, keeping the port so that stopping closes it.  A description the endpoint
    parser refuses is an :class:`InvalidSettingsError` (naming ``key``) at construction; a listen that fails at
    start-up (the port is taken) raises from ``startService``, as a UDP port does, instead of leaving the role
    running half-up.
    """

    port: Any = None

    def __init__(self, reactor: Any, description: str, factory: Any, key: str = "tcp") -> None:
        from twisted.internet import endpoints

        self.reactor = reactor
        self.key = key
        self.description = description
        self.factory = factory
        self.port = None
        try:
            self.endpoint = endpoints.serverFromString(reactor, description)
        except Exception as e:  # noqa: BLE001 - the parser raises ValueError, KeyError, TypeError ...
            raise InvalidSettingsError(key, description, f"not a stream endpoint description ({e})") from None

    def startService(self) -> None:
        service.Service.startService(self)
        outcome: List[Any] = []
        d = self.endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            service.Service.stopService(self)
            refused: Failure = outcome[0]
            if refused.check(netError.CannotListenError, OSError) and refused.value is not None:
                listenFailed(self.key, self.description, refused.value)  # tcp:/ssl: listen at once: say so now
            refused.raiseException()

        def listening(port: Any) -> None:
            self.port = port
            log.info("listening on {description}", description=self.description, sipnat_event="listening")

        def failed(f: Failure) -> None:
            log.error("twistd sipnat: --{option} {description}: {why}", option=self.key, description=self.description,
                      why=whyNotListening(f.value if f.value is not None else Exception()),
                      sipnat_event="listen.failed")

        if outcome:
            listening(outcome[0])
        else:  # an endpoint that listens later: a failure can only be logged (in one line, as above)
            d.addCallbacks(listening, failed)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

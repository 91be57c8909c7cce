"""
Hearing that the host's network changed, for the client role: a cheap poll of the host's addresses and default
routes (Linux ``/proc/net``), every :data:`POLL_INTERVAL` seconds, that calls
:meth:`NATTraversalController.networkChanged <twisted_sipnat.controller.NATTraversalController.networkChanged>`
when they differ from the last poll.

Why a poll and not netlink (``pyroute2``): a poll needs no dependency and no descriptor in the reactor, reads
four small files of the process's own network namespace, and its 2 s delay is small next to the
25 s a rebinding went unnoticed before (the next scheduled keepalive) and to the round trip plus backoff a
re-registration takes anyway.  What it watches: every local IPv4 address (``fib_trie``'s ``/32 host LOCAL``
entries), every IPv6 address (``if_inet6``) and the default routes (``route``, ``ipv6_route``): a new default route
changes the source address the system picks for a wildcard-bound socket even when no address changed (a
laptop moving from Wi-Fi to a cable with both up).  Where ``/proc/net`` cannot be read (not Linux) the watcher
logs it once and reports nothing: keepalives still find a rebinding, one interval later.

:class:`NetworkWatcher` is a plain :class:`twisted.application.service.Service`; the client role makes one with
its controller's ``networkChanged`` as ``onChange``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, FrozenSet, Optional, Set, Tuple

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..errors import InvalidSettingsError
from .figures import Figures

__all__ = ["POLL_INTERVAL", "NetworkWatcher", "hostAddresses"]

log = Logger(namespace="twisted_sipnat.netwatch")

#: Seconds between two looks at the host's addresses.
POLL_INTERVAL = 2.0

Snapshot = FrozenSet[Tuple[str, ...]]


def _fibLocalAddresses(text: str) -> FrozenSet[Tuple[str, ...]]:
    """The IPv4 addresses of the host: ``fib_trie`` entries whose next line is ``/32 host LOCAL``."""
    found: Set[Tuple[str, ...]] = set()
    last: Optional[str] = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("|--", "+--")):
            last = stripped[3:].split()[0].split("/")[0]
        elif stripped.startswith("/32 host LOCAL") and last is not None:
            found.add(("inet", last))
    return frozenset(found)


def _inet6Addresses(text: str) -> FrozenSet[Tuple[str, ...]]:
    """The IPv6 addresses (and their interfaces) of ``/proc/net/if_inet6``."""
    found: Set[Tuple[str, ...]] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            found.add(("inet6", fields[0], fields[5]))
    return frozenset(found)


def _defaultRoutes(text: str) -> FrozenSet[Tuple[str, ...]]:
    """The IPv4 default routes ``(interface, gateway)`` of ``/proc/net/route``."""
    found: Set[Tuple[str, ...]] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            found.add(("default", fields[0], fields[2]))
    return frozenset(found)


_ZERO6 = "0" * 32


def _defaultRoutes6(text: str) -> FrozenSet[Tuple[str, ...]]:
    """
    The IPv6 default routes ``(interface, gateway)`` of ``/proc/net/ipv6_route``: destination ``::/0`` with a
    gateway (the kernel's own ``::/0`` reject route on ``lo`` has none).
    """
    found: Set[Tuple[str, ...]] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 10 and fields[0] == _ZERO6 and fields[1] == "00" and fields[4] != _ZERO6:
            found.add(("default6", fields[9], fields[4]))
    return frozenset(found)


def hostAddresses(root: Path = Path("/proc/net")) -> Optional[Snapshot]:
    """The host's addresses and default routes as one comparable value; ``None`` when they cannot be read."""
    try:
        fib = (root / "fib_trie").read_text()
    except OSError:
        return None
    try:
        inet6 = (root / "if_inet6").read_text()
    except OSError:
        inet6 = ""  # IPv6 disabled
    try:
        routes = (root / "route").read_text()
    except OSError:
        routes = ""
    try:
        routes6 = (root / "ipv6_route").read_text()
    except OSError:
        routes6 = ""  # IPv6 disabled
    return _fibLocalAddresses(fib) | _inet6Addresses(inet6) | _defaultRoutes(routes) | _defaultRoutes6(routes6)


class NetworkWatcher(service.Service):
    """
    Calls ``onChange()`` when the host's addresses or default routes under ``root`` differ from the last look
    (see the module docstring); meant to be given ``controller.networkChanged``.  ``interval`` is in seconds
    between two looks; a change is reported at most ``interval`` after it happened, once.
    """

    def __init__(self, reactor: Any, onChange: Callable[[], Any], root: Path = Path("/proc/net"),
                 interval: float = POLL_INTERVAL) -> None:
        if not interval > 0:
            raise InvalidSettingsError("interval", interval, "the address poll interval must be > 0 seconds")
        self.reactor = reactor
        self.onChange = onChange
        self.root = root
        self.interval = interval
        #: How many changes were seen (and reported) so far.
        self.changes = 0
        self._last: Optional[Snapshot] = None
        self._loop: Optional[LoopingCall] = None
        self._unreadable = False

    def read(self) -> Optional[Snapshot]:
        """One snapshot of the host's addresses (``None``: cannot tell)."""
        return hostAddresses(self.root)

    def startService(self) -> None:
        service.Service.startService(self)
        self._last = self.read()
        if self._last is None:
            self._sayUnreadable()
        loop = self._loop = LoopingCall(self.poll)
        loop.clock = self.reactor
        loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("the address watcher stopped", f, sipnat_event="sipnat.netwatch.error"))

    def _sayUnreadable(self) -> None:
        if not self._unreadable:
            self._unreadable = True
            log.info("cannot read the host's addresses under {root}: network changes are found by keepalives only",
                     root=str(self.root), sipnat_event="sipnat.netwatch.unavailable")

    def poll(self) -> None:
        """One look; ``onChange()`` when something differs (a failing ``onChange`` is logged, the loop goes on)."""
        current = self.read()
        if current is None:
            self._sayUnreadable()
            return
        previous = self._last
        self._last = current
        if previous is None or current == previous:
            # Nothing to compare with (the first readable look after an unreadable one) or nothing changed.
            return
        self.changes += 1
        added = sorted(" ".join(entry) for entry in current - previous)
        removed = sorted(" ".join(entry) for entry in previous - current)
        log.info("the host's network changed (added: {added}; removed: {removed}): checking every flow now",
                 added=", ".join(added) or "nothing", removed=", ".join(removed) or "nothing",
                 sipnat_event="sipnat.netwatch.changed")
        try:
            self.onChange()
        except Exception:
            log.failure("networkChanged failed", sipnat_event="sipnat.netwatch.error")

    def reportFigures(self, figures: Figures) -> None:
        """``sipnat_network_changes_total``: the changes seen (each one called ``onChange`` once)."""
        figures.count("sipnat_network_changes_total", self.changes)

    def stopService(self) -> Any:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return service.Service.stopService(self)

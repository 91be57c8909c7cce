"""
One reactor timer kept at the instant a sans-IO core next wants to be woken at.

Why one class for it: every core here (the engine, the connection table, the registrar, the REGISTER client's
transaction) answers "when do you next need me?" with one instant, however many flows, connections or
bindings it holds, so the shell keeps one ``IDelayedCall`` per core and moves it, never one per item (the
registrar once had 12,000 pending timers for 12,000 bindings).  Moving it right is the same few lines each
time: cancel when the core needs nothing, reset when the instant changed, call later when there is none.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall

__all__ = ["Wakeup"]


class Wakeup:
    """
    ``reactor`` (anything with ``callLater``) calls ``wake(scheduledFor)`` at the instant last given to
    :meth:`at`.  ``scheduledFor`` is that instant (or the time it was armed at, when the instant had passed): a
    reactor may fire a hair before it (float rounding of delay and clock), and a core that compares strictly
    wants "now" no earlier than what it asked for.
    """

    __slots__ = ("reactor", "wake", "_call")

    def __init__(self, reactor: Any, wake: Callable[[float], None]) -> None:
        self.reactor = reactor
        self.wake = wake
        self._call: Optional[IDelayedCall] = None

    @property
    def pending(self) -> bool:
        """Whether the timer is armed."""
        return self._call is not None and self._call.active()

    def at(self, when: Optional[float], now: float) -> None:
        """Be woken at ``when`` (seconds on the reactor's clock; ``now`` is its time), or not at all (``None``)."""
        call = self._call
        if when is None:
            self.cancel()
        elif call is not None and call.active():
            if call.getTime() != when:
                call.reset(max(0.0, when - now))
        else:
            self._call = self.reactor.callLater(max(0.0, when - now), self._fire)

    def cancel(self) -> None:
        """Disarm the timer."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        call, self._call = self._call, None
        assert call is not None
        self.wake(call.getTime())

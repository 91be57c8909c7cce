"""
The RFC 3261 §17.1.2 non-INVITE client transaction, sans-IO: over an unreliable transport (UDP) with its
retransmissions, over a reliable one (TCP, TLS) with none.

Why a state machine of its own: the REGISTER client must retransmit on its own timers, stop at the first final
response, and never mistake someone else's response for its own.  Kept pure, the rules are tested against
every order of timers and responses with no reactor at all; the shell only arms one delayed call at
:meth:`NonInviteClientTransaction.nextWake` and writes what it is told to.

The rules (RFC 3261 §17.1.2.2, figure 6):

- **Trying**: the request is sent at once; Timer E fires first after T1 (0.5 s), then after twice the last
  interval, up to T2 (4 s); each firing retransmits.
- **Proceeding** (a 1xx arrived): Timer E keeps firing, every T2.
- Over a reliable transport (``reliable=True``: TCP, TLS) Timer E is not set: RFC 3261 §17.1.2.2 has it only
  for unreliable transports, since the transport itself delivers the request or fails (§18: the connection's
  loss is the shell's to report).  Timer F still runs, 64 x T1, so a registrar that never answers ends the
  transaction all the same.
- Timer F (64 x T1 = 32 s) ends the transaction with a timeout, in either state.  When Timer E and F fall
  due together, F wins: nothing is sent at the instant the transaction gives up.
- A final response (200-699) ends the transaction.  RFC 3261 has it wait in *Completed* for Timer K (T4, 5 s
  on UDP) only to absorb retransmissions of that response; here the transaction is simply over, and since a
  response is matched by the branch of this transaction's request, a late copy matches nothing.

Matching (RFC 3261 §17.1.3): a response belongs to this transaction when the branch of its top Via is the
branch of the request's top Via and its CSeq method is the request's method.  The CSeq number and the Call-ID
are compared as well: they cost nothing and make a forged or stray response still less likely to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .error import SIPParseError
from .fields import Via
from .message import Request, Response, cseqOf

__all__ = ["T1", "T2", "TIMER_F", "NonInviteClientTransaction", "Retransmit", "TimedOut"]

#: RFC 3261 §17.1.1.1: the round-trip time estimate, and the longest retransmission interval for non-INVITE.
T1 = 0.5
T2 = 4.0
#: RFC 3261 §17.1.2.2: the non-INVITE transaction timeout, 64 x T1.
TIMER_F = 64 * T1


@dataclass(frozen=True)
class Retransmit:
    """Timer E fired: send :attr:`data` again."""

    data: bytes


@dataclass(frozen=True)
class TimedOut:
    """Timer F fired: no final response within :attr:`after` seconds (RFC 3261 §17.1.2.2)."""

    after: float


def _topBranch(message: Union[Request, Response]) -> Optional[str]:
    top = message.headers.get("Via")
    if top is None:
        return None
    try:
        return Via.parse(top).branch
    except SIPParseError:
        return None


class NonInviteClientTransaction:
    """
    One non-INVITE request, from its first send to its final response or timeout.

    Construct it with the request and ``now``; send :attr:`data` at once.  Then call :meth:`timerDue` when
    :meth:`nextWake` is reached and :meth:`responseReceived` with each response; :attr:`state` is
    ``"trying"``, ``"proceeding"`` or ``"terminated"``, and :attr:`final` the response that ended it.
    ``t1``, ``t2`` and ``timerF`` replace the RFC 3261 defaults (a network known to be slower, RFC 3261 §17.1.1.1).
    ``reliable`` (TCP, TLS): sent once, never retransmitted (RFC 3261 §17.1.2.2); only Timer F is left.
    """

    __slots__ = ("request", "data", "branch", "cseq", "callId", "state", "final", "sends",
                 "reliable", "_interval", "_retransmitAt", "_giveUpAt", "_t2", "_timerF")

    def __init__(self, request: Request, now: float, *, t1: float = T1, t2: float = T2,
                 timerF: Optional[float] = None, reliable: bool = False) -> None:
        if not 0 < t1 <= t2:
            raise ValueError(f"need 0 < T1 <= T2, not T1={t1!r}, T2={t2!r}")
        branch = _topBranch(request)
        if branch is None:
            raise ValueError("the request has no top Via with a branch (RFC 3261 §8.1.1.7)")
        self.request = request
        self.data = request.toBytes()
        self.branch = branch
        self.cseq = cseqOf(request)
        self.callId = request.headers.get("Call-ID")
        self.state = "trying"
        self.final: Optional[Response] = None
        self.sends = 1
        self.reliable = reliable
        self._t2 = t2
        self._timerF = 64 * t1 if timerF is None else timerF
        self._interval = t1
        self._retransmitAt = float("inf") if reliable else now + t1
        self._giveUpAt = now + self._timerF

    @property
    def done(self) -> bool:
        return self.state == "terminated"

    def nextWake(self) -> Optional[float]:
        """When :meth:`timerDue` must next be called; ``None`` once the transaction is over."""
        if self.done:
            return None
        return min(self._retransmitAt, self._giveUpAt)

    def timerDue(self, now: float) -> Union[Retransmit, TimedOut, None]:
        """Handle the timers due at ``now``: a retransmission (Timer E), the timeout (Timer F), or nothing."""
        if self.done:
            return None
        if now >= self._giveUpAt:
            self.state = "terminated"
            return TimedOut(self._timerF)
        if now < self._retransmitAt:
            return None
        # RFC 3261 §17.1.2.2: in Trying the interval doubles up to T2; in Proceeding it is T2.
        self._interval = self._t2 if self.state == "proceeding" else min(2 * self._interval, self._t2)
        self._retransmitAt = now + self._interval
        self.sends += 1
        return Retransmit(self.data)

    def matches(self, response: Response) -> bool:
        """RFC 3261 §17.1.3: the top Via's branch and the CSeq (number and method) are this request's."""
        if _topBranch(response) != self.branch or response.headers.get("Call-ID") != self.callId:
            return False
        try:
            return cseqOf(response) == self.cseq
        except SIPParseError:
            return False

    def responseReceived(self, response: Response) -> Optional[Response]:
        """
        Feed a response; returns it when it is this transaction's final response (the transaction is then
        over), else ``None`` (not ours, provisional, or the transaction is already over).
        """
        if self.done or not self.matches(response):
            return None
        if response.code < 200:
            if self.state == "trying":
                self.state = "proceeding"
            return None
        self.state = "terminated"
        self.final = response
        return response

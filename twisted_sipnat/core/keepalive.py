"""
The keepalive policy of one flow, sans-IO (RFC 5626 §4.4).

Theory of operation
-------------------
A :class:`FlowKeeper` decides *when* a flow's next keepalive is due, what is being waited for, and how to judge
what comes back.  It never writes: the shell asks :attr:`FlowKeeper.nextTime`, calls :meth:`FlowKeeper.fire` at
that instant, and acts on the result:

======================  ===============================================================================
``fire`` returns        meaning for the shell
======================  ===============================================================================
:data:`KEEPALIVE`       send one keepalive now (a STUN Binding transaction, a CRLF datagram or a CRLFCRLF ping)
:data:`PONG_TIMEOUT`    the flow failed: no pong within ``pongTimeout`` (§4.4.1)
``None``                nothing to do (a STUN keepalive is still retransmitting, or it was not yet time)
======================  ===============================================================================

Every keepalive is followed by a fresh random delay of 80-100 % of the base interval (§4.4.1: the Flow-Timer
value when the registrar gave one, else the configured interval), so flows that started together drift apart
instead of bursting in step.  The delay counts from the instant the keepalive was *due*, so a keepalive the
socket arbitration held back does not push the whole schedule later.

Inputs from the wire: :meth:`~FlowKeeper.pingWritten` arms the pong deadline when a ping actually left,
:meth:`~FlowKeeper.pongReceived` disarms it; :meth:`~FlowKeeper.judgeMappedAddress` compares a keepalive answer's
XOR-MAPPED-ADDRESS with the baseline (§4.4.2: a change means the NAT rebound the flow).
"""

from __future__ import annotations

import math
import random
from typing import Any, Optional, Tuple

from .stun import endsWithValidFingerprint
from .timers import Timed

#: :meth:`FlowKeeper.fire`: send a keepalive now.
KEEPALIVE = "keepalive"
#: :meth:`FlowKeeper.fire`: the pong did not arrive in time; the flow failed.
PONG_TIMEOUT = "pong-timeout"
#: :meth:`FlowKeeper.fire`: an ``"auto"`` flow's first STUN transaction is still retransmitting toward a hop
#: that never answered: send a CRLFCRLF datagram beside it so the NAT binding outlives the undecided phase.
BRIDGE = "bridge"



class BridgeKey:
    """
    The write key of an ``"auto"`` flow's CRLFCRLF datagrams sent beside its undecided STUN transaction (see
    :data:`BRIDGE`): one per flow, so the socket's arbitration holds at most one of them per flow, toward that
    flow's hop; ``held`` says whether one is held now (to withdraw it when the flow stops).
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False


#: Keepalive kinds.
STUN = "stun"  # UDP, STUN Binding request to the next hop (RFC 5626 §4.4.2)
CRLF = "crlf"  # UDP, a CRLFCRLF datagram, no answer expected
PING = "ping"  # TCP/TLS, CRLFCRLF ping and CRLF pong (RFC 5626 §4.4.1)

#: RFC 5626 §4.4.1: each interval is a random value between 80 and 100 % of the base.
JITTER_LOW = 0.8
JITTER_HIGH = 1.0

#: The keepalive bytes of RFC 5626 §3.5.1.
PING_BYTES = b"\r\n\r\n"
PONG_BYTES = b"\r\n"


#: Keepalive instants are placed on a grid of this many seconds of reactor time, always inside the 80-100 %
#: window.  Flows due in the same slot are then handled in one wake-up of the shell's single timer: at carrier
#: scale (100,000 flows at 25 s: 4,444 keepalives/s) a reactor wake-up per keepalive costs more than the
#: keepalive itself.  10 ms is far below anything RFC 5626 or a NAT can tell apart.
SLOT = 0.01


def jittered(base: float, rng: random.Random) -> float:
    """A fresh delay in [80 %, 100 %] of ``base`` (RFC 5626 §4.4.1)."""
    return base * rng.uniform(JITTER_LOW, JITTER_HIGH)


def nextInstant(start: float, base: float, rng: random.Random) -> float:
    """
    ``start`` plus a fresh 80-100 % of ``base`` (RFC 5626 §4.4.1), moved onto the :data:`SLOT` grid (up, or
    down if up would leave the window); a window narrower than a slot keeps the exact random instant.
    """
    candidate = start + jittered(base, rng)
    snapped = math.ceil(candidate / SLOT) * SLOT
    if snapped > start + base * JITTER_HIGH:
        snapped = math.floor(candidate / SLOT) * SLOT
    if snapped < start + base * JITTER_LOW:
        return candidate
    return snapped


class FlowKeeper(Timed):
    """When one flow's keepalives are due, and what the answers mean."""

    __slots__ = (
        "kind",
        "base",
        "pongTimeout",
        "rng",
        "nextKeepaliveAt",
        "pongDeadline",
        "stunInFlight",
        "baseline",
        "observer",
        "sock",
        "nextHop",
        "settings",
        "txn",
        "done",
        "held",
        "pingArmed",
        "memo",
        "auto",
        "bridgeKey",
        "hopAnswered",
        "local",
    )

    def __init__(
        self,
        kind: str,
        base: float,
        now: float,
        rng: random.Random,
        *,
        pongTimeout: float = 10.0,
        baseline: Any = None,
        observer: Any = None,
        sock: Any = None,
        nextHop: Optional[Tuple[str, int]] = None,
        settings: Any = None,
        auto: bool = False,
        local: Optional[Tuple[str, int]] = None,
        stunAnswered: Optional[bool] = None,
    ) -> None:
        Timed.__init__(self)
        if kind not in (STUN, CRLF, PING):
            raise ValueError(f"unknown keepalive kind {kind!r}")
        if not base > 0:
            raise ValueError(f"keepalive interval must be > 0, not {base!r}")
        self.kind = kind
        self.base = base
        self.pongTimeout = pongTimeout
        self.rng = rng
        # §4.4.1: the first keepalive too waits 80-100 % of the interval, never at once.
        self.nextKeepaliveAt = nextInstant(now, base, rng)
        self.pongDeadline: Optional[float] = None
        self.stunInFlight = False
        #: The public address ``(host, port)`` the next hop first reported on this flow (``None`` until then).
        self.baseline = baseline
        #: The engine's context: the shell's key (the observer), the socket record, where and how to send.
        self.observer = observer
        self.sock = sock
        self.nextHop = nextHop
        self.settings = settings
        #: The STUN keepalive transaction in flight (set and cleared by :meth:`keepaliveStarted` and
        #: :meth:`keepaliveEnded` only, which keep :attr:`stunInFlight` in step).
        self.txn: Any = None
        #: Stopped (freed, failed or replaced): nothing of it is sent or reported any more.
        self.done = False
        #: A ping or CRLF of this flow was held back by the socket's arbitration (to withdraw when it stops).
        self.held = False
        #: The pong deadline was armed by the ping just handed out (undone if that ping is held back).
        self.pingArmed = False
        #: The last answer that confirmed the baseline (:class:`AnswerMemo`).
        self.memo: Optional[AnswerMemo] = None
        #: ``udpKeepaliveMethod="auto"``: a STUN flow that turns to CRLF when a hop that never answered is silent.
        self.auto = auto and kind == STUN
        #: The write key of this flow's bridge datagrams (``"auto"`` only).
        self.bridgeKey: Optional[BridgeKey] = BridgeKey() if self.auto else None
        #: The next hop answered a STUN request on this flow (a baseline from it counts: it answered the
        #: resolution on this very socket; ``stunAnswered`` says otherwise for a baseline that came from
        #: elsewhere, such as the registrar's received/rport, which proves nothing about STUN).
        self.hopAnswered = baseline is not None if stunAnswered is None else stunAnswered
        #: The socket's local ``(host, port)`` when the keepalives started (``None``: unknown), for
        #: ``networkChanged``.
        self.local = local

    @property
    def nextTime(self) -> float:
        """When :meth:`fire` must be called next."""
        if self.pongDeadline is not None and self.pongDeadline < self.nextKeepaliveAt:
            return self.pongDeadline
        return self.nextKeepaliveAt

    def fire(self, now: float) -> Optional[str]:
        if self.pongDeadline is not None and now >= self.pongDeadline:
            self.pongDeadline = None
            return PONG_TIMEOUT
        if now < self.nextKeepaliveAt:
            return None
        self.nextKeepaliveAt = nextInstant(self.nextKeepaliveAt, self.base, self.rng)
        if self.nextKeepaliveAt <= now:  # the shell woke us very late: do not send a burst to catch up
            self.nextKeepaliveAt = nextInstant(now, self.base, self.rng)
        if self.kind == STUN and self.stunInFlight:
            # The previous Binding is still retransmitting: its timeout will report the failure, and two
            # transactions for one flow would only add load.  Its retransmissions are spaced ever wider (RFC
            # 8489 §6.2.1: up to 16 RTO, 8 s at the default), so on an "auto" flow whose hop never answered --
            # one that may turn to CRLF keepalives when this transaction times out -- a CRLFCRLF datagram keeps
            # the NAT binding (and the registrar's view of the flow) alive on schedule meanwhile.
            return BRIDGE if self.auto and not self.hopAnswered else None
        return KEEPALIVE

    def keepaliveStarted(self, txn: Any) -> None:
        """A STUN keepalive transaction started for this flow: no second one until it ends (see :meth:`fire`)."""
        self.txn = txn
        self.stunInFlight = True

    def keepaliveEnded(self, txn: Any = None) -> None:
        """The flow's STUN keepalive transaction ended (answered, timed out, unusable or cancelled)."""
        if txn is None or self.txn is txn:
            self.txn = None
            self.stunInFlight = False

    def pingWritten(self, now: float) -> bool:
        """
        A ping left the socket: the pong must arrive within ``pongTimeout`` (the earliest deadline stands).
        ``True`` when this ping armed the deadline.
        """
        if self.pongDeadline is None:
            self.pongDeadline = now + self.pongTimeout
            return True
        return False

    def pingHeld(self) -> None:
        """The ping just handed out was held back by the socket: its deadline starts when it is written."""
        if self.pingArmed:
            self.pingArmed = False
            self.pongDeadline = None

    def pongReceived(self) -> bool:
        """A CRLF arrived on the flow; ``True`` if it was the pong we were waiting for."""
        if self.pongDeadline is None:
            return False
        self.pongDeadline = None
        return True

    @property
    def awaitingPong(self) -> bool:
        return self.pongDeadline is not None

    def moveTo(self, nextHop: Tuple[str, int]) -> None:
        """``updateNextHop``: the new hop reports the mapping it sees, so it sets a new baseline."""
        self.nextHop = nextHop
        self.baseline = None
        self.memo = None
        self.hopAnswered = False

    def fallsBackOnTimeout(self) -> bool:
        """
        ``"auto"``: a keepalive transaction timed out toward a hop that never answered STUN on this flow (a
        registrar without RFC 5626 outbound support): the flow turns to CRLF keepalives, which need no answer,
        instead of failing -- failing would re-register and meet the same silence, in a loop.  ``False`` (a
        ``STUNTimeout``) when the hop answered before: then the silence means the path is gone.
        """
        if not self.auto or self.hopAnswered:
            return False
        self.auto = False
        self.kind = CRLF
        return True

    def restartSchedule(self, now: float) -> None:
        """A keepalive was sent out of schedule (``networkChanged``): the next one is 80-100 % from ``now``."""
        self.nextKeepaliveAt = nextInstant(now, self.base, self.rng)

    def judgeMappedAddress(self, mapped: Any) -> Optional[Tuple[Any, Any]]:
        """
        A keepalive answer reported ``mapped``: returns ``(old, new)`` when it differs from the baseline (the
        flow failed, §4.4.2), else ``None``.  The first answer sets the baseline.
        """
        if self.baseline is None:
            self.baseline = mapped
            return None
        if mapped != self.baseline:
            return (self.baseline, mapped)
        return None


class AnswerMemo:
    """
    What a healthy flow's keepalive answers have in common: on a flow whose mapping has not changed, the next
    hop answers every Binding with the same bytes but for the transaction ID and the FINGERPRINT value that
    covers it (IPv4's XOR-MAPPED-ADDRESS is XORed with the magic cookie alone, RFC 8489 §14.2).  An answer
    with the same :attr:`shape` (and, when the memo had one, a valid FINGERPRINT) therefore passes every check
    the first one passed -- class, method, comprehension-required attributes, the mapped address equal to
    :attr:`baseline` -- and is taken without decoding.  Anything else (an IPv6 mapping, whose XOR covers the ID;
    credentials, whose MESSAGE-INTEGRITY covers it; any other byte changed) takes the full path.
    """

    __slots__ = ("shape", "fingerprinted", "baseline")

    def __init__(self, shape: bytes, fingerprinted: bool, baseline: Any) -> None:
        self.shape = shape
        self.fingerprinted = fingerprinted
        self.baseline = baseline

    @staticmethod
    def shapeOf(data: bytes, fingerprinted: bool) -> bytes:
        """``data`` without its transaction ID and, if ``fingerprinted``, without the FINGERPRINT value."""
        return data[:8] + data[20:-4] if fingerprinted else data[:8] + data[20:]

    def matches(self, data: bytes, baseline: Any) -> bool:
        if baseline is not self.baseline or self.shapeOf(data, self.fingerprinted) != self.shape:
            return False
        return not self.fingerprinted or endsWithValidFingerprint(data)

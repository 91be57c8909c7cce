"""
NAT behaviour discovery (RFC 5780 §4.3 mapping, §4.4 filtering), sans-IO: the test sequence and the
classification.  The shell (:mod:`twisted_sipnat.discovery`) asks :meth:`DiscoveryPlan.nextTest` what to send,
sends it as one Binding transaction from the SIP socket, and reports the answer (or the timeout) back, until
:attr:`DiscoveryPlan.outcome` is set.

Mapping (§4.3), against a server whose primary address is ``ip1:p1`` and whose OTHER-ADDRESS is ``ip2:p2``:

- test I: Binding to ``ip1:p1`` gives ``X1`` (and OTHER-ADDRESS; without it the server cannot do RFC 5780);
- ``X1`` equal to the local address used toward ``ip1:p1``: no NAT; the mapping is endpoint-independent;
- test II: Binding to ``ip2:p1`` gives ``X2``; ``X2 == X1``: endpoint-independent;
- test III: Binding to ``ip2:p2`` gives ``X3``; ``X3 == X2``: address-dependent, else address-and-port-dependent.

Filtering (§4.4), all to ``ip1:p1``, run right after test I and before the mapping tests II and III (which
send to ``ip2`` and so would open the filter being probed):

- test II: CHANGE-REQUEST change-IP and change-port; an answer (from ``ip2:p2``): endpoint-independent;
- test III: CHANGE-REQUEST change-port only; an answer (from ``ip1:p2``): address-dependent, else
  address-and-port-dependent.

Out of scope: the binding lifetime test of §4.6, hairpinning (§4.5) and fragment handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from ..errors import NATTraversalError, STUNErrorResponse
from . import stun

HostPort = Tuple[str, int]

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class NATBehaviour:
    """What discovery found. ``natPresent`` is ``False`` when the mapped address is the local one."""

    mapping: str
    filtering: str
    mappedAddress: HostPort
    otherAddress: HostPort
    localAddress: Optional[HostPort]
    natPresent: bool


@dataclass(frozen=True)
class Test:
    """One Binding request of the sequence: where to, with which CHANGE-REQUEST, answered from anywhere?"""

    destination: HostPort
    changeRequest: Optional[Tuple[bool, bool]] = None

    @property
    def anySource(self) -> bool:
        return self.changeRequest is not None

    @property
    def attributes(self) -> List[Any]:
        return [] if self.changeRequest is None else [stun.ChangeRequest(*self.changeRequest)]


def classifyMapping(x1: HostPort, x2: HostPort, x3: Optional[HostPort]) -> str:
    """RFC 5780 §4.3 from the mapped addresses of tests I, II and III (III is not needed when I == II)."""
    if x2 == x1:
        return ENDPOINT_INDEPENDENT
    if x3 is None:
        raise ValueError("test III is needed when tests I and II differ")
    return ADDRESS_DEPENDENT if x3 == x2 else ADDRESS_AND_PORT_DEPENDENT


def classifyFiltering(answeredChangeIPAndPort: bool, answeredChangePort: bool) -> str:
    """RFC 5780 §4.4 from whether filtering tests II and III got an answer."""
    if answeredChangeIPAndPort:
        return ENDPOINT_INDEPENDENT
    return ADDRESS_DEPENDENT if answeredChangePort else ADDRESS_AND_PORT_DEPENDENT


def mappedOf(response: Any, server: HostPort) -> HostPort:
    """The mapped address of a test's answer; an error response or none raises (the discovery fails)."""
    if response.messageClass != stun.SUCCESS:
        code, reason = response.errorCode or (0, "error response")
        raise STUNErrorResponse(code, reason, server)
    mapped = response.mappedAddress
    if mapped is None:
        raise NATTraversalError(f"the Binding success from {server[0]}:{server[1]} has no mapped address")
    return (mapped[0], mapped[1])


class DiscoveryPlan:
    """
    The RFC 5780 test sequence against ``primary``.  ``localToward(destination)`` gives the local address the
    socket sends from toward a destination (for a socket bound to a wildcard address, routing decides).
    """

    def __init__(self, primary: HostPort, localToward: Any) -> None:
        self.primary = primary
        self.localToward = localToward
        self.outcome: Optional[NATBehaviour] = None
        self._x1: Optional[HostPort] = None
        self._x2: Optional[HostPort] = None
        self._other: Optional[HostPort] = None
        self._local: Optional[HostPort] = None
        self._answered: List[bool] = []
        self._filtering: Optional[str] = None
        self._pending: Optional[Test] = Test(primary)

    def nextTest(self) -> Optional[Test]:
        """The next request to send, or ``None`` when :attr:`outcome` is set."""
        return self._pending

    def answered(self, response: Any) -> None:
        test = self._pending
        assert test is not None
        mapped = mappedOf(response, self.primary if test.anySource else test.destination)
        if self._x1 is None:
            self._first(response, mapped)
        elif self._filtering is None:
            self._filteringResult(True)
        elif self._x2 is None:
            self._x2 = mapped
            if mapped == self._x1:
                self._finish(ENDPOINT_INDEPENDENT)
            else:
                assert self._other is not None
                self._pending = Test(self._other)
        else:
            self._finish(classifyMapping(self._x1, self._x2, mapped))

    def timedOut(self) -> bool:
        """A test got no answer: ``True`` if that is a result (a filtering test), ``False`` if it is fatal."""
        test = self._pending
        if test is None or not test.anySource:
            return False
        self._filteringResult(False)
        return True

    def _first(self, response: Any, mapped: HostPort) -> None:
        other = response.otherAddress
        if other is None:
            raise NATTraversalError(f"STUN server {self.primary[0]}:{self.primary[1]} gave no OTHER-ADDRESS: it "
                                    "cannot do RFC 5780 behaviour discovery")
        self._x1 = mapped
        self._other = (other[0], other[1])
        self._local = self.localToward(self.primary)
        # Filtering first: the mapping tests send to the alternate address, which would open the very filter
        # the filtering tests probe (the SIP socket cannot be swapped for a fresh one between the two).
        self._pending = Test(self.primary, (True, True))

    def _filteringResult(self, answered: bool) -> None:
        self._answered.append(answered)
        if answered and len(self._answered) == 1:
            self._answered.append(True)  # endpoint-independent filtering already: test III adds nothing (§4.4)
        if len(self._answered) < 2:
            self._pending = Test(self.primary, (False, True))
            return
        self._filtering = classifyFiltering(self._answered[0], self._answered[1])
        if not self.natPresent:
            self._finish(ENDPOINT_INDEPENDENT)
        else:
            assert self._other is not None
            self._pending = Test((self._other[0], self.primary[1]))

    @property
    def natPresent(self) -> bool:
        return not (self._local is not None and self._local == self._x1)

    def _finish(self, mapping: str) -> None:
        assert self._x1 is not None and self._other is not None and self._filtering is not None
        self._pending = None
        self.outcome = NATBehaviour(mapping, self._filtering, self._x1, self._other, self._local, self.natPresent)

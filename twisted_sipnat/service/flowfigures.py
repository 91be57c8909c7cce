"""
The figures of a client's keepalives: what one :class:`~twisted_sipnat.controller.NATTraversalController`
reports to the operator (``sipnat_flows``, ``sipnat_keepalives_total``, ``sipnat_flow_failures_total``,
``sipnat_keepalive_rtt_seconds``).

Read from the controller's public figures (``stats``, :meth:`flowCountByTransport`, :attr:`keepaliveRTT`) at each
gathering, so nothing is counted twice and nothing is stale.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from .figures import Figures, HistogramFigure, IFigureSource

__all__ = ["KEEPALIVE_RESULTS", "FLOW_FAILURE_REASONS", "ControllerFigures"]

#: The ``result`` label of ``sipnat_keepalives_total``: ``answered`` (a STUN success answer or a CRLF pong),
#: ``timeout`` (a STUN keepalive unanswered after its retransmissions, or a pong not back in time: each also a
#: flow failure, except the timeout that turns an ``"auto"`` flow to CRLF keepalives) and ``error`` (a STUN error answer: the path is alive, RFC 5626 §4.4.2, so not a failure).
KEEPALIVE_RESULTS = ("answered", "timeout", "error")
#: The ``reason`` label of ``sipnat_flow_failures_total`` (RFC 5626 §4.4).
FLOW_FAILURE_REASONS = ("stun_timeout", "mapped_address_changed", "pong_timeout", "connection_lost")


@implementer(IFigureSource)
class ControllerFigures:
    """Reports ``controller``'s flows and keepalives."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def reportFigures(self, figures: Figures) -> None:
        controller = self.controller
        stats = controller.stats
        for transport, count in controller.flowCountByTransport().items():
            figures.gauge("sipnat_flows", count, transport=transport)
        errors = stats["keepalive.error"]
        # stats["keepalive.answered"] counts every STUN answer, error answers included.
        figures.count("sipnat_keepalives_total", stats["keepalive.answered"] - errors + stats["keepalive.pongs"],
                      result="answered")
        figures.count("sipnat_keepalives_total",
                      stats["flow.failures.stun_timeout"] + stats["flow.failures.pong_timeout"]
                      + stats["keepalive.fallback"], result="timeout")
        figures.count("sipnat_keepalives_total", errors, result="error")
        for reason in FLOW_FAILURE_REASONS:
            figures.count("sipnat_flow_failures_total", stats["flow.failures." + reason], reason=reason)
        rtt = controller.keepaliveRTT
        figures.histogram("sipnat_keepalive_rtt_seconds",
                          HistogramFigure(dict(rtt.cumulative()), rtt.sum, rtt.count))

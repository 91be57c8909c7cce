"""
The figures a role reports to its operator: counters and gauges by metric name and labels, gathered on demand.

Why a sink of our own rather than Prometheus objects everywhere: the tables and state machines that hold the
figures (the registrar, the connection table, the STUN responder, the controller's flows) keep plain integers,
which cost nothing on the hot path and need no locks or registries in tests.  When an operator asks -- a
Prometheus scrape (:mod:`.metrics`) or the ``--stats-interval`` log line -- the role walks its parts and each
writes its current figures into one :class:`Figures`.  So a figure is never stale, and nothing is counted twice.

:data:`METRICS` names every metric a role may report, with its kind, help text and label names; the names in
``CONTRACT.md`` (``sipnat_flows``, ``sipnat_keepalives_total``, ...) are there, and dashboards depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

from zope.interface import Interface

__all__ = ["CONTRACT_LABELS", "FigureSources", "Figures", "HistogramFigure", "IFigureSource", "METRICS", "MetricSpec"]

Labels = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``kind`` is ``"counter"``, ``"gauge"`` or ``"histogram"``; ``labels`` its label names."""

    kind: str
    help: str
    labels: Tuple[str, ...] = ()


#: Every metric a role may report.  Counters end in ``_total`` (the Prometheus convention).
METRICS: Mapping[str, MetricSpec] = {
    "sipnat_flows": MetricSpec("gauge", "Flows being kept alive, or connections held at an edge.", ("transport",)),
    "sipnat_keepalives_total": MetricSpec("counter", "Keepalive transactions by result.", ("result",)),
    "sipnat_flow_failures_total": MetricSpec("counter", "Flows that failed, by reason.", ("reason",)),
    "sipnat_keepalive_rtt_seconds": MetricSpec("histogram", "Round-trip time of answered keepalives."),
    "sipnat_stun_requests_total": MetricSpec("counter", "STUN requests received, by result.", ("result",)),
    "sipnat_sip_requests_total": MetricSpec("counter", "SIP requests received, by result.", ("result",)),
    "sipnat_registrations": MetricSpec("gauge", "Bindings held by the registrar."),
    "sipnat_rate_limit_sources": MetricSpec(
        "gauge", "Source addresses a per-source rate limit tracks (at most --rate-limit-sources).", ("protocol",)
    ),
    "sipnat_register_transactions_total": MetricSpec(
        "counter", "REGISTER transactions of the client role, by result.", ("result",)
    ),
    "sipnat_stun_credentials": MetricSpec("gauge", "Servers whose STUN long-term realm and nonce are remembered."),
    "sipnat_stun_auth_total": MetricSpec("counter", "STUN long-term challenges (401, 438), by result.", ("result",)),
    "sipnat_stun_failed_domains": MetricSpec("gauge", "Failed resolutions held by the STUN failure cache."),
    "sipnat_stun_failure_cache_hits_total": MetricSpec("counter", "Resolutions failed at once by the failure cache."),
    "sipnat_client_flows": MetricSpec(
        "gauge", "The client role's flows by state: registering, up (registered, kept alive), down (backing off).",
        ("state",)
    ),
    "sipnat_client_requests_total": MetricSpec(
        "counter", "Requests reaching the client role on a flow, by what it did with them.", ("result",)
    ),
    "sipnat_connections": MetricSpec("gauge", "Open stream connections (TCP, TLS).", ("transport",)),
    "sipnat_network_changes_total": MetricSpec("counter", "Changes of the host's addresses or default routes seen."),
    "sipnat_connections_refused_total": MetricSpec(
        "counter", "Stream connections refused or closed by a bound, by reason.", ("reason",)
    ),
}

#: The label values the contract names, by metric (each of these has one label): :meth:`Figures.series` gives
#: them as 0 until a part reports them, so a dashboard's query finds every series from the first scrape on.
CONTRACT_LABELS: Mapping[str, Tuple[str, ...]] = {
    "sipnat_flows": ("udp", "tcp"),
    "sipnat_keepalives_total": ("answered", "timeout", "error"),
    "sipnat_flow_failures_total": ("stun_timeout", "mapped_address_changed", "pong_timeout", "connection_lost"),
    "sipnat_stun_requests_total": ("answered", "rate_limited", "malformed"),
    "sipnat_sip_requests_total": ("answered", "rate_limited", "malformed"),
}


@dataclass
class HistogramFigure:
    """A cumulative histogram: ``buckets`` maps each upper bound (``float('inf')`` last) to its count."""

    buckets: Dict[float, int]
    sum: float
    count: int


@dataclass
class Figures:
    """
    One gathering of figures.  :meth:`count` and :meth:`gauge` add to what is already there for the same name
    and labels, so two parts of a role (two sockets, two workers' tables) can report into one figure.
    """

    values: Dict[Tuple[str, Labels], float] = field(default_factory=dict)
    histograms: Dict[str, HistogramFigure] = field(default_factory=dict)

    def count(self, name: str, value: float, **labels: str) -> None:
        """Add ``value`` to the counter ``name`` with ``labels``."""
        self._add(name, "counter", value, labels)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Add ``value`` to the gauge ``name`` with ``labels``."""
        self._add(name, "gauge", value, labels)

    def histogram(self, name: str, figure: HistogramFigure) -> None:
        """Report the histogram ``name``."""
        if METRICS[name].kind != "histogram":
            raise KeyError(f"{name} is not a histogram")
        self.histograms[name] = figure

    def get(self, name: str, **labels: str) -> float:
        """The value reported for ``name`` with exactly ``labels`` (0 when none was)."""
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> Dict[Labels, float]:
        """
        Every value reported for ``name``, by its labels (sorted ``(label, value)`` pairs), with the
        :data:`CONTRACT_LABELS` that no part reported as 0, and an unlabelled metric nobody reported as 0.
        """
        spec = METRICS[name]
        found: Dict[Labels, float] = {}
        if not spec.labels:
            found[()] = 0.0
        for labelValue in CONTRACT_LABELS.get(name, ()):
            found[((spec.labels[0], labelValue),)] = 0.0
        for (metric, labels), value in self.values.items():
            if metric == name:
                found[labels] = value
        return found

    def _add(self, name: str, kind: str, value: float, labels: Mapping[str, str]) -> None:
        spec = METRICS[name]
        if spec.kind != kind or set(labels) != set(spec.labels):
            raise KeyError(f"{name} is a {spec.kind} with labels {spec.labels}, not a {kind} with {tuple(labels)}")
        key = (name, tuple(sorted(labels.items())))
        self.values[key] = self.values.get(key, 0.0) + value


class IFigureSource(Interface):
    """A part of a role that has figures to report."""

    def reportFigures(figures: Figures) -> None:
        """Write this part's current figures into ``figures``."""


class FigureSources:
    """
    Mixed into a role: its parts add themselves to :attr:`figureSources` when the role builds them, and
    :meth:`reportFigures` asks each in turn.  So a role reports exactly the parts it has (an edge without TCP
    reports no connections), and a new part needs one line where it is built.
    """

    figureSources: List[IFigureSource]

    def addFigureSource(self, source: IFigureSource) -> None:
        """Have ``source`` report with this role."""
        try:
            sources = self.figureSources
        except AttributeError:
            sources = self.figureSources = []
        sources.append(source)

    def reportFigures(self, figures: Figures) -> None:
        """Every part's current figures, into ``figures``."""
        for source in getattr(self, "figureSources", ()):
            source.reportFigures(figures)

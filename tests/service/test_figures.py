"""The figures sink every role reports into (twisted_sipnat.service.figures)."""

from __future__ import annotations

import pytest

from twisted_sipnat.service.figures import METRICS, Figures, FigureSources, HistogramFigure


class _Part:
    def __init__(self, n: int) -> None:
        self.n = n

    def reportFigures(self, figures: Figures) -> None:
        figures.gauge("sipnat_connections", self.n, transport="tcp")
        figures.count("sipnat_connections_refused_total", 1, reason="max_connections")


def test_partsOfARoleAddUp() -> None:
    role = FigureSources()
    role.addFigureSource(_Part(3))
    role.addFigureSource(_Part(4))
    figures = Figures()
    role.reportFigures(figures)
    assert figures.get("sipnat_connections", transport="tcp") == 7
    assert figures.get("sipnat_connections_refused_total", reason="max_connections") == 2
    assert figures.get("sipnat_connections", transport="tls") == 0


def test_aMetricIsReportedWithItsKindAndLabels() -> None:
    figures = Figures()
    with pytest.raises(KeyError):
        figures.count("sipnat_connections", 1, transport="tcp")  # a gauge
    with pytest.raises(KeyError):
        figures.gauge("sipnat_connections", 1)  # without its label
    with pytest.raises(KeyError):
        figures.histogram("sipnat_flows", HistogramFigure({float("inf"): 0}, 0.0, 0))


def test_theContractNamesAreAllThere() -> None:
    for name in ("sipnat_flows", "sipnat_keepalives_total", "sipnat_flow_failures_total",
                 "sipnat_keepalive_rtt_seconds", "sipnat_stun_requests_total", "sipnat_sip_requests_total",
                 "sipnat_registrations", "sipnat_connections", "sipnat_connections_refused_total"):
        assert name in METRICS

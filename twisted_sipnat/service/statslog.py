"""
``--stats-interval S``: one info log line every ``S`` seconds with the figures the metrics endpoint serves.

For an operator without Prometheus, and for the log that outlives a scrape: the same
:class:`~twisted_sipnat.service.figures.Figures`, gathered fresh each time, written as ``name=value`` pairs
(``flows udp=3 tcp=0 registrations=120 ... stun_requests answered=10 rate_limited=2 malformed=0 ...``).  The log
event carries ``sipnat_event="sipnat.stats"`` and every figure as a field, for log pipelines that index fields.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from .figures import METRICS, Figures, IFigureSource

__all__ = ["StatsLog", "statsFields", "statsLine"]

log = Logger(namespace="twisted_sipnat.stats")


def _short(name: str) -> str:
    name = name[len("sipnat_"):] if name.startswith("sipnat_") else name
    return name[: -len("_total")] if name.endswith("_total") else name


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def statsFields(figures: Figures) -> Dict[str, float]:
    """Every figure as one flat field: ``flows_udp``, ``registrations``, ``keepalive_rtt_seconds_count``..."""
    fields: Dict[str, float] = {}
    for name, spec in METRICS.items():
        short = _short(name)
        if spec.kind == "histogram":
            figure = figures.histograms.get(name)
            fields[short + "_count"] = figure.count if figure is not None else 0
            fields[short + "_sum"] = figure.sum if figure is not None else 0.0
            continue
        for labels, value in figures.series(name).items():
            fields["_".join([short] + [v for _, v in labels])] = value
    return fields


def statsLine(figures: Figures) -> str:
    """``figures`` as one line: ``name=value`` for an unlabelled metric, ``name label=value ...`` otherwise."""
    parts: List[str] = []
    for name, spec in METRICS.items():
        short = _short(name)
        if spec.kind == "histogram":
            figure = figures.histograms.get(name)
            count = figure.count if figure is not None else 0
            mean = f" mean={figure.sum / count:.4f}s" if figure is not None and count else ""
            parts.append(f"{short.replace('_seconds', '')} count={count}{mean}")
            continue
        series = figures.series(name)
        if not spec.labels:
            parts.append(f"{short}={_number(series.get((), 0.0))}")
        elif not series:
            parts.append(f"{short}=0")
        else:
            values = " ".join(f"{'/'.join(v for _, v in labels)}={_number(value)}" for labels, value in series.items())
            parts.append(f"{short} {values}")
    return " ".join(parts)


class StatsLog(service.Service):
    """Logs ``source``'s figures every ``interval`` seconds on ``clock`` while running (none at start)."""

    def __init__(self, clock: Any, interval: float, source: IFigureSource) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, not {interval!r}")
        self.interval = interval
        self.source = source
        self.loop = task.LoopingCall(self.logFigures)
        self.loop.clock = clock

    def logFigures(self) -> str:
        """Gather the figures and log them; returns the line."""
        figures = Figures()
        self.source.reportFigures(figures)
        line = statsLine(figures)
        log.info("{stats}", stats=line, sipnat_event="sipnat.stats", **statsFields(figures))
        return line

    def startService(self) -> None:
        service.Service.startService(self)
        self.loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self.loop.running:
            self.loop.stop()
        return None

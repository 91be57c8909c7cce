"""
``--metrics tcp:PORT[:interface=ADDR]``: a role's figures in the Prometheus text format at ``/metrics``.

The one module that uses ``prometheus_client`` (the maintained library made for the job: the exposition format,
its content negotiation and the Twisted resource).  Nothing else keeps Prometheus objects: the role's parts keep
plain integers and report them through :class:`~twisted_sipnat.service.figures.Figures` when asked.
:class:`FigureCollector` asks at every scrape (``role.reportFigures(figures)``) and turns the answer into the
metric families of :data:`~twisted_sipnat.service.figures.METRICS`: every metric there is exposed at every
scrape (0 when no part reports it), and none is stale.  Each server has its own ``CollectorRegistry``, not the
process-global one, so two roles (or two tests) in one process never see each other's figures.

With ``--workers N`` each worker serves its own figures on ``PORT + i`` (worker ``i``, 0 being the twistd
process): the workers share no memory, and one scrape target per worker shows each of them (see
``docs/operations.rst``).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.twisted import MetricsResource
from prometheus_client.utils import floatToGoString
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..core.histogram import KEEPALIVE_RTT_BUCKETS
from ..errors import InvalidSettingsError
from .figures import METRICS, Figures, IFigureSource
from .listeners import StreamListener

__all__ = ["MAX_CONNECTIONS", "IDLE_TIMEOUT", "FigureCollector", "MetricsServer", "familiesOf"]

log = Logger(namespace="twisted_sipnat.metrics")

#: Connections the metrics endpoint holds at once; one more is closed at once.  A Prometheus server keeps one per
#: target, so a few are plenty, and the bound keeps an endpoint left on a reachable address from being a way to
#: use up the process's file descriptors.
MAX_CONNECTIONS = 16
#: Seconds a metrics connection may stay silent before it is closed (a scrape takes milliseconds).
IDLE_TIMEOUT = 30.0


def familiesOf(figures: Figures) -> List[Metric]:
    """One metric family for every metric in :data:`METRICS`, with the values in ``figures``."""
    families: List[Metric] = []
    for name, spec in METRICS.items():
        if spec.kind == "histogram":
            figure = figures.histograms.get(name)
            if figure is None:
                buckets: Dict[float, int] = {bound: 0 for bound in KEEPALIVE_RTT_BUCKETS + (float("inf"),)}
                total, count = 0.0, 0
            else:
                buckets, total, count = figure.buckets, figure.sum, figure.count
            if float("inf") not in buckets:
                buckets = {**buckets, float("inf"): count}
            families.append(HistogramMetricFamily(
                name, spec.help, buckets=[(floatToGoString(b), n) for b, n in sorted(buckets.items())],
                sum_value=total))
            continue
        family: Metric
        if spec.kind == "counter":
            family = CounterMetricFamily(name, spec.help, labels=spec.labels)
        else:
            family = GaugeMetricFamily(name, spec.help, labels=spec.labels)
        for labels, value in figures.series(name).items():
            given = dict(labels)
            family.add_metric([given[label] for label in spec.labels], value)  # type: ignore[attr-defined]
        families.append(family)
    return families


class FigureCollector(Collector):
    """A ``prometheus_client`` collector asking ``source`` for fresh figures at every scrape."""

    def __init__(self, source: IFigureSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        figures = Figures()
        self.source.reportFigures(figures)
        return familiesOf(figures)

    def describe(self) -> Iterable[Metric]:
        """The families without asking the source (the registry checks names when the collector joins it)."""
        return familiesOf(Figures())


class _MetricsSite(Site):
    """The site of ``/metrics``: quiet, since Prometheus asks every few seconds and that is not news."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _Bounded(WrappingFactory):
    """The site, with at most :data:`MAX_CONNECTIONS` connections open; past it a new one is closed at once."""

    noisy = False

    def __init__(self, factory: Any, limit: int) -> None:
        super().__init__(factory)
        self.limit = limit
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            self.refused += 1
            return None
        return super().buildProtocol(addr)


class MetricsServer(service.Service):
    """
    Serves ``source``'s figures at ``http://ADDR:PORT/metrics`` on the stream endpoint ``description``
    (``tcp:PORT[:interface=ADDR]``, see :func:`~twisted_sipnat.service.options.parseMetrics`).

    It listens in ``privilegedStartService`` (as the UDP ports do), so that under twistd a port that cannot be
    bound stops the program before any role starts: one line naming ``key`` (``SystemExit``, status 1), the
    way a bad option value is printed.
    """

    def __init__(self, reactor: Any, description: str, source: IFigureSource, key: str = "metrics") -> None:
        self.key = key
        self.description = description
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FigureCollector(source))
        root = Resource()
        root.putChild(b"metrics", MetricsResource(self.registry))
        self.site = _MetricsSite(root, timeout=IDLE_TIMEOUT)
        self.factory = _Bounded(self.site, MAX_CONNECTIONS)
        self.listener = StreamListener(reactor, description, self.factory, key)

    def privilegedStartService(self) -> None:
        self._listen()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self._listen()
        service.Service.startService(self)

    def _listen(self) -> None:
        if self.listener.running:
            return
        try:
            self.listener.startService()
        except CannotListenError as e:
            why = str(e.socketError) if e.socketError is not None else str(e)
            raise SystemExit(f"twistd sipnat: {InvalidSettingsError(self.key, self.description, f'cannot listen ({why})')}") from None

    def stopService(self) -> Any:
        service.Service.stopService(self)
        return self.listener.stopService()

    def address(self) -> Optional[Tuple[str, int]]:
        """The bound ``(host, port)`` while listening (the real port after ``tcp:0``), else ``None``."""
        port = self.listener.port
        if port is None:
            return None
        host = port.getHost()
        return host.host, host.port

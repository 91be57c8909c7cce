"""
What one ``--metrics`` scrape costs a client-side process holding many flows: gathering the figures
(``ControllerFigures``, which counts the flows by transport) and writing the Prometheus text
(``prometheus_client.generate_latest``), on a Clock, no network.

    python benchmarks/scrape_cost.py --flows 100000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import generate_latest  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from twisted_sipnat import NATSettings, NATTraversalController  # noqa: E402
from twisted_sipnat.service.flowfigures import ControllerFigures  # noqa: E402
from twisted_sipnat.service.metrics import MetricsServer  # noqa: E402
from twisted_sipnat.testing import sharedDatagramSocket  # noqa: E402


class Observer:
    def flowFailure(self, reason: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=100_000, help="keepalive contexts (default 100000)")
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes timed (default 20)")
    args = parser.parse_args()
    clock = Clock()
    controller = NATTraversalController(NATSettings(), reactor=clock, rng=random.Random(1), keepaliveEvents=False)
    shared, _ = sharedDatagramSocket(controller)
    for i in range(args.flows):
        controller.refreshNATBinding(shared, Observer(), ("192.0.2.1", 5060 + i % 1000))
    server = MetricsServer(clock, "tcp:0:interface=127.0.0.1", ControllerFigures(controller))
    started = time.perf_counter()
    for _ in range(args.scrapes):
        text = generate_latest(server.registry)
    each = (time.perf_counter() - started) / args.scrapes
    assert b'sipnat_flows{transport="udp"} %d.0' % args.flows in text
    print(f"flows={args.flows} scrape={each * 1000:.2f} ms ({len(text)} bytes)")
    controller.freeResources()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""
Resolution throughput and the STUN responder's capacity, each against coturn measured in the same run.

1. ``resolvePublicAddress`` at a fixed concurrency (``--concurrency`` calls in flight, spread over ``--sockets``
   shared sockets so RFC 8489's ten outstanding transactions per socket and server hold), on the real reactor,
   against our STUN server role (``twistd sipnat stun``) and against coturn (``turnserver -S``), each in its own
   process on loopback: resolutions per second and latency percentiles (call to callback).
2. The responder alone: a load generator in its own process (``_loadgen.py``: pre-built Binding requests with
   FINGERPRINT from many source sockets, a window of requests outstanding on each) against our role with 1 and
   with 2 worker processes (``--workers``, ``SO_REUSEPORT``), and against coturn.  Printed: answers per second,
   the server's CPU per second (all its processes), and answers per server CPU-second -- the rate one core
   sustains, which does not depend on the generator keeping up.

On a machine with two CPUs the measured process (or the generator) is pinned to the first and the server to
the second, so neither preempts the other; with two workers both share the second CPU with nothing else only
when ``--spread`` is given (then the generator shares a CPU with a worker).

Usage: ``python benchmarks/resolve_throughput.py [--size SECONDS] [--concurrency C] [--workers 1,2]``
(default: 5 s windows, the whole run well under a minute).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repository and tests/interop on sys.path)

HERE = Path(__file__).resolve().parent


def startCoturn(workDir: Path, cpus: Optional[Sequence[int]]) -> Tuple[Any, _common.HostPort]:
    """coturn as the interop tests start it (``tests/interop/peerkit.py``), optionally pinned with taskset."""
    peerkit = _common.peerkit

    prefix = ["taskset", "-c", ",".join(str(c) for c in cpus)] if cpus else []
    peer = peerkit.startCoturn(workDir, [_common.LOOPBACK], prefix=prefix)
    return peer, peer.address


def loadgen(server: _common.HostPort, pids: List[int], seconds: float, cpus: Optional[Sequence[int]],
            sockets: int, window: int) -> Dict[str, Any]:
    argv = [sys.executable, str(HERE / "_loadgen.py"), server[0], str(server[1]), "--duration", str(seconds),
            "--pids", ",".join(str(p) for p in pids), "--sockets", str(sockets), "--window", str(window)]
    if cpus:
        argv = ["taskset", "-c", ",".join(str(c) for c in cpus)] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result: Dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def printCapacity(name: str, r: Dict[str, Any]) -> float:
    rate = r["answers"] / r["seconds"]
    cpu = r["serverCPU"] / r["seconds"]
    perCore = r["answers"] / r["serverCPU"] if r["serverCPU"] else float("nan")
    split = r.get("perProcessCPU") or []
    shares = ""
    if isinstance(split, list) and len(split) > 1:
        shares = "  (CPU by process: " + ", ".join(f"{c / r['seconds']:.2f}" for c in split) + ")"
    print(f"  {name:<28}{rate:>10,.0f} answers/s   server CPU {cpu:>5.2f} cores   {perCore:>10,.0f} per CPU-second"
          f"{shares}")
    return perCore


def responderCapacity(args: argparse.Namespace, mine: Optional[List[int]], others: Optional[List[int]]) -> None:
    print(f"Responder alone: load generator (own process, {args.gen_sockets} sockets x window {args.window}) for "
          f"{args.size:.0f} s")
    figures: Dict[str, float] = {}
    for workers in args.workers:
        serverCPUs = others
        if workers > 1 and args.spread and mine and others:
            serverCPUs = mine + others
        child, server = _common.startResponder(workers=workers, cpus=serverCPUs)
        try:
            time.sleep(0.5 * workers)  # let every worker bind
            pids = [child.pid]
            r = loadgen(server, pids, args.size, mine, args.gen_sockets, args.window)
        finally:
            child.stop()
        figures[f"ours x{workers}"] = printCapacity(f"twisted_sipnat, {workers} worker(s)", r)
        figures[f"rate x{workers}"] = r["answers"] / r["seconds"]
    if not args.no_coturn:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            peer, server = startCoturn(Path(tmp), others)
            try:
                r = loadgen(server, [peer.process.process.pid], args.size, mine, args.gen_sockets, args.window)
            finally:
                peer.stop()
        figures["coturn"] = printCapacity("coturn (turnserver -S)", r)
        for workers in args.workers:
            print(f"  ratio twisted_sipnat x{workers} / coturn, per CPU-second: "
                  f"{figures[f'ours x{workers}'] / figures['coturn']:.2f}x")
    if 1 in args.workers:
        for workers in args.workers:
            if workers > 1:
                print(f"  scaling 1 -> {workers} workers: answers/s x{figures[f'rate x{workers}'] / figures['rate x1']:.2f}")


def resolutions(args: argparse.Namespace, servers: List[Tuple[str, _common.HostPort]]) -> None:
    from twisted.internet import defer, task
    from twisted.internet import reactor as _reactor

    from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol

    reactor: Any = _reactor
    import os

    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Log as a deployment would: to a file (here /dev/null) at info level (one info line per resolution).
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(open(os.devnull, "w")), [LogLevelFilterPredicate(LogLevel.info)])],
        redirectStandardIO=False,
    )
    controller = NATTraversalController(NATSettings(), reactor)
    shared = [SharedDatagramProtocol(controller=controller) for _ in range(args.sockets)]
    ports = [reactor.listenUDP(0, p, interface=_common.LOOPBACK) for p in shared]
    results: List[str] = []

    async def one(server: _common.HostPort) -> Tuple[int, List[float], float, int]:
        latencies: List[float] = []
        failures = 0
        stopAt = [0.0]
        measuring = [False]
        done = defer.Deferred[None]()
        active = [0]
        clock = time.perf_counter

        def launch(i: int) -> None:
            if stopAt[0] and reactor.seconds() >= stopAt[0]:
                active[0] -= 1
                if active[0] == 0 and not done.called:
                    done.callback(None)
                return
            started = clock()
            d = controller.resolvePublicAddress(None, shared[i % len(shared)], server)

            def ok(_: Any) -> None:
                if measuring[0]:
                    latencies.append(clock() - started)
                launch(i)

            def bad(f: Any) -> None:
                nonlocal failures
                failures += 1
                launch(i)

            d.addCallbacks(ok, bad)

        active[0] = args.concurrency
        for i in range(args.concurrency):
            launch(i)
        await task.deferLater(reactor, 1.0, lambda: None)  # warm-up
        measuring[0] = True
        cpu0, wall0 = _common.cpuSeconds(), time.monotonic()
        await task.deferLater(reactor, args.size, lambda: None)
        measuring[0] = False
        cpu, wall = _common.cpuSeconds() - cpu0, time.monotonic() - wall0
        stopAt[0] = reactor.seconds()
        await done
        return len(latencies), sorted(latencies), cpu / max(1, len(latencies)), failures if wall else failures

    async def run() -> None:
        try:
            for name, server in servers:
                count, lat, cpuEach, failures = await one(server)
                rate = count / args.size
                results.append(
                    f"  {name:<28}{rate:>9,.0f} resolutions/s  latency p50 {_common.percentile(lat, 0.5) * 1e3:.2f} ms"
                    f"  p99 {_common.percentile(lat, 0.99) * 1e3:.2f} ms  max {(lat[-1] if lat else 0) * 1e3:.2f} ms"
                    f"  CPU {cpuEach * 1e6:.0f} us each  failures {failures}"
                )
        finally:
            controller.freeResources()
            for port in ports:
                port.stopListening()
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run()
    print(f"resolvePublicAddress: {args.concurrency} in flight over {args.sockets} sockets, {args.size:.0f} s window")
    for line in results:
        print(line)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=5.0, help="seconds per measured window (default 5)")
    parser.add_argument("--concurrency", type=int, default=160, help="resolutions in flight (default 160)")
    parser.add_argument("--sockets", type=int, default=16, help="shared sockets for the resolutions (default 16)")
    parser.add_argument("--workers", default="1,2", help="responder worker counts to measure (default 1,2)")
    parser.add_argument("--gen-sockets", type=int, default=64, help="load generator sockets (default 64)")
    parser.add_argument("--window", type=int, default=8, help="requests outstanding per generator socket")
    parser.add_argument("--spread", action="store_true",
                        help="with 2+ workers let the server use every CPU (the generator then shares one)")
    parser.add_argument("--no-coturn", action="store_true", help="skip coturn (it is measured when installed)")
    parser.add_argument("--skip-resolve", action="store_true")
    parser.add_argument("--skip-responder", action="store_true")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w]

    mine, others = _common.pinCPUs()
    print(f"pinned: this process and the load generator to CPU {mine}, servers to {others}" if mine
          else "not pinned (one CPU)")
    import shutil

    if shutil.which("turnserver") is None and not args.no_coturn:
        print("coturn (turnserver) is not installed: no comparison with it")
        args.no_coturn = True

    if not args.skip_responder:
        responderCapacity(args, mine, others)

    if not args.skip_resolve:
        import tempfile

        children: List[Any] = []
        servers: List[Tuple[str, _common.HostPort]] = []
        with tempfile.TemporaryDirectory() as tmp:
            try:
                ours, address = _common.startResponder(cpus=others)
                children.append(ours)
                servers.append(("twisted_sipnat stun role", address))
                if not args.no_coturn:
                    peer, address = startCoturn(Path(tmp), others)
                    children.append(peer)
                    servers.append(("coturn", address))
                resolutions(args, servers)
            finally:
                for child in children:
                    child.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

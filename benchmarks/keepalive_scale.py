"""
N kept-alive flows on one controller, one reactor, one core: keepalives per second, CPU per keepalive, memory
per flow and timer slip, against a bare ``sendto`` loop measured in the same run (the floor).

Setup: one :class:`~twisted_sipnat.NATTraversalController` on the real (epoll) reactor; N flows (observers)
spread over ``--sockets`` :class:`~twisted_sipnat.SharedDatagramProtocol` ports on 127.0.0.1 (a user-agent
farm: many registrations sharing a handful of SIP sockets); every flow sends STUN keepalives (RFC 5626 §4.4.2)
to our STUN server role (``twistd sipnat stun``) running in a *separate process*, so this process pays for
exactly what a SIP process would: timers, request building, ``sendto``, ``recvfrom``, matching and checking the
answer.  Farm case: the flows of one socket all talk to one server, so the controller is built with
``maxOutstandingPerServer`` raised from RFC 8489's ten (a SIP edge, whose flows each have their own next hop,
never meets that limit).

The base interval is chosen so that N flows send what 100,000 flows send at the RFC 5626 default UDP interval
(25 s base, a keepalive every 20-25 s, 22.5 s on average: 4,444 keepalives/s): ``N / (0.9 * 4444)`` seconds,
5 s for the default N = 20,000, exactly 25 s for N = 100,000.  The window measured starts once every flow has
sent its first keepalive and lasts ``--cycles`` mean intervals (each flow sends that many keepalives in it).

Printed: keepalives/s sustained, CPU seconds per 1,000 keepalives, memory per flow (tracemalloc while the
flows are created; peak RSS growth over the run), timer slip (p50/p99/max of when the controller handled a
flow minus the instant it was due: a subclass hook, not production code), three floors with the ratio to
each, and the projection for 100,000 flows at the default interval as a fraction of one core.  The floors:

- the floor the issue names: a loop that builds the same Binding requests and calls ``sendto`` on a plain
  socket, nothing else, in a tight loop;
- the same loop paced as the keepalives are (44 requests per 10 ms slot, sleeping between slots): per request
  it costs more CPU than the tight loop (a wake-up per slot, cold caches), and it is the like-for-like floor;
- the Twisted round-trip floor: bare requests and answers through this same reactor with no logic at all --
  what any keepalive implementation on Twisted pays before doing anything.

Usage: ``python benchmarks/keepalive_scale.py [--size N] [--interval S] [--cycles C] [--sockets K]``
(default N = 20,000 runs in well under a minute; ``--size 100000`` takes about two minutes: the flows register
over one interval, every flow sends its first keepalive within the next, then the window).  ``--profile FILE`` writes a cProfile of the window.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import itertools
import os
import secrets
import socket
import struct
import sys
import time
import tracemalloc
import zlib
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

#: RFC 5626 default UDP keepalive: 25 s base, 80-100 % of it: a mean of 22.5 s.
RFC_BASE = 25.0
MEAN_FACTOR = 0.9
TARGET_FLOWS = 100_000
TARGET_RATE = TARGET_FLOWS / (RFC_BASE * MEAN_FACTOR)
#: The keepalive grid (twisted_sipnat.core.keepalive.SLOT) and what one slot holds at TARGET_RATE.
SLOT = 0.01
SLOT_BATCH = round(TARGET_RATE * SLOT)


def floorRequests(count: int, sizeWithFingerprint: bool, paced: bool = False) -> float:
    """
    CPU seconds per request of the floor: build a Binding request with a fresh random transaction ID (the
    20-byte header alone, or that plus the FINGERPRINT the controller adds: the same 28 bytes) and ``sendto``.

    ``paced``: the same loop, but sending what one 10 ms slot holds at the measured rate (44 requests), then
    sleeping to the next slot, as the keepalives are sent.  A process that wakes 100 times a second pays for
    every wake-up and starts each on cold caches, so the same work costs more CPU than in a tight loop: this
    is the floor measured the way the keepalives run.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((_common.LOOPBACK, 0))
    target = sink.getsockname()
    header = struct.Struct("!HHI")
    fpHeader = header.pack(0x0001, 8, _common.MAGIC_COOKIE)
    plain = header.pack(0x0001, 0, _common.MAGIC_COOKIE)
    fpTLV = struct.pack("!HH", 0x8028, 4)
    u32 = struct.Struct("!I").pack
    token = secrets.token_bytes
    crc = zlib.crc32
    sendto = sock.sendto
    batch = SLOT_BATCH if paced else count
    nextSlot = time.monotonic()
    start = _common.cpuSeconds()
    for _ in range(max(1, count // batch)):
        if sizeWithFingerprint:
            for _ in range(batch):
                data = fpHeader + token(12)
                try:
                    sendto(data + fpTLV + u32(crc(data) ^ 0x5354554E), target)
                except BlockingIOError:
                    pass
        else:
            for _ in range(batch):
                try:
                    sendto(plain + token(12), target)
                except BlockingIOError:
                    pass
        if paced:
            nextSlot += SLOT
            pause = nextSlot - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # sleeping costs no CPU
    elapsed = _common.cpuSeconds() - start
    sock.close()
    sink.close()
    return elapsed / (max(1, count // batch) * batch)


def countIterations(reactor: Any) -> List[int]:
    """
    Count the reactor's wake-ups (``doIteration`` calls): a benchmark-only hook.  Answers that arrive one at a
    time each wake the process, and a wake-up costs more CPU than a keepalive's own logic.
    """
    counter = [0]
    iterate = reactor.doIteration

    def counting(delay: Any) -> None:
        counter[0] += 1
        iterate(delay)

    reactor.doIteration = counting
    return counter


def twistedRoundTrips(
    reactor: Any, server: Any, sockets: int, seconds: float, wakes: List[int], then: Any
) -> Dict[str, float]:
    """
    The platform's floor, in this reactor before the flows start: every 10 ms slot, send 44 bare 20-byte
    Binding requests over ``sockets`` Twisted UDP ports (the socket's ``sendto``, as the controller's
    keepalives go) to the same responder, and match each answer's transaction ID in ``datagramReceived`` --
    the reactor, the syscalls and the wake-ups a keepalive needs, with none of its logic (no retransmission
    timer, no checks, no rescheduling).  Fills in CPU seconds per round trip, then calls ``then``.
    """
    from twisted.internet.protocol import DatagramProtocol
    from twisted.internet.task import LoopingCall

    pending: Dict[bytes, bool] = {}
    counts = {"sent": 0, "answered": 0}

    class Matcher(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Any) -> None:
            if pending.pop(datagram[8:20], None) is not None:
                counts["answered"] += 1

    ports = [reactor.listenUDP(0, Matcher(), interface=_common.LOOPBACK) for _ in range(sockets)]
    sendtos = [port.socket.sendto for port in ports]
    header = struct.pack("!HHI", 0x0001, 0, _common.MAGIC_COOKIE)
    token = secrets.token_bytes

    def slot() -> None:
        for i in range(SLOT_BATCH):
            tid = token(12)
            pending[tid] = True
            sendtos[i % sockets](header + tid, server)
        counts["sent"] += SLOT_BATCH

    loop = LoopingCall(slot)
    result: Dict[str, float] = {}

    def begin() -> None:
        result["cpu"] = _common.cpuSeconds()
        result["sent"] = counts["sent"]
        result["wakes"] = wakes[0]
        reactor.callLater(seconds, end)

    def end() -> None:
        sent = max(1, counts["sent"] - result["sent"])
        result["perRoundTrip"] = (_common.cpuSeconds() - result["cpu"]) / sent
        result["wakesPerRoundTrip"] = (wakes[0] - result["wakes"]) / sent
        loop.stop()
        for port in ports:
            port.stopListening()
        result["lost"] = len(pending)
        then()

    loop.start(SLOT)
    reactor.callLater(0.5, begin)  # past the start-up transient
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20_000, help="number of flows (default 20000)")
    parser.add_argument("--interval", type=float, default=None,
                        help="keepalive base interval, s (default: size / (0.9 * 4444), the 100k-at-25-s rate)")
    parser.add_argument("--cycles", type=float, default=3.0, help="mean intervals measured (default 3)")
    parser.add_argument("--sockets", type=int, default=16, help="shared UDP sockets the flows ride on (default 16)")
    parser.add_argument("--software", action="store_true",
                        help="send the default SOFTWARE attribute too (default: off, so requests are header + "
                             "FINGERPRINT like the floor's)")
    parser.add_argument("--keepalive-events", action="store_true",
                        help="keep the two debug log events per keepalive (default: keepaliveEvents=False, as a "
                             "process with tens of thousands of flows runs)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() once the flows exist, so Python's full collections skip them (they "
                             "otherwise pause the reactor for a time that grows with the number of flows)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin this process to one CPU and the responder to the others")
    parser.add_argument("--profile", default=None, help="write a cProfile of the measured window to this file")
    parser.add_argument("--floor-count", type=int, default=200_000, help="requests sent by the floor loop")
    parser.add_argument("--floor-seconds", type=float, default=3.0,
                        help="length of the paced floor run and of the Twisted round-trip floor run")
    args = parser.parse_args(argv)
    size = args.size
    base = args.interval if args.interval is not None else size / (MEAN_FACTOR * TARGET_RATE)

    from twisted.internet import reactor as _reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol

    reactor: Any = _reactor
    wakes = countIterations(reactor)

    # Log as a deployment would: to a file (here /dev/null), at info level, so debug events are built and
    # filtered the way twistd's default filter would.
    devnull = open(os.devnull, "w")
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(devnull), [LogLevelFilterPredicate(LogLevel.info)])],
        redirectStandardIO=False,
    )

    mine, others = _common.pinCPUs() if not args.no_pin else (None, None)
    floor20 = floorRequests(args.floor_count, False)
    floor28 = floorRequests(args.floor_count, True)
    paced20 = floorRequests(int(TARGET_RATE * args.floor_seconds), False, paced=True)
    paced28 = floorRequests(int(TARGET_RATE * args.floor_seconds), True, paced=True)

    responder, server = _common.startResponder(cpus=others)
    slips = array("d")
    failureTypes: Counter[str] = Counter()
    recording = [False]
    now = time.time

    from twisted_sipnat.core.keepalive import FlowKeeper
    from twisted_sipnat.core.timers import TimerHeap

    class MeasuredTimers(TimerHeap):
        """Records timer slip: when a flow is handled minus when it was due (benchmark-only hook)."""

        def popDue(self, at: float) -> Any:
            for item in super().popDue(at):
                if recording[0] and type(item) is FlowKeeper:
                    slips.append(now() - item.nextKeepaliveAt)
                yield item

    class Observer:
        __slots__ = ("failures",)

        def __init__(self) -> None:
            self.failures = 0

        def flowFailure(self, reason: Any) -> None:
            self.failures += 1
            failureTypes[type(reason.value).__name__] += 1

    if args.software:
        settings = NATSettings(udpKeepaliveInterval=base)
    else:
        settings = NATSettings(udpKeepaliveInterval=base, software=None)
    options: Dict[str, Any] = {"maxOutstandingPerServer": size}
    if "keepaliveEvents" in inspect.signature(NATTraversalController).parameters:  # older versions: always on
        options["keepaliveEvents"] = args.keepalive_events
    if "timers" in inspect.signature(NATTraversalController).parameters:
        options["timers"] = MeasuredTimers()
    controller = NATTraversalController(settings, reactor, **options)
    ports = []
    shared = []
    for _ in range(args.sockets):
        protocol = SharedDatagramProtocol(controller=controller)
        ports.append(reactor.listenUDP(0, protocol, interface=_common.LOOPBACK))
        shared.append(protocol)
    observers = [Observer() for _ in range(size)]

    gc.collect()
    rssBefore = _common.rssBytes()
    # tracemalloc on a sample only: its own bookkeeping would otherwise show up in the RSS figure.
    sample = min(size, 2_000)
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    for i, observer in enumerate(observers[:sample]):
        controller.refreshNATBinding(shared[i % len(shared)], observer, nextHop=server)
    tracedPerFlow = (tracemalloc.get_traced_memory()[0] - traced0) / sample
    tracemalloc.stop()
    window = args.cycles * MEAN_FACTOR * base
    result: Dict[str, Any] = {}

    # The rest register over one base interval, as registrations arrive in a deployment (flows that all started
    # at once would send their first keepalives as a burst five times the steady rate).  Every flow has sent
    # its first keepalive one base interval after it started: the window opens then.
    pending = iter(enumerate(observers[sample:], sample))
    perTick = max(1, int((size - sample) * 0.01 / base) + 1)

    def register() -> None:
        for i, observer in itertools.islice(pending, perTick):
            controller.refreshNATBinding(shared[i % len(shared)], observer, nextHop=server)
        if controller.flowCount < size:
            reactor.callLater(0.01, register)
            return
        result["rssCreated"] = _common.rssBytes()
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        reactor.callLater(base + 0.2, beginWindow)

    platform = twistedRoundTrips(reactor, server, args.sockets, args.floor_seconds, wakes, register)

    def beginWindow() -> None:
        result["cpu"] = _common.cpuSeconds()
        result["times"] = os.times()
        result["wall"] = time.monotonic()
        result["sent"] = controller.stats["keepalive.sent"]
        result["wakes"] = wakes[0]
        result["answered"] = controller.stats["keepalive.answered"]
        recording[0] = True
        if args.profile:
            import cProfile

            result["profiler"] = profiler = cProfile.Profile()
            profiler.enable()
        reactor.callLater(window, endWindow)

    def endWindow() -> None:
        if args.profile:
            result["profiler"].disable()
            result["profiler"].dump_stats(args.profile)
        recording[0] = False
        result["cpu"] = _common.cpuSeconds() - result["cpu"]
        times = os.times()
        result["user"] = times.user - result["times"].user
        result["system"] = times.system - result["times"].system
        result["wall"] = time.monotonic() - result["wall"]
        result["sent"] = controller.stats["keepalive.sent"] - result["sent"]
        result["wakes"] = wakes[0] - result["wakes"]
        result["answered"] = controller.stats["keepalive.answered"] - result["answered"]
        # Counted now: stopping the reactor closes the ports, which (rightly) fails every flow on them.
        result["failures"] = sum(o.failures for o in observers)
        result["failureTypes"] = dict(failureTypes)
        result["flows"] = controller.flowCount
        reactor.stop()

    gc.collect()
    reactor.run()
    rssCreated = result["rssCreated"]

    peakRSS = _peakRSS()
    failures, flows = result["failures"], result["flows"]
    controller.freeResources()
    for port in ports:
        port.stopListening()
    responder.stop()

    sent, cpu, wall = result["sent"], result["cpu"], result["wall"]
    perKeepalive = cpu / sent if sent else float("nan")
    slipsSorted = sorted(slips)
    print(f"pinned: this process to CPU {mine}, the responder to {others}" if mine else "not pinned")
    print(f"flows: {size:,} on {args.sockets} UDP sockets; base interval {base:.2f} s "
          f"(keepalive every {0.8 * base:.2f}-{base:.2f} s); window {wall:.1f} s; Python {sys.version.split()[0]}")
    print(f"keepaliveEvents={args.keepalive_events}; gc.freeze() after setup: {args.gc_freeze}; "
          f"logging to a file at info level (debug events filtered)")
    print(f"keepalives sent in window:     {sent:,} ({result['answered']:,} answered, "
          f"{failures} flow failures {result['failureTypes'] or ''}, {flows:,} flows still alive)")
    print(f"keepalives/s sustained:        {sent / wall:,.0f}/s (expected {size / (MEAN_FACTOR * base):,.0f}/s)")
    print(f"CPU per 1,000 keepalives:      {perKeepalive * 1000:.4f} s  ({perKeepalive * 1e6:.1f} us each; "
          f"process CPU {cpu:.2f} s in {wall:.1f} s = {cpu / wall:.1%} of one core; "
          f"user {result['user']:.2f} s, system {result['system']:.2f} s)")
    print(f"memory per flow:               {tracedPerFlow:,.0f} B traced (tracemalloc, first {sample:,} flows); "
          f"RSS growth {(rssCreated - rssBefore) / size:,.0f} B after creating them, "
          f"{(peakRSS - rssBefore) / size:,.0f} B at the peak of the run")
    print(f"timer slip (n={len(slips):,}):       p50 {_common.percentile(slipsSorted, 0.5) * 1e3:.2f} ms, "
          f"p99 {_common.percentile(slipsSorted, 0.99) * 1e3:.2f} ms, "
          f"max {(slipsSorted[-1] if slipsSorted else float('nan')) * 1e3:.2f} ms")
    print(f"floor (build + sendto):        {floor20 * 1e6:.2f} us (20-byte header), {floor28 * 1e6:.2f} us (28 bytes with "
          f"FINGERPRINT, what the controller sends), in a tight loop")
    print(f"ratio to floor:                {perKeepalive / floor20:.2f}x (20 B), {perKeepalive / floor28:.2f}x (28 B) "
          f"-- the controller also receives and checks each answer; the floor receives nothing")
    print(f"paced floor (build + sendto):  {paced20 * 1e6:.2f} us (20 B), {paced28 * 1e6:.2f} us (28 B), {SLOT_BATCH} per "
          f"10 ms slot as the keepalives go; ratio {perKeepalive / paced20:.2f}x (20 B), {perKeepalive / paced28:.2f}x (28 B)")
    print(f"Twisted round-trip floor:      {platform['perRoundTrip'] * 1e6:.2f} us ({SLOT_BATCH} bare requests per 10 ms "
          f"slot on {args.sockets} Twisted ports, answers matched, no other logic; {platform['lost']:.0f} in flight at the end); "
          f"ratio {perKeepalive / platform['perRoundTrip']:.2f}x; "
          f"that floor alone is {platform['perRoundTrip'] / floor28:.2f}x the tight floor")
    print(f"reactor wake-ups:              {result['wakes'] / max(1, sent):.2f} per keepalive; "
          f"{platform['wakesPerRoundTrip']:.2f} per round trip of the Twisted floor")
    print(f"projection, {TARGET_FLOWS:,} flows at 25 s:  {TARGET_RATE:,.0f} keepalives/s x {perKeepalive * 1e6:.1f} us"
          f" = {TARGET_RATE * perKeepalive:.1%} of one core")
    return 0 if failures == 0 and sent > 0 else 1


def _peakRSS() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _common.rssBytes()


if __name__ == "__main__":
    raise SystemExit(main())

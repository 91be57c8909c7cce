"""
The logic of a keepalive alone: what the controller spends per STUN keepalive with no socket, no reactor and no
wake-up, against the bare build + ``sendto`` loop measured in the same run.

``keepalive_scale.py`` measures everything a keepalive costs on the real reactor; there the process sleeps
between 10 ms slots, and waking up (cold caches, the reactor's iteration, the kernel) costs as much as the
keepalive's own code, with a spread from run to run larger than any change to that code.  This script isolates
the code: N flows on one :class:`~twisted_sipnat.NATTraversalController` driven by ``twisted.internet.task.Clock``
in 10 ms steps, over :class:`~twisted_sipnat.SharedDatagramProtocol` sockets whose transports only record what is
written (the testing doubles).  Every request written in a step is answered through
``SharedDatagramProtocol.datagramReceived`` with the answer our STUN role would give (built outside the timed
part).  Process CPU is counted separately for the send half (the timer firing, the request built and written)
and the receive half (demultiplexing, matching, checking, judging the answer).

    python benchmarks/keepalive_logic.py [--size N] [--seconds S]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from typing import Dict, List, Optional

import _common  # noqa: F401  (puts the repository on sys.path)
from keepalive_scale import floorRequests
from twisted.internet.task import Clock

from twisted_sipnat import NATSettings, NATTraversalController, SharedDatagramProtocol, stun
from twisted_sipnat.testing import FakeDatagramTransport, RecordingObserver, bindingResponse

SERVER = ("198.51.100.1", 3478)
STEP = 0.01


def run(size: int, sockets: int, seconds: float, traced: bool = False) -> Dict[str, float]:
    """
    N flows on a Clock for ``seconds``, every request answered; CPU of the send and receive halves.  With
    ``traced``, tracemalloc runs from before the flows exist to the end: what the library holds once the flows
    have been answered (their timer entries, their last answers, the tables), not just at creation.  The
    observers are the caller's and are made before it starts.
    """
    observers = [RecordingObserver() for _ in range(size)]
    if traced:
        gc.collect()
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
    clock = Clock()
    controller = NATTraversalController(
        NATSettings(udpKeepaliveInterval=size / (0.9 * 4444), software=None), clock,
        rng=random.Random(5626), maxOutstandingPerServer=size, keepaliveEvents=False,
    )
    shared = []
    for i in range(sockets):
        transport = FakeDatagramTransport(port=5060 + i)
        protocol = SharedDatagramProtocol(controller=controller)
        protocol.makeConnection(transport)
        shared.append((protocol, transport))
    for i, observer in enumerate(observers):
        controller.refreshNATBinding(shared[i % len(shared)][0], observer, nextHop=SERVER)

    sendCPU = receiveCPU = 0.0
    keepalives = 0
    for _ in range(round(seconds / STEP)):
        start = time.process_time()
        clock.advance(STEP)
        sendCPU += time.process_time() - start
        for protocol, transport in shared:
            if not transport.written:
                continue
            answers = [bindingResponse(stun.decode(data), ("203.0.113.5", transport.port)) for data, _ in
                       transport.written]
            transport.written.clear()
            keepalives += len(answers)
            start = time.process_time()
            for answer in answers:
                protocol.datagramReceived(answer, SERVER)
            receiveCPU += time.process_time() - start
    result = {
        "keepalives": keepalives,
        "send": sendCPU,
        "receive": receiveCPU,
        "answered": controller.stats["keepalive.answered"],
        "failures": sum(len(o.failures) for o in observers),
    }
    if traced:
        del answers
        gc.collect()
        result["traced"] = tracemalloc.get_traced_memory()[0] - traced0
        tracemalloc.stop()
    controller.freeResources()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20_000, help="number of flows (default 20000)")
    parser.add_argument("--sockets", type=int, default=16, help="shared sockets (default 16)")
    parser.add_argument("--seconds", type=float, default=15.0, help="Clock seconds simulated (default 15)")
    args = parser.parse_args(argv)

    timed = run(args.size, args.sockets, args.seconds)
    # The memory a flow adds: the slope between two traced runs, so what the controller and the sockets hold
    # whatever the number of flows does not count as per flow.
    small, large = max(1, args.size // 20), max(2, args.size // 4)
    tracedSmall = run(small, args.sockets, args.seconds, traced=True)
    tracedLarge = run(large, args.sockets, args.seconds, traced=True)
    perFlow = (tracedLarge["traced"] - tracedSmall["traced"]) / (large - small)
    floor = floorRequests(200_000, False)
    keepalives = timed["keepalives"]
    perKeepalive = (timed["send"] + timed["receive"]) / keepalives
    print(f"flows: {args.size:,} on {args.sockets} sockets; {keepalives:,} keepalives in {args.seconds:.0f} s of "
          f"Clock time ({timed['answered']:,} answered, {timed['failures']} flow failures)")
    print(f"logic per keepalive:           {perKeepalive * 1e6:.2f} us (send {timed['send'] / keepalives * 1e6:.2f} us, "
          f"receive {timed['receive'] / keepalives * 1e6:.2f} us)")
    print(f"floor (build + sendto):        {floor * 1e6:.2f} us (20-byte header, tight loop, a real socket)")
    print(f"ratio to floor:                {perKeepalive / floor:.2f}x")
    print(f"memory per answered flow:      {perFlow:,.0f} B traced (tracemalloc from before the flows exist to the end "
          f"of the run, the slope between {small:,} and {large:,} flows)")
    ok = all(r["failures"] == 0 and r["answered"] == r["keepalives"] for r in (timed, tracedSmall, tracedLarge))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

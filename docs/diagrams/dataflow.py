"""
Source of ``dataflow.svg``: the one-way flow of a datagram and of the timer through shell and core.

The diagram is data (``PARTICIPANTS`` and ``STEPS`` below), drawn by ``drawing.py`` (shared with ``sequence.py``); running
``python docs/diagrams/dataflow.py`` rewrites ``dataflow.svg`` next to it.  No Sphinx extension or external tool
is needed to build the docs: the SVG is committed, and this file is its source.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).parent))
from drawing import render, write  # noqa: E402  (a script: its folder holds the shared drawing)

PARTICIPANTS = [
    ("reactor", "Twisted reactor\n(UDP port, one IDelayedCall)"),
    ("sip", "SIP stack\n(sipProtocol, Deferreds)"),
    ("sock", "SharedDatagramProtocol\n(RFC 7983 demux, Arbiter)"),
    ("ctl", "NATTraversalController\n(EngineDriver: the shell)"),
    ("core", "core.engine.Engine\n(sans-IO: every rule)"),
]

# (kind, from, to, label): kind is "msg" (solid arrow), "ret" (dashed arrow) or "note" (box over a span).
STEPS: List[Tuple[str, str, str, str]] = [
    ("note", "reactor", "core", "A. A datagram arrives on the shared UDP socket"),
    ("msg", "reactor", "sock", "datagramReceived(data, addr)"),
    ("msg", "sock", "sip", "not STUN: the datagram, unchanged"),
    ("msg", "sock", "ctl", "STUN: dataReceived(data, sock, addr)"),
    ("msg", "ctl", "core", "Engine.receive(record, data, addr, now)"),
    ("note", "core", "core", "match, check, sink.answered"),
    ("ret", "core", "ctl", "True: consumed (False for a request)"),
    ("ret", "ctl", "sock", "False: BindingResponder may answer it"),
    ("note", "reactor", "core", "Then, in this order (EngineDriver._flush)"),
    ("msg", "ctl", "core", "1. withdrawalsToMake, datagramsToSend"),
    ("msg", "ctl", "sock", "sendKeepalive: write, or hold (Arbiter)"),
    ("ret", "sock", "ctl", "False (held): Engine.heldBack(writeKey)"),
    ("msg", "ctl", "core", "2. getTimer()"),
    ("msg", "ctl", "reactor", "re-arm the one IDelayedCall (reset / callLater / cancel)"),
    ("msg", "ctl", "core", "3. nextEvent() until None"),
    ("ret", "ctl", "sip", "Deferred callback/errback, flowFailure"),
    ("note", "reactor", "core", "B. The one timer fires"),
    ("msg", "reactor", "ctl", "the IDelayedCall: EngineDriver._wake()"),
    ("msg", "ctl", "core", "handleTimer(now, limit=8) while True"),
    ("note", "core", "core", "TimerHeap.popDue: fire / due"),
    ("msg", "ctl", "sock", "each batch of 8: sendKeepalive(...)"),
    ("note", "reactor", "core", "Then the same _flush: 1. send, 2. re-arm, 3. events"),
    ("msg", "ctl", "reactor", "re-arm the IDelayedCall to getTimer()"),
    ("ret", "ctl", "sip", "events: Deferreds, flowFailure, log"),
    ("note", "reactor", "core", "The core never calls the shell; the shell changes the core only through Engine's methods"),
]


if __name__ == "__main__":
    write(__file__, render("twisted_sipnat: the one-way flow of a datagram and of the timer", PARTICIPANTS, STEPS, spacing=300, halfBox=120))

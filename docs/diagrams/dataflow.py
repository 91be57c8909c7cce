"""
Source of ``dataflow.svg``: the one-way flow of a datagram and of the timer through shell and core.

The diagram is data (``PARTICIPANTS`` and ``STEPS`` below), drawn in the style of ``sequence.py``; running
``python docs/diagrams/dataflow.py`` rewrites ``dataflow.svg`` next to it.  No Sphinx extension or external tool
is needed to build the docs: the SVG is committed, and this file is its source.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import List, Tuple

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

SPACING = 300
COLUMN = {key: 125 + i * SPACING for i, (key, _) in enumerate(PARTICIPANTS)}
WIDTH = 125 * 2 + SPACING * (len(PARTICIPANTS) - 1)
ROW = 34
TOP = 80


def render() -> str:
    height = TOP + ROW * (len(STEPS) + 1) + 20
    out: List[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        "<title>twisted_sipnat: the one-way flow of a datagram and of the timer</title>",
        '<defs><marker id="a" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
        '<path d="M0,0 L10,4 L0,8 z" fill="#222"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
    ]
    for key, label in PARTICIPANTS:
        x = COLUMN[key]
        out.append(f'<rect x="{x - 120}" y="10" width="240" height="44" rx="4" fill="#eef3fb" stroke="#335"/>')
        for i, line in enumerate(label.split("\n")):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(f'<text x="{x}" y="{28 + i * 15}" text-anchor="middle"{weight}>{escape(line)}</text>')
        out.append(f'<line x1="{x}" y1="54" x2="{x}" y2="{height - 10}" stroke="#889" stroke-dasharray="4,4"/>')
    y = TOP
    for kind, a, b, label in STEPS:
        y += ROW
        x1, x2 = COLUMN[a], COLUMN[b]
        if kind == "note":
            left, right = min(x1, x2) - 115, max(x1, x2) + 115
            out.append(f'<rect x="{left}" y="{y - 20}" width="{right - left}" height="24" fill="#fff8dc" stroke="#b8a"/>')
            out.append(f'<text x="{(left + right) // 2}" y="{y - 3}" text-anchor="middle" font-style="italic">'
                       f"{escape(label)}</text>")
            continue
        dash = ' stroke-dasharray="6,3"' if kind == "ret" else ""
        out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#222"{dash} marker-end="url(#a)"/>')
        out.append(f'<text x="{(x1 + x2) // 2}" y="{y - 6}" text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    Path(__file__).with_name("dataflow.svg").write_text(render(), encoding="utf-8")

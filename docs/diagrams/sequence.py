"""
Source of ``sequence.svg``: the life of a flow, drawn as a plain SVG sequence diagram.

The diagram is data (``PARTICIPANTS`` and ``STEPS`` below); running ``python docs/diagrams/sequence.py`` rewrites
``sequence.svg`` next to it.  No Sphinx extension or external tool (PlantUML, Graphviz) is needed to build the
docs: the SVG is committed, and this file is its source.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import List, Tuple

PARTICIPANTS = [
    ("ua", "SIP stack (UA)"),
    ("ctl", "NATTraversalController"),
    ("nat", "NAT"),
    ("edge", "Edge proxy / registrar\n(STUN + SIP on one port)"),
]

# (kind, from, to, label): kind is "msg" (solid arrow), "ret" (dashed arrow), "note" (box over a span) or "gap".
STEPS: List[Tuple[str, str, str, str]] = [
    ("note", "ua", "edge", "1. Resolve the public address (RFC 8489) from the SIP socket itself"),
    ("msg", "ua", "ctl", "resolvePublicAddress(domain, socket, nextHop)"),
    ("msg", "ctl", "edge", "STUN Binding request (retransmits 0, 0.5, 1.5 ... s)"),
    ("ret", "edge", "ctl", "Binding success: XOR-MAPPED-ADDRESS = public ip:port"),
    ("ret", "ctl", "ua", "Deferred fires: IPv4Address(public ip:port)"),
    ("note", "ua", "edge", "2. Register with the public address as Contact (RFC 5626 outbound)"),
    ("msg", "ua", "edge", "REGISTER  Via: ...;rport;keep   Contact: <sip:alice@public:port>"),
    ("ret", "edge", "ua", "200 OK  Flow-Timer: 30  (or Via keep=30, RFC 6223)"),
    ("msg", "ua", "ctl", "refreshNATBinding(socket, observer, nextHop, flowTimer=30)"),
    ("note", "ua", "edge", "3. Keepalives every 80-100 % of the interval (RFC 5626 §4.4.1)"),
    ("msg", "ctl", "edge", "STUN Binding request (keepalive)"),
    ("ret", "edge", "ctl", "Binding success: same XOR-MAPPED-ADDRESS"),
    ("msg", "ctl", "edge", "STUN Binding request (keepalive, 24-30 s later)"),
    ("ret", "edge", "ctl", "Binding success: same XOR-MAPPED-ADDRESS"),
    ("note", "ua", "edge", "4. The NAT drops or rebinds the mapping"),
    ("msg", "ctl", "nat", "STUN Binding request: lost / new mapping"),
    ("ret", "ctl", "ua", "observer.flowFailure(Failure(STUNTimeout | MappedAddressChanged))"),
    ("note", "ua", "edge", "5. Re-register after the RFC 5626 §4.5 backoff: 50-100 % of min(1800, 30 × 2^n) s"),
    ("msg", "ua", "ctl", "resolvePublicAddress(...)  → new public address"),
    ("msg", "ua", "edge", "REGISTER (new Contact)"),
    ("ret", "edge", "ua", "200 OK  Flow-Timer: 30"),
    ("msg", "ua", "ctl", "refreshNATBinding(...)  — keepalives resume"),
]

WIDTH = 980
COLUMN = {key: 110 + i * 250 for i, (key, _) in enumerate(PARTICIPANTS)}
ROW = 34
TOP = 80


def render() -> str:
    height = TOP + ROW * (len(STEPS) + 1) + 20
    out: List[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        "<title>twisted_sipnat: resolve, REGISTER, keepalives, flow failure, re-register</title>",
        '<defs><marker id="a" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
        '<path d="M0,0 L10,4 L0,8 z" fill="#222"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
    ]
    for key, label in PARTICIPANTS:
        x = COLUMN[key]
        out.append(f'<rect x="{x - 95}" y="10" width="190" height="44" rx="4" fill="#eef3fb" stroke="#335"/>')
        for i, line in enumerate(label.split("\n")):
            out.append(f'<text x="{x}" y="{30 + i * 15}" text-anchor="middle" font-weight="bold">{escape(line)}</text>')
        out.append(f'<line x1="{x}" y1="54" x2="{x}" y2="{height - 10}" stroke="#889" stroke-dasharray="4,4"/>')
    y = TOP
    for kind, a, b, label in STEPS:
        y += ROW
        x1, x2 = COLUMN[a], COLUMN[b]
        if kind == "note":
            left, right = min(x1, x2) - 90, max(x1, x2) + 90
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
    Path(__file__).with_name("sequence.svg").write_text(render(), encoding="utf-8")

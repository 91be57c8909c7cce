"""
Source of ``sequence.svg``: the life of a flow, drawn as a plain SVG sequence diagram.

The diagram is data (``PARTICIPANTS`` and ``STEPS`` below); running ``python docs/diagrams/sequence.py`` rewrites
``sequence.svg`` next to it.  No Sphinx extension or external tool (PlantUML, Graphviz) is needed to build the
docs: the SVG is committed, and this file is its source.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).parent))
from drawing import render, write  # noqa: E402  (a script: its folder holds the shared drawing)

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


if __name__ == "__main__":
    write(__file__, render("twisted_sipnat: resolve, REGISTER, keepalives, flow failure, re-register", PARTICIPANTS, STEPS, spacing=250, halfBox=95, margin=110, width=980, textTop=30, boldLines=2))

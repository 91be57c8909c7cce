"""
The drawing both diagram sources share: a plain SVG sequence diagram from data.

A diagram is its participants (``(key, label)``, a label may have several lines) and its steps (``(kind, from,
to, label)``: ``"msg"`` a solid arrow, ``"ret"`` a dashed one, ``"note"`` a box over the span).  No Sphinx
extension or external tool (PlantUML, Graphviz) is needed to build the docs: each SVG is committed next to its
source, which calls :func:`render` and :func:`write`.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import List, Sequence, Tuple

Participant = Tuple[str, str]
Step = Tuple[str, str, str, str]

ROW = 34
TOP = 80


def render(
    title: str,
    participants: Sequence[Participant],
    steps: Sequence[Step],
    *,
    spacing: int,
    halfBox: int,
    margin: int = 125,
    width: int = 0,
    textTop: int = 28,
    boldLines: int = 1,
) -> str:
    """
    The SVG text: one column every ``spacing`` pixels from ``margin``, each head a box ``2 * halfBox`` wide
    whose first ``boldLines`` label lines are bold; ``width`` defaults to what the columns need.
    """
    column = {key: margin + i * spacing for i, (key, _) in enumerate(participants)}
    width = width or margin * 2 + spacing * (len(participants) - 1)
    height = TOP + ROW * (len(steps) + 1) + 20
    out: List[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        '<defs><marker id="a" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
        '<path d="M0,0 L10,4 L0,8 z" fill="#222"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for key, label in participants:
        x = column[key]
        out.append(f'<rect x="{x - halfBox}" y="10" width="{2 * halfBox}" height="44" rx="4" fill="#eef3fb" '
                   'stroke="#335"/>')
        for i, line in enumerate(label.split("\n")):
            weight = ' font-weight="bold"' if i < boldLines else ""
            out.append(f'<text x="{x}" y="{textTop + i * 15}" text-anchor="middle"{weight}>{escape(line)}</text>')
        out.append(f'<line x1="{x}" y1="54" x2="{x}" y2="{height - 10}" stroke="#889" stroke-dasharray="4,4"/>')
    y = TOP
    for kind, a, b, label in steps:
        y += ROW
        x1, x2 = column[a], column[b]
        if kind == "note":
            left, right = min(x1, x2) - (halfBox - 5), max(x1, x2) + (halfBox - 5)
            out.append(f'<rect x="{left}" y="{y - 20}" width="{right - left}" height="24" fill="#fff8dc" '
                       'stroke="#b8a"/>')
            out.append(f'<text x="{(left + right) // 2}" y="{y - 3}" text-anchor="middle" font-style="italic">'
                       f"{escape(label)}</text>")
            continue
        dash = ' stroke-dasharray="6,3"' if kind == "ret" else ""
        out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#222"{dash} marker-end="url(#a)"/>')
        out.append(f'<text x="{(x1 + x2) // 2}" y="{y - 6}" text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(source: str, svg: str) -> None:
    """Write ``svg`` next to the diagram source file ``source`` (its ``__file__``), as ``NAME.svg``."""
    path = Path(source)
    path.with_suffix(".svg").write_text(svg, encoding="utf-8")

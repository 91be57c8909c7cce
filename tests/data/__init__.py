"""
The tests' own data, kept in the repository so a plain clone runs the whole suite:

- ``rfc5769.json``: the STUN test vectors of RFC 5769 §2 (sections 2.1-2.4): the sample request, the IPv4 and
  IPv6 responses and the long-term-credential request, as hex, with the values the RFC gives for them (its
  ``source`` key says so too).
- ``rfc8489.json``: RFC 8489 Appendix B.1, the long-term-credential request with USERHASH and
  MESSAGE-INTEGRITY-SHA256, as corrected by verified erratum 6268 (the printed one has a wrong length, no
  PASSWORD-ALGORITHM and a MAC that does not verify), with the values it was built from.
- ``kamailio/edge.cfg``: Kamailio as an RFC 5626-style edge (registrar, CRLF pongs, STUN on the SIP port); a
  template whose ``@HOST@``, ``@PORT@`` and ``@MODULES@`` the interop helpers fill in.
- ``kamailio/registrar.cfg``: Kamailio as a registrar with digest authentication (one plain-text user),
  usrloc in memory and RFC 5626 outbound, relaying requests to a registered AOR over its flow; with or
  without its stun module, with UDP, TCP and TLS listeners (the lab's Kamailio user agent tests).
- ``sipp/register.xml``: a SIPp scenario sending one REGISTER and expecting 200.
- ``sipp/kamailio-options.xml``: an OPTIONS to a user through the registrar, ending at its final response.
- ``sipp/edge-*.xml``: SIPp user agents for the edge role's interop test: REGISTER (checking the granted
  expiry), de-REGISTER with ``Expires: 0``, a MESSAGE expecting 200 or 404, and the registered UA receiving the
  proxied MESSAGE (checking its Request-URI, Max-Forwards and branch) and answering 200.

Every reader finds a file through :func:`dataPath`, so the data has one place and no test names a path outside
the repository.  Plain Python (no pytest, no Twisted): the fuzz script and the interop helpers import it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["DATA_DIR", "dataPath", "rfc5769Messages", "rfc5769Vectors"]

#: This directory.
DATA_DIR = Path(__file__).resolve().parent


def dataPath(name: str) -> Path:
    """
    The path of the data file ``name`` (relative to this directory, ``/``-separated, e.g. ``"sipp/register.xml"``).

    Raises FileNotFoundError naming the file when it is not there, so a missing file fails where it is asked for
    rather than later as an odd error of the program that was handed the path.
    """
    path = DATA_DIR.joinpath(*name.split("/"))
    if not path.is_file():
        raise FileNotFoundError(f"test data file {name!r} is not in {DATA_DIR}")
    return path


def rfc5769Vectors() -> Dict[str, Any]:
    """The RFC 5769 §2 vectors as the JSON object in ``rfc5769.json``."""
    vectors: Dict[str, Any] = json.loads(dataPath("rfc5769.json").read_text(encoding="utf-8"))
    return vectors


def rfc5769Messages() -> List[bytes]:
    """The four RFC 5769 §2 messages, as bytes (seeds for the fuzzers)."""
    return [bytes.fromhex(v["hex"]) for v in rfc5769Vectors().values() if isinstance(v, dict) and "hex" in v]

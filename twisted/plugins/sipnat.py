"""
The ``twistd sipnat`` plugin.

Only a ``ServiceMaker`` naming ``twisted_sipnat.tap`` as a string: plugin discovery imports this file for every
``twistd`` run, so it must stay cheap and must not import the reactor (``twisted_sipnat.tap`` loads only when
``sipnat`` is chosen).
"""

from twisted.application.service import ServiceMaker

sipnat = ServiceMaker(
    "twisted_sipnat",
    "twisted_sipnat.tap",
    "SIP NAT traversal: STUN public address, RFC 5626 keepalives, edge registrar and STUN server roles",
    "sipnat",
)

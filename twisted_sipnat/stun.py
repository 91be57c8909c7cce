"""
The STUN codec's public home (``twisted_sipnat.stun``, as the contract names it).

The codec itself lives in the sans-IO core, :mod:`twisted_sipnat.core.stun`; this module re-exports its public
names so that ``from twisted_sipnat import stun`` and ``from twisted_sipnat.stun import decode`` keep working.
"""

from twisted_sipnat.core.stun import *  # noqa: F403
from twisted_sipnat.core.stun import __all__ as __all__  # noqa: F401

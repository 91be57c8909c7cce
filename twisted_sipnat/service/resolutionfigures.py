"""
The figures of a client's STUN resolutions that come from tables the network can grow: the long-term
credentials learned per server (RFC 8489 §9.2) and the failure cache (``NATSettings.stunFailureCacheTime``).

``sipnat_stun_credentials`` and ``sipnat_stun_failed_domains`` are the two tables' sizes, so an operator sees
them stay within their bounds; ``sipnat_stun_auth_total{result}`` counts the challenges followed (``retried``:
one signed retry after a 401 or a 438) and not followed (``refused``: no REALM/NONCE, no known password
algorithm, a bid-down, §9.2.1); ``sipnat_stun_failure_cache_hits_total`` the resolutions failed at once.  Read
from the controller at each gathering, as :mod:`.flowfigures` does.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from .figures import Figures, IFigureSource

__all__ = ["AUTH_RESULTS", "ResolutionFigures"]

#: The ``result`` label of ``sipnat_stun_auth_total``, with the engine counter each is read from.
AUTH_RESULTS = {"retried": "stun.auth.retries", "refused": "stun.auth.refused"}


@implementer(IFigureSource)
class ResolutionFigures:
    """Reports ``controller``'s learned credentials and failure cache."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def reportFigures(self, figures: Figures) -> None:
        controller = self.controller
        stats = controller.stats
        figures.gauge("sipnat_stun_credentials", controller.learnedCredentialCount)
        for result, counter in AUTH_RESULTS.items():
            figures.count("sipnat_stun_auth_total", stats[counter], result=result)
        figures.gauge("sipnat_stun_failed_domains", controller.failedDomainCount)
        figures.count("sipnat_stun_failure_cache_hits_total", stats["stun.failure.cached"])

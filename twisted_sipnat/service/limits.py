"""
The open-file limit of a server role, and the connection cap that fits under it.

Every TCP connection is a file descriptor.  When the process runs out of them the kernel refuses the next
``accept`` (EMFILE) whoever is asking: under the common soft limit of 1024, about a thousand idle connections
lock every real client out.  So at start-up every role raises its soft ``RLIMIT_NOFILE`` to the hard limit
(an unprivileged process may, up to the hard limit) and logs both once, and the connection table's default
cap (:func:`defaultMaxConnections`) stays a reserve below the soft limit: the table, which evicts connections
that never completed a message, decides who is refused, not the kernel.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from twisted.logger import Logger

from ..core.connections import DEFAULT_MAX_CONNECTIONS, ConnectionLimits, defaultIdleTimeout

__all__ = ["FILE_RESERVE", "connectionLimits", "defaultMaxConnections", "openFileLimit", "raiseOpenFileLimit"]

log = Logger(namespace="twisted_sipnat.limits")

#: Descriptors kept out of the connection cap: listening and UDP sockets, log files, the worker pipes, and the
#: connections accepted in one reactor turn before their evicted predecessors are closed.
FILE_RESERVE = 128


def openFileLimit() -> Optional[Tuple[int, int]]:
    """``(soft, hard)`` ``RLIMIT_NOFILE`` (``RLIM_INFINITY`` as -1), or ``None`` where there is none (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft), int(hard)


def raiseOpenFileLimit() -> Optional[Tuple[int, int]]:
    """
    Raise the soft open-file limit to the hard one and log one line with both; returns the new ``(soft,
    hard)`` (``None`` where there is no such limit).  A hard limit of "unlimited" is not a value ``setrlimit``
    takes for the soft one on every system, so the soft limit then stays as it is.  A refusal is logged, never
    raised: the role still runs, with the limit it was given.
    """
    limit = openFileLimit()
    if limit is None:
        return None
    import resource

    soft, hard = limit
    target = hard if hard != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as e:
            log.warn("could not raise the open-file limit from {soft} to {hard}: {error}", soft=soft, hard=hard,
                     error=e, sipnat_event="limits.nofile-error")
    log.info("open-file limit (RLIMIT_NOFILE): soft {soft}, hard {hard}", soft=_show(soft), hard=_show(hard),
             sipnat_event="limits.nofile")
    return soft, hard


def _show(value: int) -> str:
    import resource

    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def defaultMaxConnections(soft: Optional[int] = None) -> int:
    """
    The connection cap that fits under the soft open-file limit ``soft`` (default: the current one): the limit
    minus :data:`FILE_RESERVE` (or an eighth of it, whichever is more), at least 16; without a finite limit,
    :data:`~twisted_sipnat.core.connections.DEFAULT_MAX_CONNECTIONS`.
    """
    if soft is None:
        limit = openFileLimit()
        soft = limit[0] if limit is not None else -1
    if soft < 0:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, soft - max(FILE_RESERVE, soft // 8))


def connectionLimits(overrides: Optional[Mapping[str, Any]] = None, flowTimer: Optional[float] = None) -> ConnectionLimits:
    """
    A server role's :class:`~twisted_sipnat.core.connections.ConnectionLimits`: ``overrides`` (the
    ``ConnectionLimits`` field names, from :func:`~twisted_sipnat.service.options.connectionLimitArguments`)
    on top of the defaults: the cap under the current file limit, and an idle timeout from ``flowTimer``
    (:func:`~twisted_sipnat.core.connections.defaultIdleTimeout`, RFC 5626 §5.4).  Raises
    ``InvalidSettingsError`` naming the option of a bad value.
    """
    values: Dict[str, Any] = {"maxConnections": defaultMaxConnections(),
                              "idleTimeout": defaultIdleTimeout(flowTimer)}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return ConnectionLimits(**values)

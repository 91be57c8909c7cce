"""
What identifies the client role's user agent across restarts: its RFC 5626 instance ID, kept in a state file,
and its digest password, read from a file or the environment.

Why a file for the instance: RFC 5626 §4.1 wants ``+sip.instance`` to stay the same for the life of the device,
so that a registrar replaces the bindings of a restarted UA instead of adding to them (§6: the instance and the
reg-id identify a flow, not the address).  A UUID made at each start would leave the old bindings in place until
they expire.  The file is created with mode 0600 (``O_EXCL``, so two processes starting together agree on one).

Why not the command line for the password: the arguments of a process are visible to every user in ``ps``;
``--password-file`` and ``--password-env`` are not.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Mapping, Optional

from ..errors import InvalidSettingsError

__all__ = ["INSTANCE_FILE", "defaultStateDir", "loadInstance", "readPassword"]

#: The state file holding the instance URN, in the state directory.
INSTANCE_FILE = "instance-id"


def defaultStateDir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/twisted-sipnat``, else ``~/.local/state/twisted-sipnat`` (the XDG base directory spec)."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "twisted-sipnat"


def _valid(text: str) -> Optional[str]:
    text = text.strip()
    if not text.lower().startswith("urn:uuid:"):
        return None
    try:
        return "urn:uuid:" + str(uuid.UUID(text[len("urn:uuid:"):]))
    except ValueError:
        return None


def loadInstance(stateDir: Path, option: str = "state-dir") -> str:
    """
    The ``urn:uuid:...`` of this UA (RFC 5626 §4.1), read from ``stateDir``/:data:`INSTANCE_FILE`, or made and
    written there (mode 0600) the first time.  A file that holds no instance URN, or a directory that cannot be
    written, is one :class:`InvalidSettingsError` naming ``option``.
    """
    path = stateDir / INSTANCE_FILE
    try:
        stateDir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            found = _valid(path.read_text(encoding="ascii", errors="replace")[:200])
            if found is None:
                raise InvalidSettingsError(option, str(stateDir), f"{path} holds no urn:uuid: instance ID") from None
            return found
        instance = f"urn:uuid:{uuid.uuid4()}"
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(instance + "\n")
        return instance
    except OSError as e:
        raise InvalidSettingsError(option, str(stateDir), f"cannot keep the instance ID there ({e.strerror})") from None


def readPassword(password: Optional[str], passwordFile: Optional[str], passwordEnv: Optional[str],
                 environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """
    The digest password from exactly one of ``--password``, ``--password-file`` (its first line) and
    ``--password-env`` (the variable's value), or ``None`` when none is given.
    """
    given = [(k, v) for k, v in (("password", password), ("password-file", passwordFile),
                                 ("password-env", passwordEnv)) if v is not None]
    if len(given) > 1:
        raise InvalidSettingsError(given[1][0], "...", f"give one of --password, --password-file, --password-env, "
                                                       f"not --{given[0][0]} as well")
    if passwordFile is not None:
        try:
            with open(passwordFile, encoding="utf-8") as f:
                first = f.readline(4096).rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidSettingsError("password-file", passwordFile, f"cannot read it ({e})") from None
        if not first:
            raise InvalidSettingsError("password-file", passwordFile, "its first line is empty")
        return first
    if passwordEnv is not None:
        value = environ.get(passwordEnv)
        if not value:
            raise InvalidSettingsError("password-env", passwordEnv, "no such environment variable, or it is empty")
        return value
    return password

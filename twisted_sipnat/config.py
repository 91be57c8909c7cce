"""
Per-domain :class:`~twisted_sipnat.settings.NATSettings` from a configuration file (INI, or TOML).

The seed kept NAT settings per SIP domain; this is where an operator writes them.  One section per domain, the
keys are the ``NATSettings`` field names::

    # sipnat.ini
    [example.com]
    stunServers = stun:stun.example.com, 192.0.2.7:3478
    udpKeepaliveInterval = 25
    # stun, crlf, or auto (STUN, then CRLF once a hop that never answered STUN lets one time out)
    udpKeepaliveMethod = stun

    [default]
    udpKeepaliveInterval = 20

or, in TOML (read with :mod:`tomllib` on Python 3.11+, and with ``tomli``, the same parser under its PyPI
name, on 3.10, where the standard library has none)::

    ["example.com"]
    stunServers = ["stun:stun.example.com", ["192.0.2.7", 3478]]
    udpKeepaliveInterval = 25

The section ``default`` holds the settings for any domain not named.  Every value is checked when the file is
loaded, so a bad one stops the program at start with one line naming the section and the key
(:class:`~twisted_sipnat.errors.InvalidSettingsError`) rather than as an odd timer hours later.  Sans-IO apart
from reading the file; imports nothing from Twisted.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is new in 3.11; tomli is the same parser, installed for 3.10 by setup.cfg's install_requires
    import tomli as tomllib

from .errors import InvalidSettingsError
from .settings import NATSettings

__all__ = ["DEFAULT_SECTION", "loadConfig", "parseConfigText", "settingsFromMapping", "splitServerList"]

#: The section whose settings serve every domain not named in the file.
DEFAULT_SECTION = "default"

_FIELDS = {f.name: f for f in dataclasses.fields(NATSettings) if f.init}
_FLOATS = {"udpKeepaliveInterval", "tcpKeepaliveInterval", "pongTimeout", "rto", "stunFailureCacheTime"}


def loadConfig(path: Union[str, Path]) -> Dict[str, NATSettings]:
    """
    Read ``path`` and return ``{domain: NATSettings}`` (the ``default`` section under ``"default"``).

    The format follows the file name: ``.toml`` is TOML, anything else INI.  Raises
    :class:`InvalidSettingsError` (key ``"config"`` for an unreadable or unparsable file, ``"[section] key"``
    for a bad value).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSettingsError("config", str(path), f"cannot read it: {e}") from None
    return parseConfigText(text, toml=p.suffix.lower() == ".toml", name=str(path))


def parseConfigText(text: str, toml: bool = False, name: str = "<config>") -> Dict[str, NATSettings]:
    """Parse configuration text (INI, or TOML when ``toml``) into ``{domain: NATSettings}``."""
    sections = _parseTOML(text, name) if toml else _parseINI(text, name)
    return {domain: settingsFromMapping(values, section=domain) for domain, values in sections.items()}


def settingsFromMapping(values: Mapping[str, Any], section: str = DEFAULT_SECTION) -> NATSettings:
    """
    Build one :class:`NATSettings` from a mapping of field names to values (INI strings or TOML values).

    Errors name the section: ``InvalidSettingsError("[example.com] udpKeepaliveInterval", ...)``.
    """
    kwargs: Dict[str, Any] = {}
    for key, raw in values.items():
        if key not in _FIELDS:
            raise InvalidSettingsError(f"[{section}] {key}", raw, f"unknown setting; known: {', '.join(sorted(_FIELDS))}")
        kwargs[key] = _convert(section, key, raw)
    try:
        return NATSettings(**kwargs)
    except InvalidSettingsError as e:
        raise InvalidSettingsError(f"[{section}] {e.key}", e.value, e.why) from None


def splitServerList(text: str) -> List[str]:
    """
    ``"stun:a.example, 192.0.2.1:3478 [2001:db8::1]:3478"`` -> URIs for ``NATSettings.stunServers``.

    Entries are separated by commas or white space; ``host[:port]`` without a scheme gets ``stun:``.
    """
    entries = [e for chunk in text.split(",") for e in chunk.split()]
    return [e if e.lower().startswith(("stun:", "stuns:")) else "stun:" + e for e in entries]


def _convert(section: str, key: str, raw: Any) -> Any:
    where = f"[{section}] {key}"
    if key == "stunServers":
        if isinstance(raw, str):
            return splitServerList(raw)
        if isinstance(raw, list):
            return raw  # NATSettings takes [host, port] pairs as they come from TOML
        raise InvalidSettingsError(where, raw, "expected a list of servers")
    if key in _FLOATS:
        if isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise InvalidSettingsError(where, raw, "not a number of seconds") from None
            if not math.isfinite(value):
                raise InvalidSettingsError(where, raw, "not a finite number of seconds")
            return value
        return raw
    if key == "software" and isinstance(raw, str) and raw.strip().lower() == "none":
        # INI has no null: "software = none" turns SOFTWARE off, as software=None does.
        return None
    return raw.strip() if isinstance(raw, str) else raw


def _parseINI(text: str, name: str) -> Dict[str, Dict[str, Any]]:
    # No interpolation (a password may contain '%'), keys case-sensitive (they are camelCase field names),
    # and no implicit [DEFAULT] merging: our "default" section is an ordinary one.
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00unused")
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text, source=name)
    except configparser.Error as e:
        line = str(e).splitlines()[0]
        raise InvalidSettingsError("config", name, f"not valid INI: {line}") from None
    return {section: dict(parser.items(section)) for section in parser.sections()}


def _parseTOML(text: str, name: str) -> Dict[str, Dict[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidSettingsError("config", name, f"not valid TOML: {e}") from None
    sections: Dict[str, Dict[str, Any]] = {}
    for domain, values in data.items():
        if not isinstance(values, dict):
            raise InvalidSettingsError(f"[{domain}]", values, "each domain must be a table of settings")
        sections[domain] = values
    return sections

"""twisted_sipnat.service.options: the ``twistd sipnat`` command line and the checking of its values."""

from __future__ import annotations

from typing import Any, Tuple

import pytest

from twisted_sipnat.core.addresses import parseHostPort
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.options import (
    ClientOptions,
    EdgeOptions,
    Options,
    STUNOptions,
    parseUDPDescription,
)


def _parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize(
    "text, expected",
    [
        ("udp:5060", (5060, "")),
        ("udp:0", (0, "")),
        ("UDP:port=5070", (5070, "")),
        ("udp:5060:interface=127.0.0.1", (5060, "127.0.0.1")),
        ("udp:5060:interface=::1", (5060, "::1")),
        ("udp:5060:interface=[::1]", (5060, "::1")),
    ],
)
def test_parseUDPDescription(text: str, expected: Tuple[int, str]) -> None:
    assert parseUDPDescription(text) == expected


@pytest.mark.parametrize("bad", ["tcp:5060", "udp:", "udp:70000", "udp:5060:interface=example.com", "5060", "udp:x"])
def test_parseUDPDescriptionRefuses(bad: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseUDPDescription(bad, "listen")
    assert info.value.key == "listen"


def test_parseHostPort() -> None:
    assert parseHostPort("192.0.2.1:5060", "k") == ("192.0.2.1", 5060)
    assert parseHostPort("[2001:DB8::1]:5060", "k") == ("2001:db8::1", 5060)
    assert parseHostPort("2001:db8::1", "k", defaultPort=3478) == ("2001:db8::1", 3478)
    assert parseHostPort("stun.example.com", "k", defaultPort=3478) == ("stun.example.com", 3478)
    for bad in ("192.0.2.1", "192.0.2.1:0", "192.0.2.1:x", ":5060", "[::1", "[::1]x"):
        with pytest.raises(InvalidSettingsError) as info:
            parseHostPort(bad, "next-hop")
        assert info.value.key == "next-hop"


def test_noSubcommandIsTheEmbeddedDefault() -> None:
    options = _parse()
    assert options.subCommand is None
    assert options["config"] is None


def test_clientOptions() -> None:
    options = _parse("--config", "x.ini", "client", "--next-hop", "192.0.2.1:5060", "--stun", "stun.example.com",
                     "-s", "192.0.2.9:3479", "--listen", "udp:0", "--register", "alice@example.com",
                     "--interval", "15", "--method", "crlf", "--domain", "example.com")
    assert options["config"] == "x.ini"
    assert options.subCommand == "client"
    sub = options.subOptions
    assert sub["stun"] == ["stun:stun.example.com", "stun:192.0.2.9:3479"]
    assert (sub["next-hop"], sub["listen"], sub["register"]) == ("192.0.2.1:5060", "udp:0", "alice@example.com")
    assert (sub["interval"], sub["method"], sub["domain"]) == ("15", "crlf", "example.com")


def test_edgeAndStunDefaults() -> None:
    edge = _parse("edge").subOptions
    assert (edge["udp"], edge["tcp"], edge["domain"], edge["flow-timer"]) == ("udp:5060", "tcp:5060", "localhost", None)
    stun = _parse("stun", "--alternate", "192.0.2.8:3479", "--no-rate-limit").subOptions
    assert (stun["udp"], stun["alternate"], stun["no-rate-limit"]) == ("udp:3478", "192.0.2.8:3479", True)


@pytest.mark.parametrize("options", [Options, ClientOptions, EdgeOptions, STUNOptions])
def test_everyOptionIsDocumented(options: Any) -> None:
    text = " ".join(str(options()).split())  # the help columns wrap with the widest option
    instance = options()
    for long, _short, _default, doc, *_ in getattr(instance, "optParameters", []):
        assert f"--{long}" in text and doc, long
    for flag in getattr(instance, "optFlags", []):
        assert f"--{flag[0]}" in text and flag[2]
    if options is ClientOptions:
        assert "--stun" in text and "RFC 7064" in text
    if options is Options:
        for name in ("client", "edge", "stun"):
            assert name in text

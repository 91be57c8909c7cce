"""``twistd sipnat`` options, the config file, and the plugin's import hygiene."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from twisted_sipnat.config import loadConfig, parseConfigText, splitServerList
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.settings import NATSettings
from twisted_sipnat.tap import ClientOptions, EdgeOptions, Options, STUNOptions

ROOT = Path(__file__).resolve().parents[1]


def _parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


# ---- the config file -------------------------------------------------------------------------------------

INI = """
[example.com]
stunServers = stun:stun.example.com, 192.0.2.7:3478 [2001:db8::7]:3479
udpKeepaliveInterval = 20
udpKeepaliveMethod = crlf
username = alice
password = s3cr%t

[default]
tcpKeepaliveInterval = 90
software = none
"""


def test_iniSectionsBecomeNATSettings() -> None:
    settings = parseConfigText(INI)
    example = settings["example.com"]
    assert example.servers == (("stun.example.com", None), ("192.0.2.7", 3478), ("2001:db8::7", 3479))
    assert example.udpKeepaliveInterval == 20.0
    assert example.udpKeepaliveMethod == "crlf"
    assert (example.username, example.password) == ("alice", "s3cr%t")
    assert settings["default"] == NATSettings(tcpKeepaliveInterval=90.0, software=None)


def test_tomlSections(tmp_path: Path) -> None:
    path = tmp_path / "sipnat.toml"
    path.write_text(textwrap.dedent("""
        ["example.com"]
        stunServers = ["stun:stun.example.com", ["192.0.2.7", 3478]]
        udpKeepaliveInterval = 25
        pongTimeout = 5.5
    """))
    settings = loadConfig(path)
    assert settings["example.com"].servers == (("stun.example.com", None), ("192.0.2.7", 3478))
    assert settings["example.com"].pongTimeout == 5.5


def test_iniFileFromDisk(tmp_path: Path) -> None:
    path = tmp_path / "sipnat.ini"
    path.write_text(INI)
    assert set(loadConfig(path)) == {"example.com", "default"}


@pytest.mark.parametrize(
    "text, key",
    [
        ("[a]\nudpKeepaliveInterval = soon\n", "[a] udpKeepaliveInterval"),
        ("[a]\nudpKeepaliveInterval = -3\n", "[a] udpKeepaliveInterval"),
        ("[a]\nudpKeepaliveInterval = nan\n", "[a] udpKeepaliveInterval"),
        ("[a]\nudpKeepaliveMethod = smoke\n", "[a] udpKeepaliveMethod"),
        ("[a]\npongTimeout = 0\n", "[a] pongTimeout"),
        ("[a]\nstunServers = stuns:x.example\n", "[a] stunServers"),
        ("[a]\nstunServers = 192.0.2.1:99999\n", "[a] stunServers"),
        ("[a]\nusername = bob\n", "[a] username"),
        ("[a]\nkeepAlive = 3\n", "[a] keepAlive"),
        ("not ini at all", "config"),
        ("[a]\nx = 1\n[a]\n", "config"),
    ],
)
def test_invalidValuesNameTheKey(text: str, key: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseConfigText(text)
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_invalidTOMLNamesTheKey() -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseConfigText('["a"]\nudpKeepaliveInterval = "x"\n', toml=True)
    assert info.value.key == "[a] udpKeepaliveInterval"
    with pytest.raises(InvalidSettingsError) as info:
        parseConfigText("a = 3\n", toml=True)
    assert info.value.key == "[a]"
    with pytest.raises(InvalidSettingsError) as info:
        parseConfigText("[[[", toml=True)
    assert info.value.key == "config"


def test_missingFile(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        loadConfig(tmp_path / "nope.ini")
    assert info.value.key == "config"


def test_splitServerList() -> None:
    assert splitServerList("a.example,  192.0.2.1:3478 stun:b") == ["stun:a.example", "stun:192.0.2.1:3478", "stun:b"]


# ---- options ---------------------------------------------------------------------------------------------


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
    text = str(options())
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


def test_pluginImportsNoReactor() -> None:
    """Plugin discovery and option parsing must not install a reactor or load twisted.protocols.sip."""
    code = textwrap.dedent("""
        import sys
        from twisted.plugin import getPlugins
        from twisted.application.service import IServiceMaker
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "sipnat"]
        assert len(makers) == 1, makers
        options = makers[0].options()
        options.parseOptions(["client", "--next-hop", "192.0.2.1:5060"])
        bad = [m for m in ("twisted.internet.reactor", "twisted.protocols.sip") if m in sys.modules]
        print("loaded:", bad)
        sys.exit(1 if bad else 0)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

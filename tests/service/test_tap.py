"""``twistd sipnat``: the config file, the plugin's import hygiene, buildService / makeService and real twistd runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, List

import pytest

from twisted_sipnat.config import loadConfig, parseConfigText, splitServerList
from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.settings import NATSettings
from twisted_sipnat.tap import Options

ROOT = Path(__file__).resolve().parents[2]


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


# ---- the plugin ----------------------------------------------------------------------------------------------


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


# ---- makeService -------------------------------------------------------------------------------------------


def test_buildServiceForEachRole(tmp_path: Path) -> None:
    from twisted.application.service import MultiService
    from twisted.internet.task import Clock

    from twisted_sipnat.service.client import ClientRole
    from twisted_sipnat.service.edge import EdgeRole
    from twisted_sipnat.service.stunserver import STUNRole
    from twisted_sipnat.tap import buildService

    config = tmp_path / "c.ini"
    config.write_text("[example.com]\nudpKeepaliveInterval = 12\nstunServers = 192.0.2.7\n")
    client = buildService(_parse("--config", str(config), "client", "--next-hop", "192.0.2.1:5060", "--domain",
                                 "example.com", "--interval", "15", "--listen", "udp:0"), Clock())
    assert isinstance(client, ClientRole)
    settings = client.controller.settingsFor("example.com")
    assert settings.udpKeepaliveInterval == 15.0, "the command line wins over the file"
    assert settings.servers == (("192.0.2.7", 3478),), "the file fills the rest"
    edge = buildService(_parse("edge", "--tcp", "none", "--flow-timer", "30"), Clock())
    assert isinstance(edge, EdgeRole) and edge.tcp is None and edge.proxy.flowTimer == 30
    stun = buildService(_parse("stun", "--udp", "udp:0:interface=127.0.0.1", "--no-rate-limit"), Clock())
    assert isinstance(stun, STUNRole) and stun.responder.rateLimit is None
    default = buildService(_parse(), Clock())
    assert isinstance(default, MultiService)
    assert isinstance(default.stun, STUNRole) and isinstance(default.client, ClientRole)


@pytest.mark.parametrize(
    "argv, key",
    [
        (["client"], "next-hop"),
        (["client", "--next-hop", "example.com:5060"], "next-hop"),
        (["client", "--next-hop", "192.0.2.1:5060", "--interval", "soon"], "interval"),
        (["client", "--next-hop", "192.0.2.1:5060", "--listen", "tcp:5060"], "listen"),
        (["client", "--next-hop", "192.0.2.1:5060", "--stun", "stuns:x.example"], "stun"),
        (["client", "--next-hop", "192.0.2.1:5060", "--method", "smoke"], "method"),
        (["client", "--next-hop", "192.0.2.1:5060", "--register", "nobody"], "register"),
        (["edge", "--flow-timer", "0"], "flow-timer"),
        (["edge", "--flow-timer", "1.5"], "flow-timer"),
        (["edge", "--udp", "udp:99999"], "udp"),
        (["stun", "--rate", "0"], "rate"),
        (["stun", "--alternate", "192.0.2.8"], "alternate"),
        (["--config", "CONFIG", "client", "--next-hop", "192.0.2.1:5060", "--domain", "a"], "[a] udpKeepaliveInterval"),
        (["--config", "MISSING", "client", "--next-hop", "192.0.2.1:5060"], "config"),
    ],
)
def test_makeServiceRefusesBadValuesInOneLine(argv: Any, key: str, tmp_path: Path) -> None:
    from twisted_sipnat.tap import makeService

    config = tmp_path / "bad.ini"
    config.write_text("[a]\nudpKeepaliveInterval = soon\n")
    argv = [str(config) if a == "CONFIG" else str(tmp_path / "missing.ini") if a == "MISSING" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        makeService(_parse(*argv))
    message = str(info.value.code)
    assert "\n" not in message
    assert message.startswith("twistd sipnat: invalid ")
    assert f"invalid {key}=" in message, message


def _twistd(*args: str) -> List[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


def test_twistdRunsTheEmbeddedDefault(tmp_path: Path) -> None:
    """``twistd -n sipnat``: resolves, keeps alive, logs it, and shuts down cleanly."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(_twistd("-n", "--pidfile=", "--logfile=-", "sipnat"), cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: List[str] = []
    deadline = time.monotonic() + 30
    try:
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "keepalive answered" in line:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    text = "".join(lines) + rest
    assert "public address 127.0.0.1:" in text
    assert "keepalives started" in text
    assert "keepalive answered" in text, text
    assert "Server Shut Down" in text
    assert "Traceback" not in text


def test_twistdBadConfigIsOneLine(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('["example.com"]\nudpKeepaliveMethod = "smoke"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(_twistd("-n", "--pidfile=", "sipnat", "--config", str(config), "client", "--next-hop",
                                    "127.0.0.1:5060", "--domain", "example.com"),
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(
        "twistd sipnat: invalid [example.com] udpKeepaliveMethod='smoke'")


def test_config_is_refused_for_roles_that_do_not_read_it() -> None:
    from twisted_sipnat.errors import InvalidSettingsError
    from twisted_sipnat.tap import Options, buildService

    for role in ("edge", "stun"):
        options = Options()
        options.parseOptions(["--config", "/nonexistent.ini", role])
        with pytest.raises(InvalidSettingsError, match="config"):
            buildService(options, None)

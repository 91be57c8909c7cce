"""The client role's user agent options: credentials from a file or the environment, the instance state file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from twisted_sipnat.errors import InvalidSettingsError
from twisted_sipnat.service.identity import defaultStateDir, loadInstance
from twisted_sipnat.service.options import Options, clientArguments, clientUAArguments


def _client(*args: str) -> Any:
    options = Options()
    options.parseOptions(["client", "--next-hop", "192.0.2.1:5060", *args])
    return options


def test_passwordFromAFileWithTheUserFromTheAOR(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    options = _client("--register", "alice@example.com", "--password-file", str(secret),
                      "--state-dir", str(tmp_path / "state"))
    kw = clientArguments(options, options.subOptions)
    assert kw["credentials"].username == "alice" and kw["credentials"].password == "s3cret"
    assert "s3cret" not in repr(kw["credentials"])
    assert kw["outbound"] and kw["instance"].startswith("urn:uuid:")


def test_passwordFromTheEnvironmentAndAnExplicitUser(tmp_path: Path) -> None:
    options = _client("--register", "alice@example.com", "--user", "auth-alice", "--password-env", "SIP_PW",
                      "--no-outbound")
    kw = clientUAArguments(options.subOptions, {"SIP_PW": "x"})
    assert (kw["credentials"].username, kw["credentials"].password) == ("auth-alice", "x")
    assert kw["instance"] is None and not kw["outbound"], "no state file without outbound"


@pytest.mark.parametrize("args, key", [
    (["--password", "a", "--password-env", "B"], "password-env"),
    (["--password-env", "UNSET_VARIABLE_FOR_TEST"], "password-env"),
    (["--password-file", "/nonexistent/pw"], "password-file"),
    (["--user", "bob"], "user"),
])
def test_badCredentialOptionsAreOneLine(args: list[str], key: str) -> None:
    options = _client("--register", "alice@example.com", "--no-outbound", *args)
    with pytest.raises(InvalidSettingsError) as info:
        clientUAArguments(options.subOptions, {})
    assert info.value.key == key


def test_aPasswordWithoutRegisterIsRefused() -> None:
    options = _client("--password", "x")
    with pytest.raises(InvalidSettingsError) as info:
        clientUAArguments(options.subOptions, {})
    assert info.value.key == "password"


def test_instanceIsStableAndItsFileIs0600(tmp_path: Path) -> None:
    first = loadInstance(tmp_path / "s")
    assert loadInstance(tmp_path / "s") == first
    mode = stat.S_IMODE(os.stat(tmp_path / "s" / "instance-id").st_mode)
    assert mode == 0o600


def test_aCorruptStateFileIsOneLine(tmp_path: Path) -> None:
    (tmp_path / "instance-id").write_text("not a urn")
    with pytest.raises(InvalidSettingsError) as info:
        loadInstance(tmp_path)
    assert info.value.key == "state-dir"


def test_defaultStateDirFollowsXDG() -> None:
    assert defaultStateDir({"XDG_STATE_HOME": "/x"}) == Path("/x/twisted-sipnat")


def test_keepaliveIsTheMethodOption() -> None:
    options = _client("--keepalive", "crlf")
    assert clientArguments(options, options.subOptions)["settings"]["default"].udpKeepaliveMethod == "crlf"
    both = _client("--keepalive", "crlf", "--method", "stun")
    with pytest.raises(InvalidSettingsError) as info:
        clientArguments(both, both.subOptions)
    assert info.value.key == "keepalive"
    bad = _client("--keepalive", "smoke")
    with pytest.raises(InvalidSettingsError) as info:
        clientArguments(bad, bad.subOptions)
    assert info.value.key == "keepalive"

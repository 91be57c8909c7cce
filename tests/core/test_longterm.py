"""
STUN long-term credentials on the client (RFC 8489 §9.2) and the per-domain failure cache, driven through the
sans-IO engine with a scripted server: every byte that leaves is decoded and checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, List, Optional, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.config import parseConfigText
from twisted_sipnat.core import stun
from twisted_sipnat.core.engine import Engine
from twisted_sipnat.core.events import Note, ResolutionFailed, Resolved
from twisted_sipnat.core.failurecache import FailureCache
from twisted_sipnat.core.longterm import (
    FEATURE_PASSWORD_ALGORITHMS,
    FEATURE_USERNAME_ANONYMITY,
    LongTermCredentials,
    encodeNonceCookie,
    nonceFeatures,
)
from twisted_sipnat.errors import InvalidSettingsError, STUNErrorResponse, STUNTimeout
from twisted_sipnat.settings import NATSettings

SERVER = ("192.0.2.10", 3478)
HOP = ("192.0.2.20", 5060)
VECTORS = json.loads((Path(__file__).parent.parent / "data" / "rfc5769.json").read_text())
B1 = json.loads((Path(__file__).parent.parent / "data" / "rfc8489.json").read_text(encoding="utf-8"))


def longTerm(password: str = "secret", **kw: Any) -> NATSettings:
    return NATSettings(stunServers=[SERVER], username="alice", password=password, credentialMechanism="long-term",
                       software=None, **kw)


class Scripted:
    """An engine with one UDP socket; the requests it sends are decoded for the test to answer."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.record = self.engine.socket("udp", False)
        self.record.ipv6 = False
        self.now = 0.0
        self.lastRaw = b""

    def resolve(self, settings: NATSettings, domain: Optional[str] = "example.org") -> Any:
        return self.engine.resolve(self.record, settings, settings.servers, None, HOP, domain, self.now)

    def sent(self) -> List[stun.Message]:
        raws = [t[2] for t in self.engine.datagramsToSend()]
        if raws:
            self.lastRaw = raws[-1]
        return [stun.decode(r) for r in raws]

    def answer(self, request: stun.Message, attributes: Sequence[Any], cls: int = stun.ERROR,
               key: Optional[bytes] = None, sha256: bool = False) -> None:
        reply = stun.Message(stun.BINDING, cls, request.transactionId, list(attributes))
        self.engine.receive(self.record, reply.encode(key=key, sha256=sha256), SERVER, self.now)

    def events(self) -> List[Any]:
        out = []
        while True:
            event = self.engine.nextEvent()
            if event is None:
                return out
            out.append(event)

    def outcome(self) -> Any:
        return [e for e in self.events() if isinstance(e, (Resolved, ResolutionFailed))]


def challenge(code: int = 401, realm: Optional[str] = "example.org", nonce: str = "n-1", extra: Sequence[Any] = ()) -> List[Any]:
    attributes: List[Any] = [stun.ErrorCode(code, "Unauthenticated" if code == 401 else "Stale Nonce")]
    if realm is not None:
        attributes.append(stun.Realm(realm))
    attributes.append(stun.Nonce(nonce))
    attributes.extend(extra)
    return attributes


def mapped() -> List[Any]:
    return [stun.XorMappedAddress("198.51.100.7", 40000)]


def md5Key(password: str = "secret", realm: str = "example.org") -> bytes:
    return hashlib.md5(f"alice:{realm}:{password}".encode()).digest()


def test_the_first_request_is_unsigned_and_a_401_is_retried_once_signed_with_a_new_id() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    assert first.get(stun.USERNAME) is None and not first.hasIntegrity and first.get(stun.REALM) is None
    s.answer(first, challenge())  # unsigned, as RFC 8489 §9.2.5 challenges are
    [retry] = s.sent()
    assert retry.transactionId != first.transactionId
    assert retry.get(stun.USERNAME) == stun.Username("alice")
    assert retry.get(stun.REALM) == stun.Realm("example.org") and retry.get(stun.NONCE) == stun.Nonce("n-1")
    assert retry.get(stun.PASSWORD_ALGORITHM) is None and retry.get(stun.MESSAGE_INTEGRITY_SHA256) is None
    assert retry.verifyIntegrity(md5Key()) and retry.verifyFingerprint()
    s.answer(retry, mapped(), stun.SUCCESS, key=md5Key())
    [done] = s.outcome()
    assert isinstance(done, Resolved) and done.address == ("198.51.100.7", 40000)
    assert s.engine.stats["stun.auth.retries"] == 1
    # The realm and nonce are reused: the next resolution is signed from its first request.
    s.resolve(longTerm())
    [again] = s.sent()
    assert again.get(stun.NONCE) == stun.Nonce("n-1") and again.verifyIntegrity(md5Key())


def test_a_wrong_password_fails_with_401_after_exactly_one_retry() -> None:
    s = Scripted()
    s.resolve(longTerm("wrong"))
    requests = s.sent()
    s.answer(requests[0], challenge())
    requests += s.sent()
    s.answer(requests[1], challenge(nonce="n-2"))  # the server cannot verify the key: 401 again
    assert s.sent() == []
    [failed] = s.outcome()
    assert isinstance(failed, ResolutionFailed)
    assert isinstance(failed.error, STUNErrorResponse) and failed.error.code == 401
    assert len(requests) == 2 and s.engine.sizes()["pending"] == 0


def test_a_stale_nonce_retries_once_with_the_new_nonce_and_refreshes_the_cache() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    s.answer(first, challenge())
    [signed] = s.sent()
    s.answer(signed, mapped(), stun.SUCCESS, key=md5Key())
    s.outcome()
    s.resolve(longTerm())
    [reused] = s.sent()
    s.answer(reused, challenge(438, realm=None, nonce="n-fresh"))
    [fresh] = s.sent()
    assert fresh.get(stun.NONCE) == stun.Nonce("n-fresh") and fresh.verifyIntegrity(md5Key())
    s.answer(fresh, challenge(438, realm=None, nonce="n-fresher"))  # a second 438: no loop
    [failed] = s.outcome()
    assert isinstance(failed.error, STUNErrorResponse) and failed.error.code == 438
    assert s.engine.table.credentials.lookup(SERVER, "alice").nonce == "n-fresher"  # type: ignore[union-attr]


def sha256Key(password: str = "secret") -> bytes:
    return hashlib.sha256(f"alice:example.org:{password}".encode()).digest()


def test_sha256_is_chosen_when_offered_and_signs_with_message_integrity_sha256() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    nonce = encodeNonceCookie(FEATURE_PASSWORD_ALGORITHMS, "abc")
    offered = stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_MD5, b""), (stun.PASSWORD_ALGORITHM_SHA256, b"")))
    s.answer(first, challenge(nonce=nonce, extra=[offered]))
    [retry] = s.sent()
    assert retry.get(stun.PASSWORD_ALGORITHM) == stun.PasswordAlgorithm(stun.PASSWORD_ALGORITHM_SHA256)
    assert retry.get(stun.PASSWORD_ALGORITHMS) == offered  # echoed as offered (RFC 8489 §9.2.5)
    assert retry.get(stun.MESSAGE_INTEGRITY) is None and retry.get(stun.MESSAGE_INTEGRITY_SHA256) is not None
    assert retry.verifyIntegrity(sha256Key()) and not retry.verifyIntegrity(md5Key())
    raw = s.lastRaw
    mi = raw.index(bytes.fromhex("001c0020"))  # checked by hand too: HMAC-SHA256 over what precedes it
    header = raw[:2] + (mi + 36 - 20).to_bytes(2, "big") + raw[4:20]
    assert hmac.new(sha256Key(), header + raw[20:mi], "sha256").digest() == raw[mi + 4 : mi + 36]
    s.answer(retry, mapped(), stun.SUCCESS, key=sha256Key(), sha256=True)
    assert isinstance(s.outcome()[0], Resolved)


def test_password_algorithms_without_the_cookie_are_still_echoed_and_sha256_chosen() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    offered = stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_SHA256, b""), (stun.PASSWORD_ALGORITHM_MD5, b"")))
    s.answer(first, challenge(extra=[offered]))
    [retry] = s.sent()
    assert retry.get(stun.PASSWORD_ALGORITHMS) == offered and retry.verifyIntegrity(sha256Key())


def test_md5_is_taken_when_it_is_the_only_offer() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    offered = stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_MD5, b""),))
    s.answer(first, challenge(nonce=encodeNonceCookie(FEATURE_PASSWORD_ALGORITHMS, "z"), extra=[offered]))
    [retry] = s.sent()
    assert retry.get(stun.PASSWORD_ALGORITHM) == stun.PasswordAlgorithm(stun.PASSWORD_ALGORITHM_MD5)
    assert retry.get(stun.MESSAGE_INTEGRITY) is not None and retry.verifyIntegrity(md5Key())


def test_a_stale_nonce_without_the_offer_keeps_sha256() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    offered = stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_SHA256, b""),))
    s.answer(first, challenge(extra=[offered]))
    [signed] = s.sent()
    s.answer(signed, challenge(438, nonce="n-2"))  # no PASSWORD-ALGORITHMS this time
    [fresh] = s.sent()
    assert fresh.get(stun.NONCE) == stun.Nonce("n-2") and fresh.get(stun.PASSWORD_ALGORITHMS) == offered
    assert fresh.verifyIntegrity(sha256Key()) and fresh.get(stun.MESSAGE_INTEGRITY) is None


def test_an_offer_of_only_unknown_algorithms_is_not_retried() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    offered = stun.PasswordAlgorithms(((0x0777, b""),))
    s.answer(first, challenge(nonce=encodeNonceCookie(FEATURE_PASSWORD_ALGORITHMS, "z"), extra=[offered]))
    assert s.sent() == [] and s.outcome()[0].error.code == 401


def test_the_feature_bits_are_numbered_as_erratum_6290_has_them() -> None:
    # RFC 8489 B.1's nonce asks for USERHASH with "AAAC": bit 1 counted from the least significant end.
    assert nonceFeatures("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA") == FEATURE_USERNAME_ANONYMITY == 0x000002
    assert FEATURE_PASSWORD_ALGORITHMS == 0x000001 and nonceFeatures("obMatJos2AAAB") == 1


def test_userhash_replaces_username_when_the_cookie_asks_for_anonymity() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    s.answer(first, challenge(nonce=encodeNonceCookie(FEATURE_USERNAME_ANONYMITY, "x")))
    [retry] = s.sent()
    assert retry.get(stun.USERNAME) is None
    assert retry.get(stun.USERHASH) == stun.Userhash(stun.userhash("alice", "example.org"))


def test_password_algorithms_advertised_but_missing_is_not_retried() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    s.answer(first, challenge(nonce=encodeNonceCookie(FEATURE_PASSWORD_ALGORITHMS, "x")))
    assert s.sent() == []
    events = s.events()
    [failed] = [e for e in events if isinstance(e, ResolutionFailed)]
    assert failed.error.code == 401 and s.engine.stats["stun.auth.refused"] == 1
    [note] = [e for e in events if isinstance(e, Note) and e.fields["sipnat_event"] == "stun.auth.refused"]
    assert note.level == "warn" and "PASSWORD-ALGORITHMS missing" in note.fields["why"]


def test_bid_down_a_later_nonce_without_the_advertised_features_is_refused() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    offered = stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_SHA256, b""),))
    s.answer(first, challenge(nonce=encodeNonceCookie(FEATURE_PASSWORD_ALGORITHMS, "a"), extra=[offered]))
    [retry] = s.sent()
    key = hashlib.sha256(b"alice:example.org:secret").digest()
    s.answer(retry, mapped(), stun.SUCCESS, key=key, sha256=True)
    s.outcome()
    s.resolve(longTerm())
    [reused] = s.sent()
    s.answer(reused, challenge(438, nonce="plain-nonce"))  # the cookie stripped: an MD5 bid-down
    assert s.sent() == []
    [failed] = s.outcome()
    assert failed.error.code == 438 and s.engine.stats["stun.auth.refused"] == 1
    # Forgotten, not pinned for ever: the next request starts over unsigned, as a first one (§9.2.3.1).
    s.resolve(longTerm())
    [fresh] = s.sent()
    assert not fresh.hasIntegrity and fresh.get(stun.NONCE) is None


def test_a_challenge_without_realm_and_nonce_is_an_error() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    s.answer(first, [stun.ErrorCode(401, "Unauthenticated")])
    assert s.sent() == [] and s.outcome()[0].error.code == 401


def test_a_signed_request_still_drops_unsigned_answers_that_are_not_challenges() -> None:
    s = Scripted()
    s.resolve(longTerm())
    [first] = s.sent()
    s.answer(first, challenge())
    [retry] = s.sent()
    s.answer(retry, mapped(), stun.SUCCESS)  # unsigned success: a forgery
    s.answer(retry, [stun.ErrorCode(400, "Bad Request")])
    assert s.outcome() == [] and s.engine.stats["stun.dropped.bad-integrity"] == 2


def test_short_term_signing_is_unchanged() -> None:
    s = Scripted()
    settings = NATSettings(stunServers=[SERVER], username="alice", password="secret", software=None)
    s.resolve(settings)
    [first] = s.sent()
    assert first.get(stun.USERNAME) == stun.Username("alice") and first.verifyIntegrity(b"secret")
    s.answer(first, challenge())  # unsigned: not accepted under short-term credentials
    assert s.engine.stats["stun.dropped.bad-integrity"] == 1


def test_rfc5769_long_term_vector_is_reproduced_byte_for_byte() -> None:
    v = VECTORS["sampleLongTermRequest"]
    data = bytes.fromhex(v["hex"])
    vector = stun.decode(data)
    table = LongTermCredentials()
    state, why = table.learn(SERVER, v["username"], v["password"],
                             stun.Message(stun.BINDING, stun.ERROR, vector.transactionId,
                                          [stun.ErrorCode(401, "x"), stun.Realm(v["realm"]), stun.Nonce(v["nonce"])]))
    assert state is not None and why == ""
    rebuilt = stun.Message(stun.BINDING, stun.REQUEST, vector.transactionId, state.signedAttributes())
    assert rebuilt.encode(state.key, fingerprint=False) == data


def test_rfc8489_b1_sha256_userhash_vector_is_reproduced_byte_for_byte() -> None:
    v = B1["sampleSHA256LongTermRequest"]
    data = bytes.fromhex(v["hex"])
    vector = stun.decode(data)
    key = stun.longTermKey(v["username"], v["realm"], v["password"], stun.PASSWORD_ALGORITHM_SHA256)
    assert vector.verifyIntegrity(key)
    offered = stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_SHA256, b""),))
    challengeMessage = stun.Message(stun.BINDING, stun.ERROR, bytes(12), [
        stun.ErrorCode(401, "Unauthenticated"), stun.Realm(v["realm"]), stun.Nonce(v["nonce"]), offered])
    state, why = LongTermCredentials().learn(SERVER, v["username"], v["password"], challengeMessage)
    assert state is not None and why == "" and state.key == key and state.sha256
    assert state.features == v["features"]
    # The vector's request carries PASSWORD-ALGORITHM but not the PASSWORD-ALGORITHMS we echo: leave it out.
    attributes = [a for a in state.signedAttributes() if not isinstance(a, stun.PasswordAlgorithms)]
    assert attributes[0] == stun.Userhash(bytes.fromhex(v["userhash"]))
    rebuilt = stun.Message(stun.BINDING, stun.REQUEST, vector.transactionId, attributes)
    assert rebuilt.encode(state.key, fingerprint=False, sha256=True) == data


@given(st.integers(0, 0xFFFFFF), st.text(max_size=20))
def test_nonce_cookie_features_round_trip(features: int, rest: str) -> None:
    assert nonceFeatures(encodeNonceCookie(features, rest)) == features


@given(st.text(max_size=12))
def test_nonces_without_the_cookie_have_no_features(nonce: str) -> None:
    if not nonce.startswith("obMatJos2"):
        assert nonceFeatures(nonce) is None


def test_the_credential_table_is_bounded() -> None:
    table = LongTermCredentials(maxEntries=16)
    message = stun.Message(stun.BINDING, stun.ERROR, bytes(12), challenge())
    for port in range(1, 1000):
        assert table.learn(("192.0.2.1", port), "alice", "pw", message)[0] is not None
    assert len(table) == 16


# -- the failure cache ----------------------------------------------------------------------------------------


def timeOut(s: Scripted) -> None:
    while True:
        wake = s.engine.getTimer()
        if wake is None:
            return
        s.now = wake
        s.engine.handleTimer(wake)
        s.engine.datagramsToSend()


def test_a_failed_domain_fails_at_once_within_the_cache_time_and_sends_nothing() -> None:
    s = Scripted()
    settings = NATSettings(stunServers=[SERVER], software=None, stunFailureCacheTime=60)
    s.resolve(settings)
    timeOut(s)
    [first] = s.outcome()
    assert isinstance(first.error, STUNTimeout)
    s.now += 59
    s.resolve(settings)
    assert s.engine.datagramsToSend() == []
    [cached] = s.outcome()
    assert type(cached.error) is STUNTimeout and cached.error is not first.error
    assert str(cached.error) == str(first.error)
    s.resolve(settings, domain="other.example")  # another domain is not affected
    assert len(s.engine.datagramsToSend()) == 1
    s.engine.freeAll(s.now)
    s.events()
    s.now += 2  # expired
    s.resolve(settings)
    assert len(s.engine.datagramsToSend()) == 1


def test_the_failure_cache_is_off_by_default() -> None:
    s = Scripted()
    settings = NATSettings(stunServers=[SERVER], software=None)
    s.resolve(settings)
    timeOut(s)
    s.outcome()
    s.resolve(settings)
    assert len(s.engine.datagramsToSend()) == 1 and s.engine.sizes()["failures"] == 0


def test_a_cached_401_is_the_same_error_response() -> None:
    s = Scripted()
    settings = longTerm("wrong", stunFailureCacheTime=30)
    s.resolve(settings)
    [first] = s.sent()
    s.answer(first, challenge())
    [retry] = s.sent()
    s.answer(retry, challenge())
    s.outcome()
    s.resolve(settings)
    assert s.sent() == []
    [cached] = s.outcome()
    assert isinstance(cached.error, STUNErrorResponse) and cached.error.code == 401


def test_a_flood_of_failed_domains_stays_within_the_bound() -> None:
    cache = FailureCache(maxEntries=100)
    for n in range(10_000):
        cache.remember(f"d{n}.example", STUNTimeout((SERVER,), 39.5), 60.0, float(n) / 1000)
    assert len(cache) == 100 and cache.evictions == 9_900
    assert cache.recall("d9999.example", 10.0) is not None and cache.recall("d0.example", 10.0) is None


@pytest.mark.parametrize(("key", "value"), [
    ("credentialMechanism", "digest"),
    ("credentialMechanism", "long-term"),  # without username/password
    ("stunFailureCacheTime", -1),
    ("stunFailureCacheTime", float("inf")),
    ("stunFailureCacheTime", "10"),
])
def test_settings_are_validated(key: str, value: Any) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        NATSettings(**{key: value})
    assert info.value.option == key if hasattr(info.value, "option") else key in str(info.value)
    assert "\n" not in str(info.value)


def test_settings_defaults() -> None:
    s = NATSettings()
    assert s.credentialMechanism == "short-term" and s.stunFailureCacheTime == 0.0


_challenges = st.tuples(
    st.sampled_from([401, 438]),
    st.booleans(),  # REALM present
    st.one_of(st.none(), st.integers(0, 3)),  # nonce cookie features (None: no cookie)
    st.booleans(),  # PASSWORD-ALGORITHMS offered
    st.text("abcdef0123456789", min_size=1, max_size=8),
)


@given(st.lists(_challenges, min_size=1, max_size=8))
def test_no_sequence_of_challenges_makes_more_than_three_requests(answers: List[Any]) -> None:
    """RFC 8489 §9.2.5: one signed retry after a 401 and one after a 438, whatever the server says: no loop."""
    s = Scripted()
    s.resolve(longTerm())
    ids = set()
    pending = s.sent()
    for code, withRealm, features, withOffer, tail in answers:
        if not pending:
            break
        request = pending[-1]
        ids.add(request.transactionId)
        nonce = tail if features is None else encodeNonceCookie(features, tail)
        extra = [stun.PasswordAlgorithms(((stun.PASSWORD_ALGORITHM_SHA256, b""),))] if withOffer else []
        s.answer(request, challenge(code, realm="example.org" if withRealm else None, nonce=nonce, extra=extra))
        pending = s.sent()
    ids.update(r.transactionId for r in pending)
    assert len(ids) <= 3
    if not pending:  # the last answer was not followed: the resolution ended with that error
        [failed] = s.outcome()
        assert isinstance(failed.error, STUNErrorResponse) and failed.error.code in (401, 438)


# -- the config file --------------------------------------------------------------------------------------------


def test_both_settings_have_config_file_keys_in_ini_and_toml() -> None:
    ini = parseConfigText("[example.org]\nusername = alice\npassword = pw\ncredentialMechanism = long-term\n"
                          "stunFailureCacheTime = 30\n")
    assert ini["example.org"].credentialMechanism == "long-term" and ini["example.org"].stunFailureCacheTime == 30.0
    toml = parseConfigText('["example.org"]\nusername = "alice"\npassword = "pw"\ncredentialMechanism = "long-term"\n'
                           "stunFailureCacheTime = 2.5\n", toml=True)
    assert toml["example.org"].stunFailureCacheTime == 2.5


@pytest.mark.parametrize(("text", "key"), [
    ("[a]\ncredentialMechanism = kerberos\n", "[a] credentialMechanism"),
    ("[a]\ncredentialMechanism = long-term\n", "[a] credentialMechanism"),
    ("[a]\nstunFailureCacheTime = soon\n", "[a] stunFailureCacheTime"),
    ("[a]\nstunFailureCacheTime = -5\n", "[a] stunFailureCacheTime"),
    ("[a]\nstunFailureCacheTime = inf\n", "[a] stunFailureCacheTime"),
])
def test_bad_config_values_are_one_line_errors_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(InvalidSettingsError) as info:
        parseConfigText(text)
    assert info.value.key == key and "\n" not in str(info.value)

"""Digest authentication (RFC 7616 §3.9.1 and RFC 2617 §3.5 vectors; the retry rules of RFC 3261 §22.2)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_sipnat.core.sip import Request, Response, parse
from twisted_sipnat.core.sip.digest import (
    MAX_CHALLENGE_LENGTH,
    MAX_STALE_RETRIES,
    Authenticator,
    AuthFailed,
    Challenge,
    Credentials,
    authorizationValue,
    digestResponse,
    parseChallenge,
)
from twisted_sipnat.core.sip.error import SIPParseError
from twisted_sipnat.core.sip.headers import Headers

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
MUFASA = Credentials("Mufasa", "Circle of Life")


@pytest.mark.parametrize("algorithm, expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616Examples(algorithm: str, expected: str) -> None:
    challenge = parseChallenge(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    assert digestResponse(challenge, MUFASA, "GET", "/dir/index.html", 1, RFC7616_CNONCE) == expected
    value = authorizationValue(challenge, MUFASA, "GET", "/dir/index.html", 1, RFC7616_CNONCE)
    assert f'response="{expected}"' in value and "nc=00000001" in value and "qop=auth" in value
    assert 'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"' in value


def test_rfc2617Example() -> None:
    challenge = parseChallenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                               'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert challenge.algorithm == "MD5"  # absent: MD5 (RFC 2617 §3.2.1)
    response = digestResponse(challenge, Credentials("Mufasa", "Circle Of Life"), "GET", "/dir/index.html", 1,
                              "0a4f113b")
    assert response == "6629fae49393a05397450978507c4ef1"


def test_withoutQopTheRFC2069Form() -> None:
    challenge = Challenge("r", "n")
    import hashlib
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:example.com").hexdigest()
    assert digestResponse(challenge, Credentials("u", "p"), "REGISTER", "sip:example.com", 1, "c") == \
        hashlib.md5(f"{ha1}:n:{ha2}".encode()).hexdigest()
    assert "qop" not in authorizationValue(challenge, Credentials("u", "p"), "REGISTER", "sip:example.com", 1, "c")


def test_sessVariant() -> None:
    import hashlib
    challenge = Challenge("r", "n", algorithm="SHA-256-sess", qop=("auth",))
    ha1 = hashlib.sha256(hashlib.sha256(b"u:r:p").hexdigest().encode() + b":n:c").hexdigest()
    ha2 = hashlib.sha256(b"REGISTER:sip:x").hexdigest()
    assert digestResponse(challenge, Credentials("u", "p"), "REGISTER", "sip:x", 2, "c") == \
        hashlib.sha256(f"{ha1}:n:00000002:c:auth:{ha2}".encode()).hexdigest()


@pytest.mark.parametrize("text", [
    "Basic realm=\"x\"", 'Digest realm="x"', 'Digest nonce="x"', 'Digest realm="x", nonce', 'Digest realm="x, nonce=1',
    "Digest " + ", ".join(f"p{i}=1" for i in range(40)) + ', realm="r", nonce="n"',
    'Digest realm="r", nonce="' + "n" * MAX_CHALLENGE_LENGTH + '"',
])
def test_badChallengesAreRefused(text: str) -> None:
    with pytest.raises(SIPParseError):
        parseChallenge(text)


@given(st.text(max_size=300))
def test_anyChallengeTextParsesOrRaisesSIPParseError(text: str) -> None:
    try:
        parseChallenge("Digest " + text)
    except SIPParseError:
        pass


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_quotedValuesRoundTrip(realm: str, nonce: str) -> None:
    """Whatever the realm and nonce, the Authorization we write quotes them so that they read back the same."""
    value = authorizationValue(Challenge(realm, nonce), Credentials("u", "p"), "REGISTER", "sip:x", 1, "c")
    back = parseChallenge(value)
    assert (back.realm, back.nonce) == (realm, nonce)


def challenge401(*values: str, code: int = 401) -> Response:
    headers = Headers()
    for value in values:
        headers.add("WWW-Authenticate" if code == 401 else "Proxy-Authenticate", value)
    return Response(code, "Unauthorized" if code == 401 else "Proxy Authentication Required", headers)


def register() -> Request:
    message = parse(b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                    b"CSeq: 1 REGISTER\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(message, Request)
    return message


def authenticator() -> Authenticator:
    counter = itertools.count(1)
    return Authenticator(Credentials("alice", "secret"), lambda: f"cn{next(counter)}")


def test_oneRetryThenTheCredentialsAreWrong() -> None:
    auth = authenticator()
    assert auth.challenged(challenge401('Digest realm="r", nonce="n1", qop="auth"')) is None
    (name, value), = auth.headers(register())
    assert name == "Authorization" and 'nonce="n1"' in value and "nc=00000001" in value and 'cnonce="cn1"' in value
    failed = auth.challenged(challenge401('Digest realm="r", nonce="n2", qop="auth"'))
    assert isinstance(failed, AuthFailed) and failed.code == 401 and "alice" in failed.why


def test_staleIsNotAFailureButIsBounded() -> None:
    auth = authenticator()
    assert auth.challenged(challenge401('Digest realm="r", nonce="n1", qop="auth"')) is None
    for i in range(MAX_STALE_RETRIES):
        assert auth.challenged(challenge401(f'Digest realm="r", nonce="s{i}", qop="auth", stale=TRUE')) is None
        (_, value), = auth.headers(register())
        assert f'nonce="s{i}"' in value and "nc=00000001" in value
    assert isinstance(auth.challenged(challenge401('Digest realm="r", nonce="x", stale=true')), AuthFailed)


def test_ncCountsPerNonceAcrossRefreshesAndCnonceIsFresh() -> None:
    auth = authenticator()
    auth.challenged(challenge401('Digest realm="r", nonce="n1", qop="auth"'))
    values = []
    for _ in range(3):
        (_, value), = auth.headers(register())
        values.append(value)
        auth.succeeded()
    assert [("nc=0000000%d" % n) in v for n, v in zip((1, 2, 3), values, strict=True)] == [True] * 3
    assert len({v.split("cnonce=")[1].split(",")[0] for v in values}) == 3


def test_topmostSupportedChallengeIsAnswered() -> None:
    auth = authenticator()
    assert auth.challenged(challenge401('Digest realm="r", nonce="a", algorithm=SHA-512-256, qop="auth"',
                                        'Digest realm="r", nonce="b", qop="auth-int"',
                                        'Digest realm="r", nonce="c", algorithm=SHA-256, qop="auth"',
                                        'Digest realm="r", nonce="d", algorithm=MD5, qop="auth"')) is None
    (_, value), = auth.headers(register())
    assert 'nonce="c"' in value and "algorithm=SHA-256" in value


def test_407IsAnsweredInProxyAuthorization() -> None:
    auth = authenticator()
    assert auth.challenged(challenge401('Digest realm="p", nonce="n"', code=407)) is None
    assert auth.challenged(challenge401('Digest realm="r", nonce="m"')) is None
    assert sorted(name for name, _ in auth.headers(register())) == ["Authorization", "Proxy-Authorization"]


def test_withoutCredentialsOrUsableChallengeItFailsAtOnce() -> None:
    assert isinstance(Authenticator(None, str).challenged(challenge401('Digest realm="r", nonce="n"')), AuthFailed)
    auth = authenticator()
    assert isinstance(auth.challenged(challenge401('Basic realm="r"', "garbage")), AuthFailed)
    assert auth.headers(register()) == []

"""
Coverage-guided fuzzing of ``twisted_sipnat.core.stun.decode`` (and the STUN server behind it) with atheris.

Run::

    python tests/fuzz/atheris_stun.py -atheris_runs=100000 [libFuzzer options] [corpus dirs]

With no corpus directory given, the RFC 5769 §2 test vectors (the tests' own copy, tests/data/rfc5769.json)
seed a temporary corpus.  The properties checked on every input are those of the
hypothesis tests in ``test_fuzz_stun.py``: ``decode`` raises ``STUNDecodeError`` and nothing else, accessors of
an accepted message work, and ``BindingResponder.respond`` never raises nor answers beyond the amplification
bound.  Any other exception is a crash: libFuzzer stops and writes the input as ``crash-<sha1>``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any, List

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: the repository root holds the tests' data helper (tests.data)
    sys.path.append(str(REPO))
from tests.data import rfc5769Messages  # noqa: E402

stun: Any = None
responder: Any = None
AMPLIFICATION_FLOOR = 128
KEY = b""


def load(instrument: bool) -> None:
    """Import the code under test, instrumented for coverage feedback when running under atheris."""
    global stun, responder, AMPLIFICATION_FLOOR, KEY
    # The package imports Twisted; only the sans-IO modules under test are worth instrumenting.
    try:
        import twisted_sipnat  # noqa: F401
    except ImportError:  # run from a checkout without installing it
        sys.path.insert(0, str(REPO))
        import twisted_sipnat  # noqa: F401

    if instrument:
        import atheris  # type: ignore[import-untyped]

        for name in ("twisted_sipnat.core.stun", "twisted_sipnat.core.responder"):
            sys.modules.pop(name, None)
        # import_module, not "from twisted_sipnat import stun": that would return the package attribute, i.e.
        # the module imported above without instrumentation.
        with atheris.instrument_imports(include=["twisted_sipnat.core.stun", "twisted_sipnat.core.responder"]):
            stunModule = importlib.import_module("twisted_sipnat.core.stun")
            responderModule = importlib.import_module("twisted_sipnat.core.responder")
    else:
        from twisted_sipnat import stun as stunModule
        from twisted_sipnat.core import responder as responderModule
    stun = stunModule
    AMPLIFICATION_FLOOR = responderModule.AMPLIFICATION_FLOOR
    responder = responderModule.BindingResponder(software="atheris")
    KEY = stun.shortTermKey("VOkJxbRl1RmTxUk/WvJxBt")


def seeds() -> List[bytes]:
    return rfc5769Messages()


def TestOneInput(data: bytes) -> None:
    try:
        message = stun.decode(data)
    except stun.STUNDecodeError:
        pass
    else:
        read = (message.mappedAddress, message.errorCode, message.alternateServer, message.changeRequest,
                message.unknownComprehensionRequired, message.software, message.otherAddress, message.responseOrigin)
        assert len(read) == 8
        message.verifyIntegrity(KEY)
        message.verifyFingerprint()
        repr(message)
    reply = responder.respond(data, ("192.0.2.1", 5060), now=0.0)
    if reply is not None:
        if len(reply.data) > max(len(data), AMPLIFICATION_FLOOR):
            raise AssertionError(f"amplification: {len(data)}-byte request, {len(reply.data)}-byte answer")
        if stun.isClassicSTUN(data):
            stun.decodeClassic(reply.data)  # an RFC 3489 request gets an RFC 3489 answer
        else:
            stun.decode(reply.data)


def main(argv: List[str]) -> None:
    import atheris  # type: ignore[import-untyped]

    load(instrument=True)
    args = list(argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = tempfile.mkdtemp(prefix="sipnat-stun-corpus-")
        for i, seed in enumerate(seeds()):
            (Path(corpus) / f"rfc5769-{i}").write_bytes(seed)
        args.append(corpus)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

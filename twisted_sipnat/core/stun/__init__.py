"""
The STUN message codec (RFC 8489, with the RFC 5780 attributes), sans-IO.

Theory of operation
-------------------

The package: :mod:`~twisted_sipnat.core.stun.header` (constants, the method/class split, the demultiplexing
checks), :mod:`~twisted_sipnat.core.stun.shapes` and :mod:`~twisted_sipnat.core.stun.attributes` (the attribute
codecs and their table), :mod:`~twisted_sipnat.core.stun.message` (messages, decoding, integrity and
fingerprint), :mod:`~twisted_sipnat.core.stun.template` (the keepalive request),
:mod:`~twisted_sipnat.core.stun.framing` (TCP), :mod:`~twisted_sipnat.core.stun.keys` (credentials).  Import
the names from here: the split is for reading, the modules are not a public interface of their own.

A STUN message is a 20-byte header (two zero bits, the method and class interleaved into 14 bits, a body
length that is a multiple of 4, the magic cookie ``0x2112A442`` and a 96-bit transaction ID) followed by
type-length-value attributes padded to 4 bytes (RFC 8489 §5, §14).

- :func:`decode` turns bytes into a :class:`Message` whose ``attributes`` are small immutable typed values
  (:class:`XorMappedAddress`, :class:`ErrorCode`, ...; :class:`RawAttribute` for types this module does not
  parse; :data:`ATTRIBUTES` is the one table of the types it knows: code, name, class, parse, encode).  It
  raises :class:`STUNDecodeError` -- and nothing else -- for anything that is not a well-formed message, so
  code reading a shared socket needs exactly one ``except``.
- :meth:`Message.encode` is a pure function of the message: it pads with zeros and appends the computed
  MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) and FINGERPRINT.  Those three attributes are never copied
  from ``attributes``; they are always computed.
- A decoded message keeps its original bytes, so :meth:`Message.verifyIntegrity` and
  :meth:`Message.verifyFingerprint` check exactly what was on the wire (RFC 8489 §14.5-§14.7: the HMAC covers
  the message "as if" the integrity attribute were last, with the header length adjusted).
- :func:`isSTUN` and :func:`peekHeader` are the cheap checks for demultiplexing a shared socket (RFC 7983) and
  for matching a response to a transaction without a full decode; :func:`encodeBindingRequest` builds a
  Binding request from a cached template where only the transaction ID changes.  They exist because a SIP
  server may keep 100k flows alive.
- :class:`StreamFramer` splits a TCP byte stream into whole STUN messages by the length field (RFC 8489 §6.2.2).

What decoding enforces (strictly, unlike the usual Python STUN codecs): the two leading zero bits, the magic
cookie (RFC 3489 messages without it are rejected: only a server reads them, with :func:`decodeClassic`,
:func:`peekClassicHeader` and :func:`isClassicSTUN`), the length, attribute bounds and padding, address
families and lengths, ERROR-CODE class and number, UTF-8 in text attributes, the lengths of MESSAGE-INTEGRITY
(20), MESSAGE-INTEGRITY-SHA256 (16-32, a multiple of 4), FINGERPRINT (4), USERHASH (32), and that FINGERPRINT
is the last attribute.  Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
are skipped, as RFC 8489 §14.5 requires (they are not authenticated), and are not in ``attributes``.
What it does not enforce: maximum lengths of text attributes (be liberal in what you accept), and the
contents of padding bytes (RFC 8489 §14 says receivers ignore them; RFC 5769's vectors pad with spaces).
"""

from __future__ import annotations

from twisted_sipnat.core.stun.attributes import (
    ALTERNATE_DOMAIN,
    ALTERNATE_SERVER,
    ATTRIBUTE_CLASSES,
    ATTRIBUTES,
    CHANGE_REQUEST,
    CHANGED_ADDRESS,
    ERROR_CODE,
    FINGERPRINT,
    MAPPED_ADDRESS,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    NONCE,
    OTHER_ADDRESS,
    PADDING,
    PASSWORD,
    PASSWORD_ALGORITHM,
    PASSWORD_ALGORITHMS,
    REALM,
    REFLECTED_FROM,
    RESPONSE_ADDRESS,
    RESPONSE_ORIGIN,
    RESPONSE_PORT,
    RFC3489_RESERVED,
    SOFTWARE,
    SOURCE_ADDRESS,
    UNKNOWN_ATTRIBUTES,
    USERHASH,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    AlternateDomain,
    AlternateServer,
    Attribute,
    AttributeKind,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    MessageIntegrity,
    MessageIntegritySHA256,
    Nonce,
    OtherAddress,
    Padding,
    PasswordAlgorithm,
    PasswordAlgorithms,
    RawAttribute,
    Realm,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    Userhash,
    Username,
    XorMappedAddress,
    attributeName,
)
from twisted_sipnat.core.stun.framing import (
    StreamFramer,
)
from twisted_sipnat.core.stun.header import (
    BINDING,
    ERROR,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    INDICATION,
    MAGIC_COOKIE,
    REQUEST,
    SUCCESS,
    STUNDecodeError,
    STUNEncodeError,
    isClassicSTUN,
    isSTUN,
    messageType,
    peekClassicHeader,
    peekHeader,
    splitMessageType,
)
from twisted_sipnat.core.stun.keys import (
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    longTermKey,
    opaqueString,
    shortTermKey,
    userhash,
)
from twisted_sipnat.core.stun.message import (
    Message,
    decode,
    decodeClassic,
    encodeClassic,
    endsWithValidFingerprint,
)
from twisted_sipnat.core.stun.template import encodeBindingRequest

__all__ = [
    "MAGIC_COOKIE",
    "HEADER_LENGTH",
    "FINGERPRINT_XOR",
    "BINDING",
    "REQUEST",
    "INDICATION",
    "SUCCESS",
    "ERROR",
    "MAPPED_ADDRESS",
    "USERNAME",
    "MESSAGE_INTEGRITY",
    "ERROR_CODE",
    "UNKNOWN_ATTRIBUTES",
    "REALM",
    "NONCE",
    "MESSAGE_INTEGRITY_SHA256",
    "PASSWORD_ALGORITHM",
    "USERHASH",
    "XOR_MAPPED_ADDRESS",
    "PASSWORD_ALGORITHMS",
    "ALTERNATE_DOMAIN",
    "SOFTWARE",
    "ALTERNATE_SERVER",
    "FINGERPRINT",
    "CHANGE_REQUEST",
    "PADDING",
    "RESPONSE_PORT",
    "RESPONSE_ORIGIN",
    "OTHER_ADDRESS",
    "RESPONSE_ADDRESS",
    "SOURCE_ADDRESS",
    "CHANGED_ADDRESS",
    "PASSWORD",
    "REFLECTED_FROM",
    "RFC3489_RESERVED",
    "PASSWORD_ALGORITHM_MD5",
    "PASSWORD_ALGORITHM_SHA256",
    "STUNDecodeError",
    "STUNEncodeError",
    "messageType",
    "splitMessageType",
    "MappedAddress",
    "XorMappedAddress",
    "AlternateServer",
    "ResponseOrigin",
    "OtherAddress",
    "Username",
    "Userhash",
    "Realm",
    "Nonce",
    "Software",
    "AlternateDomain",
    "ErrorCode",
    "UnknownAttributes",
    "PasswordAlgorithms",
    "PasswordAlgorithm",
    "ChangeRequest",
    "ResponsePort",
    "Padding",
    "MessageIntegrity",
    "MessageIntegritySHA256",
    "Fingerprint",
    "RawAttribute",
    "Attribute",
    "ATTRIBUTE_CLASSES",
    "ATTRIBUTES",
    "AttributeKind",
    "attributeName",
    "Message",
    "decode",
    "decodeClassic",
    "encodeClassic",
    "isSTUN",
    "isClassicSTUN",
    "endsWithValidFingerprint",
    "peekHeader",
    "peekClassicHeader",
    "encodeBindingRequest",
    "StreamFramer",
    "opaqueString",
    "shortTermKey",
    "longTermKey",
    "userhash",
]

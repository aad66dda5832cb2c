"""Authenticated control messages: an HMAC on every directive and alert, with a key set that
can be rotated without downtime.

Anyone who can write to ``flyball.directives.v1`` or ``flyball.alerts.v1`` could otherwise
block a tenant in every shim or make automation act. The control plane (directives) and the
worker (alerts) append a signature to each message they publish; the shim (directives) and the
control plane (alerts) refuse a message whose signature does not verify.

Wire form: the message is the model's JSON object with one more member written last,
``"signature": "<key id>:<hex HMAC-SHA256>"``. The MAC covers the topic name and the exact bytes
of the object without that member, so no canonical re-serialisation is needed and a reader of
an older version that ignores unknown fields still parses the message. The key id tells the
verifier which key of its set to use.

Rotation without downtime: give every verifier the new key next to the old one (``keys`` holds
several), then switch the signers' ``current`` key id, then remove the old key once no message
signed with it is in force (a control plane started with a new ``current`` key signs the
directives in force again with it: ``control_plane/directives.py``).

Pure: bytes in, bytes out; no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

_MEMBER = b',"signature":"'
_DOMAIN = b"flyball.signed/1\n"


class SignatureError(ValueError):
    """The message is unsigned, signed with an unknown key, or altered."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """Shared secrets by key id; ``current`` signs, every key verifies."""

    keys: Mapping[str, bytes] = field(default_factory=dict)
    current: str = ""

    def __post_init__(self) -> None:
        for kid, secret in self.keys.items():
            if not kid or ":" in kid or '"' in kid or "\\" in kid:
                raise ValueError(f"signing key id {kid!r}: use a non-empty id without ':', '\"' or '\\'")
            if len(secret) < 16:
                raise ValueError(f"signing key {kid!r}: at least 16 bytes")
        if self.keys and self.current not in self.keys:
            raise ValueError(f"signing key id {self.current!r} is not in the key set")

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def parse(cls, text: str, *, current: str = "") -> KeySet:
        """From ``"kid1:secret1,kid2:secret2"`` (the environment form); ``current`` defaults
        to the first id."""
        keys: dict[str, bytes] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kid, sep, secret = part.partition(":")
            if not sep:
                raise ValueError("signing keys: write them as kid:secret, separated by commas")
            keys[kid.strip()] = secret.strip().encode()
        return cls(keys, current or next(iter(keys), ""))


def _mac(secret: bytes, topic: str, body: bytes) -> str:
    return hmac.new(secret, _DOMAIN + topic.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def sign(body: bytes, *, topic: str, keys: KeySet) -> bytes:
    """``body`` (a JSON object) with its signature member; unchanged when ``keys`` is empty."""
    if not keys.enabled:
        return body
    if not body.endswith(b"}") or body == b"{}":
        raise ValueError("only a non-empty JSON object can be signed")
    mac = _mac(keys.keys[keys.current], topic, body)
    return body[:-1] + _MEMBER + f"{keys.current}:{mac}".encode() + b'"}'


def signer(message: bytes) -> str:
    """The key id a message says it is signed with ("" if unsigned); verify it with :func:`verify`."""
    at = message.rfind(_MEMBER)
    if at < 0 or not message.endswith(b'"}'):
        return ""
    return message[at + len(_MEMBER):-2].decode("ascii", errors="replace").partition(":")[0]


def verify(message: bytes, *, topic: str, keys: KeySet) -> bytes:
    """The signed body of ``message``, or :class:`SignatureError` naming what is wrong."""
    at = message.rfind(_MEMBER)
    if at < 0 or not message.endswith(b'"}'):
        raise SignatureError("signature: missing")
    kid, sep, mac = message[at + len(_MEMBER):-2].decode("ascii", errors="replace").partition(":")
    secret = keys.keys.get(kid)
    if not sep or secret is None:
        raise SignatureError(f"signature: unknown key id {kid[:40]!r}")
    body = message[:at] + b"}"
    if not hmac.compare_digest(mac, _mac(secret, topic, body)):
        raise SignatureError("signature: does not match the message")
    return body

"""Event ids minted on the caller's thread."""

from __future__ import annotations

import itertools
import os
import secrets

# Event ids: UUIDv4-shaped and unique per process: 72 random bits drawn at import (and again
# in a forked child) + a 48-bit counter from a random 47-bit start, so it cannot wrap within a
# process's life. About 10x cheaper than ``str(uuid.uuid4())`` on the caller's thread.
_ID_PREFIX = ""
_ID_COUNTER = itertools.count()


def _reset_event_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER
    r = secrets.randbits(72)
    variant = "89ab"[r & 3]
    r >>= 2
    _ID_PREFIX = f"{r >> 40:08x}-{(r >> 24) & 0xFFFF:04x}-4{(r >> 12) & 0xFFF:03x}-{variant}{r & 0xFFF:03x}-"
    _ID_COUNTER = itertools.count(secrets.randbits(47))


def new_event_id() -> str:
    return "%s%012x" % (_ID_PREFIX, next(_ID_COUNTER))  # noqa: UP031 - the fastest formatting here


_reset_event_ids()
os.register_at_fork(after_in_child=_reset_event_ids)


# This process's shim instance id: the control plane counts live instances per tenant from the
# events and gives each its share of a throttle (``Directive.replicas``).
_INSTANCE = [""]


def shim_instance() -> str:
    return _INSTANCE[0]


def _reset_instance() -> None:
    _INSTANCE[0] = secrets.token_hex(8)


_reset_instance()
os.register_at_fork(after_in_child=_reset_instance)

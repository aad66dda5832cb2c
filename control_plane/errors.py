"""The control plane's errors, and how the API answers each (one handler in ``app.py``).

- :class:`InvalidInput` (and its kinds: a policies document, a budget, a price catalog, a
  provider export): 422, the message naming the field.
- :class:`NotFound`: 404, the message naming what was looked for (never whether it exists for
  another tenant).
- :class:`Unavailable`: 503, a part this process does not run or that is down.
- :class:`TemporaryError` from a store: 503 with ``Retry-After``; :class:`PermanentError`: 500.
"""

from __future__ import annotations

from flyball.stream_processors.errors import InvalidInput, PermanentError, TemporaryError

__all__ = ["InvalidInput", "NotFound", "PermanentError", "PolicyError", "TemporaryError", "Unavailable"]


class PolicyError(InvalidInput):
    """A policies document that cannot be loaded; the message names the policy and field."""


class NotFound(LookupError):
    """Nothing with this id (or not visible to this key): the message names the field."""


class Unavailable(RuntimeError):
    """A part of flyball this process does not run, or that is not working right now."""

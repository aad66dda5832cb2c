"""Names chosen by tenants (tenant, feature, model, tool) end up in spreadsheets and chat
messages; there they must stay text, never become a formula, a mention or a link.

- CSV: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is run as a
  formula by spreadsheet programs; such a text cell gets a leading ``'`` (OWASP's advice).
  Only text columns are passed through here: numbers stay numbers.
- Slack mrkdwn: ``&``, ``<`` and ``>`` are control characters (``<!channel>``,
  ``<http://x|label>``); Slack's own escaping is ``&amp;``, ``&lt;``, ``&gt;``.
- PagerDuty summaries are plain text that integrations forward to chat tools; ``<`` and ``>``
  become ``‹`` and ``›`` so that nothing downstream reads them as markup.
"""

from __future__ import annotations

from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """A text cell as a spreadsheet will show it literally; other values unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def slack_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_text(text: str) -> str:
    return text.replace("<", "\u2039").replace(">", "\u203a")

"""mkdocs hook: render the Sphinx roles of lcam's docstrings as code in the API reference.

The docstrings cross-reference with reStructuredText roles (``:class:`FrozenBackbone```,
``:func:`~lcam.maps.in_mask_energy```) and end a paragraph before a literal block with ``::``;
mkdocstrings renders both literally. This turns ``:role:<code>~a.b.C</code>`` into
``<code>C</code>`` (``<code>a.b.C</code>`` without the tilde) and ``::`` into ``:``.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>"
)
DOUBLE_COLON = re.compile(r"::(</p>)")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite the roles in a page's HTML (called by mkdocs for every page)."""
    return DOUBLE_COLON.sub(r":\1", ROLE.sub(_role, html))

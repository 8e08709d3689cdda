"""Small parsers shared by the sub-commands."""

from __future__ import annotations

import json
import re
from typing import Any


def parse_value(text: str) -> Any:
    """``0.7`` -> 0.7, ``3`` -> 3, ``true`` -> True, ``none`` -> None, ``1;2;3`` -> [1, 2, 3], else the text."""
    text = text.strip()
    if ";" in text:
        return [parse_value(t) for t in text.split(";") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(spec: str | None) -> dict[str, Any]:
    """``"alpha=0.7,beta=0.3"`` (or ``topk.k=20`` for a component of a compound) as a dict."""
    if not spec:
        return {}
    out: dict[str, Any] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", key):
            raise ValueError(f"cannot read {item.strip()!r}: write key=value pairs separated by commas, "
                             "e.g. alpha=0.7,beta=0.3 (lists as 1;2;3)")
        if key in out:
            raise ValueError(f"{key!r} is given twice")
        out[key] = parse_value(value)
    return out

"""Header fields as both protocols carry them: a list of (name, value) byte pairs, in order, sans-IO."""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


def find_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of the field *name* (any case) in *headers*, or None."""
    name = name.lower()
    n = len(name)
    for k, v in headers:
        if len(k) == n and k.lower() == name:  # len() first: no lowered copy of every name
            return v
    return None

"""Headers an application could take for the proxy's word, sans-IO.

The inbound proxy tells the application who the verified client is in
``meshctl-client-id`` (Linkerd: ``l5d-client-id``), so nothing a client sends
may reach the application under a name the application reads as that header:

- ``meshctl-client-id`` in any case (field names are case-insensitive,
  RFC 9110 section 5.1);
- Linkerd's ``l5d-client-id``, which an application written for Linkerd reads;
- Envoy's ``x-forwarded-client-cert`` (XFCC), the same statement in Istio's
  meshes (Envoy sanitises it by default);
- the same names with ``_`` for ``-``: CGI and WSGI (PEP 3333) present every
  header as ``HTTP_<NAME>`` with ``-`` turned into ``_``, so ``l5d_client_id``
  and ``l5d-client-id`` are the same variable to Django, Flask, PHP and Rails.
  nginx drops underscored names by default (``underscores_in_headers off``)
  for this reason.

:func:`strip_identity_headers` removes them all and adds ``meshctl-client-id``
only from the verified peer; it is applied to every inbound request, on both
protocols and every path.
"""

from __future__ import annotations

IDENTITY_HEADER = b"meshctl-client-id"  # as Linkerd's l5d-client-id
# Names as a CGI/WSGI framework sees them ("-" and "_" alike), lower case.
_CLAIMS = frozenset((IDENTITY_HEADER, b"l5d-client-id", b"x-forwarded-client-cert"))
_CLAIM_LENGTHS = frozenset(len(n) for n in _CLAIMS)


def is_identity_header(name: bytes) -> bool:
    """True when an application could read *name* as a statement of the client's identity."""
    return len(name) in _CLAIM_LENGTHS and name.lower().replace(b"_", b"-") in _CLAIMS


def strip_identity_headers(headers: list[tuple[bytes, bytes]], client_identity: str | None) -> list[tuple[bytes, bytes]]:
    """*headers* without any identity claim, plus ``meshctl-client-id`` when the peer is verified.

    Returns *headers* itself (not a copy) when there is nothing to remove or add.
    """
    lengths = _CLAIM_LENGTHS
    if any(len(k) in lengths and is_identity_header(k) for k, _ in headers):
        headers = [(k, v) for k, v in headers if not (len(k) in lengths and is_identity_header(k))]
    if client_identity:
        headers = [*headers, (IDENTITY_HEADER, client_identity.encode())]  # HTTP/2 hands over a tuple
    return headers

"""Workload identity: the mesh's certificates and the identity service.

- :mod:`meshctl.identity.certs`: trust anchor, issuer and leaf certificates
  (ECDSA P-256), loading and chain checks.  Pure; used by ``meshctl install``,
  ``meshctl identity`` and the service.
- :mod:`meshctl.identity.tokens`: the one token-review interface
  (:class:`TokenReviewer`) and its local-registry implementation.
- :mod:`meshctl.identity.service`: signs a proxy's CSR after reviewing its
  ServiceAccount token (docs/identity.md has the protocol).
"""

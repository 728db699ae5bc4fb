"""The proxy's identity and mesh TLS.

``certificates`` makes the key and CSR and renews the certificate,
``tls_contexts`` builds the TLS 1.3 contexts and checks peer identities,
``tls_transport`` runs a TLS session as an asyncio transport, ``mesh``
wires them into the proxy (originating and terminating mTLS).
"""

"""The layer that owns sockets: listeners, connections, pools, the request exchange.

- ``server`` accepts and detects; ``exchange`` is the request path both
  protocols drive; ``connection`` is what every HTTP connection shares
  (``FlowControl``).
- HTTP/1.1: ``h1_server`` is the accepted connection and its phase, the one
  place its state changes; around it ``h1_request`` (the request as
  forwarded), ``h1_fast`` (the fast path, from the parser callback),
  ``h1_general`` (the general path, a task), ``h1_response`` (writing and
  counting the response), ``h1_tunnel`` (after a 101); ``h1_client`` is the
  pooled upstream connection and ``H1Pool``; ``h1_connection`` what both ends
  share (held writes).
- HTTP/2: ``h2_server`` (the accepted connection), around it ``h2_stream``
  (one stream: the request as forwarded, the general path, the response
  relayed) and ``h2_direct`` (the direct path, from callbacks); ``h2_client``
  (the upstream connection and its pool); ``h2_connection`` (what both ends
  share: the Phase, the one place their state changes, flow control, writes).
- ``tcp`` splices opaque TCP, ``outbox`` batches writes, ``original_dst``
  reads SO_ORIGINAL_DST.
"""

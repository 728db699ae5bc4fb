"""The layer that owns sockets: listeners, connections, pools, the request exchange.

``server`` accepts and detects, ``http1_proxy`` / ``http2_proxy`` relay
HTTP/1.1 and HTTP/2 (server connection and pooled upstream client;
``h2_connection`` is what both HTTP/2 ends share: phase, flow control, writes;
``h2_client`` is the upstream HTTP/2 connection;
``h1_request`` makes the request forwarded from an HTTP/1 head, ``h1_response``
writes an HTTP/1 response, ``h1_tunnel`` hands an upgraded
connection to a splice),
``tcp`` splices opaque TCP, ``outbox`` batches writes, ``original_dst`` reads
SO_ORIGINAL_DST.
"""

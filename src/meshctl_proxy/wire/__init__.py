"""Sans-IO protocol code: bytes in, events out, no sockets and no asyncio.

HTTP/1.1 framing (``http1``, compiled by Cython when built), protocol
detection on the first bytes (``detect``), the HTTP/2 header rules
libnghttp2 leaves to us (``h2headers``) and flood limits (``h2limits``).
"""

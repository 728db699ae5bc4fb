# Compile-time declarations for http1.py (Cython "augmenting .pxd"): the readers become
# extension types with C-typed fields, so llhttp's callbacks into them skip the
# interpreter's attribute dictionaries.  http1.py stays plain Python and runs as is
# where the extension was not built (docs/performance.md).

cdef class _Reader:
    cdef object _parser
    cdef list _events
    cdef list _raw
    cdef bytes _url
    cdef Py_ssize_t _head_bytes
    cdef Py_ssize_t _pending
    cdef bint _in_head
    cdef object _trailers
    cdef bint _in_body
    cdef bint _upgraded
    cdef bint _failed
    cdef dict _hop
    cdef list _hosts
    cdef object _length
    cdef object _expect
    cdef bint _counting
    cdef object _via
    cdef tuple _markers
    cdef bint _dropped_upgrade
    cdef bint _synthetic


cdef class RequestReader(_Reader):
    pass


cdef class ResponseReader(_Reader):
    cdef bint _head_request
    cdef public bint no_reuse


cdef class _Head:
    pass


cdef class RequestHead(_Head):
    cdef public bytes method
    cdef public bytes target
    cdef public bytes version
    cdef public list headers
    cdef public object host
    cdef public bint keep_alive
    cdef public object content_length
    cdef public bint chunked
    cdef public bint expect_continue
    cdef public object upgrade


cdef class ResponseHead(_Head):
    cdef public int status
    cdef public bytes reason
    cdef public bytes version
    cdef public list headers
    cdef public bint keep_alive
    cdef public object content_length
    cdef public bint chunked

# cython: language_level=3
"""Memory-integrity kernels, compiled twins of edge/kernels/crc32c.py and edge/kernels/secded.py.

Thin wrappers over ext/crc32c.c and ext/secded.c: check shapes (never crash on a direct call with
wrong arguments), release the GIL for the loops, hand results back as plain Python objects.
"""
from cpython cimport array
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "crc32c.h":
    void edge_crc32c_init() nogil
    uint32_t edge_crc32c(uint32_t crc, const void *data, size_t length) nogil
    uint32_t edge_crc32c_table(uint32_t crc, const void *data, size_t length) nogil
    const char *edge_crc32c_path() nogil

cdef extern from "secded.h":
    void edge_secded_init() nogil
    void edge_secded_encode(const uint64_t *words, uint8_t *parity, size_t n) nogil
    size_t edge_secded_check(const uint64_t *words, const uint8_t *parity, size_t n, size_t start,
                             int64_t *ev_word, int64_t *ev_code, size_t cap,
                             size_t *n_events) nogil
    size_t edge_secded_correct(uint64_t *words, uint8_t *parity, size_t n, size_t start,
                               int64_t *ev_word, int64_t *ev_code, size_t cap,
                               size_t *n_events) nogil
    const char *edge_secded_path() nogil
    int edge_secded_set_path(const char *name) nogil

import array as _array
from operator import index as _index

edge_crc32c_init()
edge_secded_init()

cdef enum:
    # Buffers below this size are hashed holding the GIL (releasing it costs more than the CRC).
    GIL_RELEASE_BYTES = 65536
    # Events are collected through a fixed stack buffer of this many entries per C call.
    EVENT_CHUNK = 256

# ---- CRC32C --------------------------------------------------------------------------------------

cdef uint32_t _crc_value(object value) except? 0:
    value = _index(value)  # TypeError for float, str, None
    if value < 0 or value > 0xFFFFFFFF:
        raise ValueError(f"value must be a CRC in 0..2**32-1, got {value}")
    return <uint32_t>value


cdef uint32_t _crc_buffer(object data, uint32_t crc, bint portable) except? 0:
    """CRC of the bytes of any C-contiguous buffer, read in place (PyBUF_C_CONTIGUOUS asks for the
    raw bytes, whatever the item format: no memoryview cast, no copy)."""
    cdef Py_buffer view
    if isinstance(data, str):
        raise TypeError("data must be a bytes-like object (a buffer), not str")
    try:
        PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS)
    except BufferError as exc:
        raise ValueError(f"data must be a C-contiguous buffer: {exc}") from None
    try:
        if view.len >= GIL_RELEASE_BYTES:
            with nogil:
                crc = edge_crc32c_table(crc, view.buf, <size_t>view.len) if portable \
                    else edge_crc32c(crc, view.buf, <size_t>view.len)
        else:
            crc = edge_crc32c_table(crc, view.buf, <size_t>view.len) if portable \
                else edge_crc32c(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32c(data, value=0):
    """CRC-32C of the bytes of `data` (any C-contiguous buffer), continuing from `value`."""
    return _crc_buffer(data, _crc_value(value), False)


def crc32c_table(data, value=0):
    """crc32c() on the portable slicing-by-8 path, whatever the CPU (for tests on every arch)."""
    return _crc_buffer(data, _crc_value(value), True)


def crc32c_path():
    """The path crc32c() uses here: 'sse4.2', 'armv8-crc' or 'table'."""
    return edge_crc32c_path().decode("ascii")

# ---- SECDED --------------------------------------------------------------------------------------

def secded_path():
    """The syndrome path in use here: 'avx512-gfni', 'neon' or 'table'."""
    return edge_secded_path().decode("ascii")


def secded_set_path(str name):
    """Test and benchmark hook: make every later call use path `name` ('table' always exists).
    Raises ValueError when this CPU lacks it. Process-wide, not thread-safe."""
    if edge_secded_set_path(name.encode("ascii")) != 0:
        raise ValueError(f"SECDED path {name!r} is not available here")


def secded_encode(const uint64_t[::1] words not None, uint8_t[::1] out not None):
    """out[i] = check byte of words[i]."""
    if out.shape[0] != words.shape[0]:
        raise ValueError(f"out must have {words.shape[0]} check bytes, got {out.shape[0]}")
    if words.shape[0] == 0:
        return
    with nogil:
        edge_secded_encode(&words[0], &out[0], <size_t>words.shape[0])


cdef tuple _collect(const uint64_t[::1] words, const uint8_t[::1] parity,
                    uint64_t[::1] fix_words, uint8_t[::1] fix_parity):
    """Scan all words; returns (event word indices, event codes) as array('q'). Corrects in place
    when fix_words / fix_parity (the same buffers, writable) are given."""
    cdef size_t n = <size_t>words.shape[0]
    cdef size_t start = 0, got = 0
    cdef int64_t ev_word[EVENT_CHUNK]
    cdef int64_t ev_code[EVENT_CHUNK]
    cdef bint correct = fix_words is not None
    cdef array.array ev_words = _array.array("q"), ev_codes = _array.array("q")
    if parity.shape[0] != words.shape[0]:
        raise ValueError(f"parity must have one check byte per word ({words.shape[0]}), "
                         f"got {parity.shape[0]}")
    while start < n:
        with nogil:
            if correct:
                start = edge_secded_correct(&fix_words[0], &fix_parity[0], n, start,
                                            ev_word, ev_code, EVENT_CHUNK, &got)
            else:
                start = edge_secded_check(&words[0], &parity[0], n, start,
                                          ev_word, ev_code, EVENT_CHUNK, &got)
        array.extend_buffer(ev_words, <char *>ev_word, <Py_ssize_t>got)
        array.extend_buffer(ev_codes, <char *>ev_code, <Py_ssize_t>got)
    return ev_words, ev_codes


def secded_check(const uint64_t[::1] words not None, const uint8_t[::1] parity not None):
    """Events of words vs check bytes, nothing modified: (word indices, codes) as array('q') in
    word order; code 0..63 data bit, 64..71 check bit, -1 uncorrectable."""
    return _collect(words, parity, None, None)


def secded_correct(uint64_t[::1] words not None, uint8_t[::1] parity not None):
    """As secded_check, and flips single-bit errors back in place (words or parity)."""
    return _collect(words, parity, words, parity)

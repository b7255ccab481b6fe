# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: embedsignature=True, embedsignature.format=python
"""Compiled SSE scanner and HTTP/1.1 chunked-framing walker: the relay's hot path, in C.

Owns the byte-level reading of an upstream event stream, in two modes:

* ``EventParser`` (translate path): bytes in, ``(event, data, id)`` tuples out.
* ``StreamObserver`` (relay path): bytes in, the same bytes object out (unless an elided event is in
  or straddles the piece), while it notes the usage object, ``[DONE]``, errors, the event count and
  the end of the chunked body, in one pass over each piece with memchr/memmem.

``gwcore._sse_py`` is the executable spec: same names, results and exceptions, tested side by side;
change both together. This module must never touch the event loop or read a socket, with one
exception, the relay pump: it may write a piece to the client's socket, which the front door
hands it, and its lane takes the upstream stream's read callbacks from uvloop for a response's
plain reads (see ``RelayPump.lane_start``; the twin has the same API and never starts one). It
must never create a Python object per event in observe mode (only the rare usage/error bytes),
never call back into Python per byte or per event, and never buffer more than what straddles two
pieces (bounded).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy, PyDict_SetDefault, PyDict_SetItem
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport (
    Py_UCS1,
    PyUnicode_1BYTE_DATA,
    PyUnicode_1BYTE_KIND,
    PyUnicode_DecodeLatin1,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_New,
)
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.pythread cimport PyThread_get_thread_ident
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from gwcore._sse_py import FIELD_SLACK, HOLD_LIMIT, MAX_FRAMING_LINE, SSEError
from gwcore._sse_py import request_bytes as _request_bytes_twin  # (a string that is not latin-1)

__all__ = [
    "FIELD_SLACK",
    "HOLD_LIMIT",
    "MAX_FRAMING_LINE",
    "EventParser",
    "RelayPump",
    "RequestHeadMemo",
    "ResponseHead",
    "SSEError",
    "StreamObserver",
    "bytes_tail",
    "chat_request_fields",
    "head_end",
    "lane_available",
    "lane_scan",
    "quick_request_head",
    "quick_response_head",
    "request_bytes",
    "response_head",
    "send_direct",
    "usage_counts",
    "with_member",
]

cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define GW_SSE2 1
    #if defined(_MSC_VER) && !defined(__clang__)
    #include <intrin.h>
    static unsigned gw_ctz(unsigned m) { unsigned long i; _BitScanForward(&i, m); return (unsigned)i; }
    #else
    #define gw_ctz(m) ((unsigned)__builtin_ctz(m))
    #endif
    #endif
    /* Index of needle (nl >= 2) in h[start:end], or -1. On x86 an SSE2 filter on the needle's
       first and last byte, 32 candidates a step (Mula's method): about twice glibc's memmem on
       the short needles and ~300-byte events searched here. */
    static Py_ssize_t gw_find(const unsigned char *h, Py_ssize_t start, Py_ssize_t end,
                              const char *nd, Py_ssize_t nl) {
        const unsigned char *p = h + start, *stop;
        if (end - start < nl) return -1;
        stop = h + end - nl + 1;  /* candidate starts are [p, stop) */
    #ifdef GW_SSE2
        {
            const __m128i f = _mm_set1_epi8(nd[0]), l = _mm_set1_epi8(nd[nl - 1]);
            while (stop - p >= 32) {
                __m128i a0 = _mm_loadu_si128((const __m128i *)p);
                __m128i a1 = _mm_loadu_si128((const __m128i *)(p + 16));
                __m128i b0 = _mm_loadu_si128((const __m128i *)(p + nl - 1));
                __m128i b1 = _mm_loadu_si128((const __m128i *)(p + nl + 15));
                unsigned m = (unsigned)_mm_movemask_epi8(
                                 _mm_and_si128(_mm_cmpeq_epi8(a0, f), _mm_cmpeq_epi8(b0, l)))
                             | ((unsigned)_mm_movemask_epi8(
                                 _mm_and_si128(_mm_cmpeq_epi8(a1, f), _mm_cmpeq_epi8(b1, l))) << 16);
                while (m) {
                    unsigned i = gw_ctz(m);
                    if (memcmp(p + i + 1, nd + 1, (size_t)(nl - 2)) == 0)
                        return (Py_ssize_t)(p + i - h);
                    m &= m - 1;
                }
                p += 32;
            }
        }
    #endif
        if (stop - p < 16) {  /* a few candidates: cheaper than a call to memchr */
            for (; p < stop; p++)
                if (*p == (unsigned char)nd[0] && memcmp(p, nd, (size_t)nl) == 0)
                    return (Py_ssize_t)(p - h);
            return -1;
        }
        for (; p < stop; p++) {
            p = (const unsigned char *)memchr(p, (unsigned char)nd[0], (size_t)(stop - p));
            if (!p) return -1;
            if (memcmp(p, nd, (size_t)nl) == 0) return (Py_ssize_t)(p - h);
        }
        return -1;
    }
    /* gw_find limited to one line: the first needle start in h[start:end] before the first CR
       or LF there (or -1), with *eol set to that line end (or end). One pass over the bytes where
       gw_eol and gw_find made two (an event's data line, searched for a key). nl >= 3.

       On x86 a filter on the needle's first, second and last byte, W candidates a step (32 with
       SSE2; 64 with AVX2 where the CPU has it, chosen at import), the last step overlapping the
       one before (its positions already seen masked off). MASKS sets m (candidates) and z (CR or
       LF) for q[0:W]. */
    static const unsigned char *gw_eol(const unsigned char *p, const unsigned char *end);
    #define GW_LINE_STEPS(W, MT, CTZ, MASKS)                                                    \
        Py_ssize_t found = -1;  /* once found, the steps look for the line end only */         \
        for (;;) {                                                                            \
            unsigned skip = 0;                                                                \
            const unsigned char *q = p;                                                       \
            MT m, z;                                                                          \
            if (stop - p < (W)) {  /* the last step: W positions ending at stop */            \
                q = stop - (W);                                                               \
                skip = (unsigned)(p - q);                                                     \
            }                                                                                 \
            MASKS                                                                             \
            m = found < 0 ? (m >> skip) << skip : 0;                                          \
            z = (z >> skip) << skip;                                                          \
            if (z)                                                                            \
                m &= ((MT)1 << CTZ(z)) - 1;  /* only candidates before the line end */        \
            while (m) {                                                                       \
                unsigned i = (unsigned)CTZ(m);                                                \
                if (memcmp(q + i + 2, nd + 2, (size_t)(nl - 3)) == 0) {                       \
                    found = (Py_ssize_t)(q + i - h);                                          \
                    break;                                                                    \
                }                                                                             \
                m &= m - 1;                                                                   \
            }                                                                                 \
            if (z) {                                                                          \
                *eol = (Py_ssize_t)(q - h) + (Py_ssize_t)CTZ(z);                              \
                return found;                                                                 \
            }                                                                                 \
            p = q + (W);                                                                      \
            if (p >= stop)                                                                    \
                break;                                                                        \
        }                                                                                     \
        if (found >= 0) {  /* the line end is in the last nl - 1 bytes, or nowhere */         \
            e = gw_eol(p, h + end);                                                           \
            *eol = e ? (Py_ssize_t)(e - h) : end;                                             \
            return found;                                                                     \
        }
    static Py_ssize_t gw_find_line_sse2(const unsigned char *h, Py_ssize_t start,
                                        Py_ssize_t end, const char *nd, Py_ssize_t nl,
                                        Py_ssize_t *eol) {
        const unsigned char *p = h + start, *stop, *e;
        stop = h + end - nl + 1;  /* candidate starts are [p, stop) */
    #ifdef GW_SSE2
        if (stop - p >= 32) {
            const __m128i f = _mm_set1_epi8(nd[0]), g = _mm_set1_epi8(nd[1]),
                          l = _mm_set1_epi8(nd[nl - 1]);
            const __m128i cr = _mm_set1_epi8(0x0D), lf = _mm_set1_epi8(0x0A);
            GW_LINE_STEPS(32, unsigned, gw_ctz, {
                __m128i a0 = _mm_loadu_si128((const __m128i *)q);
                __m128i a1 = _mm_loadu_si128((const __m128i *)(q + 16));
                __m128i c0 = _mm_loadu_si128((const __m128i *)(q + 1));
                __m128i c1 = _mm_loadu_si128((const __m128i *)(q + 17));
                __m128i b0 = _mm_loadu_si128((const __m128i *)(q + nl - 1));
                __m128i b1 = _mm_loadu_si128((const __m128i *)(q + nl + 15));
                m = (unsigned)_mm_movemask_epi8(_mm_and_si128(
                        _mm_and_si128(_mm_cmpeq_epi8(a0, f), _mm_cmpeq_epi8(c0, g)),
                        _mm_cmpeq_epi8(b0, l)))
                    | ((unsigned)_mm_movemask_epi8(_mm_and_si128(
                        _mm_and_si128(_mm_cmpeq_epi8(a1, f), _mm_cmpeq_epi8(c1, g)),
                        _mm_cmpeq_epi8(b1, l))) << 16);
                z = (unsigned)_mm_movemask_epi8(
                        _mm_or_si128(_mm_cmpeq_epi8(a0, cr), _mm_cmpeq_epi8(a0, lf)))
                    | ((unsigned)_mm_movemask_epi8(
                        _mm_or_si128(_mm_cmpeq_epi8(a1, cr), _mm_cmpeq_epi8(a1, lf))) << 16);
            })
        }
    #endif
        e = gw_eol(p, h + end);  /* (after the steps: the last nl - 1 bytes) */
        *eol = e ? (Py_ssize_t)(e - h) : end;
        if (e && e < stop) stop = e;
        for (; p < stop; p++) {
            p = (const unsigned char *)memchr(p, (unsigned char)nd[0], (size_t)(stop - p));
            if (!p) return -1;
            if (memcmp(p, nd, (size_t)nl) == 0) return (Py_ssize_t)(p - h);
        }
        return -1;
    }
    #if defined(GW_SSE2) && defined(__GNUC__) && defined(__x86_64__) && !defined(GW_NO_AVX2)
    #include <immintrin.h>
    #define GW_AVX2 1
    __attribute__((target("avx2")))
    static Py_ssize_t gw_find_line_avx2(const unsigned char *h, Py_ssize_t start,
                                        Py_ssize_t end, const char *nd, Py_ssize_t nl,
                                        Py_ssize_t *eol) {
        const unsigned char *p = h + start, *stop, *e;
        stop = h + end - nl + 1;
        if (stop - p < 64)
            return gw_find_line_sse2(h, start, end, nd, nl, eol);
        {
            const __m256i f = _mm256_set1_epi8(nd[0]), g = _mm256_set1_epi8(nd[1]),
                          l = _mm256_set1_epi8(nd[nl - 1]);
            const __m256i cr = _mm256_set1_epi8(0x0D), lf = _mm256_set1_epi8(0x0A);
            GW_LINE_STEPS(64, unsigned long long, __builtin_ctzll, {
                __m256i a0 = _mm256_loadu_si256((const __m256i *)q);
                __m256i a1 = _mm256_loadu_si256((const __m256i *)(q + 32));
                __m256i c0 = _mm256_loadu_si256((const __m256i *)(q + 1));
                __m256i c1 = _mm256_loadu_si256((const __m256i *)(q + 33));
                __m256i b0 = _mm256_loadu_si256((const __m256i *)(q + nl - 1));
                __m256i b1 = _mm256_loadu_si256((const __m256i *)(q + nl + 31));
                m = (unsigned long long)(unsigned)_mm256_movemask_epi8(_mm256_and_si256(
                        _mm256_and_si256(_mm256_cmpeq_epi8(a0, f), _mm256_cmpeq_epi8(c0, g)),
                        _mm256_cmpeq_epi8(b0, l)))
                    | ((unsigned long long)(unsigned)_mm256_movemask_epi8(_mm256_and_si256(
                        _mm256_and_si256(_mm256_cmpeq_epi8(a1, f), _mm256_cmpeq_epi8(c1, g)),
                        _mm256_cmpeq_epi8(b1, l))) << 32);
                z = (unsigned long long)(unsigned)_mm256_movemask_epi8(
                        _mm256_or_si256(_mm256_cmpeq_epi8(a0, cr), _mm256_cmpeq_epi8(a0, lf)))
                    | ((unsigned long long)(unsigned)_mm256_movemask_epi8(
                        _mm256_or_si256(_mm256_cmpeq_epi8(a1, cr), _mm256_cmpeq_epi8(a1, lf)))
                       << 32);
            })
        }
        e = gw_eol(p, h + end);  /* (no candidate: the line end in the last nl - 1 bytes) */
        *eol = e ? (Py_ssize_t)(e - h) : end;
        return -1;
    }
    #endif
    /* 2: AVX2, 1: SSE2 (or scalar off x86). Set at import from the CPU; tests set it too. */
    static int gw_simd = 1;
    static int gw_simd_set(int level) {
        int was = gw_simd;
    #ifdef GW_AVX2
        if (level < 0) {
            __builtin_cpu_init();
            level = __builtin_cpu_supports("avx2") ? 2 : 1;
        }
        gw_simd = level >= 2 ? 2 : 1;
    #else
        gw_simd = 1;
    #endif
        return was;
    }
    static Py_ssize_t gw_find_line(const unsigned char *h, Py_ssize_t start, Py_ssize_t end,
                                   const char *nd, Py_ssize_t nl, Py_ssize_t *eol) {
    #ifdef GW_AVX2
        if (gw_simd == 2)
            return gw_find_line_avx2(h, start, end, nd, nl, eol);
    #endif
        return gw_find_line_sse2(h, start, end, nd, nl, eol);
    }
    /* First CR or LF in [p, end), or NULL: one pass where two memchr calls scanned the line
       twice (an SSE line ends at either). */
    static const unsigned char *gw_eol(const unsigned char *p, const unsigned char *end) {
    #ifdef GW_SSE2
        const unsigned char *p0 = p;
        const __m128i cr = _mm_set1_epi8(0x0D), lf = _mm_set1_epi8(0x0A);
        while (end - p >= 32) {
            __m128i a0 = _mm_loadu_si128((const __m128i *)p);
            __m128i a1 = _mm_loadu_si128((const __m128i *)(p + 16));
            unsigned m = (unsigned)_mm_movemask_epi8(
                             _mm_or_si128(_mm_cmpeq_epi8(a0, cr), _mm_cmpeq_epi8(a0, lf)))
                         | ((unsigned)_mm_movemask_epi8(
                             _mm_or_si128(_mm_cmpeq_epi8(a1, cr), _mm_cmpeq_epi8(a1, lf))) << 16);
            if (m) return p + gw_ctz(m);
            p += 32;
        }
        while (end - p >= 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)p);
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(a, cr), _mm_cmpeq_epi8(a, lf)));
            if (m) return p + gw_ctz(m);
            p += 16;
        }
        if (p < end && end - p0 >= 16) {  /* the tail: the last 16 bytes, those before p masked */
            __m128i a = _mm_loadu_si128((const __m128i *)(end - 16));
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(a, cr), _mm_cmpeq_epi8(a, lf)));
            m >>= 16 - (unsigned)(end - p);
            return m ? p + gw_ctz(m) : NULL;
        }
    #endif
        for (; p < end; p++)
            if (*p == 0x0D || *p == 0x0A) return p;
        return NULL;
    }
    /* Index of the first quote or backslash in h[i:end], or end: how a JSON walk crosses the
       inside of a string (most of an event's bytes) without looking at each byte. */
    static Py_ssize_t gw_str_stop(const unsigned char *h, Py_ssize_t i, Py_ssize_t end) {
        const unsigned char *p = h + i, *stop = h + end;
    #ifdef GW_SSE2
        const __m128i q = _mm_set1_epi8(0x22), b = _mm_set1_epi8(0x5C);
        while (stop - p >= 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)p);
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(a, q), _mm_cmpeq_epi8(a, b)));
            if (m) return (Py_ssize_t)(p - h) + gw_ctz(m);
            p += 16;
        }
    #endif
        for (; p < stop; p++)
            if (*p == 0x22 || *p == 0x5C) break;
        return (Py_ssize_t)(p - h);
    }
    """
    Py_ssize_t gw_find(const unsigned char *h, Py_ssize_t start, Py_ssize_t end,
                       const char *nd, Py_ssize_t nl) noexcept nogil
    const unsigned char *gw_eol(const unsigned char *p, const unsigned char *end) noexcept nogil
    Py_ssize_t gw_find_line(const unsigned char *h, Py_ssize_t start, Py_ssize_t end,
                            const char *nd, Py_ssize_t nl, Py_ssize_t *eol) noexcept nogil
    int gw_simd_set(int level) noexcept nogil
    int gw_simd
    Py_ssize_t gw_str_stop(const unsigned char *h, Py_ssize_t i, Py_ssize_t end) noexcept nogil

cdef enum:
    C_LF = 0x0A
    C_CR = 0x0D
    C_SP = 0x20
    C_HTAB = 0x09
    C_COLON = 0x3A
    C_SEMI = 0x3B
    C_QUOTE = 0x22
    C_BSLASH = 0x5C
    C_LBRACE = 0x7B
    C_RBRACE = 0x7D
    C_LBRACKET = 0x5B
    C_RBRACKET = 0x5D
    FRAMING_LIMIT = 8192
    HOLD_MAX = 65536
    SLACK = 64
    SHRINK_ABOVE = 262144  # a scratch buffer grown past this is freed once empty

# Chunked framing states, numbered as in the twin.
cdef enum:
    S_NONE = 0
    S_SIZE = 1
    S_SIZE_WS = 2
    S_EXT = 3
    S_SIZE_LF = 4
    S_DATA = 5
    S_DATA_CR = 6
    S_DATA_LF = 7
    S_TRAILER = 8
    S_TRAILER_LINE = 9
    S_TRAILER_LF = 10
    S_FINAL_LF = 11
    S_DONE = 12

assert FIELD_SLACK == SLACK and HOLD_LIMIT == HOLD_MAX and MAX_FRAMING_LINE == FRAMING_LIMIT

cdef signed char HEXV[256]
cdef int _k
for _k in range(256):
    HEXV[_k] = -1
for _k in range(10):
    HEXV[0x30 + _k] = _k
for _k in range(6):
    HEXV[0x61 + _k] = 10 + _k
    HEXV[0x41 + _k] = 10 + _k

gw_simd_set(-1)  # the line search's vector width: what this CPU has


def _simd(level=None):
    """The line search's vector width in use: 2 (AVX2), 1 (SSE2, or bytes one by one off x86).
    With ``level`` (-1: what the CPU has), use that from now on and return the width before:
    the tests run both widths."""
    if level is None:
        return gw_simd
    return gw_simd_set(level)


cdef const unsigned char* BOM = <const unsigned char*>b"\xef\xbb\xbf"
cdef const unsigned char* LFBYTE = <const unsigned char*>b"\n"
cdef const char* HEXDIGITS = b"0123456789abcdef"


# ---- growable byte and span buffers (C memory, never Python objects) ----------------------------

cdef struct Buf:
    unsigned char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int buf_grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.n + extra
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 256
    cdef void* p
    if cap < need:
        cap = need
    p = PyMem_Realloc(b.p, <size_t>cap)
    if p == NULL:
        raise MemoryError()
    b.p = <unsigned char*>p
    b.cap = cap
    return 0


cdef inline int buf_add(Buf* b, const unsigned char* src, Py_ssize_t n) except -1:
    if n <= 0:
        return 0
    if b.n + n > b.cap:
        buf_grow(b, n)
    memcpy(b.p + b.n, src, <size_t>n)
    b.n += n
    return 0


cdef inline void buf_clear(Buf* b) noexcept:
    b.n = 0
    if b.cap > SHRINK_ABOVE:  # do not keep a one-off big event's memory for the whole stream
        PyMem_Free(b.p)
        b.p = NULL
        b.cap = 0


cdef inline void buf_free(Buf* b) noexcept:
    PyMem_Free(b.p)
    b.p = NULL
    b.n = b.cap = 0


cdef struct Spans:
    Py_ssize_t* v  # pairs (start, end)
    Py_ssize_t n  # number of pairs
    Py_ssize_t cap


cdef int spans_add(Spans* sp, Py_ssize_t a, Py_ssize_t b) except -1:
    cdef void* p
    cdef Py_ssize_t cap
    if sp.n == sp.cap:
        cap = sp.cap * 2 if sp.cap else 16
        p = PyMem_Realloc(sp.v, <size_t>(cap * 2 * sizeof(Py_ssize_t)))
        if p == NULL:
            raise MemoryError()
        sp.v = <Py_ssize_t*>p
        sp.cap = cap
    sp.v[2 * sp.n] = a
    sp.v[2 * sp.n + 1] = b
    sp.n += 1
    return 0


# ---- JSON peeking for the observer (only on events whose data has a candidate key) --------------

cdef inline bint is_ws(unsigned char c) noexcept nogil:
    return c == C_SP or c == C_HTAB or c == C_LF or c == C_CR


cdef inline Py_ssize_t skip_ws(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and is_ws(d[i]):
        i += 1
    return i


cdef Py_ssize_t object_end(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index after the JSON value opened by the brace at ``d[i]``, or -1 when unbalanced."""
    cdef Py_ssize_t depth = 0
    cdef unsigned char c
    while i < n:
        c = d[i]
        if c == C_QUOTE:  # a string: jump from one quote or backslash to the next
            i += 1
            while True:
                i = gw_str_stop(d, i, n)
                if i >= n:
                    return -1
                if d[i] == C_QUOTE:
                    break
                i += 2  # a backslash and the byte it escapes
        elif c == C_LBRACE or c == C_LBRACKET:
            depth += 1
        elif c == C_RBRACE or c == C_RBRACKET:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


cdef struct Nesting:
    Py_ssize_t pos
    Py_ssize_t depth
    Py_ssize_t closed  # index after the bracket that first brought depth back to 0; -1: none yet
    bint in_str
    bint esc


cdef inline void nest_start(Nesting* t, Py_ssize_t pos) noexcept nogil:
    t.pos = pos
    t.depth = 0
    t.closed = -1
    t.in_str = False
    t.esc = False


cdef void nest_advance(Nesting* t, const unsigned char* d, Py_ssize_t target) noexcept nogil:
    """Walk JSON text forward to ``target``, tracking container depth, string state and where the
    value the walk started at closed (what ``object_end`` from there returns)."""
    cdef Py_ssize_t i = t.pos, depth = t.depth
    cdef bint in_str = t.in_str, esc = t.esc
    cdef unsigned char c
    while i < target:
        if in_str:
            if esc:
                esc = False
                i += 1
                continue
            i = gw_str_stop(d, i, target)
            if i >= target:
                break
            if d[i] == C_QUOTE:
                in_str = False
            else:
                esc = True
            i += 1
            continue
        c = d[i]
        if c == C_QUOTE:
            in_str = True
        elif c == C_LBRACE or c == C_LBRACKET:
            depth += 1
        elif c == C_RBRACE or c == C_RBRACKET:
            depth -= 1
            if depth == 0 and t.closed < 0:
                t.closed = i + 1
        i += 1
    t.pos = i
    t.depth = depth
    t.in_str = in_str
    t.esc = esc


cdef inline Py_ssize_t key_value_at(
    const unsigned char* d, Py_ssize_t k, Py_ssize_t n, unsigned char opener
) noexcept nogil:
    """After a key's closing quote at ``k``: index of ``opener`` past ``:`` and spaces, or -1."""
    k = skip_ws(d, k, n)
    if k >= n or d[k] != C_COLON:
        return -1
    k = skip_ws(d, k + 1, n)
    if k >= n or d[k] != opener:
        return -1
    return k


cdef inline Py_ssize_t usage_value_at(
    const unsigned char* d, Py_ssize_t p, Py_ssize_t n, bint* meta
) noexcept nogil:
    """At ``'"usage'`` (``d[p]``): where the object value of a ``"usage"`` or ``"usageMetadata"``
    key opens (``meta``: the latter), or -1 when it is neither key or its value no object."""
    cdef Py_ssize_t k = p + 6
    meta[0] = False
    if k < n and d[k] == C_QUOTE:
        k += 1
    elif n - k >= 9 and memcmp(d + k, b'Metadata"', 9) == 0:
        meta[0] = True
        k += 9
    else:
        return -1
    return key_value_at(d, k, n, C_LBRACE)


cdef Py_ssize_t find_choices(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Where ``'"choices"'`` first occurs in ``d[i:n]``, or -1. (Searched for without its first
    quote, checked after: a needle that starts and ends with a quote matches at every pair of
    quotes eight bytes apart, which JSON text is full of.)"""
    cdef Py_ssize_t p = gw_find(d, i + 1, n, b'choices"', 8)
    while p >= 0 and d[p - 1] != C_QUOTE:
        p = gw_find(d, p + 1, n, b'choices"', 8)
    return p - 1 if p >= 0 else -1


cdef inline bint empty_array_at(const unsigned char* d, Py_ssize_t p, Py_ssize_t n) noexcept nogil:
    """At ``'"choices"'`` (``d[p]``): True when the key's value is an empty array."""
    cdef Py_ssize_t k = key_value_at(d, p + 9, n, C_LBRACKET)
    if k < 0:
        return False
    k = skip_ws(d, k + 1, n)
    return k < n and d[k] == C_RBRACKET


cdef inline Py_ssize_t choices_step(
    Nesting* nest, const unsigned char* d, Py_ssize_t n, Py_ssize_t c, bint* found
) noexcept nogil:
    """The walk ``nest`` to the ``"choices"`` key at ``c``: ``found`` when it is a top-level one
    whose value is an empty array. The next key to look at, -1 once found or when none is left."""
    if empty_array_at(d, c, n):
        nest_advance(nest, d, c)
        if not nest.in_str and nest.depth == 1:
            found[0] = True
            return -1
    return find_choices(d, c + 1, n)


# ---- the scanner ----------------------------------------------------------------------------------

cdef class _Scanner:
    """State shared by both modes: chunked framing, SSE line splitting, the event in progress."""

    cdef bint _chunked, _observe, _elide
    cdef Py_ssize_t _max, _line_limit
    # chunked framing
    cdef int _cst
    cdef Py_ssize_t _csize, _cdigits, _cline
    cdef bint _complete, _closed
    cdef object _failed
    # lines
    cdef int _bom  # bytes of a BOM matched so far; -1 once the stream start is behind us
    cdef bint _cr  # the last byte was a CR ending a line: a following LF belongs to it
    cdef bint _line_open
    cdef Buf _lbuf
    cdef Py_ssize_t _ltrue  # true length of the carried partial line (the observer may truncate)
    # the event in progress; its first data line stays in the piece while the piece is alive
    cdef bint _has_data, _doverflow, _d_inplace, _etype_error
    cdef bint _typed  # observe mode: the event in progress has an event field
    cdef const unsigned char* _dptr
    cdef Py_ssize_t _dlen, _dtotal
    cdef Buf _dbuf
    cdef object _etype, _id
    cdef list _out
    # observer results
    cdef Py_ssize_t _events, _elided
    cdef object _usage, _first_usage, _error
    cdef bint _done
    # elide-mode bookkeeping: a block is the raw bytes of one event up to its blank line
    cdef bint _blk, _blk_disq, _elide_lf
    cdef Py_ssize_t _blk_here, _seg_end, _term_at
    cdef Buf _hold, _prefix, _obuf
    cdef Spans _segs, _cuts

    def __dealloc__(self):
        buf_free(&self._lbuf)
        buf_free(&self._dbuf)
        buf_free(&self._hold)
        buf_free(&self._prefix)
        buf_free(&self._obuf)
        PyMem_Free(self._segs.v)
        PyMem_Free(self._cuts.v)

    cdef _setup(self, bint chunked, Py_ssize_t max_event_size, bint observe, bint elide):
        if max_event_size < 0:
            raise ValueError("max_event_size must be >= 0")
        self._chunked = chunked
        self._observe = observe
        self._elide = elide
        self._max = max_event_size
        self._line_limit = max_event_size + SLACK
        self._cst = S_SIZE if chunked else S_NONE
        self._bom = 0
        self._blk_here = -1
        self._seg_end = -1
        self._term_at = -1

    @property
    def complete(self):
        return self._complete

    # ---- input ---------------------------------------------------------------------------------

    @cython.final
    cdef int _fail(self, str msg) except -1:
        self._failed = msg
        raise SSEError(msg)

    @cython.final
    cdef int _begin(self) except -1:
        if self._failed is not None:
            raise SSEError(self._failed)
        if self._closed:
            raise SSEError("feed() after close()")
        return 0

    @cython.final
    cdef int _run(self, const unsigned char* d, Py_ssize_t n) except -1:
        if self._chunked:
            self._walk(d, n)
        else:
            self._segment(d, 0, n)
        if self._d_inplace:  # the piece is about to go away: keep the straddling data
            self._d_inplace = False
            self._dbuf.n = 0
            buf_add(&self._dbuf, self._dptr, self._dlen)
        return 0

    @cython.final
    cdef int _walk(self, const unsigned char* d, Py_ssize_t n) except -1:
        """Walk the chunked framing; hand each run of payload bytes to ``_segment``."""
        cdef Py_ssize_t pos = 0, take
        cdef int st = self._cst
        cdef unsigned char b
        cdef signed char v
        cdef Py_ssize_t k, size
        try:
            while pos < n:
                if st == S_SIZE and self._cdigits == 0:
                    # Fast path: a whole "<hex>CRLF" size line of a data chunk in this piece.
                    k = pos
                    size = 0
                    while k < n and k - pos < 15 and HEXV[d[k]] >= 0:
                        size = size * 16 + HEXV[d[k]]
                        k += 1
                    if size and k + 1 < n and d[k] == C_CR and d[k + 1] == C_LF:
                        self._cline = 0
                        pos = k + 2
                        if n - pos >= size and self._observe and self._whole_event(d, pos, pos + size):
                            pos += size  # the chunk's data was one whole event, taken at once
                            st = S_DATA_CR
                            continue
                        self._csize = size
                        st = S_DATA
                        continue
                elif st == S_DATA_CR and pos + 1 < n and d[pos] == C_CR and d[pos + 1] == C_LF:
                    pos += 2  # the CRLF after a chunk's data
                    st = S_SIZE
                    continue
                if st == S_DATA:
                    take = n - pos
                    if take > self._csize:
                        take = self._csize
                    self._segment(d, pos, pos + take)
                    pos += take
                    self._csize -= take
                    if self._csize == 0:
                        st = S_DATA_CR
                    continue
                b = d[pos]
                pos += 1
                if st == S_SIZE:
                    v = HEXV[b]
                    if v >= 0:
                        if self._cdigits >= 15:
                            self._fail("malformed chunked body: chunk size too large")
                        self._csize = self._csize * 16 + v
                        self._cdigits += 1
                    elif self._cdigits == 0:
                        self._fail(
                            f"malformed chunked body: expected a hex chunk size, got byte 0x{b:02x}"
                        )
                    elif b == C_CR:
                        st = S_SIZE_LF
                    elif b == C_SEMI:
                        st = S_EXT
                    elif b == C_SP or b == C_HTAB:
                        st = S_SIZE_WS
                    else:
                        self._fail(
                            f"malformed chunked body: unexpected byte 0x{b:02x} in chunk size"
                        )
                    self._cline += 1
                elif st == S_SIZE_WS:
                    if b == C_CR:
                        st = S_SIZE_LF
                    elif b == C_SEMI:
                        st = S_EXT
                    elif b != C_SP and b != C_HTAB:
                        self._fail(
                            f"malformed chunked body: unexpected byte 0x{b:02x} in chunk size"
                        )
                    self._cline += 1
                    if self._cline > FRAMING_LIMIT:
                        self._fail(
                            f"malformed chunked body: chunk size line over {FRAMING_LIMIT} bytes"
                        )
                elif st == S_EXT:
                    if b == C_CR:
                        st = S_SIZE_LF
                    elif b == C_LF:
                        self._fail("malformed chunked body: bare LF in chunk size line")
                    self._cline += 1
                    if self._cline > FRAMING_LIMIT:
                        self._fail(
                            f"malformed chunked body: chunk size line over {FRAMING_LIMIT} bytes"
                        )
                elif st == S_SIZE_LF:
                    if b != C_LF:
                        self._fail("malformed chunked body: chunk size line not ended by CRLF")
                    self._cline = 0
                    self._cdigits = 0
                    if self._csize:
                        st = S_DATA
                    else:
                        st = S_TRAILER
                        self._term_at = pos  # the event stream ends with the last chunk
                        self._eof(self._seg_end)
                elif st == S_DATA_CR:
                    if b != C_CR:
                        self._fail("malformed chunked body: chunk data not followed by CRLF")
                    st = S_DATA_LF
                elif st == S_DATA_LF:
                    if b != C_LF:
                        self._fail("malformed chunked body: chunk data not followed by CRLF")
                    st = S_SIZE
                elif st == S_TRAILER or st == S_TRAILER_LINE:
                    if b == C_CR:
                        st = S_FINAL_LF if st == S_TRAILER else S_TRAILER_LF
                    elif b == C_LF:
                        self._fail("malformed chunked body: bare LF in trailer")
                    else:
                        st = S_TRAILER_LINE
                    self._cline += 1
                    if self._cline > FRAMING_LIMIT:
                        self._fail(f"malformed chunked body: trailers over {FRAMING_LIMIT} bytes")
                elif st == S_TRAILER_LF:
                    if b != C_LF:
                        self._fail("malformed chunked body: trailer line not ended by CRLF")
                    st = S_TRAILER
                    self._cline += 1
                    if self._cline > FRAMING_LIMIT:
                        self._fail(f"malformed chunked body: trailers over {FRAMING_LIMIT} bytes")
                elif st == S_FINAL_LF:
                    if b != C_LF:
                        self._fail("malformed chunked body: last chunk not ended by CRLF")
                    st = S_DONE
                    self._complete = True
                else:
                    self._fail("data after the end of the chunked body")
        finally:
            self._cst = st
        return 0

    @cython.final
    cdef bint _whole_event(self, const unsigned char* d, Py_ssize_t s, Py_ssize_t e) except -1:
        """Observe mode, between two events: when ``d[s:e]`` (one chunk's data, all in this piece)
        is exactly one ``data:`` line and a blank line, both ended by LF, take it whole: what
        ``_segment`` would do with it, without splitting it into lines. 0 (nothing done) for any
        other shape, which ``_segment`` then walks."""
        cdef Py_ssize_t vs, eol, first
        if (
            self._line_open
            or self._cr
            or self._has_data
            or self._typed
            or self._blk
            or self._blk_disq
            or self._hold.n
            or e - s < 7
            or e - s > self._max  # the data is never over the limit here
            or d[e - 1] != C_LF
            or d[e - 2] != C_LF
            or memcmp(d + s, b"data:", 5) != 0
        ):
            return 0
        if self._bom > 0:  # part of a BOM in an earlier chunk: it starts this line
            return 0
        vs = s + 5
        if d[vs] == C_SP:
            vs += 1
        # One pass: the data line's end (no other line end before the blank line) and where the
        # usage key may be.
        first = gw_find_line(d, vs, e, b'"usage', 6, &eol)
        if eol != e - 2:
            return 0
        self._bom = -1  # (0 before the stream's first byte: "d" is no BOM)
        if self._elide:
            spans_add(&self._segs, s, e)
            self._seg_end = e
        self._events += 1
        if self._analyze(d + vs, e - 2 - vs, first - vs if first >= 0 else -1):  # elide mode only
            self._elided += 1
            spans_add(&self._cuts, s, e)
            self._elide_lf = False
        return 1

    @cython.final
    cdef bint _boundary(self) noexcept:
        """The input is between two chunks (or past the last-chunk line, or not chunked)."""
        cdef int st = self._cst
        return st == S_NONE or (st == S_SIZE and self._cdigits == 0) or st >= S_TRAILER

    @cython.final
    cdef int _segment(self, const unsigned char* d, Py_ssize_t s, Py_ssize_t e) except -1:
        """Split the payload bytes ``d[s:e]`` into SSE lines (any piece, any split)."""
        cdef Py_ssize_t pos = s, i, nxt, k
        cdef const unsigned char* hit
        if self._elide:
            spans_add(&self._segs, s, e)
            self._seg_end = e
            if self._blk and self._blk_here < 0:
                self._blk_here = s
        if pos >= e:
            return 0
        if self._cr:
            self._cr = False
            if d[pos] == C_LF:
                if self._elide_lf:
                    spans_add(&self._cuts, pos, pos + 1)
                pos += 1
            self._elide_lf = False
        if self._bom >= 0:
            k = self._bom
            while k < 3 and pos < e:
                if d[pos] != BOM[k]:
                    break
                k += 1
                pos += 1
            if k == 3:
                self._bom = -1
            elif pos == e:
                self._bom = <int>k
                return 0
            else:
                self._bom = -1
                if k:  # a false start of a BOM is the beginning of the first line
                    self._carry(BOM, k)
        while pos < e:
            if self._elide and not self._blk:
                self._blk = True
                self._blk_here = pos
            hit = gw_eol(d + pos, d + e)  # the line ends at the first CR or LF
            if hit == NULL:
                self._carry(d + pos, e - pos)
                return 0
            i = hit - d
            nxt = i + 1
            if d[i] == C_CR:
                if nxt < e:
                    if d[nxt] == C_LF:
                        nxt += 1
                else:
                    self._cr = True
            if self._line_open:
                if i > pos:
                    self._carry(d + pos, i - pos)
                self._line_open = False
                self._line(self._lbuf.p, 0, self._lbuf.n, self._ltrue, nxt, False)
                self._ltrue = 0
                buf_clear(&self._lbuf)
            else:
                self._line(d, pos, i, i - pos, nxt, True)
            pos = nxt
        return 0

    @cython.final
    cdef int _carry(self, const unsigned char* src, Py_ssize_t n) except -1:
        """Keep the start of a line whose end is in a later piece."""
        cdef Py_ssize_t room
        self._line_open = True
        self._ltrue += n
        if self._ltrue > self._line_limit:
            if not self._observe:
                self._fail(f"SSE line exceeds max_event_size ({self._max} bytes)")
            room = self._line_limit - self._lbuf.n
            if room > 0:
                buf_add(&self._lbuf, src, room)
        else:
            buf_add(&self._lbuf, src, n)
        return 0

    @cython.final
    cdef int _line(
        self,
        const unsigned char* buf,
        Py_ssize_t s,
        Py_ssize_t e,
        Py_ssize_t length,
        Py_ssize_t nxt,
        bint inplace,
    ) except -1:
        """One complete line ``buf[s:e]`` (``length`` is its true length) ended before ``nxt``."""
        cdef const unsigned char* colon
        cdef Py_ssize_t ne, vs, nl
        if length == 0:
            return self._dispatch(nxt)
        if length > self._line_limit and not self._observe:
            self._fail(f"SSE line exceeds max_event_size ({self._max} bytes)")
        if buf[s] == C_COLON:
            return 0
        colon = <const unsigned char*>memchr(buf + s, C_COLON, <size_t>(e - s))
        if colon == NULL:
            ne = vs = e
        else:
            ne = colon - buf
            vs = ne + 1
            if vs < e and buf[vs] == C_SP:
                vs += 1
        nl = ne - s
        if nl == 4 and memcmp(buf + s, b"data", 4) == 0:
            self._on_data(buf, vs, e, length - (vs - s), inplace)
        elif nl == 5 and memcmp(buf + s, b"event", 5) == 0:
            if self._observe:
                self._blk_disq = True
                self._typed = True
                self._etype_error = e - vs == 5 and memcmp(buf + vs, b"error", 5) == 0
            elif e > vs:
                self._etype = PyBytes_FromStringAndSize(<const char*>buf + vs, e - vs)
            else:
                self._etype = None
        elif nl == 2 and not self._observe and memcmp(buf + s, b"id", 2) == 0:
            if memchr(buf + vs, 0, <size_t>(e - vs)) == NULL:
                if e > vs:
                    self._id = PyBytes_FromStringAndSize(<const char*>buf + vs, e - vs)
                else:
                    self._id = None
        return 0

    @cython.final
    cdef int _on_data(
        self, const unsigned char* buf, Py_ssize_t vs, Py_ssize_t e, Py_ssize_t vlen, bint inplace
    ) except -1:
        cdef Py_ssize_t total = self._dtotal + 1 + vlen if self._has_data else vlen
        self._dtotal = total
        if total > self._max:
            if not self._observe:
                self._fail(f"SSE event exceeds max_event_size ({self._max} bytes)")
            self._doverflow = True
            self._d_inplace = False
        elif not self._doverflow:
            if not self._has_data:
                if inplace:
                    self._dptr = buf + vs
                    self._dlen = e - vs
                    self._d_inplace = True
                else:
                    self._dbuf.n = 0
                    buf_add(&self._dbuf, buf + vs, e - vs)
            else:
                if self._d_inplace:
                    self._d_inplace = False
                    self._dbuf.n = 0
                    buf_add(&self._dbuf, self._dptr, self._dlen)
                buf_add(&self._dbuf, LFBYTE, 1)
                buf_add(&self._dbuf, buf + vs, e - vs)
        self._has_data = True
        return 0

    @cython.final
    cdef int _dispatch(self, Py_ssize_t nxt) except -1:
        """A blank line (or the end of the stream) ends the event in progress."""
        cdef const unsigned char* dp = NULL
        cdef Py_ssize_t dn = 0
        cdef bint elidable = False
        if self._has_data:
            if self._d_inplace:
                dp = self._dptr
                dn = self._dlen
            else:
                dp = self._dbuf.p
                dn = self._dbuf.n
        if self._observe:
            if self._has_data:
                self._events += 1
                if not self._doverflow:
                    elidable = self._analyze(dp, dn, -2)
            if self._elide and self._blk:
                if elidable:
                    self._elided += 1
                    if self._blk_here >= 0:
                        spans_add(&self._cuts, self._blk_here, nxt)
                    buf_clear(&self._hold)
                    self._elide_lf = self._cr
                elif self._hold.n:
                    buf_add(&self._prefix, self._hold.p, self._hold.n)
                    buf_clear(&self._hold)
            self._etype_error = False
            self._typed = False
            self._blk = False
            self._blk_here = -1
            self._blk_disq = False
        else:
            if self._has_data:
                self._out.append(
                    (self._etype, PyBytes_FromStringAndSize(<const char*>dp, dn), self._id)
                )
            self._etype = None
        self._has_data = False
        self._d_inplace = False
        self._doverflow = False
        self._dtotal = 0
        if self._dbuf.n:
            buf_clear(&self._dbuf)
        return 0

    @cython.final
    cdef int _eof(self, Py_ssize_t end) except -1:
        """End of the event stream: a pending partial line and event count as complete."""
        if 0 < self._bom < 3:
            self._carry(BOM, self._bom)
        self._bom = -1
        self._cr = False
        if self._line_open:
            self._line_open = False
            self._line(self._lbuf.p, 0, self._lbuf.n, self._ltrue, end, False)
            self._ltrue = 0
            buf_clear(&self._lbuf)
        return self._dispatch(end)

    @cython.final
    cdef int _run_eof(self) except -1:
        try:
            self._eof(-1)
        except SSEError as exc:
            self._failed = str(exc)
            raise
        return 0

    @cython.final
    cdef bint _finish(self) except -1:
        """close(): True when the end of the event stream is still to be processed."""
        if self._failed is not None:
            raise SSEError(self._failed)
        if self._closed:
            return False
        self._closed = True
        if self._chunked:
            return not self._complete  # a finished chunked body already ended the event stream
        self._complete = True
        return True

    # ---- observe mode: what the stream tells the gateway ----------------------------------------

    @cython.final
    cdef int _analyze(self, const unsigned char* d, Py_ssize_t n, Py_ssize_t first) except -1:
        """Note [DONE], an error, the usage object; 1 when the event is to be elided. ``first``:
        where ``'"usage'`` first occurs in ``d`` (-1: nowhere), found by the caller's pass over
        the bytes, or -2 to search here.

        One walk over the object (the twin's spec walks it up to four times): it stops at each
        usage key in turn, steps over each usage object found (balanced: depth and string state
        are the same after it), and, when the event may be elided, at each ``"choices":[]`` on
        the way; where the whole object closes comes from the same walk."""
        cdef Py_ssize_t i, j, k, p, o, q, c, first_o = -1, first_q = -1, last_o = -1, last_q = -1
        cdef bint meta, top_usage = False, empty_choices = False
        cdef bint elidable = self._elide and not self._blk_disq
        cdef Nesting nest
        if n == 6 and memcmp(d, b"[DONE]", 6) == 0:
            self._done = True
            return 0
        if self._etype_error and self._error is None:
            self._error = PyBytes_FromStringAndSize(<const char*>d, n)
        i = skip_ws(d, 0, n)
        if i >= n or d[i] != C_LBRACE:
            return 0
        j = skip_ws(d, i + 1, n)
        if self._error is None and n - j >= 7 and memcmp(d + j, b'"error"', 7) == 0:
            k = skip_ws(d, j + 7, n)
            if k < n and d[k] == C_COLON:
                self._error = PyBytes_FromStringAndSize(<const char*>d, n)
        p = gw_find(d, i, n, b'"usage', 6) if first == -2 else first
        if p < 0:
            return 0
        nest_start(&nest, i)
        c = -2  # the next "choices" key to look at; -1: none or no longer needed, -2: not yet
        while p >= 0:
            o = usage_value_at(d, p, n, &meta)
            if o < 0:
                p = gw_find(d, p + 6, n, b'"usage', 6)  # p+1..p+5 hold 'usage'
                continue
            if c == -2:  # (not for events whose usage is null: most of a stream's)
                c = find_choices(d, i, n) if elidable else -1
            while 0 <= c < p:
                c = choices_step(&nest, d, n, c, &empty_choices)
            nest_advance(&nest, d, p)
            if nest.in_str or nest.depth > 2:
                p = gw_find(d, p + 6, n, b'"usage', 6)  # p+1..p+5 hold 'usage'
                continue
            q = object_end(d, o, n)
            if q < 0:
                break
            last_o = o
            last_q = q
            if first_o < 0:
                first_o = o
                first_q = q
            if not meta and nest.depth == 1:
                top_usage = True
            # Step over the usage object: a "choices" key inside it is at depth 2 or more. The
            # depth there is 1 or more unless the object already closed before it (nest.closed).
            nest.pos = q
            if 0 <= c < q:
                c = find_choices(d, q, n)
            p = gw_find(d, q, n, b'"usage', 6)
        if last_o < 0:
            return 0
        self._usage = PyBytes_FromStringAndSize(<const char*>d + last_o, last_q - last_o)
        if self._first_usage is None:
            self._first_usage = PyBytes_FromStringAndSize(
                <const char*>d + first_o, first_q - first_o
            )
        if not (elidable and top_usage):
            return 0
        # Elide only an event whose data is exactly one object with an empty top-level choices.
        while c >= 0:
            c = choices_step(&nest, d, n, c, &empty_choices)
        if not empty_choices:
            return 0
        nest_advance(&nest, d, n)
        return nest.closed > 0 and skip_ws(d, nest.closed, n) == n


@cython.final
cdef class EventParser(_Scanner):
    """Parse mode, for the translation path: raw bytes in, completed events out.

    ``feed(data)`` returns the events completed by this piece as ``(event, data, id)`` tuples of
    ``bytes | None, bytes, bytes | None``: ``event`` is None for the default type ("message"),
    ``id`` is the last event ID (None while empty). ``close()`` flushes at end of stream; with
    ``chunked=True`` the last chunk already ends the event stream and ``complete`` turns True after
    the body's final CRLF. Raises ``SSEError`` on malformed chunked framing, on an event whose data
    exceeds ``max_event_size`` or a line longer than that plus ``FIELD_SLACK``; errors are sticky.
    """

    def __init__(self, *, chunked=False, max_event_size=8 * 1024 * 1024):
        self._setup(bool(chunked), max_event_size, False, False)

    def feed(self, bytes data not None):
        cdef list out = []
        self._begin()
        self._out = out
        self._run(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self._out = None
        return out

    def close(self):
        cdef list out = []
        if not self._finish():
            return out
        self._out = out
        self._run_eof()
        self._out = None
        return out


@cython.final
cdef class StreamObserver(_Scanner):
    """Observe mode, for the zero-copy relay: watches the upstream body bytes on their way out.

    ``feed(data)`` returns what to write to the client: ``data`` itself (same object) unless an
    elided event is in or straddles this piece; ``close()`` returns bytes still owed at EOF. No
    per-event state is kept beyond counters and the usage bytes; only a line or an elidable event
    straddling two pieces is buffered.

    Usage, every dialect at once: ``usage`` / ``first_usage`` are the last / first object value
    of a ``"usage"`` or ``"usageMetadata"`` key at nesting depth <= 2 outside JSON strings (OpenAI
    chat, Anthropic message_start.message / message_delta, Responses response.usage, Gemini);
    ``"usage":null`` changes nothing. ``error`` is the data of the first ``event: error`` event or
    event whose JSON object's first key is ``"error"``. An event whose data exceeds
    ``max_event_size`` is counted and passed on but not inspected.

    Elision (``elide_injected_usage``): an event without an ``event:`` field whose data is exactly
    one JSON object with a top-level ``"choices":[]`` and a top-level ``"usage"`` object is removed
    with its blank line; chunked output is re-framed around it, and an unfinished event is held
    back until it is known (never more than ``HOLD_LIMIT`` bytes: a bigger one is released as is).
    """

    def __init__(
        self, chunked=True, elide_injected_usage=False, max_event_size=8 * 1024 * 1024
    ):
        self._setup(bool(chunked), max_event_size, True, bool(elide_injected_usage))

    @property
    def usage(self):
        return self._usage

    @property
    def first_usage(self):
        return self._first_usage

    @property
    def done(self):
        return self._done

    @property
    def error(self):
        return self._error

    @property
    def events(self):
        return self._events

    @property
    def elided(self):
        return self._elided

    @property
    def at_boundary(self):
        """The bytes returned so far end between two events (and two chunks): the relay may
        append an event of its own, e.g. a terminal error, without corrupting the stream."""
        if self._chunked:
            if self._elide:  # a re-framed piece always ends between two chunks
                if self._cst >= S_TRAILER:
                    return False
            elif self._cst != S_SIZE or self._cdigits:
                return False
        if 0 < self._bom < 3:
            return False
        if self._elide and self._blk and not self._blk_disq:
            return True  # the event in progress is held back: the client has none of it
        return not (self._line_open or self._has_data or self._typed)

    def feed(self, bytes data not None):
        return self._feed(data)

    cdef object _feed(self, bytes data):
        cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef bint changed
        if self._failed is not None or self._closed:
            self._begin()
        if not self._elide:
            self._run(d, n)
            return data
        # Held bytes, or input framing not at a chunk boundary, at either end: re-frame the piece.
        changed = self._hold.n != 0 or not self._boundary()
        self._run(d, n)
        return self._assemble(data, d, n, changed or not self._boundary())

    def close(self):
        cdef bytes out
        if not self._finish():
            return b""
        self._run_eof()
        if not self._elide:
            return b""
        buf_add(&self._prefix, self._hold.p, self._hold.n)
        buf_clear(&self._hold)
        out = self._framed(NULL, 0, -1)
        buf_clear(&self._prefix)
        return out

    cdef bytes _framed(self, const unsigned char* d, Py_ssize_t n, Py_ssize_t term_at):
        """The prefix + scratch payload as one chunk (or raw), then the raw terminal if any."""
        cdef Py_ssize_t plen = self._prefix.n + self._obuf.n
        cdef Py_ssize_t hlen = 0, tlen = 0, total, x
        cdef char hexbuf[24]
        cdef bytes out
        cdef unsigned char* w
        if self._chunked:
            if plen:
                x = plen
                while x:
                    hexbuf[hlen] = HEXDIGITS[x & 15]
                    x >>= 4
                    hlen += 1
            if term_at >= 0:
                tlen = n - term_at
        total = plen + (hlen + 4 if plen and self._chunked else 0)
        if term_at >= 0:
            total += 3 + tlen
        out = PyBytes_FromStringAndSize(NULL, total)
        w = <unsigned char*>PyBytes_AS_STRING(out)
        if plen:
            if self._chunked:
                for x in range(hlen):
                    w[0] = hexbuf[hlen - 1 - x]
                    w += 1
                w[0] = C_CR
                w[1] = C_LF
                w += 2
            memcpy(w, self._prefix.p, <size_t>self._prefix.n)
            w += self._prefix.n
            memcpy(w, self._obuf.p, <size_t>self._obuf.n)
            w += self._obuf.n
            if self._chunked:
                w[0] = C_CR
                w[1] = C_LF
                w += 2
        if term_at >= 0:
            w[0] = 0x30
            w[1] = C_CR
            w[2] = C_LF
            memcpy(w + 3, d + term_at, <size_t>tlen)
        return out

    cdef object _assemble(self, bytes data, const unsigned char* d, Py_ssize_t n, bint changed):
        """Elide mode: the bytes owed to the client for this piece, re-framed only if changed."""
        cdef Py_ssize_t hold_from = -1, tail = 0, idx, c, s, e, a, cs, ce, h
        cdef object out
        if self._blk:
            if self._blk_disq:
                if self._hold.n:
                    buf_add(&self._prefix, self._hold.p, self._hold.n)
                    buf_clear(&self._hold)
            elif self._blk_here >= 0:
                for idx in range(self._segs.n):
                    s = self._segs.v[2 * idx]
                    e = self._segs.v[2 * idx + 1]
                    if e > self._blk_here:
                        tail += e - (s if s > self._blk_here else self._blk_here)
                if self._hold.n + tail > HOLD_MAX:
                    buf_add(&self._prefix, self._hold.p, self._hold.n)
                    buf_clear(&self._hold)
                    self._blk_disq = True
                else:
                    hold_from = self._blk_here
        if not (changed or self._hold.n or self._cuts.n or self._prefix.n or hold_from >= 0):
            out = data
        else:
            self._obuf.n = 0
            for idx in range(self._segs.n):
                s = self._segs.v[2 * idx]
                e = self._segs.v[2 * idx + 1]
                a = s
                for c in range(self._cuts.n):
                    cs = self._cuts.v[2 * c]
                    ce = self._cuts.v[2 * c + 1]
                    if ce <= a or cs >= e:
                        continue
                    if cs > a:
                        buf_add(&self._obuf, d + a, cs - a)
                    if ce > a:
                        a = ce
                if a < e:
                    if 0 <= hold_from < e:
                        h = hold_from if hold_from > a else a
                        buf_add(&self._obuf, d + a, h - a)
                        buf_add(&self._hold, d + h, e - h)
                    else:
                        buf_add(&self._obuf, d + a, e - a)
            out = self._framed(d, n, self._term_at)
            buf_clear(&self._obuf)
        buf_clear(&self._prefix)
        self._segs.n = 0
        self._cuts.n = 0
        self._seg_end = -1
        self._term_at = -1
        if self._blk:
            self._blk_here = -1
        return out


# ---- the relay pump -------------------------------------------------------------------------------

cdef extern from *:
    """
    #if defined(_WIN32)
    static Py_ssize_t gw_send(int fd, const char *p, Py_ssize_t n) {
        (void)fd; (void)p; (void)n;
        return -1;
    }
    static Py_ssize_t gw_send2(int fd, const char *a, Py_ssize_t an, const char *b,
                               Py_ssize_t bn) {
        (void)fd; (void)a; (void)an; (void)b; (void)bn;
        return -1;
    }
    #else
    #include <string.h>
    #include <sys/uio.h>
    #include <errno.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    /* One non-blocking send of p[0:n] to the socket fd: the bytes sent, or -1. */
    static Py_ssize_t gw_send(int fd, const char *p, Py_ssize_t n) {
        ssize_t r;
        do {
            r = send(fd, p, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        return (Py_ssize_t)r;
    }
    /* The same for a[0:an] then b[0:bn], in one sendmsg (one segment when they fit). */
    static Py_ssize_t gw_send2(int fd, const char *a, Py_ssize_t an, const char *b,
                               Py_ssize_t bn) {
        struct iovec iov[2];
        struct msghdr msg;
        ssize_t r;
        iov[0].iov_base = (void *)a;
        iov[0].iov_len = (size_t)an;
        iov[1].iov_base = (void *)b;
        iov[1].iov_len = (size_t)bn;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = 2;
        do {
            r = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        return (Py_ssize_t)r;
    }
    #endif
    """
    Py_ssize_t gw_send(int fd, const char *p, Py_ssize_t n) noexcept nogil
    Py_ssize_t gw_send2(int fd, const char *a, Py_ssize_t an, const char *b,
                        Py_ssize_t bn) noexcept nogil


cdef class RelayPump:
    """Where the upstream connection sends each piece while a relayed body flows: through the
    observer and straight to the client's ``write``, with no Python frame per piece.

    ``owner`` hears once: ``pump_complete()`` when the chunked body ended, ``pump_failed(exc)`` on
    broken framing. Connection events stay with the upstream connection. ``pieces`` counts what
    was received (the connection's idle timer reads it). ``first``, when given, is the client's
    channel, whose head held back (``take_held()``: the head's bytes; None when none is held; b""
    for nothing to write at all, the client being gone) goes out once, in front of the first
    bytes to write: in one system call and one segment with them, as every piece goes.

    ``fd`` (with ``transport``, the client transport that owns it): the client's socket, which
    the pump then writes to itself, one non-blocking ``send`` a piece, whenever nothing waits in
    the transport's buffer (``get_write_buffer_size()``, checked before the first such send, and
    again after any piece the socket did not take whole, whose rest goes to ``write``) and the
    transport is not closing (``is_closing()``, checked before every send: a closed transport's
    fd may already be another connection's). The bytes and their order are what ``write`` alone
    would send; what it saves is the event loop's deferred write (a second callback, and a second
    take of the GIL, in each turn of the loop). -1: ``write`` only.
    """

    def __init__(
        self, StreamObserver observer not None, write, owner, first=None, int fd=-1, transport=None
    ):
        self._observer = observer
        self._write = write
        self._owner = owner
        self._first = first
        self.pieces = 0
        self._over = False
        self._direct = False
        if fd >= 0 and transport is not None:
            self._fd = fd
            self._client = transport
            # bound once per response: by name, each call would be a type lookup (uvloop's)
            self._pending = transport.get_write_buffer_size
            self._closing = transport.is_closing
        else:
            self._fd = -1
        self._lane.fd = -1
        self._lane.cfd = -1

    def __dealloc__(self):
        if self._lane.active:  # (never: the upstream connection stops the lane first)
            _lane_forget(&self._lane)

    cdef bint _socket_free(self) except -1:
        """Whether the next bytes may go to the client's socket itself: its transport is not
        closing (its fd closed, or about to be, for good: the transport's to handle) and, unless
        the last bytes went that way, holds nothing back (what waits goes first: the transport
        keeps the order)."""
        if self._closing():
            return False
        if not self._direct:
            if self._pending():
                return False
            self._direct = True
        return True

    cdef int _send(self, bytes out) except -1:
        """``write(out)``, through the socket itself when nothing is waiting in the transport."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(out), sent
        if not self._socket_free():
            self._write(out)
            return 0
        sent = gw_send(self._fd, PyBytes_AS_STRING(out), n)
        if sent == n:
            return 0
        self._direct = False  # the socket is full (or failing): the transport takes over
        if sent <= 0:
            self._write(out)  # an error is the transport's to find, report and close on
        else:
            self._write(PyBytes_FromStringAndSize(PyBytes_AS_STRING(out) + sent, n - sent))
        return 0

    cdef int _send_first(self, bytes head, bytes out) except -1:
        """The held ``head`` and ``out`` as one write: one ``sendmsg`` of both to the socket
        itself (no joined copy) when it is free, else (and for what it does not take) the rest,
        joined, to ``write``."""
        cdef Py_ssize_t hn = PyBytes_GET_SIZE(head), n = PyBytes_GET_SIZE(out), sent
        if self._fd < 0 or not self._socket_free():
            self._write(head + out)
            return 0
        sent = gw_send2(self._fd, PyBytes_AS_STRING(head), hn, PyBytes_AS_STRING(out), n)
        if sent == hn + n:
            return 0
        self._direct = False
        if sent <= 0:
            self._write(head + out)
        elif sent < hn:
            self._write(PyBytes_FromStringAndSize(PyBytes_AS_STRING(head) + sent, hn - sent) + out)
        else:
            sent -= hn
            self._write(PyBytes_FromStringAndSize(PyBytes_AS_STRING(out) + sent, n - sent))
        return 0

    cpdef data_received(self, bytes data):
        cdef object out, first, head
        cdef StreamObserver observer = <StreamObserver>self._observer
        if data is None:
            raise TypeError("data must be bytes, not None")
        if self._over:
            return
        self.pieces += 1
        try:
            out = observer._feed(data)
        except SSEError as exc:
            self._over = True
            self._owner.pump_failed(exc)
            return
        if PyBytes_GET_SIZE(out):
            if self._first is not None:
                first = self._first
                self._first = None
                head = first.take_held()
                if head is not None:
                    if PyBytes_GET_SIZE(head):
                        self._send_first(head, out)
                    out = b""  # (b"" from ``take_held``: nothing to write)
            if PyBytes_GET_SIZE(out):
                if self._fd >= 0:
                    self._send(out)
                else:
                    self._write(out)
        if observer._complete:
            self._over = True
            self._owner.pump_complete()

    # ---- the lane: the upstream's reads straight to the client, in C, without the GIL

    cpdef bint lane_start(self, transport):
        """Read the upstream ``transport`` (uvloop's, plain TCP or Unix) from here on: each read
        that is whole chunks of whole plain events (no usage, no ``[DONE]``, no error: nothing for
        the observer to note but their number) goes to the client's socket from the event loop's
        own read callback, without the GIL and without a Python call; any other read (and any
        read while the client's socket is not written to directly) goes to ``data_received`` as
        before. False (nothing changed) when the lane cannot run here: the pure-Python build,
        another event loop or transport, no client socket, ``GWCORE_LANE=off``."""
        cdef StreamObserver observer = <StreamObserver>self._observer
        cdef LaneState* ls = &self._lane
        cdef void* up
        cdef void* client
        if ls.active or self._over or self._fd < 0 or self._client is None or not _lane_on():
            return False
        if PyThread_get_thread_ident() != _lane_thread:  # another event loop's thread
            return False
        if not (_uvloop_stream(transport) and _uvloop_stream(self._client)):
            return False
        up = _handle_for(transport, -1)
        client = _handle_for(self._client, self._fd)
        if up == NULL or client == NULL or up == client:
            return False
        ls.fd = _fileno(up)
        if ls.fd < 0 or not _lane_register(ls):
            return False
        ls.up = up
        ls.cfd = self._fd
        ls.pump = <PyObject*>self
        ls.client = <PyObject*>self._client
        ls.transport = <PyObject*>transport
        ls.events = &observer._events
        ls.pieces = &self.pieces
        ls.max = observer._max
        ls.fast = 0
        Py_INCREF(self._client)
        Py_INCREF(transport)
        ls.active = True
        ls.swapped = False
        if _swap == 1 and gw_stream_read_cb(up) != NULL:
            # uvloop reads it: the lane's callbacks take the place of its own until the end (no
            # stop and restart of the reading, which would cost epoll_ctl calls both times).
            ls.old_alloc = gw_stream_alloc_cb(up)
            ls.old_read = gw_stream_read_cb(up)
            gw_stream_set_cbs(up, <void*>_lane_alloc, <void*>_lane_read)
            ls.swapped = True
        else:
            transport.pause_reading()  # uvloop stops reading (and holds its state: paused)
            _check_swap(up, True)
            if _lane_read_start(up) != 0:  # (never: uvloop has just stopped reading it)
                self.lane_stop(True)
                return False
            _check_swap(up, False)
        ls.reading = True
        ls.ready = self._lane_ready()
        return True

    cpdef lane_stop(self, bint resume=True):
        """Hand the upstream's reads back to its transport (``resume``: and resume them there).
        Idempotent; safe on a closing or closed transport."""
        cdef LaneState* ls = &self._lane
        cdef object transport
        cdef bint swapped
        if not ls.active:
            return
        transport = <object>ls.transport
        swapped = ls.swapped
        _lane_forget(ls)  # (swapped: uvloop's callbacks are back, as if they had never left)
        if resume and not swapped and not transport.is_closing():
            transport.resume_reading()
        Py_DECREF(transport)  # the lane's own references, taken in lane_start
        Py_DECREF(<object>ls.client)
        ls.transport = ls.client = NULL

    cpdef bint lane_pause(self):
        """The client reads too slowly: stop reading the upstream. False when the lane is off."""
        cdef LaneState* ls = &self._lane
        if not ls.active:
            return False
        if ls.reading and _lane_alive(ls):
            _lane_read_stop(ls.up)
        ls.reading = False
        return True

    cpdef bint lane_resume(self):
        cdef LaneState* ls = &self._lane
        if not ls.active:
            return False
        if not ls.reading and _lane_alive(ls) and _lane_read_start(ls.up) == 0:
            ls.reading = True
            ls.ready = self._lane_ready()
        return True

    @property
    def lane_reads(self):
        """Reads the lane sent on by itself (none of them passed through ``data_received``)."""
        return self._lane.fast

    @property
    def laned(self):
        return bool(self._lane.active)

    cdef bint _lane_ready(self):
        """Whether the next read may go straight through: the client's socket is written to
        directly (nothing waits in its transport, the held head is out), and the observer
        stands between two chunks and two events with nothing held, carried or open."""
        cdef StreamObserver o = <StreamObserver>self._observer
        return (
            self._direct
            and self._first is None
            and not self._over
            and o._chunked
            and o._observe
            and o._failed is None
            and not (o._closed or o._complete or o._line_open or o._cr or o._has_data)
            and not (o._typed or o._blk or o._blk_disq or o._etype_error or o._d_inplace)
            and o._cst == S_SIZE
            and o._cdigits == 0
            and o._bom < 0
            and o._hold.n == 0
            and o._prefix.n == 0
            and o._segs.n == 0
            and o._cuts.n == 0
            and o._seg_end < 0
            and o._term_at < 0
        )

    cdef void _lane_slow(self, const char* d, Py_ssize_t n) noexcept:
        """A read the lane does not take: the usual way (GIL held)."""
        try:
            self.data_received(PyBytes_FromStringAndSize(d, n))
            if self._lane.active:
                self._lane.ready = self._lane_ready()
        except BaseException as exc:  # what uvloop does when data_received raises: close
            _lane_log.error("relay lane: data_received failed", exc_info=exc)
            transport = <object>self._lane.transport if self._lane.active else None
            self.lane_stop(False)
            if transport is not None:
                transport.abort()

    cdef void _lane_rest(self, const char* d, Py_ssize_t n, Py_ssize_t sent) noexcept:
        """The client's socket took ``sent`` of the ``n`` bytes (-1: none, an error): the rest
        goes to the transport, which keeps the order from now on (GIL held)."""
        try:
            self._direct = False
            self._lane.ready = False
            if sent <= 0:
                self._write(PyBytes_FromStringAndSize(d, n))
            else:
                self._write(PyBytes_FromStringAndSize(d + sent, n - sent))
        except BaseException as exc:
            _lane_log.error("relay lane: write failed", exc_info=exc)

    cdef void _lane_end(self) noexcept:
        """The upstream's EOF or a read error: hand it back to the transport, which reads it
        again and reports it to the connection as it always does (GIL held)."""
        try:
            self.lane_stop(True)
        except BaseException as exc:
            _lane_log.error("relay lane: stop failed", exc_info=exc)


# ---- the lane's C side ---------------------------------------------------------------------------
# libuv's functions come from uvloop's own module (libuv is linked into it; uvloop exports the
# loop for "integration with other C-extensions"): looked up once, by address, through ctypes.
# A transport's libuv handle is the first field of uvloop's UVHandle object (after the object
# header and the type's method table); every handle taken from there is checked against three
# facts before use (a libuv stream of this fd, whose data pointer is that very transport), and
# re-read before each use (uvloop clears it when it frees the handle).

import logging as _logging
import os

_lane_log = _logging.getLogger("gwcore.relay")

cdef extern from *:
    """
    #if defined(_WIN32)
    #define GW_LANE_OS 0
    #else
    #define GW_LANE_OS 1
    #endif
    typedef struct { char *base; size_t len; } gw_uv_buf;  /* uv_buf_t on Unix */
    typedef void (*gw_alloc_cb)(void *, size_t, gw_uv_buf *);
    typedef void (*gw_read_cb)(void *, Py_ssize_t, const gw_uv_buf *);
    static int (*gw_uv_read_start)(void *, gw_alloc_cb, gw_read_cb);
    static int (*gw_uv_read_stop)(void *);
    static int (*gw_uv_is_closing)(const void *);
    static int (*gw_uv_fileno)(const void *, int *);
    /* uv_handle_t starts with: void *data; uv_loop_t *loop; uv_handle_type type (libuv 1.x's
       public layout; uvloop does not export libuv's accessors for them). */
    static int gw_uv_handle_get_type(const void *h) {
        return (int)*(const int *)((const char *)h + 2 * sizeof(void *));
    }
    static void *gw_uv_handle_get_data(const void *h) { return *(void *const *)h; }
    #define GW_LANE_BUF 65536
    static char gw_lane_buf[GW_LANE_BUF];
    static void gw_lane_bind(size_t a, size_t b, size_t c, size_t d) {
        gw_uv_read_start = (int (*)(void *, gw_alloc_cb, gw_read_cb))a;
        gw_uv_read_stop = (int (*)(void *))b;
        gw_uv_is_closing = (int (*)(const void *))c;
        gw_uv_fileno = (int (*)(const void *, int *))d;
    }
    /* uv_stream_t's public alloc_cb and read_cb, after uv_handle_t (12 pointer-sized fields on
       Unix) and write_queue_size; checked on the first lane before any is written. */
    #define GW_ALLOC_OFF (12 * sizeof(void *) + sizeof(size_t))
    static void *gw_stream_alloc_cb(const void *s) {
        return *(void *const *)((const char *)s + GW_ALLOC_OFF);
    }
    static void *gw_stream_read_cb(const void *s) {
        return *(void *const *)((const char *)s + GW_ALLOC_OFF + sizeof(void *));
    }
    static void gw_stream_set_cbs(void *s, void *alloc_cb, void *read_cb) {
        *(void **)((char *)s + GW_ALLOC_OFF) = alloc_cb;
        *(void **)((char *)s + GW_ALLOC_OFF + sizeof(void *)) = read_cb;
    }
    /* The uv_handle_t* field of a uvloop UVHandle: after PyObject_HEAD and the vtable pointer. */
    static void *gw_uvhandle_of(PyObject *o) {
        return *(void **)((char *)o + sizeof(PyObject) + sizeof(void *));
    }
    """
    ctypedef struct gw_uv_buf:
        char* base
        size_t len
    ctypedef void (*gw_alloc_cb)(void*, size_t, gw_uv_buf*) noexcept nogil
    ctypedef void (*gw_read_cb)(void*, Py_ssize_t, const gw_uv_buf*) noexcept nogil
    int GW_LANE_OS
    int GW_LANE_BUF
    char gw_lane_buf[65536]
    int gw_uv_read_start(void*, gw_alloc_cb, gw_read_cb) noexcept nogil
    int gw_uv_read_stop(void*) noexcept nogil
    int gw_uv_is_closing(const void*) noexcept nogil
    int gw_uv_fileno(const void*, int*) noexcept nogil
    int gw_uv_handle_get_type(const void*) noexcept nogil
    void* gw_uv_handle_get_data(const void*) noexcept nogil
    void gw_lane_bind(size_t, size_t, size_t, size_t) noexcept
    void* gw_uvhandle_of(PyObject*) noexcept nogil
    void* gw_stream_alloc_cb(const void*) noexcept nogil
    void* gw_stream_read_cb(const void*) noexcept nogil
    void gw_stream_set_cbs(void*, void*, void*) noexcept nogil

cdef int _UV_NAMED_PIPE = 7, _UV_TCP = 12  # libuv 1.x's handle types (its ABI)
cdef int _lane_state = 0  # 0: not tried yet, 1: bound, -1: off
# The one thread whose event loop runs lanes (the first to ask): the read buffer and the table
# below are its own, used from libuv's callbacks without the GIL. (A worker runs one loop.)
cdef unsigned long _lane_thread = 0
cdef LaneState** _lanes = NULL  # by the upstream socket's fd: the lane reading it
cdef int _nlanes = 0


cdef bint _lane_on():
    global _lane_state, _lane_thread
    if _lane_state == 0:
        _lane_state = -1
        if not GW_LANE_OS or os.environ.get("GWCORE_LANE", "").strip().lower() in (
            "0", "off", "no", "false"
        ):
            return False
        try:
            _bind_libuv()
        except Exception as exc:  # an uvloop without them, or no uvloop at all
            _lane_log.debug("relay lane off: %s", exc)
            return False
        _lane_state = 1
        _lane_thread = PyThread_get_thread_ident()
    return _lane_state == 1


def _bind_libuv():
    import ctypes

    import uvloop.loop

    lib = ctypes.CDLL(uvloop.loop.__file__)
    lib.uv_version.restype = ctypes.c_uint
    version = lib.uv_version()
    if version >> 16 != 1 or (version >> 8) & 0xFF < 18:  # the layout and types read here
        raise RuntimeError(f"libuv {version >> 16}.{(version >> 8) & 0xFF}: not 1.18 or later")
    names = ("uv_read_start", "uv_read_stop", "uv_is_closing", "uv_fileno")
    a = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
    if not all(a):
        raise RuntimeError("libuv functions not found")
    gw_lane_bind(a[0], a[1], a[2], a[3])
    global _TCP_T, _UNIX_T
    _TCP_T = uvloop.loop.TCPTransport
    _UNIX_T = uvloop.loop.UnixTransport


def _lane_swap(value=None):
    """Tests: how a lane takes over a stream's reads (1: in place of uvloop's callbacks, -1:
    through uvloop's pause and resume, 0: to be checked at the next lane); sets it if given."""
    global _swap
    if value is not None:
        _swap = value
    return _swap


def lane_available():
    """Whether this process can run relay lanes (compiled, uvloop, not switched off)."""
    return _lane_on()


def head_end(bytes buf not None, Py_ssize_t start=0):
    """Where the first ``\\r\\n\\r\\n`` at or after ``start`` in ``buf`` is (the end of an HTTP
    head), or -1: ``buf.find(b"\\r\\n\\r\\n", start)``, 32 bytes a step. (A provider's head is a
    kilobyte or more of lines, every CRLF of which is a partial match for CPython's search.)"""
    if start < 0:
        start = 0
    return gw_find(<const unsigned char*>PyBytes_AS_STRING(buf), start, PyBytes_GET_SIZE(buf),
                   b"\r\n\r\n", 4)


def bytes_tail(bytes data not None, Py_ssize_t start):
    """``data[start:]`` (``start`` >= 0) made in one step: Cython's slice of a ``bytes`` goes
    through a slice object and ``bytes.__getitem__``."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if start < 0:
        raise ValueError("start must not be negative")
    if start >= n:
        return b""
    if start == 0:
        return data
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + start, n - start)


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)


def printable_ascii(str text not None):
    """``text.isascii() and text.isprintable()`` in one pass: every character from space to
    ``~`` (a header value that needs no further check)."""
    cdef const Py_UCS1* p
    cdef Py_ssize_t i
    if not PyUnicode_IS_ASCII(text):
        return False
    p = PyUnicode_1BYTE_DATA(text)
    for i in range(PyUnicode_GET_LENGTH(text)):
        if p[i] < 32 or p[i] > 126:
            return False
    return True


def with_member(bytes raw not None, bytes member not None):
    """``raw``, a JSON object with at least one member (a checked one), with ``member`` added
    last, in one allocation: every byte the client sent is kept, the whitespace after the object
    too. (For a ``raw`` that is not such an object, the twin's answer, byte for byte.)"""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), m = PyBytes_GET_SIZE(member), end = n, cut
    cdef const char* p = PyBytes_AS_STRING(raw)
    cdef bytes out
    cdef char* w
    while end > 0 and (p[end - 1] == 32 or p[end - 1] == 9 or p[end - 1] == 13 or p[end - 1] == 10):
        end -= 1
    cut = end - 1 if end > 0 else 0  # the object's closing brace
    out = PyBytes_FromStringAndSize(NULL, cut + m + 2 + (n - end))
    w = PyBytes_AS_STRING(out)
    memcpy(w, p, cut)
    w[cut] = 44  # ","
    memcpy(w + cut + 1, PyBytes_AS_STRING(member), m)
    w[cut + 1 + m] = 125  # "}"
    memcpy(w + cut + 2 + m, p + end, n - end)
    return out


def request_bytes(list lines not None, bytes body not None, bint framed):
    """An upstream request in one allocation: ``"".join(lines)``, then ``Content-Length`` (when
    ``body`` or ``framed``) and ``Connection: keep-alive`` and the blank line, as latin-1 bytes,
    then ``body``. The lines are checked header text (latin-1): a string that is not raises as
    ``str.encode("latin-1")`` does."""
    cdef Py_ssize_t k, n = 0, count = PyList_GET_SIZE(lines), size = PyBytes_GET_SIZE(body)
    cdef object part
    cdef char digits[24]
    cdef Py_ssize_t nd = 0
    cdef long long v = size
    cdef bytes out
    cdef char* w
    for k in range(count):
        part = <object>PyList_GET_ITEM(lines, k)
        if type(part) is not str or PyUnicode_KIND(part) != PyUnicode_1BYTE_KIND:
            return _request_bytes_twin(lines, body, framed)  # (its error, or its answer)
        n += PyUnicode_GET_LENGTH(part)
    if size or framed:
        while True:
            digits[nd] = <char>(48 + v % 10)
            nd += 1
            v //= 10
            if v == 0:
                break
        n += 16 + nd + 2  # "Content-Length: " digits CRLF
    n += 24 + 2  # "Connection: keep-alive" CRLF, the blank line
    out = PyBytes_FromStringAndSize(NULL, n + size)
    w = PyBytes_AS_STRING(out)
    for k in range(count):
        part = <object>PyList_GET_ITEM(lines, k)
        memcpy(w, PyUnicode_1BYTE_DATA(part), PyUnicode_GET_LENGTH(part))
        w += PyUnicode_GET_LENGTH(part)
    if size or framed:
        memcpy(w, b"Content-Length: ", 16)
        w += 16
        while nd:
            nd -= 1
            w[0] = digits[nd]
            w += 1
        memcpy(w, b"\r\n", 2)
        w += 2
    memcpy(w, b"Connection: keep-alive\r\n\r\n", 26)
    w += 26
    if size:
        memcpy(w, PyBytes_AS_STRING(body), size)
    return out


def send_direct(int fd, bytes data not None):
    """One non-blocking ``send`` of ``data`` to the socket ``fd``, never raising SIGPIPE: the
    number of bytes the socket took, or -1 for none (full, or an error, which the transport then
    meets when it writes the rest). For a writer that owns the socket's transport and has checked
    that nothing waits in it: the rest goes to ``transport.write``, in order."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n == 0:
        return 0
    return gw_send(fd, PyBytes_AS_STRING(data), n)


cdef object _TCP_T = None, _UNIX_T = None  # uvloop's plain stream transports (once bound)


cdef bint _uvloop_stream(transport):
    cdef object kind = type(transport)
    return kind is _TCP_T or kind is _UNIX_T


cdef void* _handle_for(transport, int fd):
    """``transport``'s libuv stream, checked: a TCP or pipe handle whose data pointer is the
    transport (and whose fd is ``fd``, unless -1); NULL otherwise."""
    cdef void* h = gw_uvhandle_of(<PyObject*>transport)
    cdef int kind
    if h == NULL or gw_uv_is_closing(h):
        return NULL
    kind = gw_uv_handle_get_type(h)
    if kind != _UV_TCP and kind != _UV_NAMED_PIPE:
        return NULL
    if gw_uv_handle_get_data(h) != <void*>transport:
        return NULL
    if fd >= 0 and _fileno(h) != fd:
        return NULL
    return h


cdef int _fileno(const void* h) noexcept nogil:
    cdef int fd = -1
    if gw_uv_fileno(h, &fd) != 0:
        return -1
    return fd


cdef bint _lane_register(LaneState* ls):
    global _lanes, _nlanes
    cdef int n
    cdef LaneState** grown
    if ls.fd >= _nlanes:
        n = _nlanes * 2 if _nlanes else 256
        while n <= ls.fd:
            n *= 2
        grown = <LaneState**>PyMem_Realloc(_lanes, n * sizeof(LaneState*))
        if grown == NULL:
            return False
        memset(grown + _nlanes, 0, (n - _nlanes) * sizeof(LaneState*))
        _lanes = grown
        _nlanes = n
    if _lanes[ls.fd] != NULL:  # (never: one lane per connection, stopped before it closes)
        return False
    _lanes[ls.fd] = ls
    return True


cdef bint _lane_alive(LaneState* ls) noexcept nogil:
    """The upstream transport still holds the very handle the lane reads, and it is open."""
    cdef void* h = gw_uvhandle_of(ls.transport)
    return h != NULL and h == ls.up and not gw_uv_is_closing(h)


cdef void _lane_forget(LaneState* ls) noexcept nogil:
    """Unhook the lane's callbacks (if the handle is still open) and its table entry: uvloop's
    own callbacks back in place when the lane took theirs (``swapped``), reading as uvloop
    believes it does; else stopped (the caller resumes uvloop's reading)."""
    if _lane_alive(ls):
        if not ls.swapped:
            if ls.reading:
                _lane_read_stop(ls.up)
        elif gw_stream_read_cb(ls.up) == <void*>_lane_read:
            gw_stream_set_cbs(ls.up, ls.old_alloc, ls.old_read)
        elif gw_stream_read_cb(ls.up) == NULL:  # paused by the lane: uvloop reads again
            gw_uv_read_start(ls.up, <gw_alloc_cb>ls.old_alloc, <gw_read_cb>ls.old_read)
    ls.swapped = False
    ls.reading = False
    ls.ready = False
    ls.active = False
    if 0 <= ls.fd < _nlanes and _lanes[ls.fd] == ls:
        _lanes[ls.fd] = NULL


cdef int _swap = 0  # the callback fields checked: 0 not yet, 1 where expected, -1 elsewhere


cdef void _check_swap(void* up, bint stopped) noexcept:
    """On the first lane: uvloop's stopped stream has NULL callbacks where libuv's public
    ``uv_stream_t`` layout puts them, and, once the lane starts reading, the lane's own."""
    global _swap
    if _swap != 0:
        return
    if stopped:
        if gw_stream_read_cb(up) != NULL or gw_stream_alloc_cb(up) != NULL:
            _swap = -1
    elif gw_stream_read_cb(up) == <void*>_lane_read and gw_stream_alloc_cb(up) == <void*>_lane_alloc:
        _swap = 1
    else:
        _swap = -1


cdef int _lane_read_start(void* up) noexcept nogil:
    return gw_uv_read_start(up, _lane_alloc, _lane_read)


cdef void _lane_read_stop(void* up) noexcept nogil:
    gw_uv_read_stop(up)


cdef void _lane_alloc(void* handle, size_t suggested, gw_uv_buf* buf) noexcept nogil:
    buf.base = gw_lane_buf  # one buffer: each read is consumed before the loop reads again
    buf.len = GW_LANE_BUF


cdef void _lane_read(void* stream, Py_ssize_t nread, const gw_uv_buf* buf) noexcept nogil:
    cdef int fd = _fileno(stream)
    cdef gw_read_cb old
    cdef LaneState* ls
    cdef Py_ssize_t k, sent
    cdef void* client
    if fd < 0 or fd >= _nlanes or _lanes[fd] == NULL or _lanes[fd].up != stream:
        _lane_read_stop(stream)  # (never: the callbacks and the entry come and go together)
        return
    ls = _lanes[fd]
    if nread == 0:
        return
    if nread < 0:  # EOF or an error: for the transport to report
        if ls.swapped:  # libuv has consumed it: uvloop's own callback hears it from here
            old = <gw_read_cb>ls.old_read
            _lane_call(ls, _END, NULL, 0, 0)  # (its callbacks back in place)
            old(stream, nread, buf)
            return
        _lane_call(ls, _END, NULL, 0, 0)  # uvloop reads again: EOF and errors stay
        return
    if ls.ready:
        k = _lane_scan(<const unsigned char*>buf.base, nread, ls.max)
        if k > 0:
            client = gw_uvhandle_of(ls.client)
            if client != NULL and not gw_uv_is_closing(client):
                ls.pieces[0] += 1
                ls.events[0] += k
                ls.fast += 1
                sent = gw_send(ls.cfd, buf.base, nread)
                if sent != nread:
                    _lane_call(ls, _REST, buf.base, nread, sent)
                return
    _lane_call(ls, _SLOW, buf.base, nread, 0)  # not the lane's: the usual way


cdef enum:
    _SLOW = 0
    _REST = 1
    _END = 2


cdef void _lane_call(
    LaneState* ls, int what, const char* d, Py_ssize_t n, Py_ssize_t sent
) noexcept with gil:
    """The pump's side of a read, with the GIL. The pump is held across the call (a reference of
    this frame): the stream may end inside it, and whoever held the pump let it go, which frees
    it (and ``ls`` in it) when this returns. Nothing reads ``ls`` after this call."""
    cdef RelayPump pump = <RelayPump>ls.pump
    if what == _SLOW:
        pump._lane_slow(d, n)
    elif what == _REST:
        pump._lane_rest(d, n, sent)
    else:
        pump._lane_end()


cdef Py_ssize_t _lane_scan(
    const unsigned char* d, Py_ssize_t n, Py_ssize_t max_event
) noexcept nogil:
    """The number of events in ``d[:n]`` when it is whole chunks of whole plain events, else -1.
    Plain: what the observer notes nothing of but its number: ``data:``, one line, LF LF; no
    ``"usage"`` or ``"usageMetadata"`` key whose value is an object, as ``_analyze`` reads them
    (``"usage":null`` is plain); not ``[DONE]``; not an object whose first key is ``"error"``."""
    cdef Py_ssize_t pos = 0, k = 0, j, size, s, e
    cdef signed char v
    # A read that does not end like a plain event's chunk (LF LF CR LF) is not taken: the common
    # refusal (a read that ends inside a chunk) costs four compares, not a scan.
    if n < 4 or d[n - 1] != C_LF or d[n - 2] != C_CR or d[n - 3] != C_LF or d[n - 4] != C_LF:
        return -1
    while pos < n:
        j = pos
        size = 0
        while j < n and j - pos < 15:
            v = HEXV[d[j]]
            if v < 0:
                break
            size = size * 16 + v
            j += 1
        if size == 0 or size > max_event or j + 1 >= n or d[j] != C_CR or d[j + 1] != C_LF:
            return -1
        s = j + 2
        e = s + size
        if e + 2 > n or d[e] != C_CR or d[e + 1] != C_LF:
            return -1
        while s < e:
            s = _lane_event(d, s, e)
            if s < 0:
                return -1
            k += 1
        pos = e + 2
    return k if k else -1


cdef inline Py_ssize_t _lane_event(const unsigned char* d, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """Where the plain event at ``d[s:]`` ends (after its blank line, within ``e``), or -1."""
    cdef Py_ssize_t vs, eol, i, p
    cdef bint meta
    if e - s < 7 or memcmp(d + s, b"data:", 5) != 0:
        return -1
    vs = s + 5
    if d[vs] == C_SP:
        vs += 1
    p = gw_find_line(d, vs, e, b'"usage', 6, &eol)
    if eol + 1 >= e or d[eol] != C_LF or d[eol + 1] != C_LF:
        return -1
    while p >= 0:  # only a key whose value is an object counts, as _analyze reads them
        if usage_value_at(d, p, eol, &meta) >= 0:
            return -1
        p = gw_find(d, p + 6, eol, b'"usage', 6)
    if eol - vs == 6 and memcmp(d + vs, b"[DONE]", 6) == 0:
        return -1
    i = skip_ws(d, vs, eol)
    if i < eol and d[i] == C_LBRACE:
        i = skip_ws(d, i + 1, eol)
        if eol - i >= 7 and memcmp(d + i, b'"error"', 7) == 0:
            return -1
    return eol + 2


def lane_scan(bytes data not None, Py_ssize_t max_event_size=8 * 1024 * 1024):
    """``_lane_scan`` on ``data``: the events a lane would send on unseen (-1: it would not)."""
    return _lane_scan(
        <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), max_event_size
    )


# ----------------------------------------------------------- plain HTTP/1.x heads, in one pass
# The twin's (gwcore._sse_py) documents what each accepts; these walk the same bytes through C
# pointers. Every loop stops at a byte the head's closing CRLF CRLF provides (checked first).

from gwcore._sse_py import _TARGET, _TCHAR

cdef bytes _TCHAR_C = _TCHAR
cdef bytes _TARGET_C = _TARGET
cdef bytes _GET = b"GET", _PUT = b"PUT", _POST = b"POST", _HEAD = b"HEAD", _PATCH = b"PATCH"
cdef bytes _DELETE = b"DELETE", _OPTIONS = b"OPTIONS"


cdef inline bytes _quick_method(const unsigned char* p, Py_ssize_t n):
    """The method ``p[:n]`` as one of the constants when it is one of ``_QUICK_METHODS``, else
    None: no bytes object made and hashed per request."""
    if n == 4:
        if memcmp(p, b"POST", 4) == 0:
            return _POST
        if memcmp(p, b"HEAD", 4) == 0:
            return _HEAD
    elif n == 3:
        if memcmp(p, b"GET", 3) == 0:
            return _GET
        if memcmp(p, b"PUT", 3) == 0:
            return _PUT
    elif n == 6 and memcmp(p, b"DELETE", 6) == 0:
        return _DELETE
    elif n == 5 and memcmp(p, b"PATCH", 5) == 0:
        return _PATCH
    elif n == 7 and memcmp(p, b"OPTIONS", 7) == 0:
        return _OPTIONS
    return None


cdef extern from *:
    """
    /* The first byte at or after h[i] that no header value holds: a control but HTAB, or DEL
       (the CR of the line's CRLF is one). 16 bytes a step while h[i:i+16] is inside h[:lim];
       the caller's bytes hold such a byte before lim (the head's closing CRLF CRLF). */
    static Py_ssize_t gw_value_stop(const unsigned char *h, Py_ssize_t i, Py_ssize_t lim) {
        unsigned char c;
    #ifdef GW_SSE2
        const __m128i ctl = _mm_set1_epi8(31), tab = _mm_set1_epi8(9), del = _mm_set1_epi8(127);
        while (lim - i >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
            __m128i low = _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v);  /* v <= 31 */
            __m128i stop = _mm_or_si128(_mm_andnot_si128(_mm_cmpeq_epi8(v, tab), low),
                                        _mm_cmpeq_epi8(v, del));
            unsigned m = (unsigned)_mm_movemask_epi8(stop);
            if (m) return i + (Py_ssize_t)gw_ctz(m);
            i += 16;
        }
    #endif
        c = h[i];
        while (!((c < 32 && c != 9) || c == 127)) c = h[++i];
        return i;
    }
    /* The first byte at or after h[i] that is not a letter, a digit or '-' (what most header
       names are made of): 16 bytes a step while h[i:i+16] is inside h[:lim], then byte by byte
       up to lim. The caller reads the rest of a token (the other token characters) itself. */
    static Py_ssize_t gw_name_stop(const unsigned char *h, Py_ssize_t i, Py_ssize_t lim) {
        unsigned char c;
    #ifdef GW_SSE2
        const __m128i a = _mm_set1_epi8('a'), z = _mm_set1_epi8('z'), sp = _mm_set1_epi8(0x20);
        const __m128i d0 = _mm_set1_epi8('0'), d9 = _mm_set1_epi8('9'), dash = _mm_set1_epi8('-');
        while (lim - i >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
            __m128i l = _mm_or_si128(v, sp);  /* a letter's lowercase; nothing else lands in a-z */
            __m128i letter = _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(l, a), l),
                                           _mm_cmpeq_epi8(_mm_min_epu8(l, z), l));
            __m128i digit = _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, d0), v),
                                          _mm_cmpeq_epi8(_mm_min_epu8(v, d9), v));
            __m128i ok = _mm_or_si128(_mm_or_si128(letter, digit), _mm_cmpeq_epi8(v, dash));
            unsigned m = (unsigned)_mm_movemask_epi8(ok) ^ 0xFFFFu;
            if (m) return i + (Py_ssize_t)gw_ctz(m);
            i += 16;
        }
    #endif
        for (; i < lim; i++) {
            c = h[i] | 0x20;
            if (!((c >= 'a' && c <= 'z') || (h[i] >= '0' && h[i] <= '9') || h[i] == '-'))
                break;
        }
        return i;
    }
    """
    Py_ssize_t gw_value_stop(const unsigned char* h, Py_ssize_t i, Py_ssize_t lim) noexcept nogil
    Py_ssize_t gw_name_stop(const unsigned char* h, Py_ssize_t i, Py_ssize_t lim) noexcept nogil


cdef inline Py_ssize_t _line_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t lim) noexcept nogil:
    """Where the CRLF ending the header line whose value starts at ``i`` is, or -1 for a byte no
    value holds before it (``lim``: how far ``p`` may be read, past that CRLF)."""
    i = gw_value_stop(p, i, lim)
    return i if p[i] == 13 and p[i + 1] == 10 else -1


cdef inline Py_ssize_t _field_end(
    const unsigned char* p, const unsigned char* tchar, Py_ssize_t i, Py_ssize_t last,
    Py_ssize_t* name_end, Py_ssize_t* value_start
) noexcept nogil:
    """The header line at ``p[i]`` (before the head's blank line at ``last``): where its name
    ends (``name_end``: a token, the colon right after it), where its value starts (past the
    blanks), and the return value, where the CRLF ending it is; -1 for a line a plain head does
    not hold (an empty name, no colon right after the name, a control byte in the value). Most
    of a name is read 16 bytes a step, the token table reads the rest."""
    i = gw_name_stop(p, i, last)
    while tchar[p[i]]:
        i += 1
    name_end[0] = i
    if p[i] != 58:  # not a colon right after the name
        return -1
    i += 1
    while p[i] == 32 or p[i] == 9:
        i += 1
    value_start[0] = i
    return _line_end(p, i, last + 2)


cdef inline bint _lower_is(
    const Py_UCS1* low, Py_ssize_t n, const char* lit, Py_ssize_t m
) noexcept nogil:
    return n == m and memcmp(low, lit, m) == 0


cdef inline bint _token_is(
    const unsigned char* p, Py_ssize_t n, const char* lit, Py_ssize_t m
) noexcept nogil:
    """``p[:n].lower() == lit`` (``lit`` lowercase ASCII): ASCII lowercasing, as bytes.lower."""
    cdef Py_ssize_t k
    cdef unsigned char c
    if n != m:
        return False
    for k in range(n):
        c = p[k]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lit[k]:
            return False
    return True


cdef inline bint _same_token(const unsigned char* p, Py_ssize_t n, const char* lit) noexcept nogil:
    """``_token_is(p, n, lit, n)`` (``lit`` lowercase ASCII, n > 0), answered by the last byte or
    one ``memcmp`` most of the time: a provider's names are lowercase, and the names asked for
    that have a header's length differ from it near their end (``x-ratelimit-...-requests``)."""
    cdef unsigned char c = p[n - 1]
    if 65 <= c <= 90:
        c += 32
    if c != <unsigned char>lit[n - 1]:
        return False
    return memcmp(p, lit, n) == 0 or _token_is(p, n, lit, n)


cdef inline str _lower_name(const unsigned char* p, Py_ssize_t n):
    """The lowercase text of the token ``p[:n]`` (n > 0): its bytes are ASCII, so the string is
    made compact ASCII and written in place."""
    cdef str out = PyUnicode_New(n, 127)
    cdef Py_UCS1* d = PyUnicode_1BYTE_DATA(out)
    cdef Py_ssize_t k
    cdef unsigned char c
    for k in range(n):
        c = p[k]
        d[k] = c + 32 if 65 <= c <= 90 else c
    return out


# The lowercase text of the header names seen last, keyed by their bytes as received: clients
# send the same few names on every request, and a name from here is a string already made, its
# hash already computed (the dict insert needs it). Four ways in each of 128 sets, picked by a
# Fibonacci hash of the name's bytes: the 16 names of an SDK's requests, or a provider's two dozen
# response names, fit without evicting each other. (Two ways in 64 sets did not: three of the
# SDK's names fell in one set, and three of its values in another, and each request made them
# anew.) A name longer than a slot is made each time.
cdef enum:
    _NAME_SET_BITS = 7
    _NAME_WAYS = 4
    _NAME_MAX = 32

cdef extern from *:
    dict _dict_presized "__Pyx_PyDict_NewPresized" (Py_ssize_t n)  # PyDict_New() for n <= 8
    Py_ssize_t PyDict_GET_SIZE(object d)

cdef struct _NameSlot:
    Py_ssize_t n
    PyObject* text  # a reference owned by the slot
    unsigned char raw[_NAME_MAX]

cdef _NameSlot _name_slots[_NAME_WAYS << _NAME_SET_BITS]


# The same for the names of response heads, as bytes in the upstream's own case: the header
# names of one provider's responses repeat, and a name from here has its hash made (the relay
# looks each one up in its bounded dict of names).
cdef _NameSlot _raw_slots[_NAME_WAYS << _NAME_SET_BITS]


# And the short header values of requests, as text: an SDK sends the same values request after
# request (its name and version, the platform, the content type), and a value from here is the
# same string each time, its hash made once: the gateway's cache of forwarded header lines then
# hashes and compares the same objects (equal by identity) instead of new ones.
cdef _NameSlot _value_slots[_NAME_WAYS << _NAME_SET_BITS]

cdef enum:
    _AS_BYTES = 0  # the bytes as received
    _AS_LOWER = 1  # the lowercase text of a token
    _AS_TEXT = 2  # the text, latin-1


cdef inline unsigned long long _mix(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """A hash of ``p[:n]`` for the four-way sets (which compare the bytes whole): from 8 bytes on,
    three 8-byte words (the first, the middle, the last) and the length, not a loop per byte;
    names like ``x-ratelimit-reset-tokens`` and ``x-ratelimit-limit-tokens`` differ only in the
    middle."""
    cdef unsigned long long a, b, c
    cdef Py_ssize_t k
    if n < 8:
        a = <unsigned long long>n
        for k in range(n):
            a = a * 31 + p[k]
        return a
    memcpy(&a, p, 8)
    memcpy(&b, p + ((n - 8) >> 1), 8)
    memcpy(&c, p + n - 8, 8)
    a = (a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL)
    return a ^ (c * 0x165667B19E3779F9ULL) ^ <unsigned long long>n


cdef inline object _slot_make(const unsigned char* p, Py_ssize_t n, int kind):
    if kind == _AS_LOWER:
        return _lower_name(p, n)
    if kind == _AS_TEXT:
        return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)
    return PyBytes_FromStringAndSize(<const char*>p, n)


cdef inline object _slot_name(
    _NameSlot* sets, const unsigned char* p, Py_ssize_t n, unsigned long long h, int kind
):
    """``p[:n]`` from the four-way sets ``sets`` when they hold these bytes (``h`` their hash),
    else made (``_slot_make``: bytes, lowercase text or text) and put in."""
    cdef _NameSlot* first
    cdef Py_ssize_t k
    cdef object made
    if n > _NAME_MAX:
        return _slot_make(p, n, kind)
    first = &sets[_NAME_WAYS * <Py_ssize_t>((h * 0x9E3779B97F4A7C15ULL) >> (64 - _NAME_SET_BITS))]
    for k in range(_NAME_WAYS):
        if first[k].n == n and memcmp(first[k].raw, p, n) == 0:
            return <object>first[k].text
    made = _slot_make(p, n, kind)
    hash(made)
    # The oldest way goes; the others move down one; the newest takes the first way.
    Py_XDECREF(first[_NAME_WAYS - 1].text)
    memmove(first + 1, first, (_NAME_WAYS - 1) * sizeof(_NameSlot))
    Py_INCREF(made)
    first.text = <PyObject*>made
    first.n = n
    memcpy(first.raw, p, n)
    return made


cdef inline bytes _raw_name(const unsigned char* p, Py_ssize_t n, unsigned long long h):
    """``p[:n]`` as bytes, from the response names' cache."""
    return <bytes>_slot_name(_raw_slots, p, n, h, _AS_BYTES)


cdef inline str _name_text(const unsigned char* p, Py_ssize_t n, unsigned long long h):
    """``_lower_name(p, n)``, from the request names' cache."""
    return <str>_slot_name(_name_slots, p, n, h, _AS_LOWER)


cdef inline str _value_text(const unsigned char* p, Py_ssize_t n):
    """``p[:n]`` as latin-1 text, from the request values' cache when it is short enough."""
    if n > _NAME_MAX or n == 0:  # (an empty slot has n == 0: never looked up with it)
        return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)
    return <str>_slot_name(_value_slots, p, n, _mix(p, n), _AS_TEXT)


cdef class RequestHeadMemo:
    """What ``quick_request_head`` keeps of one connection's last plain head, for the next: a
    client on a kept-alive connection sends the same header lines request after request but for
    the body's length (an SDK: its name, version, platform, credentials...). A head whose header
    lines are the last one's, byte for byte but for the digits of its ``Content-Length``, is
    answered with a copy of that head's dict (the new length in it) instead of being read line by
    line. One per connection; its first head is only counted (a connection that carries one
    request pays nothing for it), and after three heads in a row that differ from the last one
    (a client whose headers change per request: a trace id) it keeps nothing more."""

    cdef bytes _block  # the header lines of the head kept (after the request line, before the blank line)
    cdef dict _headers  # their dict (kept private: each request gets a copy)
    cdef str _cl_name  # the Content-Length name as the dict holds it; None: none
    cdef Py_ssize_t _cl_value, _cl_end  # where its digits start and end in _block
    cdef Py_ssize_t _count, _nbytes
    cdef bint _keep_alive
    cdef int _heads, _misses

    def __cinit__(self):
        self._cl_value = self._cl_end = -1

    cdef dict _recall(
        self, const unsigned char* q, Py_ssize_t n, long long* length, Py_ssize_t* nbytes
    ):
        """A copy of the kept dict when the header lines ``q[:n]`` are the kept ones but for the
        Content-Length digits (1 to 15, as the parser takes them), with ``length`` and
        ``nbytes`` set; None otherwise."""
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(self._block)
        cdef Py_ssize_t m = PyBytes_GET_SIZE(self._block)
        cdef Py_ssize_t a = self._cl_value, k, tail
        cdef long long v = 0
        cdef dict headers
        if a < 0:
            if n != m or memcmp(q, b, n) != 0:
                return None
            length[0] = -1
            nbytes[0] = self._nbytes
            return PyDict_Copy(self._headers)
        if n < a or memcmp(q, b, a) != 0:
            return None
        k = a
        while k < n and k - a < 16 and 48 <= q[k] <= 57:
            v = v * 10 + (q[k] - 48)
            k += 1
        tail = m - self._cl_end
        if k == a or k - a > 15 or n - k != tail or memcmp(q + k, b + self._cl_end, tail) != 0:
            return None
        headers = PyDict_Copy(self._headers)
        PyDict_SetItem(headers, self._cl_name, _value_text(q + a, k - a))
        length[0] = v
        nbytes[0] = self._nbytes - (self._cl_end - a) + (k - a)
        return headers


def quick_request_head(bytes data not None, RequestHeadMemo memo=None):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef const unsigned char* tchar = <const unsigned char*>PyBytes_AS_STRING(_TCHAR_C)
    cdef const unsigned char* target = <const unsigned char*>PyBytes_AS_STRING(_TARGET_C)
    cdef Py_ssize_t end = gw_find(p, 0, PyBytes_GET_SIZE(data), b"\r\n\r\n", 4)
    cdef Py_ssize_t i = 0, start, size, vend, vsize, last, k, first
    cdef Py_ssize_t count = 0, nbytes = 0, distinct, cl_value = -1, cl_end = -1
    cdef long long length = -1
    cdef bint keep_alive = True, seen = False
    cdef const Py_UCS1* low
    cdef PyObject* old
    cdef str name, value, cl_name = None
    cdef dict headers
    if end < 0:
        return None
    end += 4
    while tchar[p[i]]:
        i += 1
    method = _quick_method(p, i)  # (one of _QUICK_METHODS, or None)
    if p[i] != 32 or p[i + 1] != 47 or method is None:  # " /"
        return None
    i += 1
    start = i
    while target[p[i]]:
        i += 1
    if end - i < 13 or memcmp(p + i, b" HTTP/1.1\r\n", 11) != 0:
        return None
    url = PyBytes_FromStringAndSize(<const char*>p + start, i - start)
    # The header lines, as _header_fields reads them, each checked and put in the dict as it
    # is read (a line _header_fields refuses refuses the head: the order makes no difference).
    i += 11
    first = i
    last = end - 2
    if memo is not None and memo._block is not None:
        headers = memo._recall(p + i, last - i, &length, &nbytes)
        if headers is not None:
            memo._misses = 0
            return (
                method,
                url,
                headers,
                length if length > 0 else 0,
                end,
                memo._keep_alive,
                memo._count,
                nbytes,
            )
        memo._misses += 1
        if memo._misses >= 3:  # headers that change per request: keep nothing more
            memo._block = None
            memo._headers = None
            memo._heads = -1
    # Sized for a header every 32 bytes (up to 64 headers): no resize on the way for the dozen
    # or so an SDK sends; a plain PyDict_New() for the few of a small head.
    headers = _dict_presized(min((last - i) >> 5, 64))
    while i < last:
        start = i
        vend = _field_end(p, tchar, i, last, &k, &i)
        size = k - start
        if vend < 0 or size == 0:
            return None
        vsize = vend - i
        name = _name_text(p + start, size, _mix(p + start, size))
        if 6 <= size <= 17:  # as long as one of the names that need a look
            low = PyUnicode_1BYTE_DATA(name)
            if _lower_is(low, size, b"content-length", 14):
                if length >= 0 or vsize == 0 or vsize > 15:
                    return None
                length = 0
                for k in range(i, vend):
                    if not 48 <= p[k] <= 57:
                        return None
                    length = length * 10 + (p[k] - 48)
                cl_name = name
                cl_value = i - first
                cl_end = vend - first
            elif _lower_is(low, size, b"connection", 10):
                if seen:
                    return None
                seen = True
                if _token_is(p + i, vsize, b"keep-alive", 10):
                    keep_alive = True
                elif _token_is(p + i, vsize, b"close", 5):
                    keep_alive = False
                else:
                    return None
            elif (
                _lower_is(low, size, b"transfer-encoding", 17)
                or _lower_is(low, size, b"upgrade", 7)
                or _lower_is(low, size, b"expect", 6)
            ):
                return None
        value = _value_text(p + i, vsize)
        # A repeated name gets its values joined, as on_header does. The dict's size tells a
        # new name from one seen (the object returned cannot: "" and one-character values are
        # strings CPython shares, which the repeated name may hold already).
        distinct = PyDict_GET_SIZE(headers)
        old = PyDict_SetDefault(headers, name, value)
        if PyDict_GET_SIZE(headers) == distinct:
            PyDict_SetItem(headers, name, (<str>old) + ", " + value)
        count += 1
        nbytes += size + vsize
        i = vend + 2
    if memo is not None and memo._heads >= 0:
        memo._heads += 1
        if memo._heads >= 2:  # (a connection's first head is only counted)
            memo._block = PyBytes_FromStringAndSize(<const char*>p + first, last - first)
            memo._headers = PyDict_Copy(headers)
            memo._cl_name = cl_name
            memo._cl_value = cl_value
            memo._cl_end = cl_end
            memo._count = count
            memo._nbytes = nbytes
            memo._keep_alive = keep_alive
    return method, url, headers, length if length > 0 else 0, end, keep_alive, count, nbytes


cdef class ResponseHead:
    """A plain response head (``response_head``), read in place: the status, the version, the
    framing (read while parsing) and the header fields as offsets into the received bytes. It is
    the sequence of ``(name, value)`` bytes pairs ``quick_response_head`` gives (iteration,
    ``len``, indexing, ``==`` with a list), each pair made only when asked for: a provider's head
    has two dozen fields, and what the relay reads of them (the framing, the lines that pass to
    the client) is read here from the bytes, without a tuple and two bytes objects per field."""

    cdef readonly int status
    cdef readonly str version
    cdef readonly bint chunked  # Transfer-Encoding: chunked
    cdef readonly object content_length  # the Content-Length (int), or None
    cdef readonly bytes connection  # b"," + each Connection value lowercased; b"" for none
    cdef bytes _buf
    cdef Py_ssize_t _n, _cap
    cdef unsigned int* _at  # 4 per field: name start, name length, value start, value length
    cdef list _pairs

    def __cinit__(self):
        self._at = NULL
        self._n = self._cap = 0

    def __dealloc__(self):
        PyMem_Free(self._at)

    def __init__(self):
        raise TypeError("ResponseHead objects come from response_head()")

    cdef int _add(self, Py_ssize_t name, Py_ssize_t nlen, Py_ssize_t value, Py_ssize_t vlen) except -1:
        cdef unsigned int* grown
        cdef Py_ssize_t cap
        if self._n == self._cap:
            cap = self._cap * 2 if self._cap else 32
            grown = <unsigned int*>PyMem_Realloc(self._at, cap * 4 * sizeof(unsigned int))
            if grown == NULL:
                raise MemoryError()
            self._at = grown
            self._cap = cap
        grown = self._at + 4 * self._n
        grown[0] = <unsigned int>name
        grown[1] = <unsigned int>nlen
        grown[2] = <unsigned int>value
        grown[3] = <unsigned int>vlen
        self._n += 1
        return 0

    cdef tuple _pair(self, Py_ssize_t k):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef const unsigned int* at = self._at + 4 * k
        return (
            _raw_name(p + at[0], at[1], _mix(p + at[0], at[1])),
            PyBytes_FromStringAndSize(<const char*>p + at[2], at[3]),
        )

    def pairs(self) -> list:
        """The fields as a list of ``(name, value)`` pairs (made once, then the same list)."""
        cdef Py_ssize_t k
        if self._pairs is None:
            self._pairs = [self._pair(k) for k in range(self._n)]
        return self._pairs

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        cdef Py_ssize_t k
        if isinstance(index, slice):
            return self.pairs()[index]
        k = index
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            raise IndexError("ResponseHead index out of range")
        if self._pairs is not None:
            return self._pairs[k]
        return self._pair(k)

    def __iter__(self):
        return iter(self.pairs())

    def __eq__(self, other):
        if isinstance(other, ResponseHead):
            other = (<ResponseHead>other).pairs()
        if type(other) is not list:
            return NotImplemented
        return self.pairs() == other

    __hash__ = None

    def __repr__(self):
        return f"ResponseHead({self.status}, {self.version!r}, {self.pairs()!r})"

    def value_of(self, bytes name not None):
        """The value of the first field called ``name`` (lowercase ASCII; the field's name in any
        case), or None."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef const unsigned int* at
        cdef Py_ssize_t k
        cdef Py_ssize_t m = PyBytes_GET_SIZE(name)
        cdef const char* lit = PyBytes_AS_STRING(name)
        for k in range(self._n):
            at = self._at + 4 * k
            if at[1] == m and _same_token(p + at[0], m, lit):  # (a field name is never empty)
                return PyBytes_FromStringAndSize(<const char*>p + at[2], at[3])
        return None

    def passed_lines(self, tuple names not None) -> str:
        """``name: value\\r\\n`` (the name in the upstream's case, the value as latin-1 text) for
        each field whose name is one of ``names`` (lowercase ASCII bytes), in order; "" for
        none. A value here holds no CR, LF or other control byte but tabs (the parse refused
        them), so the lines are safe to write as they are."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self._buf)
        cdef const unsigned int* at
        cdef Py_ssize_t k, j, total = 0, count = PyTuple_GET_SIZE(names)
        cdef unsigned char* out
        cdef object name
        cdef str text
        cdef unsigned char passes[256]
        cdef const char* lits[32]
        cdef Py_ssize_t sizes[32]
        cdef unsigned long long lengths = 0  # bit n % 64: a name of n bytes is asked for
        cdef unsigned char high = 0
        for j in range(count):
            name = <object>PyTuple_GET_ITEM(names, j)
            if type(name) is not bytes:
                raise TypeError("passed_lines() takes a tuple of bytes")
            if j < 32:
                lits[j] = PyBytes_AS_STRING(name)
                sizes[j] = PyBytes_GET_SIZE(name)
                lengths |= 1ULL << (sizes[j] & 63)
        if self._n > 256 or count > 32:
            return "".join([
                f"{n.decode('latin-1')}: {v.decode('latin-1')}\r\n"
                for n, v in self.pairs() if n.lower() in names
            ])
        for k in range(self._n):
            at = self._at + 4 * k
            passes[k] = 0
            if not (lengths >> (at[1] & 63)) & 1:
                continue
            for j in range(count):
                if at[1] == sizes[j] and _same_token(p + at[0], at[1], lits[j]):
                    passes[k] = 1
                    total += at[1] + at[3] + 4
                    for j in range(at[3]):  # (a str of latin-1 bytes is ASCII when it can be)
                        high |= p[at[2] + j]
                    break
        if total == 0:
            return ""
        text = PyUnicode_New(total, 255 if high & 0x80 else 127)
        out = PyUnicode_1BYTE_DATA(text)
        for k in range(self._n):
            if passes[k]:
                at = self._at + 4 * k
                memcpy(out, p + at[0], at[1])
                out += at[1]
                out[0] = 58
                out[1] = 32
                out += 2
                memcpy(out, p + at[2], at[3])
                out += at[3]
                out[0] = 13
                out[1] = 10
                out += 2
        return text


def response_head(bytes buf not None, Py_ssize_t end):
    """The plain response head ``buf[:end]`` (``end`` just past its blank line) as a
    ``ResponseHead``, else None and httptools decides.

    Plain: ``HTTP/1.1`` or ``HTTP/1.0``, a three-digit status, a reason phrase and header values
    of printable or obs-text bytes and tabs, token names, a colon right after the name; at most
    one ``Content-Length`` (1 to 15 digits) or one ``Transfer-Encoding: chunked``, not both.
    What llhttp gives for such a head is exactly this: each value without its leading blanks,
    with its trailing ones (``tests/test_upstream_props.py`` holds the two to the same answer).
    It costs one pass over the bytes, where httptools costs a parser and a Python call per
    header."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef const unsigned char* tchar = <const unsigned char*>PyBytes_AS_STRING(_TCHAR_C)
    cdef Py_ssize_t i, start, stop, last, nlen, vlen, k
    cdef unsigned char minor
    cdef bint framing = False
    cdef long long length = 0
    cdef ResponseHead head
    cdef bytearray conn = None
    if end < 16 or end > PyBytes_GET_SIZE(buf) or end > 0xFFFFFFFF:
        return None
    if memcmp(p + end - 4, b"\r\n\r\n", 4) != 0 or memcmp(p, b"HTTP/1.", 7) != 0:
        return None
    minor = p[7]
    if (minor != 48 and minor != 49) or p[8] != 32:
        return None
    for i in range(9, 12):
        if not 48 <= p[i] <= 57:
            return None
    if p[12] == 32:  # a reason phrase
        i = _line_end(p, 13, end)
    elif p[12] == 13 and p[13] == 10:
        i = 12
    else:
        return None
    if i < 0:
        return None
    head = ResponseHead.__new__(ResponseHead)
    head._buf = buf
    head.content_length = None
    head.connection = b""
    i += 2
    last = end - 2
    while i < last:
        start = i
        stop = _field_end(p, tchar, i, last, &k, &i)
        nlen = k - start
        if stop < 0 or nlen == 0:
            return None
        vlen = stop - i
        head._add(start, nlen, i, vlen)
        if nlen == 14 and _token_is(p + start, 14, b"content-length", 14):
            if framing or vlen == 0 or vlen > 15:
                return None
            for k in range(i, stop):
                if not 48 <= p[k] <= 57:
                    return None
                length = length * 10 + (p[k] - 48)
            head.content_length = length
            framing = True
        elif nlen == 17 and _token_is(p + start, 17, b"transfer-encoding", 17):
            if framing or not _token_is(p + i, vlen, b"chunked", 7):
                return None
            head.chunked = True
            framing = True
        elif nlen == 10 and _token_is(p + start, 10, b"connection", 10):
            if conn is None:
                conn = bytearray()
            conn += b","
            conn += PyBytes_FromStringAndSize(<const char*>p + i, vlen).lower()
        i = stop + 2
    if conn is not None:
        head.connection = bytes(conn)
    head.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    head.version = "1.1" if minor == 49 else "1.0"
    return head


def quick_response_head(bytes buf not None, Py_ssize_t end):
    """``(status, version, headers)`` of ``response_head(buf, end)`` (``headers`` a list of
    ``(name, value)`` bytes pairs), or None."""
    head = response_head(buf, end)
    if head is None:
        return None
    return head.status, head.version, head.pairs()


# ------------------------------------------------------------ the counts of a plain usage object
# The twin's (gwcore._sse_py) usage_counts documents what is plain; this walks the same bytes
# through C pointers and builds no Python object but the result. Every loop stops at a byte no
# plain token holds, at the latest at the NUL that ends every bytes object: none reads past it.

from gwcore._sse_py import _PLAIN_STRING

cdef unsigned char _U_PLAIN[256]  # the twin's table of string bytes, in C memory
for _c in range(256):
    _U_PLAIN[_c] = _PLAIN_STRING[_c]
del _c

cdef enum:
    U_INT = 0
    U_FLOAT = 1  # plain only where its value is not read
    U_OTHER = 2  # null, true, false, a string
    U_MAX_DIGITS = 18  # any 18-digit count fits a long long, and so does the sum of two


cdef inline Py_ssize_t _u_ws(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    cdef unsigned char c = p[i]
    while c == 32 or c == 10 or c == 13 or c == 9:
        i += 1
        c = p[i]
    return i


cdef inline Py_ssize_t _u_string_end(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    """Where the closing quote of the plain string whose first byte is at ``i`` is, or -1."""
    while _U_PLAIN[p[i]]:
        i += 1
    return i if p[i] == 34 else -1


cdef inline int _u_slot(const unsigned char* k, Py_ssize_t n) noexcept nogil:
    """The result slot of a top-level key: 0-2 the counts, 3-4 the details objects; -1 others."""
    if n == 13:
        return 0 if memcmp(k, b"prompt_tokens", 13) == 0 else -1
    if n == 17:
        return 1 if memcmp(k, b"completion_tokens", 17) == 0 else -1
    if n == 12:
        return 2 if memcmp(k, b"total_tokens", 12) == 0 else -1
    if n == 21:
        return 3 if memcmp(k, b"prompt_tokens_details", 21) == 0 else -1
    if n == 25:
        return 4 if memcmp(k, b"completion_tokens_details", 25) == 0 else -1
    return -1


cdef Py_ssize_t _u_scalar(const unsigned char* p, Py_ssize_t i, int* kind,
                          long long* value) noexcept nogil:
    """The end of the plain scalar at ``i`` (its kind, and its value for an integer), or -1."""
    cdef unsigned char c = p[i]
    cdef Py_ssize_t start = i
    cdef long long v
    if 48 <= c <= 57:
        v = c - 48
        i += 1
        if c != 48:
            c = p[i]
            while 48 <= c <= 57:
                if i - start == U_MAX_DIGITS:
                    return -1
                v = v * 10 + (c - 48)
                i += 1
                c = p[i]
        if p[i] != 46:  # "."
            kind[0] = U_INT
            value[0] = v
            return i
        i += 1
        start = i
        while 48 <= p[i] <= 57:
            i += 1
        if i == start or i - start > U_MAX_DIGITS:
            return -1
        kind[0] = U_FLOAT
        return i
    kind[0] = U_OTHER
    if c == 34:
        i = _u_string_end(p, i + 1)
        return -1 if i < 0 else i + 1
    if c == 116:  # true
        return i + 4 if p[i + 1] == 114 and p[i + 2] == 117 and p[i + 3] == 101 else -1
    if c == 110:  # null
        return i + 4 if p[i + 1] == 117 and p[i + 2] == 108 and p[i + 3] == 108 else -1
    if c == 102:  # false
        if p[i + 1] == 97 and p[i + 2] == 108 and p[i + 3] == 115 and p[i + 4] == 101:
            return i + 5
    return -1


cdef Py_ssize_t _u_members(const unsigned char* p, Py_ssize_t i, const char* target,
                           Py_ssize_t tlen, long long* count, bint* has) noexcept nogil:
    """The end (past the ``}``) of the plain object of scalars whose ``{`` is at ``i``, or -1;
    ``count``/``has`` get the last ``target`` member's value when that is an integer."""
    cdef Py_ssize_t start
    cdef int kind
    cdef long long value
    cdef bint hit
    has[0] = False
    i = _u_ws(p, i + 1)
    if p[i] == 125:
        return i + 1
    while True:
        if p[i] != 34:
            return -1
        start = i + 1
        i = _u_string_end(p, start)
        if i < 0:
            return -1
        hit = tlen > 0 and i - start == tlen and memcmp(p + start, target, <size_t>tlen) == 0
        i = _u_ws(p, i + 1)
        if p[i] != 58:  # ":"
            return -1
        i = _u_scalar(p, _u_ws(p, i + 1), &kind, &value)
        if i < 0:
            return -1
        if hit:
            if kind == U_FLOAT:
                return -1
            has[0] = kind == U_INT
            count[0] = value
        i = _u_ws(p, i)
        if p[i] == 125:
            return i + 1
        if p[i] != 44:  # ","
            return -1
        i = _u_ws(p, i + 1)


def usage_counts(bytes raw not None):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t i, start
    cdef long long v[5]
    cdef bint has[5]
    cdef long long value
    cdef bint ignored
    cdef int kind, slot
    has[0] = has[1] = has[2] = has[3] = has[4] = False
    i = _u_ws(p, 0)
    if p[i] != 123:  # "{"
        return None
    i = _u_ws(p, i + 1)
    if p[i] != 125:  # "}"
        while True:
            if p[i] != 34:
                return None
            start = i + 1
            i = _u_string_end(p, start)
            if i < 0:
                return None
            slot = _u_slot(p + start, i - start)
            i = _u_ws(p, i + 1)
            if p[i] != 58:
                return None
            i = _u_ws(p, i + 1)
            if p[i] == 123:
                if slot == 3:
                    i = _u_members(p, i, b"cached_tokens", 13, &v[3], &has[3])
                elif slot == 4:
                    i = _u_members(p, i, b"reasoning_tokens", 16, &v[4], &has[4])
                else:
                    i = _u_members(p, i, NULL, 0, &value, &ignored)
                    if slot >= 0:
                        has[slot] = False
                if i < 0:
                    return None
            else:
                i = _u_scalar(p, i, &kind, &value)
                if i < 0:
                    return None
                if slot >= 0:
                    if kind == U_FLOAT:
                        return None
                    has[slot] = slot < 3 and kind == U_INT  # a details key's: not an object
                    v[slot] = value
            i = _u_ws(p, i)
            if p[i] == 125:
                break
            if p[i] != 44:
                return None
            i = _u_ws(p, i + 1)
    if _u_ws(p, i + 1) != PyBytes_GET_SIZE(raw):
        return None
    if not has[2] and has[0] and has[1]:
        v[2] = v[0] + v[1]
        has[2] = True
    return (
        v[0] if has[0] else None,
        v[1] if has[1] else None,
        v[2] if has[2] else None,
        v[3] if has[3] else None,
        v[4] if has[4] else None,
    )


# ---------------------------------------------------------- the members of a chat request body
# chat_request_fields: what the gateway reads of a chat request (model, messages, stream,
# stream_options) from the bytes, with the whole body checked as JSON, without orjson building
# the document. Conservative: a result only for a body orjson is sure to read the same way; None
# for anything else (then the gateway reads it with orjson, errors and all). The twin documents
# what is plain; the two give the same answer (tests/test_chat_fields.py holds both to orjson).

cdef extern from *:
    """
    /* The end of the run of bytes from p[i] that a JSON string holds as they are (0x20-0x7e
       but the quote and the backslash), at most up to n. 16 at a time with SSE2. */
    static Py_ssize_t gw_json_run(const unsigned char *p, Py_ssize_t i, Py_ssize_t n,
                                  const unsigned char *plain) {
    #ifdef GW_SSE2
        const __m128i lo = _mm_set1_epi8(0x20), q = _mm_set1_epi8(0x22),
                      b = _mm_set1_epi8(0x5c), del = _mm_set1_epi8(0x7f);
        while (n - i >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
            /* signed: the bytes from 0x80 up are negative, below 0x20 as the controls are */
            __m128i bad = _mm_or_si128(
                _mm_or_si128(_mm_cmplt_epi8(v, lo), _mm_cmpeq_epi8(v, q)),
                _mm_or_si128(_mm_cmpeq_epi8(v, b), _mm_cmpeq_epi8(v, del)));
            unsigned m = (unsigned)_mm_movemask_epi8(bad);
            if (m) return i + (Py_ssize_t)gw_ctz(m);
            i += 16;
        }
    #endif
        while (i < n && plain[p[i]]) i++;
        return i;
    }
    """
    Py_ssize_t gw_json_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                           const unsigned char* plain) noexcept nogil

cdef enum:
    J_MAX_DEPTH = 32  # deeper containers: not plain (orjson's limit is 1024)
    J_MAX_NUMBER = 24  # a longer number token: not plain


cdef inline Py_ssize_t _j_utf8(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    """The end of the UTF-8 sequence whose lead byte (>= 0x80) is at ``i``, or -1: RFC 3629
    (no overlong form, no surrogate, nothing above U+10FFFF), as orjson and Python check it.
    A continuation byte is never NUL: the NUL after a bytes object stops the reading."""
    cdef unsigned char c = p[i], lo = 0x80, hi = 0xBF  # the second byte's range
    cdef Py_ssize_t size, k
    if 0xC2 <= c <= 0xDF:
        size = 2
    elif 0xE0 <= c <= 0xEF:
        size = 3
        if c == 0xE0:
            lo = 0xA0  # no overlong form
        elif c == 0xED:
            hi = 0x9F  # no surrogate
    elif 0xF0 <= c <= 0xF4:
        size = 4
        if c == 0xF0:
            lo = 0x90  # no overlong form
        elif c == 0xF4:
            hi = 0x8F  # nothing above U+10FFFF
    else:
        return -1
    if not lo <= p[i + 1] <= hi:
        return -1
    for k in range(i + 2, i + size):
        if not 0x80 <= p[k] <= 0xBF:
            return -1
    return i + size


cdef inline bint _j_hex(unsigned char c) noexcept nogil:
    return 48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102


cdef Py_ssize_t _j_string(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                          bint* simple) noexcept nogil:
    """The end (past the closing quote) of the plain string whose opening quote is at ``i``, or
    -1; ``simple``: no escape and no byte above 0x7e in it."""
    cdef unsigned char c
    cdef unsigned int u
    simple[0] = True
    i += 1
    while True:
        i = gw_json_run(p, i, n, _U_PLAIN)
        c = p[i]
        if c == 34:
            return i + 1
        if c == 92:  # an escape
            simple[0] = False
            c = p[i + 1]
            if c == 117:  # \uXXXX, not a surrogate (a pair is left to orjson)
                if not (_j_hex(p[i + 2]) and _j_hex(p[i + 3]) and _j_hex(p[i + 4])
                        and _j_hex(p[i + 5])):
                    return -1
                c = p[i + 2] | 0x20
                if c == 100 and (p[i + 3] | 0x20) >= 56:  # d8-df: a surrogate
                    return -1
                i += 6
            elif c == 34 or c == 92 or c == 47 or c == 98 or c == 102 or c == 110 or c == 114 \
                    or c == 116:
                i += 2
            else:
                return -1
        elif c >= 0x80:
            simple[0] = False
            i = _j_utf8(p, i)
            if i < 0:
                return -1
        else:  # a control character, DEL, or the end
            return -1


cdef Py_ssize_t _j_number(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    """The end of the plain number at ``i``, or -1: JSON's grammar, at most J_MAX_NUMBER
    bytes and a two-digit exponent (no infinity, which orjson refuses)."""
    cdef Py_ssize_t start = i, e
    if p[i] == 45:  # "-"
        i += 1
    if p[i] == 48:
        i += 1
    elif 49 <= p[i] <= 57:
        while 48 <= p[i] <= 57:
            i += 1
    else:
        return -1
    if p[i] == 46:  # "."
        i += 1
        if not 48 <= p[i] <= 57:
            return -1
        while 48 <= p[i] <= 57:
            i += 1
    if p[i] == 101 or p[i] == 69:  # "e", "E"
        i += 1
        if p[i] == 43 or p[i] == 45:
            i += 1
        e = i
        while 48 <= p[i] <= 57:
            i += 1
        if i == e or i - e > 2:
            return -1
    return i if i - start <= J_MAX_NUMBER else -1


cdef Py_ssize_t _j_value(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                         int depth) noexcept nogil:
    """The end of the plain JSON value at ``i`` (no blank before it), or -1."""
    cdef unsigned char c = p[i]
    cdef bint simple
    if c == 34:
        return _j_string(p, i, n, &simple)
    if c == 123 or c == 91:  # "{", "["
        if depth >= J_MAX_DEPTH:
            return -1
        i = _u_ws(p, i + 1)
        if p[i] == c + 2:  # "}" or "]": empty
            return i + 1
        while True:
            if c == 123:
                if p[i] != 34:
                    return -1
                i = _j_string(p, i, n, &simple)
                if i < 0:
                    return -1
                i = _u_ws(p, i)
                if p[i] != 58:  # ":"
                    return -1
                i = _u_ws(p, i + 1)
            i = _j_value(p, i, n, depth + 1)
            if i < 0:
                return -1
            i = _u_ws(p, i)
            if p[i] == c + 2:
                return i + 1
            if p[i] != 44:
                return -1
            i = _u_ws(p, i + 1)
    if c == 116:  # true
        return i + 4 if p[i + 1] == 114 and p[i + 2] == 117 and p[i + 3] == 101 else -1
    if c == 110:  # null
        return i + 4 if p[i + 1] == 117 and p[i + 2] == 108 and p[i + 3] == 108 else -1
    if c == 102:  # false
        if p[i + 1] == 97 and p[i + 2] == 108 and p[i + 3] == 115 and p[i + 4] == 101:
            return i + 5
        return -1
    return _j_number(p, i)


cdef Py_ssize_t _j_options(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                           int* asked) noexcept nogil:
    """The end of the plain ``stream_options`` object at ``i``, or -1; ``asked``: whether its
    last ``include_usage`` member is ``true``."""
    cdef Py_ssize_t start
    cdef bint simple
    asked[0] = 0
    i = _u_ws(p, i + 1)
    if p[i] == 125:
        return i + 1
    while True:
        if p[i] != 34:
            return -1
        start = i + 1
        i = _j_string(p, i, n, &simple)
        if i < 0 or not simple:  # (an escaped key could spell include_usage)
            return -1
        if i - 1 - start == 13 and memcmp(p + start, b"include_usage", 13) == 0:
            start = -2
        i = _u_ws(p, i)
        if p[i] != 58:
            return -1
        i = _u_ws(p, i + 1)
        if start == -2:
            asked[0] = p[i] == 116  # true (checked as a value below)
        i = _j_value(p, i, n, 2)
        if i < 0:
            return -1
        i = _u_ws(p, i)
        if p[i] == 125:
            return i + 1
        if p[i] != 44:
            return -1
        i = _u_ws(p, i + 1)


def chat_request_fields(bytes raw not None):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i, j, start, size, model_at = -1, model_end = -1
    cdef int stream = 0, options = 0, asked = 0  # options: 0 absent, 1 asks for usage, 2 not
    cdef bint messages = False, simple
    i = _u_ws(p, 0)
    if p[i] != 123:
        return None
    i = _u_ws(p, i + 1)
    if p[i] != 125:
        while True:
            if p[i] != 34:
                return None
            start = i + 1
            i = _j_string(p, i, n, &simple)
            if i < 0 or not simple:  # (an escaped key could spell one read here)
                return None
            size = i - 1 - start
            i = _u_ws(p, i)
            if p[i] != 58:
                return None
            i = _u_ws(p, i + 1)
            if size == 5 and memcmp(p + start, b"model", 5) == 0:
                j = _j_string(p, i, n, &simple) if p[i] == 34 else -1
                if j < 0 or not simple or j - i == 2:  # not a plain non-empty string
                    return None
                model_at = i + 1
                model_end = j - 1
                i = j
            elif size == 8 and memcmp(p + start, b"messages", 8) == 0:
                if p[i] != 91 or p[_u_ws(p, i + 1)] == 93:  # not a non-empty array
                    return None
                messages = True
                i = _j_value(p, i, n, 1)
            elif size == 6 and memcmp(p + start, b"stream", 6) == 0:
                if p[i] == 116 or p[i] == 102 or p[i] == 110:  # true, false, null
                    stream = p[i] == 116
                    i = _j_value(p, i, n, 1)
                else:
                    return None
            elif size == 14 and memcmp(p + start, b"stream_options", 14) == 0:
                if p[i] != 123:
                    return None
                i = _j_options(p, i, n, &asked)
                options = 1 if asked else 2
            else:
                i = _j_value(p, i, n, 1)
            if i < 0:
                return None
            i = _u_ws(p, i)
            if p[i] == 125:
                break
            if p[i] != 44:
                return None
            i = _u_ws(p, i + 1)
    if _u_ws(p, i + 1) != n or model_at < 0 or not messages or options == 2:
        return None
    return (
        PyUnicode_DecodeLatin1(<const char*>p + model_at, model_end - model_at, NULL),
        stream == 1,
        options == 1,
    )

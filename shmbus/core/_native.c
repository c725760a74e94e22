/* shmbus._native: the per-record verbs of the data path, compiled ahead of time.
 *
 * Why this exists beside the numba kernels (shmbus/kernels/frames.py). A
 * producer that sends one record, or a consumer that takes one, pays for the
 * call more than for the work: numba's compiled entry point costs ~0.25 us per
 * call, and the process must first import numba (~0.2-0.4 s) and load its
 * cached kernels (~0.3 s), which alone breaks the start-up aim (import + first
 * send <= 0.5 s). These verbs, built by `pip install .` with the C compiler
 * Python packages are built with, cost ~0.05 us per call and no import.
 *
 * They are the same verbs as the numba kernels, on the same bytes: the layout
 * constants below are checked against shmbus/layout at import (see
 * shmbus/native.py), and tests run the data-path tests with and without this
 * module (SHMBUS_NATIVE=0 selects the numba kernels). The consumer's scans are
 * here too, so that no client process imports numba; and the supervisor's
 * segment writes (write_frames: its CPU is taken from the clients on a small
 * machine). Its other jobs (spill scan, release, unblock, compaction) stay in numba. The extension is optional: where it does
 * not build (no compiler, not x86-64), shmbus uses the numba kernels.
 *
 * Memory orders follow the kernels (x86-64, TSO): acquire loads are plain
 * loads the compiler may not fold or move; the publish of a frame's header word
 * is a compare-and-swap RESERVED(pid) -> DATA (lock cmpxchg, a full barrier), so
 * the load of SLEEPERS that follows it cannot be reordered before it (the Dekker
 * pattern with a consumer going to sleep). The swap fails only if the supervisor
 * fenced the claim (the writer stalled past the topic's unblock.timeout.ms):
 * then the send fails with ST_STALLED and nothing of it is published.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* --- layout: every constant, from shmbus/layout (shmbus/layout/constants.py, written out by
 * tools/gen_layout_h.py); exported as LAYOUT and compared with shmbus/layout at import --- */
#include "_layout.h"

/* --- atomics ---------------------------------------------------------------- */
static inline int64_t ld_acq64(const uint8_t *b, int64_t i) {
    return __atomic_load_n((const int64_t *)(b + i), __ATOMIC_ACQUIRE);
}
static inline int32_t ld_acq32(const uint8_t *b, int64_t i) {
    return __atomic_load_n((const int32_t *)(b + i), __ATOMIC_ACQUIRE);
}
static inline int cas64(uint8_t *b, int64_t i, int64_t expect, int64_t desired) {
    return __atomic_compare_exchange_n((int64_t *)(b + i), &expect, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
/* lock cmpxchg16b on (lo, hi) at a 16-byte aligned address; inline so that no
 * libatomic (which may take a lock) is involved. */
static inline int cas128(uint8_t *b, int64_t i, int64_t elo, int64_t ehi, int64_t nlo, int64_t nhi) {
    unsigned char ok;
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(ok), "+m"(*(volatile __int128 *)(b + i)), "+a"(elo), "+d"(ehi)
                         : "b"(nlo), "c"(nhi)
                         : "memory", "cc");
    return ok;
}
static inline void st64(uint8_t *b, int64_t i, int64_t v) { memcpy(b + i, &v, 8); }
static inline void st32(uint8_t *b, int64_t i, int32_t v) { memcpy(b + i, &v, 4); }
static inline int64_t hdr_word(int64_t length, int64_t ftype, int64_t aux) {
    return length | (ftype << TYPE_SHIFT) | ((aux & PID_MASK) << AUX_SHIFT);
}
static inline int64_t align8(int64_t n) { return (n + F_ALIGN - 1) & ~(int64_t)(F_ALIGN - 1); }

/* --- CRC-32C (Castagnoli), as shmbus/kernels/crc32c.py ---------------------- */
static uint32_t crc_table[8][256];
static int have_sse42 = 0;

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xFF];
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^ crc_table[5][(w >> 16) & 0xFF] ^
            crc_table[4][(w >> 24) & 0xFF] ^ crc_table[3][(w >> 32) & 0xFF] ^ crc_table[2][(w >> 40) & 0xFF] ^
            crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

/* The running (not finished) CRC over n bytes. */
static inline uint32_t crc_run(uint32_t c, const uint8_t *p, size_t n) {
#if defined(__x86_64__)
    if (have_sse42) return crc_hw(c, p, n);
#endif
    return crc_sw(c, p, n);
}

/* --- publish (kernels/frames.py: _publish, _let_go) ------------------------- */
/* CAS the claim's RESERVED word at i to DATA(flen). If the supervisor fenced the
 * claim meanwhile (PADDING(whole claim, pid)), let go of it (aux -> 0: the spiller
 * may free it now that this writer no longer writes there) and return 0. */
static inline int publish(uint8_t *buf, int64_t i, int64_t reserved, int64_t flen) {
    if (cas64(buf, i, reserved, hdr_word(flen, T_DATA, 0))) return 1;
    int64_t h = ld_acq64(buf, i);
    if (((h >> 32) & 0xFF) == T_PADDING && ((h >> 40) & PID_MASK) != 0)
        cas64(buf, i, h, hdr_word(h & 0xFFFFFFFF, T_PADDING, 0));
    return 0;
}

/* --- append: one record (kernels/frames.py: _append) ----------------------- */
static int64_t append_one(uint8_t *buf, const uint8_t *key, int64_t klen, const uint8_t *value, int64_t vlen,
                          const uint8_t *hdrs, int64_t hlen, int64_t ts, int64_t pid) {
    int64_t size = (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0) + hlen;
    int64_t flen = align8(F_HDR + size);
    int64_t ring = *(const int64_t *)(buf + R_RING_BYTES);
    if (size > *(const int64_t *)(buf + R_MAX_MESSAGE)) return ST_OVER_MAX;
    if (flen * 2 > ring) return ST_TOO_LARGE;
    if (ld_acq64(buf, R_FLAGS) & FLAG_DELETED) return ST_DELETED;
    int64_t mask = ring - 1;
    for (;;) {
        /* claim flen bytes and one offset in one 128-bit CAS; a frame that would
         * straddle the ring's end claims a padding frame up to the end as well */
        int64_t pos = ld_acq64(buf, R_CLAIM_POS);
        int64_t off = ld_acq64(buf, R_CLAIM_POS + 8);
        int64_t idx = pos & mask;
        int64_t pad = idx + flen > ring ? ring - idx : 0;
        int64_t rel = ld_acq64(buf, R_RELEASED);
        if (pos + pad + flen - rel > ring) return ST_FULL;
        if (!cas128(buf, R_CLAIM_POS, pos, off, pos + pad + flen, off + 1)) continue;
        int64_t fpos = pos + pad;
        /* reserve: FREE -> PADDING / RESERVED(pid); fails only if the supervisor
         * unblocked this claim meanwhile (the writer stalled): claim again */
        if (pad > 0 && !cas64(buf, RING_HDR + (pos & mask), 0, hdr_word(pad, T_PADDING, 0))) continue;
        int64_t i = RING_HDR + (fpos & mask);
        if (!cas64(buf, i, 0, hdr_word(flen, T_RESERVED, pid))) continue;
        /* the body */
        st64(buf, i + F_OFFSET, off);
        st64(buf, i + F_TS, ts);
        st32(buf, i + F_KLEN, (int32_t)klen);
        st32(buf, i + F_VLEN, (int32_t)vlen);
        st32(buf, i + F_HLEN, (int32_t)hlen);
        uint8_t *b = buf + i + F_HDR;
        if (klen > 0) { memcpy(b, key, (size_t)klen); b += klen; }
        if (vlen > 0) { memcpy(b, value, (size_t)vlen); b += vlen; }
        if (hlen > 0) { memcpy(b, hdrs, (size_t)hlen); b += hlen; }
        memset(b, 0, (size_t)(buf + i + flen - b));
        uint32_t c = crc_run(0xFFFFFFFFu, buf + i + F_OFFSET, F_CRC - F_OFFSET);
        c = crc_run(c, buf + i + F_HDR, (size_t)size);
        st32(buf, i + F_CRC, (int32_t)(c ^ 0xFFFFFFFFu));
        /* publish: the header word last, a CAS (a full barrier before SLEEPERS is read) */
        if (!publish(buf, i, hdr_word(flen, T_RESERVED, pid), flen)) return ST_STALLED;
        int64_t bits = 0;
        if (ld_acq32(buf, R_SLEEPERS) > 0) bits |= 1;
        int64_t used = fpos + flen - rel;
        if (used * 2 > ring && (used - flen - pad) * 2 <= ring) bits |= 2;
        return (off << 2) | bits;
    }
}

static int as_i64(PyObject *o, int64_t *out) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* append(addr, key, value, hdrs, ts, pid) -> offset << 2 | wake bits, or a
 * negative status. key/value: bytes or None (null); hdrs: bytes (b"" = none). */
static PyObject *py_append(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "append(addr, key, value, hdrs, ts, pid)");
        return NULL;
    }
    int64_t addr, ts, pid;
    if (as_i64(args[0], &addr) || as_i64(args[4], &ts) || as_i64(args[5], &pid)) return NULL;
    PyObject *k = args[1], *v = args[2], *h = args[3];
    if ((k != Py_None && !PyBytes_CheckExact(k)) || (v != Py_None && !PyBytes_CheckExact(v)) ||
        !PyBytes_CheckExact(h)) {
        PyErr_SetString(PyExc_TypeError, "append: key and value must be bytes or None, hdrs bytes");
        return NULL;
    }
    const uint8_t *kp = NULL, *vp = NULL;
    int64_t kl = -1, vl = -1;
    if (k != Py_None) { kp = (const uint8_t *)PyBytes_AS_STRING(k); kl = PyBytes_GET_SIZE(k); }
    if (v != Py_None) { vp = (const uint8_t *)PyBytes_AS_STRING(v); vl = PyBytes_GET_SIZE(v); }
    int64_t r = append_one((uint8_t *)(uintptr_t)addr, kp, kl, vp, vl, (const uint8_t *)PyBytes_AS_STRING(h),
                           PyBytes_GET_SIZE(h), ts, pid);
    return PyLong_FromLongLong(r);
}

/* The two buffers of a verb that walks frames: `data` (read) and `rows` (an int64 array
 * with flags `rows_flags`); on failure neither is held. */
static int get_data_rows(PyObject *data, PyObject *rows, int rows_flags, Py_buffer *b, Py_buffer *r) {
    if (PyObject_GetBuffer(data, b, PyBUF_SIMPLE) < 0) return -1;
    if (PyObject_GetBuffer(rows, r, rows_flags) < 0) {
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* --- headers (layout/frame.py): u16 key length | key utf-8 | i32 value length
 * (-1 = null) | value, repeated ------------------------------------------------ */

/* [(str, bytes | None), ...] (a list or tuple of 2-tuples) -> bytes, in *out.
 * Returns 0, or 1 when the headers are of kinds only the Python encoder takes
 * or explains (other bytes-likes, bad types, a key over 65535 bytes), or -1
 * with an exception set. */
static int headers_encode(PyObject *headers, PyObject **out) {
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) return 1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(headers);
    PyObject **items = PySequence_Fast_ITEMS(headers);
    Py_ssize_t total = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *it = items[j];
        if (!PyTuple_CheckExact(it) || PyTuple_GET_SIZE(it) != 2) return 1;
        PyObject *k = PyTuple_GET_ITEM(it, 0), *v = PyTuple_GET_ITEM(it, 1);
        if (!PyUnicode_CheckExact(k) || (v != Py_None && !PyBytes_CheckExact(v))) return 1;
        Py_ssize_t kl;
        if (!PyUnicode_AsUTF8AndSize(k, &kl)) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
            PyErr_Clear();  /* a lone surrogate: the Python encoder raises the library's error */
            return 1;
        }
        if (kl > 0xFFFF) return 1;
        total += 2 + kl + 4 + (v == Py_None ? 0 : PyBytes_GET_SIZE(v));
    }
    PyObject *res = PyBytes_FromStringAndSize(NULL, total);
    if (!res) return -1;
    char *b = PyBytes_AS_STRING(res);
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *k = PyTuple_GET_ITEM(items[j], 0), *v = PyTuple_GET_ITEM(items[j], 1);
        Py_ssize_t kl;
        const char *ks = PyUnicode_AsUTF8AndSize(k, &kl);
        uint16_t k16 = (uint16_t)kl;
        memcpy(b, &k16, 2);
        memcpy(b + 2, ks, (size_t)kl);
        b += 2 + kl;
        int32_t vl = v == Py_None ? -1 : (int32_t)PyBytes_GET_SIZE(v);
        memcpy(b, &vl, 4);
        b += 4;
        if (vl > 0) {
            memcpy(b, PyBytes_AS_STRING(v), (size_t)vl);
            b += vl;
        }
    }
    *out = res;
    return 0;
}

/* The header bytes -> [(str, bytes | None), ...]; ValueError if they cannot be. */
static PyObject *headers_decode(const char *b, Py_ssize_t n) {
    PyObject *lst = PyList_New(0);
    if (!lst) return NULL;
    Py_ssize_t i = 0;
    while (i < n) {
        uint16_t kl;
        int32_t vl;
        if (i + 2 > n) goto bad;
        memcpy(&kl, b + i, 2);
        if (i + 2 + kl + 4 > n) goto bad;
        memcpy(&vl, b + i + 2 + kl, 4);
        if (vl < -1 || i + 2 + kl + 4 + (vl > 0 ? vl : 0) > n) goto bad;
        PyObject *key = PyUnicode_DecodeUTF8(b + i + 2, kl, "strict");
        if (!key) goto fail;
        PyObject *val = vl < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize(b + i + 2 + kl + 4, vl);
        PyObject *pair = val ? PyTuple_Pack(2, key, val) : NULL;
        Py_DECREF(key);
        Py_XDECREF(val);
        if (!pair || PyList_Append(lst, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
        i += 2 + kl + 4 + (vl > 0 ? vl : 0);
    }
    return lst;
bad:
    PyErr_Format(PyExc_ValueError, "corrupt record headers: bytes=%zd at=%zd (see layout/frame.py)", n, i);
fail:
    Py_DECREF(lst);
    return NULL;
}

/* encode_headers(headers) -> bytes, or None for the Python encoder to handle */
static PyObject *py_encode_headers(PyObject *Py_UNUSED(self), PyObject *headers) {
    PyObject *out = NULL;
    int r = headers_encode(headers, &out);
    if (r < 0) return NULL;
    if (r > 0) Py_RETURN_NONE;
    return out;
}

/* decode_headers(b: bytes) -> [(str, bytes | None), ...] */
static PyObject *py_decode_headers(PyObject *Py_UNUSED(self), PyObject *b) {
    if (!PyBytes_CheckExact(b)) {
        PyErr_SetString(PyExc_TypeError, "decode_headers(b: bytes)");
        return NULL;
    }
    return headers_decode(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
}

/* build_records(buf, meta, topic, partition, ConsumerRecord) -> [ConsumerRecord, ...]:
 * the records a scan kernel described (meta: n rows of META_COLS int64 = frame
 * pos, offset, timestamp, key len, value len, headers len, body index, frame
 * len; bodies in buf, a ring mapping or a segment chunk). The caller checks the
 * ring's RECLAIMING afterwards, as for every ring read. */
static PyObject *py_build_records(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyType_Check(args[4]) || !PyType_IsSubtype((PyTypeObject *)args[4], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "build_records(buf, meta, topic, partition, ConsumerRecord)");
        return NULL;
    }
    PyTypeObject *rt = (PyTypeObject *)args[4];
    Py_buffer bv, mv;
    if (get_data_rows(args[0], args[1], PyBUF_C_CONTIGUOUS, &bv, &mv) < 0) return NULL;
    PyObject *out = NULL;
    const char *buf = bv.buf;
    const int64_t *m = mv.buf;
    Py_ssize_t rows = mv.len / (8 * META_COLS);
    if (mv.len % (8 * META_COLS)) {
        PyErr_SetString(PyExc_ValueError, "build_records: meta is not rows of 8 int64");
        goto done;
    }
    out = PyList_New(rows);
    if (!out) goto done;
    for (Py_ssize_t r = 0; r < rows; r++) {
        const int64_t *row = m + r * META_COLS;
        int64_t kl = row[M_KLEN], vl = row[M_VLEN], hl = row[M_HLEN], bi = row[M_BODY];
        if (kl < -1 || vl < -1 || hl < 0 || bi < 0 || bi + (kl > 0 ? kl : 0) + (vl > 0 ? vl : 0) + hl > bv.len) {
            PyErr_Format(PyExc_ValueError, "build_records: row %zd lies outside the buffer", r);
            Py_CLEAR(out);
            goto done;
        }
        const char *b = buf + bi;
        PyObject *key = kl >= 0 ? PyBytes_FromStringAndSize(b, kl) : Py_NewRef(Py_None);
        b += kl > 0 ? kl : 0;
        PyObject *value = vl >= 0 ? PyBytes_FromStringAndSize(b, vl) : Py_NewRef(Py_None);
        b += vl > 0 ? vl : 0;
        PyObject *headers = hl ? headers_decode(b, hl) : PyList_New(0);
        PyObject *o = PyLong_FromLongLong(row[M_OFFSET]), *ts = PyLong_FromLongLong(row[M_TS]);
        PyObject *rec = rt->tp_alloc(rt, 7);
        if (!key || !value || !headers || !o || !ts || !rec) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_XDECREF(headers);
            Py_XDECREF(o);
            Py_XDECREF(ts);
            Py_XDECREF(rec);
            Py_CLEAR(out);
            goto done;
        }
        PyTuple_SET_ITEM(rec, 0, Py_NewRef(args[2]));
        PyTuple_SET_ITEM(rec, 1, Py_NewRef(args[3]));
        PyTuple_SET_ITEM(rec, 2, o);
        PyTuple_SET_ITEM(rec, 3, ts);
        PyTuple_SET_ITEM(rec, 4, key);
        PyTuple_SET_ITEM(rec, 5, value);
        PyTuple_SET_ITEM(rec, 6, headers);
        PyList_SET_ITEM(out, r, rec);
    }
done:
    PyBuffer_Release(&bv);
    PyBuffer_Release(&mv);
    return out;
}

/* --- Reader: one partition's single-record reads (client/consumer: _take_one, poll) --
 *
 * A consumer keeps one Reader per assigned partition; it owns the partition's
 * read state, `cursor` (a ring position, -1 = unknown) and `position` (the next
 * offset to return; INT64_MIN = not resolved yet), which the consumer's Python
 * code reads and sets through properties. take() reads the record at the cursor
 * and builds its ConsumerRecord; poll() spins on the cursor's header word for
 * up to spin_ns first and answers {tp: [records]}, what Consumer.poll returns.
 * Padding frames are stepped over.
 * Both answer 0 when nothing is published at the cursor (FREE or RESERVED and
 * not lapped, or the oldest frame of an exactly full ring), and None when the
 * consumer's general path must decide: the reader lapped by the spiller, an
 * unknown cursor, a header that cannot be, or, with more=True, a second
 * record ready (one scan kernel call then reads them all). Frames below
 * `position` (left of a locate) are stepped over, as the scan kernel does, after
 * the same checks of their lengths.
 * The copy is checked against RECLAIMING after it is made, like every ring read.
 */
typedef struct {
    PyObject_HEAD
    long long cursor;
    long long position;
    int64_t addr;
    PyObject *tp;        /* TopicPartition: the key of poll's answer */
    PyObject *topic;     /* str */
    PyObject *partition; /* int */
    PyTypeObject *rec;   /* ConsumerRecord, a 7-tuple subclass */
} Reader;

enum { TAKE_ERR = -1, TAKE_EMPTY = 0, TAKE_REC = 1, TAKE_GENERAL = 2 };

static int reader_take_core(Reader *r, int more, PyObject **out) {
    int64_t c = r->cursor;
    if (c < 0 || r->position == POS_NONE) return TAKE_GENERAL;
    const uint8_t *buf = (const uint8_t *)(uintptr_t)r->addr;
    int64_t ring = *(const int64_t *)(buf + R_RING_BYTES);
    int64_t mask = ring - 1;
    int64_t i, w, t, flen, nxt, off, ts;
    int32_t kl, vl, hl;
    for (;;) {
        i = RING_HDR + (c & mask);
        w = ld_acq64(buf, i);
        t = (w >> 32) & 0xFF;
        if (t == T_FREE || t == T_RESERVED) return ld_acq64(buf, R_RECLAIMING) <= c ? TAKE_EMPTY : TAKE_GENERAL;
        /* a cursor a whole ring ahead of RELEASED (an exactly full ring): the word there is the
         * oldest frame, padding included, not a new one */
        if (c >= ld_acq64(buf, R_RELEASED) + ring) return TAKE_EMPTY;
        if (t == T_PADDING) {  /* the ring's end, or an unblocked dead claim: step over it */
            int64_t plen = w & 0xFFFFFFFF;
            if (plen <= 0 || (plen & 7) || (c & mask) + plen > ring || ld_acq64(buf, R_RECLAIMING) > c)
                return TAKE_GENERAL;
            c += plen;
            r->cursor = c;
            continue;
        }
        if (t != T_DATA) return TAKE_GENERAL;
        flen = w & 0xFFFFFFFF;
        /* a frame never straddles the ring's end: a length that would is a word read from a
         * region the spiller released and a writer reused (a lapped cursor); the general path
         * finds that out, without reading past the mapping here */
        if (flen < F_HDR || (flen & 7) || (c & mask) + flen > ring) return TAKE_GENERAL;
        nxt = c + flen;
        memcpy(&kl, buf + i + F_KLEN, 4);
        memcpy(&vl, buf + i + F_VLEN, 4);
        memcpy(&hl, buf + i + F_HLEN, 4);
        /* lengths that cannot be, below the position too: the scan stops there as corrupt */
        if (kl < -1 || vl < -1 || hl < 0 || F_HDR + (int64_t)(kl > 0 ? kl : 0) + (vl > 0 ? vl : 0) + hl > flen)
            return TAKE_GENERAL;
        memcpy(&off, buf + i + F_OFFSET, 8);
        if (off < r->position) {  /* below the position (after a locate): step over it, as the scan does */
            if (ld_acq64(buf, R_RECLAIMING) > c) return TAKE_GENERAL;
            c = nxt;
            r->cursor = c;
            continue;
        }
        break;
    }
    if (more && ((ld_acq64(buf, RING_HDR + (nxt & mask)) >> 32) & 0xFF) == T_DATA) return TAKE_GENERAL;
    memcpy(&ts, buf + i + F_TS, 8);
    const char *b = (const char *)buf + i + F_HDR;
    PyObject *key, *value, *hb;
    key = kl >= 0 ? PyBytes_FromStringAndSize(b, kl) : Py_NewRef(Py_None);
    b += kl > 0 ? kl : 0;
    value = vl >= 0 ? PyBytes_FromStringAndSize(b, vl) : Py_NewRef(Py_None);
    b += vl > 0 ? vl : 0;
    hb = hl ? PyBytes_FromStringAndSize(b, hl) : NULL;
    if (!key || !value || (hl && !hb)) goto fail;
    if (ld_acq64(buf, R_RECLAIMING) > c) {  /* the spiller zeroed these bytes while we copied them */
        Py_DECREF(key);
        Py_DECREF(value);
        Py_XDECREF(hb);
        return TAKE_GENERAL;
    }
    PyObject *headers;  /* decoded from the checked copy */
    if (hb) {
        headers = headers_decode(PyBytes_AS_STRING(hb), PyBytes_GET_SIZE(hb));
        Py_DECREF(hb);
        hb = NULL;
    } else {
        headers = PyList_New(0);
    }
    if (!headers) goto fail;
    PyObject *o = PyLong_FromLongLong(off), *tso = PyLong_FromLongLong(ts);
    PyObject *rec = r->rec->tp_alloc(r->rec, 7);
    if (!o || !tso || !rec) {
        Py_XDECREF(o);
        Py_XDECREF(tso);
        Py_XDECREF(rec);
        Py_DECREF(headers);
        goto fail;
    }
    PyTuple_SET_ITEM(rec, 0, Py_NewRef(r->topic));
    PyTuple_SET_ITEM(rec, 1, Py_NewRef(r->partition));
    PyTuple_SET_ITEM(rec, 2, o);
    PyTuple_SET_ITEM(rec, 3, tso);
    PyTuple_SET_ITEM(rec, 4, key);
    PyTuple_SET_ITEM(rec, 5, value);
    PyTuple_SET_ITEM(rec, 6, headers);
    r->cursor = nxt;
    r->position = off + 1;
    *out = rec;
    return TAKE_REC;
fail:
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_XDECREF(hb);
    return TAKE_ERR;
}

static PyObject *take_answer(int code, PyObject *rec) {
    if (code == TAKE_ERR) return NULL;
    if (code == TAKE_EMPTY) return PyLong_FromLong(0);
    if (code == TAKE_GENERAL) Py_RETURN_NONE;
    return rec;
}

/* take(more) -> ConsumerRecord | 0 | None */
static PyObject *reader_take(Reader *r, PyObject *more) {
    PyObject *rec = NULL;
    int code = reader_take_core(r, PyObject_IsTrue(more), &rec);
    return take_answer(code, rec);
}

static inline int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The records published from the cursor on, up to max_n, after spinning up to
 * spin_ns for the first to come (the GIL is held, as in a Python spin). Stops
 * early where take would answer 0 or None. Returns a list, or NULL with
 * *code TAKE_EMPTY / TAKE_GENERAL (no record came) or TAKE_ERR (an exception). */
static PyObject *reader_collect(Reader *r, int64_t max_n, int64_t spin_ns, int *code) {
    PyObject *rec = NULL;
    *code = reader_take_core(r, 0, &rec);
    if (*code == TAKE_EMPTY && spin_ns > 0) {
        const uint8_t *buf = (const uint8_t *)(uintptr_t)r->addr;
        int64_t c = r->cursor;
        int64_t i = RING_HDR + (c & (*(const int64_t *)(buf + R_RING_BYTES) - 1));
        int64_t end = mono_ns() + spin_ns;
        for (;;) {
            int k;
            for (k = 0; k < 256; k++) {
                int64_t t = (ld_acq64(buf, i) >> 32) & 0xFF;
                if (t != T_FREE && t != T_RESERVED) break;
                __builtin_ia32_pause();
            }
            if (k < 256 || ld_acq64(buf, R_RECLAIMING) > c || mono_ns() >= end) break;
        }
        *code = reader_take_core(r, 0, &rec);
    }
    if (*code != TAKE_REC) return NULL;
    PyObject *lst = PyList_New(0);
    if (!lst || PyList_Append(lst, rec) < 0) {
        Py_XDECREF(lst);
        Py_DECREF(rec);
        *code = TAKE_ERR;
        return NULL;
    }
    Py_DECREF(rec);
    for (int64_t n = 1; n < max_n; n++) {
        int c2 = reader_take_core(r, 0, &rec);
        if (c2 == TAKE_ERR && PyErr_ExceptionMatches(PyExc_ValueError)) {
            /* headers that cannot be decoded: answer the records before them; the cursor stays
             * on the bad one, so the next call raises (as the Python reader, one record a call) */
            PyErr_Clear();
            break;
        }
        if (c2 == TAKE_ERR) {
            Py_DECREF(lst);
            *code = TAKE_ERR;
            return NULL;
        }
        if (c2 != TAKE_REC) break;
        int e = PyList_Append(lst, rec);
        Py_DECREF(rec);
        if (e < 0) {
            Py_DECREF(lst);
            *code = TAKE_ERR;
            return NULL;
        }
    }
    return lst;
}

static int reader_args(PyObject *const *args, Py_ssize_t nargs, int64_t *max_n, int64_t *spin_ns) {
    if (nargs != 2 || as_i64(args[0], max_n) || as_i64(args[1], spin_ns)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "(max_n, spin_ns)");
        return -1;
    }
    return 0;
}

/* take_many(max_n, spin_ns) -> [ConsumerRecord, ...] | 0 | None */
static PyObject *reader_take_many(Reader *r, PyObject *const *args, Py_ssize_t nargs) {
    int64_t max_n, spin_ns;
    int code;
    if (reader_args(args, nargs, &max_n, &spin_ns) < 0) return NULL;
    PyObject *lst = reader_collect(r, max_n, spin_ns, &code);
    return lst ? lst : take_answer(code, NULL);
}

/* poll(max_n, spin_ns) -> {tp: [ConsumerRecord, ...]} | 0 | None: take_many, as Consumer.poll answers */
static PyObject *reader_poll(Reader *r, PyObject *const *args, Py_ssize_t nargs) {
    int64_t max_n, spin_ns;
    int code;
    if (reader_args(args, nargs, &max_n, &spin_ns) < 0) return NULL;
    PyObject *lst = reader_collect(r, max_n, spin_ns, &code);
    if (!lst) return take_answer(code, NULL);
    PyObject *d = PyDict_New();
    if (!d || PyDict_SetItem(d, r->tp, lst) < 0) {
        Py_XDECREF(d);
        Py_DECREF(lst);
        return NULL;
    }
    Py_DECREF(lst);
    return d;
}

static PyObject *reader_new(PyTypeObject *type, PyObject *args, PyObject *Py_UNUSED(kw)) {
    long long addr;
    PyObject *tp, *rec;
    if (!PyArg_ParseTuple(args, "LOO!:Reader", &addr, &tp, &PyType_Type, &rec)) return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)rec, &PyTuple_Type) || !PyTuple_Check(tp) || PyTuple_GET_SIZE(tp) != 2) {
        PyErr_SetString(PyExc_TypeError, "Reader(addr, TopicPartition, ConsumerRecord)");
        return NULL;
    }
    Reader *r = (Reader *)type->tp_alloc(type, 0);
    if (!r) return NULL;
    r->addr = addr;
    r->cursor = -1;
    r->position = POS_NONE;
    r->tp = Py_NewRef(tp);
    r->topic = Py_NewRef(PyTuple_GET_ITEM(tp, 0));
    r->partition = Py_NewRef(PyTuple_GET_ITEM(tp, 1));
    r->rec = (PyTypeObject *)Py_NewRef(rec);
    return (PyObject *)r;
}

static int reader_traverse(Reader *r, visitproc visit, void *arg) {
    Py_VISIT(r->tp);
    Py_VISIT(r->topic);
    Py_VISIT(r->partition);
    Py_VISIT(r->rec);
    return 0;
}

static int reader_clear(Reader *r) {
    Py_CLEAR(r->tp);
    Py_CLEAR(r->topic);
    Py_CLEAR(r->partition);
    Py_CLEAR(r->rec);
    return 0;
}

static void reader_dealloc(Reader *r) {
    PyObject_GC_UnTrack(r);
    reader_clear(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMemberDef reader_members[] = {
    {"cursor", T_LONGLONG, offsetof(Reader, cursor), 0, "ring position of the next frame; -1: unknown"},
    {"position_raw", T_LONGLONG, offsetof(Reader, position), 0, "next offset; INT64_MIN: not resolved"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef reader_methods[] = {
    {"take", (PyCFunction)reader_take, METH_O, "take(more) -> ConsumerRecord | 0 | None"},
    {"take_many", (PyCFunction)(void (*)(void))reader_take_many, METH_FASTCALL,
     "take_many(max_n, spin_ns) -> [ConsumerRecord, ...] | 0 | None"},
    {"poll", (PyCFunction)(void (*)(void))reader_poll, METH_FASTCALL,
     "poll(max_n, spin_ns) -> {tp: [ConsumerRecord, ...]} | 0 | None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus._native.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One partition's single-record reads (see shmbus/core/_native.c).",
    .tp_new = reader_new,
    .tp_traverse = (traverseproc)reader_traverse,
    .tp_clear = (inquiry)reader_clear,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_members = reader_members,
    .tp_methods = reader_methods,
};

/* add_sleepers(addr, delta) -> the count before: a consumer going to sleep on
 * (+1) or waking from (-1) this ring; a full barrier (lock xadd), as the kernel's */
static PyObject *py_add_sleepers(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int64_t addr, delta;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_sleepers(addr, delta)");
        return NULL;
    }
    if (as_i64(args[0], &addr) || as_i64(args[1], &delta)) return NULL;
    int32_t before = __atomic_fetch_add((int32_t *)((uint8_t *)(uintptr_t)addr + R_SLEEPERS), (int32_t)delta,
                                        __ATOMIC_SEQ_CST);
    return PyLong_FromLong(before);
}

/* crc32c(data: bytes, crc=0) -> the finished CRC-32C continuing a finished crc */
static PyObject *py_crc32c(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "crc32c(data: bytes, crc: int = 0)");
        return NULL;
    }
    int64_t crc = 0;
    if (nargs == 2 && as_i64(args[1], &crc)) return NULL;
    uint32_t c = crc_run((uint32_t)crc ^ 0xFFFFFFFFu, (const uint8_t *)PyBytes_AS_STRING(args[0]),
                         (size_t)PyBytes_GET_SIZE(args[0]));
    return PyLong_FromUnsignedLong(c ^ 0xFFFFFFFFu);
}

/* --- Kafka's murmur2 (kernels/murmur2.py): the partition of a key ----------- */
static uint32_t murmur2(const uint8_t *p, int64_t n) {
    const uint32_t m = 0x5BD1E995u;
    uint32_t h = 0x9747B28Cu ^ (uint32_t)n;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t k = (uint32_t)p[i] | ((uint32_t)p[i + 1] << 8) | ((uint32_t)p[i + 2] << 16) |
                     ((uint32_t)p[i + 3] << 24);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h = (h * m) ^ k;
    }
    switch (n & 3) {
        case 3: h ^= (uint32_t)p[i + 2] << 16; /* fall through */
        case 2: h ^= (uint32_t)p[i + 1] << 8;  /* fall through */
        case 1: h ^= p[i]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

/* murmur2(key: bytes) -> int in [0, 2**32) (kafka-python's convention) */
static PyObject *py_murmur2(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "murmur2(key: bytes)");
        return NULL;
    }
    return PyLong_FromUnsignedLong(
        murmur2((const uint8_t *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0])));
}

/* partition(key: bytes, n) -> (murmur2(key) & 0x7fffffff) % n, Kafka's partition for a key */
static PyObject *py_partition(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int64_t n;
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "partition(key: bytes, num_partitions: int)");
        return NULL;
    }
    if (as_i64(args[1], &n)) return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "num_partitions must be >= 1");
        return NULL;
    }
    uint32_t h = murmur2((const uint8_t *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]));
    return PyLong_FromLongLong((int64_t)(h & 0x7FFFFFFFu) % n);
}

/* --- append_batch: many records, one claim (kernels/frames.py: append_batch) -- */
/* Records first.. of a batch, as many as fit a quarter ring, in ONE claim;
 * consecutive offsets go to out[j]; the claim's first frame is published last,
 * so readers see the whole claim at once. Record j's value is
 * data[starts[j] : starts[j] + lens[j]] (lens -1: null), its key
 * keys[kstarts[j] : ... + klens[j]] (klens -1: null). Returns count << 2 | wake
 * bits, or a negative status (ST_STALLED: the claim was fenced, none of it is
 * published). */
static void write_frame(uint8_t *buf, int64_t i, int64_t off, int64_t ts, const uint8_t *key, int64_t klen,
                        const uint8_t *value, int64_t vlen, int64_t flen) {
    int64_t size = (klen > 0 ? klen : 0) + (vlen > 0 ? vlen : 0);
    st64(buf, i + F_OFFSET, off);
    st64(buf, i + F_TS, ts);
    st32(buf, i + F_KLEN, (int32_t)klen);
    st32(buf, i + F_VLEN, (int32_t)vlen);
    st32(buf, i + F_HLEN, 0);
    uint8_t *b = buf + i + F_HDR;
    if (klen > 0) { memcpy(b, key, (size_t)klen); b += klen; }
    if (vlen > 0) { memcpy(b, value, (size_t)vlen); b += vlen; }
    memset(b, 0, (size_t)(buf + i + flen - b));
    uint32_t c = crc_run(0xFFFFFFFFu, buf + i + F_OFFSET, F_CRC - F_OFFSET);
    c = crc_run(c, buf + i + F_HDR, (size_t)size);
    st32(buf, i + F_CRC, (int32_t)(c ^ 0xFFFFFFFFu));
}

static PyObject *py_append_batch(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError,
                        "append_batch(addr, data, starts, lens, keys, kstarts, klens, ts, pid, first, out)");
        return NULL;
    }
    int64_t addr, ts, pid, first;
    if (as_i64(args[0], &addr) || as_i64(args[7], &ts) || as_i64(args[8], &pid) || as_i64(args[9], &first))
        return NULL;
    Py_buffer v[7];
    int got = 0;
    PyObject *result = NULL;
    static const int which[7] = {1, 2, 3, 4, 5, 6, 10};
    for (; got < 7; got++) {
        int flags = which[got] == 10 ? PyBUF_WRITABLE : PyBUF_SIMPLE;
        if (PyObject_GetBuffer(args[which[got]], &v[got], flags) < 0) goto done;
    }
    const uint8_t *data = v[0].buf, *keys = v[3].buf;
    const int64_t *starts = v[1].buf, *lens = v[2].buf, *kstarts = v[4].buf, *klens = v[5].buf;
    int64_t *out = v[6].buf;
    int64_t n_total = v[1].len / 8;
    if (v[2].len / 8 < n_total || v[4].len / 8 < n_total || v[5].len / 8 < n_total || v[6].len / 8 < n_total ||
        first < 0 || first >= n_total) {
        PyErr_SetString(PyExc_ValueError, "append_batch: arrays shorter than starts, or first out of range");
        goto done;
    }
    uint8_t *buf = (uint8_t *)(uintptr_t)addr;
    int64_t ring = *(const int64_t *)(buf + R_RING_BYTES);
    int64_t mask = ring - 1, cap = ring / 4 < MAX_CLAIM_BYTES ? ring / 4 : MAX_CLAIM_BYTES, need = 0, n = 0;
    for (int64_t j = first; j < n_total; j++) {
        int64_t vl = lens[j], kl = klens[j];
        if ((vl > 0 && (starts[j] < 0 || starts[j] + vl > v[0].len)) ||
            (kl > 0 && (kstarts[j] < 0 || kstarts[j] + kl > v[3].len))) {
            PyErr_Format(PyExc_ValueError, "append_batch: record %lld lies outside its buffer", (long long)j);
            goto done;
        }
        int64_t fl = align8(F_HDR + (vl > 0 ? vl : 0) + (kl > 0 ? kl : 0));
        if (fl * 2 > ring) {
            if (n == 0) {
                result = PyLong_FromLongLong(ST_TOO_LARGE);
                goto done;
            }
            break;
        }
        if (n > 0 && need + fl > cap) break;
        need += fl;
        n++;
    }
    if (ld_acq64(buf, R_FLAGS) & FLAG_DELETED) {
        result = PyLong_FromLongLong(ST_DELETED);
        goto done;
    }
    int64_t fl0 = align8(F_HDR + (lens[first] > 0 ? lens[first] : 0) + (klens[first] > 0 ? klens[first] : 0));
    for (;;) {
        int64_t pos = ld_acq64(buf, R_CLAIM_POS);
        int64_t off = ld_acq64(buf, R_CLAIM_POS + 8);
        int64_t idx = pos & mask;
        int64_t pad = idx + need > ring ? ring - idx : 0;
        int64_t rel = ld_acq64(buf, R_RELEASED);
        if (pos + pad + need - rel > ring) {
            result = PyLong_FromLongLong(ST_FULL);
            goto done;
        }
        if (!cas128(buf, R_CLAIM_POS, pos, off, pos + pad + need, off + n)) continue;
        int64_t fpos = pos + pad;
        if (pad > 0 && !cas64(buf, RING_HDR + (pos & mask), 0, hdr_word(pad, T_PADDING, 0))) continue;
        int64_t i0 = RING_HDR + (fpos & mask);
        /* the first frame's RESERVED word carries the whole claim, so a fence pads all of it */
        if (!cas64(buf, i0, 0, hdr_word(need, T_RESERVED, pid))) continue;
        int64_t i = i0 + fl0;
        for (int64_t k = 1; k < n; k++) {
            int64_t j = first + k, vl = lens[j], kl = klens[j];
            int64_t fl = align8(F_HDR + (vl > 0 ? vl : 0) + (kl > 0 ? kl : 0));
            write_frame(buf, i, off + k, ts, keys + (kl > 0 ? kstarts[j] : 0), kl, data + (vl > 0 ? starts[j] : 0),
                        vl, fl);
            __atomic_store_n((int64_t *)(buf + i), hdr_word(fl, T_DATA, 0), __ATOMIC_RELEASE);
            out[j] = off + k;
            i += fl;
        }
        int64_t vl = lens[first], kl = klens[first];
        write_frame(buf, i0, off, ts, keys + (kl > 0 ? kstarts[first] : 0), kl,
                    data + (vl > 0 ? starts[first] : 0), vl, fl0);
        if (!publish(buf, i0, hdr_word(need, T_RESERVED, pid), fl0)) {
            result = PyLong_FromLongLong(ST_STALLED);
            goto done;
        }
        out[first] = off;
        int64_t bits = 0;
        if (ld_acq32(buf, R_SLEEPERS) > 0) bits |= 1;
        int64_t used = fpos + need - rel;
        if (used * 2 > ring && (used - need - pad) * 2 <= ring) bits |= 2;
        result = PyLong_FromLongLong((n << 2) | bits);
        goto done;
    }
done:
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    return result;
}

/* --- commit_offset: a group member's commit (kernels/groups.py) ------------- */
/* commit_offset(addr, slot, token, offset) -> 0, -2 (fenced: the slot's owner
 * token is not `token`; nothing written) or -3 (no such slot). One 128-bit CAS
 * (token, old offset) -> (token, offset), retried only if the offset changed. */
static PyObject *py_commit_offset(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int64_t addr, slot, token, offset;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "commit_offset(addr, slot, token, offset)");
        return NULL;
    }
    if (as_i64(args[0], &addr) || as_i64(args[1], &slot) || as_i64(args[2], &token) || as_i64(args[3], &offset))
        return NULL;
    uint8_t *buf = (uint8_t *)(uintptr_t)addr;
    if (slot < 0 || slot >= *(const int64_t *)(buf + G_SLOTS)) return PyLong_FromLong(G_BAD_SLOT);
    int64_t i = G_HDR + slot * G_SLOT_BYTES;
    for (;;) {
        int64_t tok = ld_acq64(buf, i);
        int64_t old = ld_acq64(buf, i + S_OFFSET);
        if (tok != token) return PyLong_FromLong(G_FENCED);
        if (cas128(buf, i, tok, old, tok, offset)) return PyLong_FromLong(G_OK);
    }
}

/* --- Sender: Producer.send's common case, whole ------------------------------
 *
 * A producer with no serializers and acks="memory" sets its instance attribute
 * `send` to a Sender, so `producer.send(...)` is one C call. It handles what
 * most sends are: a topic already opened, bytes or None for value and key,
 * headers (a list or tuple of (str, bytes | None); other kinds and bad headers
 * go to the Python send, which converts or explains them),
 * partition and timestamp_ms None or ints. It picks the partition as
 * Producer.send does (the given one; else Kafka's murmur2 of the key; else
 * round robin), appends, and builds the RecordMetadata. Anything else, or an
 * append that does not succeed at once (a full ring, a deleted topic, a record
 * too large), goes to the Python send with the same arguments (and the chosen
 * partition and timestamp), which handles it; nothing was written then. An
 * append whose claim was fenced (ST_STALLED: this writer stalled past the
 * unblock timeout) is not sent again: `stalled(topic, partition)` raises.
 *
 * Per topic it reads a bytearray of int64s: [partitions, round-robin next,
 * ring address 0, ring address 1, ...], kept by Producer._topic.
 */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *topics;    /* dict: topic -> bytearray state (above) */
    PyObject *fallback;  /* the Python send: (topic, value, key, headers, partition, timestamp_ms) */
    PyObject *after;     /* Producer._after(bits): ring the doorbell / spill bell */
    PyObject *stalled;   /* Producer._stalled(topic, partition): raises StalledWriteError */
    PyTypeObject *meta;  /* RecordMetadata, a 4-tuple subclass */
    int64_t pid;
} Sender;

static const char *const send_kw[] = {"topic", "value", "key", "headers", "partition", "timestamp_ms"};

static PyObject *sender_fallback(Sender *s, PyObject *const *a) {
    return PyObject_Vectorcall(s->fallback, a, 6, NULL);
}

static PyObject *sender_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Sender *s = (Sender *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *a[6] = {NULL, Py_None, Py_None, Py_None, Py_None, Py_None};
    if (nargs > 6) return PyObject_Vectorcall(s->fallback, args, nargsf, kwnames);  /* its TypeError */
    for (Py_ssize_t i = 0; i < nargs; i++) a[i] = args[i];
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t j = 0; j < nk; j++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, j);
            int k;
            for (k = 1; k < 6; k++)
                if (PyUnicode_CompareWithASCIIString(name, send_kw[k]) == 0) break;
            if (k == 6 || a[k] != Py_None || k < nargs)  /* unknown or repeated: Python says what is wrong */
                return PyObject_Vectorcall(s->fallback, args, nargsf, kwnames);
            a[k] = args[nargs + j];
        }
    }
    if (a[0] == NULL) return PyObject_Vectorcall(s->fallback, args, nargsf, kwnames);
    PyObject *topic = a[0], *value = a[1], *key = a[2], *headers = a[3], *part = a[4], *tso = a[5];
    if (!PyUnicode_CheckExact(topic) || (value != Py_None && !PyBytes_CheckExact(value)) ||
        (key != Py_None && !PyBytes_CheckExact(key)) || (part != Py_None && !PyLong_CheckExact(part)) ||
        (tso != Py_None && !PyLong_CheckExact(tso)))
        return sender_fallback(s, a);
    /* headers first (no Python code runs after this until the append): a list or tuple of
     * (str, bytes | None) is encoded here; anything else, or bad headers, go to the Python send */
    PyObject *hb = NULL, *res = NULL;
    if (headers != Py_None) {
        if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers)) return sender_fallback(s, a);
        if (PySequence_Fast_GET_SIZE(headers) > 0) {
            int e = headers_encode(headers, &hb);
            if (e < 0) return NULL;
            if (e > 0) return sender_fallback(s, a);
        }
    }
    PyObject *st = PyDict_GetItemWithError(s->topics, topic);
    if (st == NULL) {
        if (!PyErr_Occurred()) res = sender_fallback(s, a);  /* not opened yet, or the producer is closed */
        Py_XDECREF(hb);
        return res;
    }
    int64_t *state = (int64_t *)PyByteArray_AS_STRING(st);
    int64_t n = state[0], p;
    if (part != Py_None) {
        int overflow;
        p = PyLong_AsLongLongAndOverflow(part, &overflow);
        if (overflow || p < 0 || p >= n) {  /* out of range: its ValueError */
            Py_XDECREF(hb);
            return sender_fallback(s, a);
        }
    } else if (key != Py_None) {
        p = (int64_t)(murmur2((const uint8_t *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) & 0x7FFFFFFFu) % n;
    } else {
        p = state[1];
        state[1] = p + 1 < n ? p + 1 : 0;
    }
    int64_t ts;
    if (tso == Py_None) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        ts = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    } else {
        int overflow;
        ts = PyLong_AsLongLongAndOverflow(tso, &overflow);
        if (overflow || ts < 0) {  /* out of range: the Python send raises its error */
            Py_XDECREF(hb);
            return sender_fallback(s, a);
        }
    }
    const uint8_t *kp = NULL, *vp = NULL;
    int64_t kl = -1, vl = -1;
    if (key != Py_None) { kp = (const uint8_t *)PyBytes_AS_STRING(key); kl = PyBytes_GET_SIZE(key); }
    if (value != Py_None) { vp = (const uint8_t *)PyBytes_AS_STRING(value); vl = PyBytes_GET_SIZE(value); }
    int64_t r = append_one((uint8_t *)(uintptr_t)state[2 + p], kp, kl, vp, vl,
                           hb ? (const uint8_t *)PyBytes_AS_STRING(hb) : NULL, hb ? PyBytes_GET_SIZE(hb) : 0, ts,
                           s->pid);
    Py_XDECREF(hb);
    if (r == ST_STALLED) {
        PyObject *pp = PyLong_FromLongLong(p);
        if (!pp) return NULL;
        PyObject *x = PyObject_CallFunctionObjArgs(s->stalled, topic, pp, NULL);
        Py_DECREF(pp);
        if (x) {  /* it should have raised */
            Py_DECREF(x);
            PyErr_SetString(PyExc_RuntimeError, "Sender: stalled() returned");
        }
        return NULL;
    }
    if (r < 0) {  /* nothing written: the Python send waits, reloads or raises, on the same partition */
        PyObject *pp = PyLong_FromLongLong(p), *tt = PyLong_FromLongLong(ts);
        PyObject *res = NULL;
        if (pp && tt) {
            PyObject *b[6] = {topic, value, key, headers, pp, tt};
            res = PyObject_Vectorcall(s->fallback, b, 6, NULL);
        }
        Py_XDECREF(pp);
        Py_XDECREF(tt);
        return res;
    }
    if (r & 3) {
        PyObject *bits = PyLong_FromLongLong(r & 3);
        if (!bits) return NULL;
        PyObject *x = PyObject_CallOneArg(s->after, bits);
        Py_DECREF(bits);
        if (!x) return NULL;
        Py_DECREF(x);
    }
    PyObject *out = s->meta->tp_alloc(s->meta, 4);
    if (!out) return NULL;
    PyObject *po = PyLong_FromLongLong(p), *oo = PyLong_FromLongLong(r >> 2), *to = PyLong_FromLongLong(ts);
    if (!po || !oo || !to) {
        Py_XDECREF(po);
        Py_XDECREF(oo);
        Py_XDECREF(to);
        Py_DECREF(out);
        return NULL;
    }
    Py_INCREF(topic);
    PyTuple_SET_ITEM(out, 0, topic);
    PyTuple_SET_ITEM(out, 1, po);
    PyTuple_SET_ITEM(out, 2, oo);
    PyTuple_SET_ITEM(out, 3, to);
    return out;
}

static PyObject *sender_new(PyTypeObject *type, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *topics, *fallback, *after, *meta, *stalled;
    long long pid;
    if (!PyArg_ParseTuple(args, "O!OOO!LO:Sender", &PyDict_Type, &topics, &fallback, &after, &PyType_Type, &meta,
                          &pid, &stalled))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)meta, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Sender: meta must be a tuple subclass");
        return NULL;
    }
    Sender *s = (Sender *)type->tp_alloc(type, 0);
    if (!s) return NULL;
    s->vectorcall = sender_call;
    s->topics = Py_NewRef(topics);
    s->fallback = Py_NewRef(fallback);
    s->after = Py_NewRef(after);
    s->stalled = Py_NewRef(stalled);
    s->meta = (PyTypeObject *)Py_NewRef(meta);
    s->pid = pid;
    return (PyObject *)s;
}

static int sender_traverse(Sender *s, visitproc visit, void *arg) {
    Py_VISIT(s->topics);
    Py_VISIT(s->fallback);
    Py_VISIT(s->after);
    Py_VISIT(s->stalled);
    Py_VISIT(s->meta);
    return 0;
}

static int sender_clear(Sender *s) {
    Py_CLEAR(s->topics);
    Py_CLEAR(s->fallback);
    Py_CLEAR(s->after);
    Py_CLEAR(s->stalled);
    Py_CLEAR(s->meta);
    return 0;
}

static void sender_dealloc(Sender *s) {
    PyObject_GC_UnTrack(s);
    sender_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *sender_set_pid(Sender *s, PyObject *arg) {
    long long pid = PyLong_AsLongLong(arg);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    s->pid = pid;
    Py_RETURN_NONE;
}

static PyMethodDef sender_methods[] = {
    {"set_pid", (PyCFunction)sender_set_pid, METH_O, "The pid written into claims (after a fork)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus._native.Sender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Producer.send's common case in one call (see shmbus/core/_native.c).",
    .tp_new = sender_new,
    .tp_traverse = (traverseproc)sender_traverse,
    .tp_clear = (inquiry)sender_clear,
    .tp_dealloc = (destructor)sender_dealloc,
    .tp_vectorcall_offset = offsetof(Sender, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_methods = sender_methods,
};

/* --- scan, scan_copy: a consumer's general path (kernels/frames.py) --------
 * The same walks as the kernels of these names, on the same arguments, so a
 * consumer reads batches, segment chunks and laps without importing numba.
 * scan(buf, base, mask, pos, end, max_n, min_offset, verify, meta) describes
 * DATA frames from `pos` into meta rows (frame pos, offset, timestamp, key len,
 * value len, headers len, body index, frame len); meta[0] = (new pos, records,
 * stop reason, bad frame pos). Ring: base = RING_HDR, mask = ring bytes - 1; a
 * segment chunk: base = 0, mask = -1, end = its bytes. A frame that goes on
 * past `end` stops the walk with STOP_END, as in the kernel (the caller reads
 * more); beyond that, unlike the kernel, a frame that would reach past the
 * memory stops it as corrupt (numba does not check bounds; a wild length here
 * must not read past the mapping).
 * scan_copy also copies the values back to back into `values` (meta column 6
 * becomes the value's start there) and stops early when it is full. */
static int64_t scan_core(const uint8_t *buf, int64_t buflen, int64_t base, int64_t mask, int64_t pos, int64_t end,
                         int64_t max_n, int64_t min_offset, int verify, int64_t *meta, int64_t rows) {
    int64_t n = 0, reason = STOP_MAX, bad = -1;
    int64_t cap = max_n < rows - 1 ? max_n : rows - 1;
    while (n < cap) {
        if (pos + 8 > end) {
            reason = STOP_END;
            break;
        }
        int64_t i = base + (pos & mask);
        if (i < 0 || i + 8 > buflen) {
            reason = STOP_CORRUPT;
            bad = pos;
            break;
        }
        int64_t h = ld_acq64(buf, i);
        int64_t t = (h >> 32) & 0xFF, ln = h & 0xFFFFFFFF;
        if (t == T_FREE || t == T_RESERVED) {
            reason = STOP_EMPTY;
            break;
        }
        if (ln < 8 || (ln & 7) || t > T_POISON) {
            reason = STOP_CORRUPT;
            bad = pos;
            break;
        }
        if (pos + ln > end) {  /* (a segment chunk: the frame goes on past what was read) */
            reason = STOP_END;
            break;
        }
        if (i + ln > buflen) {  /* inside the range but past the memory: a length that cannot be */
            reason = STOP_CORRUPT;
            bad = pos;
            break;
        }
        if (t == T_DATA) {
            int32_t kl, vl, hl;
            if (ln < F_HDR) {
                reason = STOP_CORRUPT;
                bad = pos;
                break;
            }
            memcpy(&kl, buf + i + F_KLEN, 4);
            memcpy(&vl, buf + i + F_VLEN, 4);
            memcpy(&hl, buf + i + F_HLEN, 4);
            int64_t body = (int64_t)(kl > 0 ? kl : 0) + (vl > 0 ? vl : 0) + hl;
            if (kl < -1 || vl < -1 || hl < 0 || F_HDR + body > ln) {
                reason = STOP_CORRUPT;
                bad = pos;
                break;
            }
            if (verify) {
                uint32_t c = crc_run(0xFFFFFFFFu, buf + i + F_OFFSET, F_CRC - F_OFFSET);
                c = crc_run(c, buf + i + F_HDR, (size_t)body) ^ 0xFFFFFFFFu;
                uint32_t want;
                memcpy(&want, buf + i + F_CRC, 4);
                if (c != want) {
                    reason = STOP_CRC;
                    bad = pos;
                    break;
                }
            }
            int64_t off;
            memcpy(&off, buf + i + F_OFFSET, 8);
            if (off >= min_offset) {
                int64_t *r = meta + (1 + n) * META_COLS;
                r[0] = pos;
                r[1] = off;
                memcpy(&r[2], buf + i + F_TS, 8);
                r[3] = kl;
                r[4] = vl;
                r[5] = hl;
                r[6] = i + F_HDR;
                r[7] = ln;
                n++;
            }
        }
        pos += ln;
    }
    meta[0] = pos;
    meta[1] = n;
    meta[2] = reason;
    meta[3] = bad;
    return n;
}

static int64_t copy_values(const uint8_t *buf, int64_t n, int64_t *meta, uint8_t *values, int64_t vcap) {
    int64_t at = 0;
    for (int64_t r = 0; r < n; r++) {
        int64_t *row = meta + (1 + r) * META_COLS;
        int64_t vl = row[M_VLEN] > 0 ? row[M_VLEN] : 0;
        if (at + vl > vcap) {  /* keep the records that fit; resume at the first that did not */
            meta[MS_POS] = row[M_POS];
            meta[MS_COUNT] = r;
            meta[MS_REASON] = STOP_MAX;
            return r;
        }
        memcpy(values + at, buf + row[M_BODY] + (row[M_KLEN] > 0 ? row[M_KLEN] : 0), (size_t)vl);
        row[M_BODY] = at;
        at += vl;
    }
    return n;
}

/* scan(buf, base, mask, pos, end, max_n, min_offset, verify, meta[, values]) -> records */
static PyObject *py_scan(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9 && nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "scan(buf, base, mask, pos, end, max_n, min_offset, verify, meta[, values])");
        return NULL;
    }
    int64_t base, mask, pos, end, max_n, min_offset;
    if (as_i64(args[1], &base) || as_i64(args[2], &mask) || as_i64(args[3], &pos) || as_i64(args[4], &end) ||
        as_i64(args[5], &max_n) || as_i64(args[6], &min_offset))
        return NULL;
    int verify = PyObject_IsTrue(args[7]);
    if (verify < 0) return NULL;
    Py_buffer b, m, v;
    if (get_data_rows(args[0], args[8], PyBUF_WRITABLE, &b, &m) < 0) return NULL;
    int has_values = nargs == 10;
    if (has_values && PyObject_GetBuffer(args[9], &v, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&b);
        PyBuffer_Release(&m);
        return NULL;
    }
    PyObject *result = NULL;
    int64_t rows = m.len / (8 * META_COLS);
    if (rows < 1) {
        PyErr_SetString(PyExc_ValueError, "scan: meta must hold at least one row of 8 int64");
    } else {
        int64_t n = scan_core(b.buf, b.len, base, mask, pos, end, max_n, min_offset, verify, m.buf, rows);
        if (has_values) n = copy_values(b.buf, n, m.buf, v.buf, v.len);
        result = PyLong_FromLongLong(n);
    }
    PyBuffer_Release(&b);
    PyBuffer_Release(&m);
    if (has_values) PyBuffer_Release(&v);
    return result;
}

/* scan_ring(addr, pos, max_n, min_offset, meta_addr, meta_rows[, values_addr, values_len]) -> records:
 * scan (and copy) over the ring mapped at addr, never past RELEASED + ring (past it lies the oldest
 * frame again, when the ring is exactly full); the entry points the consumer calls by address */
static PyObject *py_scan_ring(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[8];
    if (nargs != 6 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_ring(addr, pos, max_n, min_offset, meta_addr, meta_rows[, values_addr, values_len])");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nargs; k++)
        if (as_i64(args[k], &a[k])) return NULL;
    const uint8_t *buf = (const uint8_t *)(uintptr_t)a[0];
    int64_t ring = *(const int64_t *)(buf + R_RING_BYTES);
    int64_t end = ld_acq64(buf, R_RELEASED) + ring;
    int64_t *meta = (int64_t *)(uintptr_t)a[4];
    int64_t n = scan_core(buf, RING_HDR + ring, RING_HDR, ring - 1, a[1], end, a[2], a[3], 0, meta, a[5]);
    if (nargs == 8) n = copy_values(buf, n, meta, (uint8_t *)(uintptr_t)a[6], a[7]);
    return PyLong_FromLongLong(n);
}

/* --- write_frames: a spill step of SegmentWriter.append (log/writer.py) ---
 * write_frames(buf, rows, cols, first, fd, ifd, tfd, size, segment_bytes, base, last_index_pos, max_ts,
 *              index_interval, next_offset) -> (next_row, frames, size, last_index_pos, max_ts, next_offset)
 * `rows` holds spill_scan rows (buffer index, frame length, offset, timestamp, type, ...), `cols` int64
 * each. From row `first`: rows that are not DATA, or whose offset is below next_offset (on disk already: a
 * supervisor restarted between writing and releasing them), are passed over; DATA frames are appended to
 * the segment file `fd` while they fit in segment_bytes (an empty segment takes one whatever its size).
 * It stops at the first frame that does not fit, or at once if fd < 0: next_row is that row, and the
 * caller opens a new segment based at its offset. Frames lying back to back in buf go out as one iovec.
 * Then the sparse index entries, as its numba twin (kernels/segment_write.py) makes them: the first frame at or after each
 * index_interval boundary of the file gets (offset - base, file position) in `ifd` and (the running
 * maximum timestamp, offset - base) in `tfd`.
 * On an error the three files are cut back to their sizes at the call and OSError is raised: nothing of
 * this call stays on disk, so a retry writes the same frames once (not twice, with the segment's size
 * and indexes out of step). */

#define WF_IOV 512

typedef struct { uint32_t rel, pos; } idx_entry;            /* layout/segment.py: an .index record */
typedef struct { int64_t ts; uint32_t rel, pad; } tidx_entry;  /* a .timeindex record */
_Static_assert(sizeof(idx_entry) == IDX_BYTES && offsetof(idx_entry, rel) == IDX_OFF_REL &&
                   offsetof(idx_entry, pos) == IDX_OFF_POS, "idx_entry is not layout/segment.py's .index record");
_Static_assert(sizeof(tidx_entry) == TIDX_BYTES && offsetof(tidx_entry, ts) == TIDX_OFF_TS &&
                   offsetof(tidx_entry, rel) == TIDX_OFF_REL && offsetof(tidx_entry, pad) == TIDX_OFF_PAD,
               "tidx_entry is not layout/segment.py's .timeindex record");

static int write_all(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        while (cnt > 0 && (size_t)w >= iov->iov_len) {  /* a short write: go on after what went out */
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static int write_buf(int fd, const void *p, size_t n) {
    struct iovec v = {(void *)p, n};
    return n ? write_all(fd, &v, 1) : 0;
}

static inline int64_t floordiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

static PyObject *py_write_frames(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "write_frames(buf, rows, cols, first, fd, ifd, tfd, size, segment_bytes, "
                                         "base, last_index_pos, max_ts, index_interval, next_offset)");
        return NULL;
    }
    int64_t a[14];
    for (int k = 2; k < 14; k++)
        if (as_i64(args[k], &a[k])) return NULL;
    int64_t cols = a[2], first = a[3], fd = a[4], ifd = a[5], tfd = a[6], size = a[7], seg_bytes = a[8];
    int64_t base = a[9], last_index_pos = a[10], max_ts = a[11], interval = a[12], next_offset = a[13];
    if (cols < SP_MIN_COLS || interval <= 0) {
        PyErr_SetString(PyExc_ValueError, "write_frames: rows need 5 columns or more, index_interval > 0");
        return NULL;
    }
    Py_buffer b, r;
    if (get_data_rows(args[0], args[1], PyBUF_C_CONTIGUOUS, &b, &r) < 0) return NULL;
    PyObject *result = NULL;
    const int64_t *rows = r.buf;
    int64_t n = r.len / (8 * cols);
    const uint8_t *src = b.buf;
    struct iovec iov[WF_IOV];
    idx_entry ient[WF_IOV];
    tidx_entry tent[WF_IOV];
    int niov = 0, nent = 0;
    int64_t i = first, frames = 0, at = size, prev_block = floordiv(last_index_pos, interval);
    off_t isize0 = -1, tsize0 = -1;
    struct stat st;
    if (fd >= 0) {
        if (fstat((int)ifd, &st) < 0) goto oserror_nocut;
        isize0 = st.st_size;
        if (fstat((int)tfd, &st) < 0) goto oserror_nocut;
        tsize0 = st.st_size;
    }
    for (; i < n; i++) {
        const int64_t *row = rows + i * cols;
        int64_t idx = row[SP_INDEX], len = row[SP_LEN], off = row[SP_OFFSET], ts = row[SP_TS];
        if (row[SP_TYPE] != T_DATA || off < next_offset) continue;
        if (fd < 0 || (at > 0 && at + len > seg_bytes)) break;  /* the caller opens a (new) segment */
        if (idx < 0 || len <= 0 || idx + len > b.len) {
            PyErr_Format(PyExc_ValueError, "write_frames: row %lld lies outside the buffer", (long long)i);
            goto cut;
        }
        if (niov > 0 && (const uint8_t *)iov[niov - 1].iov_base + iov[niov - 1].iov_len == src + idx) {
            iov[niov - 1].iov_len += (size_t)len;
        } else {
            if (niov == WF_IOV) {
                if (write_all((int)fd, iov, niov) < 0) goto oserror;
                niov = 0;
            }
            iov[niov].iov_base = (void *)(src + idx);
            iov[niov].iov_len = (size_t)len;
            niov++;
        }
        if (ts > max_ts) max_ts = ts;
        int64_t block = floordiv(at, interval);
        if (block != prev_block) {
            if (nent == WF_IOV) {  /* the frames these entries point at go out first */
                if (write_all((int)fd, iov, niov) < 0) goto oserror;
                niov = 0;
                if (write_buf((int)ifd, ient, sizeof(idx_entry) * nent) < 0 ||
                    write_buf((int)tfd, tent, sizeof(tidx_entry) * nent) < 0)
                    goto oserror;
                nent = 0;
            }
            ient[nent].rel = (uint32_t)(off - base);
            ient[nent].pos = (uint32_t)at;
            tent[nent].ts = max_ts;
            tent[nent].rel = (uint32_t)(off - base);
            tent[nent].pad = 0;
            nent++;
            prev_block = block;
            last_index_pos = at;
        }
        at += len;
        next_offset = off + 1;
        frames++;
    }
    if ((niov && write_all((int)fd, iov, niov) < 0) ||
        (nent && (write_buf((int)ifd, ient, sizeof(idx_entry) * nent) < 0 ||
                  write_buf((int)tfd, tent, sizeof(tidx_entry) * nent) < 0)))
        goto oserror;
    result = Py_BuildValue("(LLLLLL)", (long long)i, (long long)frames, (long long)at, (long long)last_index_pos,
                           (long long)max_ts, (long long)next_offset);
    goto done;
oserror:
    PyErr_SetFromErrno(PyExc_OSError);
cut: {
        /* leave the files as they were at the call (keeps the error that brought us here) */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (ftruncate((int)fd, (off_t)size) < 0 || ftruncate((int)ifd, isize0) < 0 || ftruncate((int)tfd, tsize0) < 0) {
            /* the next recovery cuts a torn tail; nothing more to do here */
        }
        PyErr_Restore(et, ev, tb);
    }
    goto done;
oserror_nocut:
    PyErr_SetFromErrno(PyExc_OSError);
done:
    PyBuffer_Release(&b);
    PyBuffer_Release(&r);
    return result;
}

static PyMethodDef methods[] = {
    {"write_frames", (PyCFunction)(void (*)(void))py_write_frames, METH_FASTCALL,
     "write_frames(buf, rows, cols, first, fd, ifd, tfd, size, segment_bytes, base, last_index_pos, max_ts, "
     "index_interval, next_offset): a spill step of SegmentWriter.append"},
    {"scan", (PyCFunction)(void (*)(void))py_scan, METH_FASTCALL,
     "scan(buf, base, mask, pos, end, max_n, min_offset, verify, meta[, values]): the scan kernel"},
    {"scan_ring", (PyCFunction)(void (*)(void))py_scan_ring, METH_FASTCALL,
     "scan_ring(addr, pos, max_n, min_offset, meta_addr, meta_rows[, values_addr, values_len])"},
    {"append_batch", (PyCFunction)(void (*)(void))py_append_batch, METH_FASTCALL,
     "Append records of a batch in one claim."},
    {"commit_offset", (PyCFunction)(void (*)(void))py_commit_offset, METH_FASTCALL,
     "A group member's commit of one partition's offset."},
    {"encode_headers", (PyCFunction)py_encode_headers, METH_O,
     "Headers -> their bytes, or None for kinds the Python encoder handles."},
    {"decode_headers", (PyCFunction)py_decode_headers, METH_O, "Header bytes -> [(str, bytes | None), ...]."},
    {"build_records", (PyCFunction)(void (*)(void))py_build_records, METH_FASTCALL,
     "ConsumerRecords from scan metadata rows and their buffer."},
    {"murmur2", (PyCFunction)(void (*)(void))py_murmur2, METH_FASTCALL, "Kafka's murmur2 of bytes."},
    {"partition", (PyCFunction)(void (*)(void))py_partition, METH_FASTCALL, "Kafka's partition for a key."},
    {"append", (PyCFunction)(void (*)(void))py_append, METH_FASTCALL, "Append one record to a ring."},
    {"add_sleepers", (PyCFunction)(void (*)(void))py_add_sleepers, METH_FASTCALL, "Count a sleeper on a ring."},
    {"crc32c", (PyCFunction)(void (*)(void))py_crc32c, METH_FASTCALL, "CRC-32C of bytes."},
    {NULL, NULL, 0, NULL},
};

/* LAYOUT: every constant of _layout.h, by name (shmbus/native.py compares it with shmbus/layout) */
static PyObject *layout_dict(void) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
#define X(name)                                                         \
    {                                                                   \
        PyObject *v = PyLong_FromLongLong((long long)(name));           \
        if (!v || PyDict_SetItemString(d, #name, v) < 0) {              \
            Py_XDECREF(v);                                              \
            Py_DECREF(d);                                               \
            return NULL;                                                \
        }                                                               \
        Py_DECREF(v);                                                   \
    }
    SHMBUS_LAYOUT_TABLE(X)
#undef X
    return d;
}

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "shmbus._native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    crc_init();
    if (PyType_Ready(&SenderType) < 0 || PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&SenderType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *layout = layout_dict();
    if (!layout || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "HAVE_SSE42", have_sse42);
    return m;
}

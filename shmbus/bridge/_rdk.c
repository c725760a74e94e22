/* shmbus/bridge/_rdk.c: the bridge's bus -> cluster copy loop, librdkafka driven from C.
 *
 * ``Producer.produce_frames`` hands the frames of one bus partition (scan rows: shmbus/layout/frame.py,
 * over a ring's memory or a segment chunk) to librdkafka, one ``rd_kafka_produceva`` per record, with the
 * key, value, timestamp and headers of the frame and the provenance header after them: no Python object
 * per record. It is the twin of the bridge's Python copier (bridge/runner.py, ``OutCopier``), which does
 * the same through confluent-kafka's ``Producer.produce``; the tests run the bridge both ways.
 *
 * librdkafka is not linked at build time: ``load(path)`` opens the library confluent-kafka itself loaded
 * (so both use one copy) and looks up the functions used. Their types below are the parts of librdkafka's
 * public, stable C interface (rdkafka.h) this file calls.
 *
 * Delivery reports come back in the thread that calls ``poll``/``flush`` (librdkafka's rule), where the
 * callback only counts, per target partition: records produced, records acknowledged, and the highest
 * source offset acknowledged (each record's opaque is its source offset + 1). librdkafka reports a
 * partition's deliveries in order (idempotent producer, gapless), so that offset acknowledges every record
 * before it. Failures and the client's errors are kept for ``errors()``.
 *
 * A ring read is checked record by record: the frame's body is copied first, then the ring's reclaiming
 * position is read; if the spiller passed the frame meanwhile the copy may be torn, and the loop stops
 * there (status STALE) before handing it over. The caller reads on from disk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#include "../core/_layout.h"

/* --- the parts of librdkafka's C interface used (rdkafka.h) --- */
enum {
    VT_END, VT_TOPIC, VT_RKT, VT_PARTITION, VT_VALUE, VT_KEY, VT_OPAQUE, VT_MSGFLAGS, VT_TIMESTAMP,
    VT_HEADER, VT_HEADERS
};
typedef struct {
    int vtype;
    union {
        const char *cstr;
        void *rkt;
        int i;
        int32_t i32;
        int64_t i64;
        struct { void *ptr; size_t size; } mem;
        void *headers;
        void *ptr;
        char _pad[64];
    } u;
} rdk_vu_t;
typedef struct {
    int err;
    void *rkt;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *_private;
} rdk_message_t;
#define RDK_PRODUCER 0
#define RDK_CONF_OK 0
#define RDK_MSG_F_COPY 0x2
#define RDK_PURGE_F_QUEUE 0x1
#define RDK_PURGE_F_INFLIGHT 0x2
#define RDK_ERR_QUEUE_FULL (-184)
#define RDK_MIN_VERSION 0x010600ff /* rd_kafka_produceva */

typedef void (*dr_cb_t)(void *rk, const rdk_message_t *m, void *opaque);
typedef void (*error_cb_t)(void *rk, int err, const char *reason, void *opaque);

static struct {
    int (*version)(void);
    void *(*conf_new)(void);
    int (*conf_set)(void *conf, const char *name, const char *value, char *errstr, size_t errstr_size);
    void (*conf_destroy)(void *conf);
    void (*conf_set_dr_msg_cb)(void *conf, dr_cb_t cb);
    void (*conf_set_error_cb)(void *conf, error_cb_t cb);
    void (*conf_set_opaque)(void *conf, void *opaque);
    void *(*new_)(int type, void *conf, char *errstr, size_t errstr_size);
    void (*destroy)(void *rk);
    int (*poll)(void *rk, int timeout_ms);
    int (*flush)(void *rk, int timeout_ms);
    int (*purge)(void *rk, int flags);
    int (*outq_len)(void *rk);
    void *(*topic_new)(void *rk, const char *topic, void *conf);
    void (*topic_destroy)(void *rkt);
    void *(*headers_new)(size_t initial_count);
    void (*headers_destroy)(void *hdrs);
    int (*header_add)(void *hdrs, const char *name, ssize_t name_size, const void *value, ssize_t value_size);
    void *(*produceva)(void *rk, const rdk_vu_t *vus, size_t cnt);
    int (*error_code)(const void *error);
    const char *(*error_string)(const void *error);
    void (*error_destroy)(void *error);
    const char *(*err2str)(int err);
    int (*fatal_error)(void *rk, char *errstr, size_t errstr_size);
} R;
static int loaded = 0;

#define SYMBOL(field, name) {(void **)&R.field, name}
static const struct { void **slot; const char *name; } SYMBOLS[] = {
    SYMBOL(version, "rd_kafka_version"), SYMBOL(conf_new, "rd_kafka_conf_new"),
    SYMBOL(conf_set, "rd_kafka_conf_set"), SYMBOL(conf_destroy, "rd_kafka_conf_destroy"),
    SYMBOL(conf_set_dr_msg_cb, "rd_kafka_conf_set_dr_msg_cb"),
    SYMBOL(conf_set_error_cb, "rd_kafka_conf_set_error_cb"), SYMBOL(conf_set_opaque, "rd_kafka_conf_set_opaque"),
    SYMBOL(new_, "rd_kafka_new"), SYMBOL(destroy, "rd_kafka_destroy"), SYMBOL(poll, "rd_kafka_poll"),
    SYMBOL(flush, "rd_kafka_flush"), SYMBOL(purge, "rd_kafka_purge"), SYMBOL(outq_len, "rd_kafka_outq_len"),
    SYMBOL(topic_new, "rd_kafka_topic_new"), SYMBOL(topic_destroy, "rd_kafka_topic_destroy"),
    SYMBOL(headers_new, "rd_kafka_headers_new"), SYMBOL(headers_destroy, "rd_kafka_headers_destroy"),
    SYMBOL(header_add, "rd_kafka_header_add"), SYMBOL(produceva, "rd_kafka_produceva"),
    SYMBOL(error_code, "rd_kafka_error_code"), SYMBOL(error_string, "rd_kafka_error_string"),
    SYMBOL(error_destroy, "rd_kafka_error_destroy"), SYMBOL(err2str, "rd_kafka_err2str"),
    SYMBOL(fatal_error, "rd_kafka_fatal_error"),
};

/* --- statuses of produce_frames --- */
#define PF_DONE 0     /* every row handed over */
#define PF_STALE 1    /* the spiller passed row k of a ring read while it was copied: read on from disk */
#define PF_CORRUPT 2  /* row k's header bytes do not parse, or its lengths leave the buffer */
#define PF_ERROR 3    /* librdkafka refused row k (the error is in errors()) */

/* kinds of errors() entries */
#define E_CLIENT 0    /* the client's error callback: the cluster unreachable, ... */
#define E_FATAL 1     /* a fatal error: the producer must be made anew */
#define E_DELIVERY 2  /* a record that was not delivered */
#define E_REFUSED 3   /* produce_frames: a record librdkafka refused (status PF_ERROR) */

#define MAX_ERRORS 32
#define HEADER_NAME "shmbus.bridge"

typedef struct {
    int64_t produced, acked, acked_end, failed;
} PartState;

typedef struct {
    void *rkt;
    PartState *parts;
    int32_t nparts;
} TopicState;

typedef struct {
    int code;
    int kind;
    int32_t partition;
    int topic; /* index, or -1 */
    char text[240];
} ErrorEntry;

typedef struct {
    PyObject_HEAD
    void *rk;
    TopicState *topics;
    int ntopics;
    int last_topic; /* the topic the last delivery report was for */
    ErrorEntry errors[MAX_ERRORS];
    int nerrors;
    int64_t dropped_errors;
    uint8_t *tmp; /* a ring frame's body, copied before it is checked and handed over */
    size_t tmp_cap;
} ProducerObject;

static void keep_error(ProducerObject *self, int code, int kind, int topic, int32_t partition, const char *text) {
    if (self->nerrors >= MAX_ERRORS) {
        self->dropped_errors++;
        return;
    }
    ErrorEntry *e = &self->errors[self->nerrors++];
    e->code = code;
    e->kind = kind;
    e->topic = topic;
    e->partition = partition;
    snprintf(e->text, sizeof e->text, "%s", text ? text : "");
}

static void on_delivery(void *rk, const rdk_message_t *m, void *opaque) {
    (void)rk;
    ProducerObject *self = (ProducerObject *)opaque;
    int t = self->last_topic;
    if (t < 0 || t >= self->ntopics || self->topics[t].rkt != m->rkt) {
        t = -1;
        for (int i = 0; i < self->ntopics; i++)
            if (self->topics[i].rkt == m->rkt) {
                t = i;
                break;
            }
        if (t < 0)
            return;
        self->last_topic = t;
    }
    TopicState *ts = &self->topics[t];
    if (m->partition < 0 || m->partition >= ts->nparts)
        return;
    PartState *ps = &ts->parts[m->partition];
    if (m->err) {
        ps->failed++;
        keep_error(self, m->err, E_DELIVERY, t, m->partition, R.err2str(m->err));
        return;
    }
    ps->acked++;
    int64_t end = (int64_t)(intptr_t)m->_private;
    if (end > ps->acked_end)
        ps->acked_end = end;
}

static void on_error(void *rk, int err, const char *reason, void *opaque) {
    ProducerObject *self = (ProducerObject *)opaque;
    char buf[200];
    if (err == -150) { /* RD_KAFKA_RESP_ERR__FATAL: the underlying error names it */
        int code = R.fatal_error(rk, buf, sizeof buf);
        keep_error(self, code, E_FATAL, -1, -1, buf);
        return;
    }
    keep_error(self, err, E_CLIENT, -1, -1, reason);
}

/* --- module functions --- */
static PyObject *rdk_load(PyObject *mod, PyObject *arg) {
    (void)mod;
    PyObject *path_b = NULL;
    if (!PyUnicode_FSConverter(arg, &path_b))
        return NULL;
    void *h = dlopen(PyBytes_AS_STRING(path_b), RTLD_NOW | RTLD_LOCAL);
    Py_DECREF(path_b);
    if (!h) {
        PyErr_Format(PyExc_OSError, "cannot open librdkafka: %s", dlerror());
        return NULL;
    }
    for (size_t i = 0; i < sizeof SYMBOLS / sizeof SYMBOLS[0]; i++) {
        void *f = dlsym(h, SYMBOLS[i].name);
        if (!f) {
            PyErr_Format(PyExc_OSError, "librdkafka has no %s", SYMBOLS[i].name);
            return NULL;
        }
        *SYMBOLS[i].slot = f;
    }
    int v = R.version();
    if (v < RDK_MIN_VERSION) {
        PyErr_Format(PyExc_OSError, "librdkafka 0x%08x is older than 1.6 (no rd_kafka_produceva)", v);
        return NULL;
    }
    loaded = 1;
    return PyLong_FromLong(v);
}

/* --- Producer --- */
static int Producer_init(ProducerObject *self, PyObject *args, PyObject *kw) {
    PyObject *config;
    static char *names[] = {"config", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!", names, &PyDict_Type, &config))
        return -1;
    if (!loaded) {
        PyErr_SetString(PyExc_RuntimeError, "librdkafka is not loaded (call load(path) first)");
        return -1;
    }
    if (self->rk) {
        PyErr_SetString(PyExc_RuntimeError, "Producer is initialised already");
        return -1;
    }
    char errstr[512];
    void *conf = R.conf_new();
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(config, &pos, &k, &v)) {
        PyObject *vs = PyObject_Str(v);
        if (!vs || !PyUnicode_Check(k)) {
            Py_XDECREF(vs);
            R.conf_destroy(conf);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "config keys must be str");
            return -1;
        }
        const char *ks = PyUnicode_AsUTF8(k), *vv = PyUnicode_AsUTF8(vs);
        if (!ks || !vv || R.conf_set(conf, ks, vv, errstr, sizeof errstr) != RDK_CONF_OK) {
            Py_DECREF(vs);
            R.conf_destroy(conf);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "%s", errstr);
            return -1;
        }
        Py_DECREF(vs);
    }
    R.conf_set_dr_msg_cb(conf, on_delivery);
    R.conf_set_error_cb(conf, on_error);
    R.conf_set_opaque(conf, self);
    self->last_topic = -1;
    self->rk = R.new_(RDK_PRODUCER, conf, errstr, sizeof errstr);
    if (!self->rk) {
        R.conf_destroy(conf);
        PyErr_Format(PyExc_ValueError, "%s", errstr);
        return -1;
    }
    return 0;
}

static void Producer_close_(ProducerObject *self) {
    if (self->rk) {
        void *rk = self->rk;
        for (int i = 0; i < self->ntopics; i++)
            if (self->topics[i].rkt)
                R.topic_destroy(self->topics[i].rkt);
        Py_BEGIN_ALLOW_THREADS
        R.destroy(rk); /* (may report deliveries: the state below stays until it returns) */
        Py_END_ALLOW_THREADS
        self->rk = NULL;
    }
    for (int i = 0; i < self->ntopics; i++)
        PyMem_Free(self->topics[i].parts);
    PyMem_Free(self->topics);
    self->topics = NULL;
    self->ntopics = 0;
    PyMem_Free(self->tmp);
    self->tmp = NULL;
    self->tmp_cap = 0;
}

static void Producer_dealloc(ProducerObject *self) {
    Producer_close_(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int need_rk(ProducerObject *self) {
    if (!self->rk) {
        PyErr_SetString(PyExc_RuntimeError, "the producer is closed");
        return -1;
    }
    return 0;
}

/* topic(name, partitions) -> index: a target topic, made known with room for ``partitions``. */
static PyObject *Producer_topic(ProducerObject *self, PyObject *args) {
    const char *name;
    int parts;
    if (!PyArg_ParseTuple(args, "si", &name, &parts) || need_rk(self))
        return NULL;
    if (parts < 1 || parts > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "partitions must be 1..2**20");
        return NULL;
    }
    TopicState *grown = PyMem_Realloc(self->topics, sizeof(TopicState) * (self->ntopics + 1));
    if (!grown)
        return PyErr_NoMemory();
    self->topics = grown;
    PartState *ps = PyMem_Calloc(parts, sizeof(PartState));
    if (!ps)
        return PyErr_NoMemory();
    void *rkt = R.topic_new(self->rk, name, NULL);
    if (!rkt) {
        PyMem_Free(ps);
        PyErr_Format(PyExc_ValueError, "librdkafka refused topic %s", name);
        return NULL;
    }
    TopicState *t = &self->topics[self->ntopics];
    t->rkt = rkt;
    t->parts = ps;
    t->nparts = parts;
    return PyLong_FromLong(self->ntopics++);
}

static PartState *part_of(ProducerObject *self, int t, int p) {
    if (t < 0 || t >= self->ntopics || p < 0 || p >= self->topics[t].nparts) {
        PyErr_Format(PyExc_IndexError, "no target topic %d partition %d", t, p);
        return NULL;
    }
    return &self->topics[t].parts[p];
}

static int ensure_tmp(ProducerObject *self, size_t n) {
    if (n <= self->tmp_cap)
        return 0;
    size_t cap = self->tmp_cap ? self->tmp_cap : 4096;
    while (cap < n)
        cap *= 2;
    uint8_t *b = PyMem_Realloc(self->tmp, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    self->tmp = b;
    self->tmp_cap = cap;
    return 0;
}

static inline uint32_t rd_u16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static inline int32_t rd_i32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
}

/* Walk a frame's header block: -1 if it does not parse, else the number of headers. ``skip`` is set when
 * one is the provenance header naming ``other`` as its origin. ``hdrs`` (if not NULL) receives each one. */
static int walk_headers(const uint8_t *h, int64_t hl, const char *other, Py_ssize_t other_len, int *skip,
                        void *hdrs) {
    int64_t i = 0;
    int count = 0;
    const Py_ssize_t name_len = (Py_ssize_t)(sizeof HEADER_NAME - 1);
    while (i < hl) {
        if (i + 2 > hl)
            return -1;
        int64_t kl = rd_u16(h + i);
        int64_t j = i + 2 + kl;
        if (j + 4 > hl)
            return -1;
        int64_t vl = rd_i32(h + j);
        if (vl < NULL_LEN || j + 4 + (vl > 0 ? vl : 0) > hl)
            return -1;
        const uint8_t *val = h + j + 4;
        if (skip && kl == name_len && vl >= other_len && memcmp(h + i + 2, HEADER_NAME, name_len) == 0
            && memcmp(val, other, other_len) == 0 && (vl == other_len || val[other_len] == ' '))
            *skip = 1;
        if (hdrs)
            R.header_add(hdrs, (const char *)h + i + 2, kl, vl >= 0 ? val : NULL, vl >= 0 ? vl : 0);
        count++;
        i = j + 4 + (vl > 0 ? vl : 0);
    }
    return count;
}

/* produce_frames(topic, partition, buf, rows, prefix, other, ring_address) -> (k, sent, status)
 *
 * Hands rows[0:n] (int64, META_COLS columns; bodies at M_BODY in ``buf``) to librdkafka, to ``partition``
 * of target ``topic`` (an index from topic()). Each record keeps key, value, timestamp and headers and gets
 * the provenance header ``prefix`` + its offset. A record whose provenance header names ``other`` is
 * skipped. ``ring_address`` != 0: ``buf`` is that ring's memory and each frame is checked after its copy.
 * k: rows taken (sent or skipped); status: PF_*. While librdkafka's queue is full, it polls (no GIL). */
static PyObject *Producer_produce_frames(ProducerObject *self, PyObject *args) {
    int t, p;
    Py_buffer buf, rows;
    const char *prefix, *other;
    Py_ssize_t prefix_len, other_len;
    unsigned long long ring_address;
    if (!PyArg_ParseTuple(args, "iiy*y*y#y#K", &t, &p, &buf, &rows, &prefix, &prefix_len, &other, &other_len,
                          &ring_address))
        return NULL;
    PyObject *result = NULL;
    PartState *ps;
    if (need_rk(self) || !(ps = part_of(self, t, p)))
        goto out;
    if (rows.len % (META_COLS * 8) != 0) {
        PyErr_SetString(PyExc_ValueError, "rows must be int64 with META_COLS columns");
        goto out;
    }
    const int64_t n = rows.len / (META_COLS * 8);
    const int64_t *row = (const int64_t *)rows.buf;
    const uint8_t *base = (const uint8_t *)buf.buf;
    const int64_t blen = buf.len;
    const volatile int64_t *reclaiming =
        ring_address ? (const volatile int64_t *)(uintptr_t)(ring_address + R_RECLAIMING) : NULL;
    void *rkt = self->topics[t].rkt;
    char prov[1024];
    if (prefix_len > (Py_ssize_t)sizeof prov - 24) {
        PyErr_SetString(PyExc_ValueError, "provenance prefix too long");
        goto out;
    }
    memcpy(prov, prefix, prefix_len);
    int64_t k = 0, sent = 0;
    int status = PF_DONE;
    for (; k < n; k++, row += META_COLS) {
        const int64_t kl = row[M_KLEN], vl = row[M_VLEN], hl = row[M_HLEN], body = row[M_BODY];
        const int64_t klen = kl > 0 ? kl : 0, vlen = vl > 0 ? vl : 0;
        if (kl < NULL_LEN || vl < NULL_LEN || hl < 0 || body < 0 || body > blen || klen + vlen + hl > blen - body) {
            status = PF_CORRUPT;
            break;
        }
        const uint8_t *b = base + body;
        if (reclaiming) {
            if (ensure_tmp(self, (size_t)(klen + vlen + hl)))
                goto out;
            memcpy(self->tmp, b, klen + vlen + hl);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (row[M_POS] < *reclaiming) {
                status = PF_STALE;
                break;
            }
            b = self->tmp;
        }
        const uint8_t *h = b + klen + vlen;
        int skip = 0, nh = 0;
        if (hl) {
            nh = walk_headers(h, hl, other, other_len, &skip, NULL);
            if (nh < 0) {
                status = PF_CORRUPT;
                break;
            }
            if (skip)
                continue;
        }
        void *hdrs = R.headers_new(nh + 1);
        if (hl)
            walk_headers(h, hl, NULL, 0, NULL, hdrs);
        int pl = (int)prefix_len + snprintf(prov + prefix_len, sizeof prov - prefix_len, "%lld",
                                            (long long)row[M_OFFSET]);
        R.header_add(hdrs, HEADER_NAME, sizeof HEADER_NAME - 1, prov, pl);
        rdk_vu_t vu[8];
        vu[0].vtype = VT_RKT;
        vu[0].u.rkt = rkt;
        vu[1].vtype = VT_PARTITION;
        vu[1].u.i32 = p;
        vu[2].vtype = VT_KEY;
        vu[2].u.mem.ptr = kl >= 0 ? (void *)b : NULL;
        vu[2].u.mem.size = (size_t)klen;
        vu[3].vtype = VT_VALUE;
        vu[3].u.mem.ptr = vl >= 0 ? (void *)(b + klen) : NULL;
        vu[3].u.mem.size = (size_t)vlen;
        vu[4].vtype = VT_TIMESTAMP;
        vu[4].u.i64 = row[M_TS];
        vu[5].vtype = VT_HEADERS;
        vu[5].u.headers = hdrs;
        vu[6].vtype = VT_MSGFLAGS;
        vu[6].u.i = RDK_MSG_F_COPY;
        vu[7].vtype = VT_OPAQUE;
        vu[7].u.ptr = (void *)(intptr_t)(row[M_OFFSET] + 1);
        for (;;) {
            void *err = R.produceva(self->rk, vu, 8);
            if (!err)
                break;
            int code = R.error_code(err);
            if (code == RDK_ERR_QUEUE_FULL) {
                R.error_destroy(err);
                void *rk = self->rk;
                Py_BEGIN_ALLOW_THREADS
                R.poll(rk, 10);
                Py_END_ALLOW_THREADS
                continue;
            }
            keep_error(self, code, E_REFUSED, t, p, R.error_string(err));
            R.error_destroy(err);
            R.headers_destroy(hdrs); /* (a refused record leaves its headers with the caller) */
            status = PF_ERROR;
            break;
        }
        if (status != PF_DONE)
            break;
        ps->produced++;
        sent++;
    }
    result = Py_BuildValue("LLi", (long long)k, (long long)sent, status);
out:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&rows);
    return result;
}

/* state(topic, partition) -> (produced, acked, acked_end, failed) */
static PyObject *Producer_state(ProducerObject *self, PyObject *args) {
    int t, p;
    if (!PyArg_ParseTuple(args, "ii", &t, &p))
        return NULL;
    PartState *ps = part_of(self, t, p);
    if (!ps)
        return NULL;
    return Py_BuildValue("LLLL", (long long)ps->produced, (long long)ps->acked, (long long)ps->acked_end,
                         (long long)ps->failed);
}

static PyObject *Producer_poll(ProducerObject *self, PyObject *args) {
    int timeout_ms;
    if (!PyArg_ParseTuple(args, "i", &timeout_ms) || need_rk(self))
        return NULL;
    void *rk = self->rk;
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = R.poll(rk, timeout_ms);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(n);
}

static PyObject *Producer_flush(ProducerObject *self, PyObject *args) {
    int timeout_ms;
    if (!PyArg_ParseTuple(args, "i", &timeout_ms) || need_rk(self))
        return NULL;
    void *rk = self->rk;
    int left;
    Py_BEGIN_ALLOW_THREADS
    R.flush(rk, timeout_ms);
    left = R.outq_len(rk);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(left);
}

static PyObject *Producer_purge(ProducerObject *self, PyObject *noarg) {
    (void)noarg;
    if (need_rk(self))
        return NULL;
    R.purge(self->rk, RDK_PURGE_F_QUEUE | RDK_PURGE_F_INFLIGHT);
    Py_RETURN_NONE;
}

/* errors() -> [(code, kind, topic index or -1, partition or -1, text)] (kind: E_*), and forgets them */
static PyObject *Producer_errors(ProducerObject *self, PyObject *noarg) {
    (void)noarg;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (int i = 0; i < self->nerrors; i++) {
        ErrorEntry *e = &self->errors[i];
        PyObject *item = Py_BuildValue("iiiis", e->code, e->kind, e->topic, (int)e->partition, e->text);
        if (!item || PyList_Append(out, item)) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    if (self->dropped_errors) {
        PyObject *item = Py_BuildValue("iiiis", 0, E_CLIENT, -1, -1, "(more errors than kept)");
        if (item)
            PyList_Append(out, item);
        Py_XDECREF(item);
    }
    self->nerrors = 0;
    self->dropped_errors = 0;
    return out;
}

static PyObject *Producer_close(ProducerObject *self, PyObject *noarg) {
    (void)noarg;
    Producer_close_(self);
    Py_RETURN_NONE;
}

static PyMethodDef Producer_methods[] = {
    {"topic", (PyCFunction)Producer_topic, METH_VARARGS, "topic(name, partitions) -> index"},
    {"produce_frames", (PyCFunction)Producer_produce_frames, METH_VARARGS,
     "produce_frames(topic, partition, buf, rows, prefix, other, ring_address) -> (taken, sent, status)"},
    {"state", (PyCFunction)Producer_state, METH_VARARGS, "state(topic, partition) -> (produced, acked, acked_end, failed)"},
    {"poll", (PyCFunction)Producer_poll, METH_VARARGS, "poll(timeout_ms) -> events served"},
    {"flush", (PyCFunction)Producer_flush, METH_VARARGS, "flush(timeout_ms) -> records still in flight"},
    {"purge", (PyCFunction)Producer_purge, METH_NOARGS, "drop what is queued and in flight (reported as failed)"},
    {"errors", (PyCFunction)Producer_errors, METH_NOARGS, "errors() -> [(code, kind, topic, partition, text)]"},
    {"close", (PyCFunction)Producer_close, METH_NOARGS, "destroy the client (what is in flight is dropped)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmbus.bridge._rdk.Producer",
    .tp_basicsize = sizeof(ProducerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An idempotent librdkafka producer fed frame rows (see the module's file).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Producer_init,
    .tp_dealloc = (destructor)Producer_dealloc,
    .tp_methods = Producer_methods,
};

static PyMethodDef module_methods[] = {
    {"load", rdk_load, METH_O, "load(path) -> librdkafka's version: open the library and find its functions"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rdk", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__rdk(void) {
    if (PyType_Ready(&ProducerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&ProducerType);
    if (PyModule_AddObject(m, "Producer", (PyObject *)&ProducerType) < 0)
        return NULL;
    PyObject *layout = PyDict_New();
    if (!layout)
        return NULL;
#define ADD_CONST(name)                                                                \
    do {                                                                               \
        PyObject *v_ = PyLong_FromLongLong((long long)(name));                         \
        if (!v_ || PyDict_SetItemString(layout, #name, v_) < 0)                        \
            return NULL;                                                               \
        Py_DECREF(v_);                                                                 \
    } while (0);
    SHMBUS_LAYOUT_TABLE(ADD_CONST)
    if (PyModule_AddObject(m, "LAYOUT", layout) < 0)
        return NULL;
    PyModule_AddIntConstant(m, "DONE", PF_DONE);
    PyModule_AddIntConstant(m, "STALE", PF_STALE);
    PyModule_AddIntConstant(m, "CORRUPT", PF_CORRUPT);
    PyModule_AddIntConstant(m, "ERROR", PF_ERROR);
    PyModule_AddIntConstant(m, "E_CLIENT", E_CLIENT);
    PyModule_AddIntConstant(m, "E_FATAL", E_FATAL);
    PyModule_AddIntConstant(m, "E_DELIVERY", E_DELIVERY);
    PyModule_AddIntConstant(m, "E_REFUSED", E_REFUSED);
    return m;
}

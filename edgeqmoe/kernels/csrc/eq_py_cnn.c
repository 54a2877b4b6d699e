/* The binding of the integer embedder: Cnn(variant, n_mels, frames, ops, gate) and
 * Cnn.run (eq_cnn.h). Its operation dicts are edgeqmoe/embed/mn04_int8.py's engine_ops;
 * their kinds and activation codes are the module's contract (eq_pymodule.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_py.h"


typedef struct {
    PyObject_HEAD eq_cnn E;
    Py_buffer *bufs;
    int nbufs, cap;
    int inited, ready;
} CnnObject;

static void Cnn_dealloc(CnnObject *self) {
    eq_cnn_free(&self->E);
    for (int i = 0; i < self->nbufs; i++) PyBuffer_Release(&self->bufs[i]);
    free(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* a view of o held until the object goes (the engine points into it) */
static Py_buffer *cnn_hold(CnnObject *self, PyObject *o, char type, const char *what) {
    if (self->nbufs == self->cap) {
        int cap = self->cap ? 2 * self->cap : 64;
        Py_buffer *b = realloc(self->bufs, sizeof(Py_buffer) * (size_t)cap);
        if (!b) {
            PyErr_NoMemory();
            return NULL;
        }
        self->bufs = b, self->cap = cap;
    }
    Py_buffer *b = &self->bufs[self->nbufs];
    if (eq_py_typed(o, b, type, 0, what) < 0) return NULL;
    self->nbufs++;
    return b;
}

/* op[key] as a buffer of n items of type; optional keys may be absent (*out = NULL) */
static int cnn_array(CnnObject *self, PyObject *d, int i, const char *kind, const char *key, char type, Py_ssize_t n,
                     int optional, const void **out) {
    *out = NULL;
    PyObject *o = PyDict_GetItemString(d, key);
    if (!o || o == Py_None) {
        if (optional) return 0;
        PyErr_Format(PyExc_KeyError, "Cnn op %d (%s): '%s' is missing", i, kind, key);
        return -1;
    }
    char what[96];
    snprintf(what, sizeof what, "Cnn op %d (%s): %s", i, kind, key);
    Py_buffer *b = cnn_hold(self, o, type, what);
    if (!b) return -1;
    if (b->len != n * b->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must hold %zd values, got %zd", what, n, b->len / b->itemsize);
        return -1;
    }
    *out = b->buf;
    return 0;
}

static int cnn_int(PyObject *d, const char *key, int32_t dflt, int32_t *out) {
    PyObject *o = PyDict_GetItemString(d, key);
    if (!o) {
        *out = dflt;
        return 0;
    }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int32_t)v;
    return 0;
}

/* Cnn(variant, n_mels, frames, ops, gate): ops is a list of dicts (see
 * edgeqmoe/embed/mn04_int8.py, engine_ops); the arrays are held, not copied, except
 * the convolution weights, which the engine packs into its own layout. */
static int Cnn_init(CnnObject *self, PyObject *args, PyObject *kw) {
    const char *variant;
    int n_mels, frames;
    PyObject *ops, *gate_o;
    if (!PyArg_ParseTuple(args, "siiO!O", &variant, &n_mels, &frames, &PyList_Type, &ops, &gate_o)) return -1;
    INIT_ONCE(self, "Cnn");
    const eq_variant *V = eq_py_variant(variant);
    if (!V) return -1;
    const eq_cnn_kernels *K = V->cnn;
    const Py_ssize_t n = PyList_GET_SIZE(ops);
    eq_cnn_op *op = calloc((size_t)(n ? n : 1), sizeof *op);
    if (!op) {
        PyErr_NoMemory();
        return -1;
    }

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyList_GET_ITEM(ops, i), *ko;
        if (!PyDict_Check(d) || !(ko = PyDict_GetItemString(d, "kind")) || !PyUnicode_Check(ko)) {
            PyErr_Format(PyExc_TypeError, "Cnn op %zd must be a dict with a 'kind'", i);
            goto fail;
        }
        const char *kind = PyUnicode_AsUTF8(ko);
        eq_cnn_op *o = &op[i];
        o->kind = -1;
        for (int j = 0; j < EQ_CNN_NKINDS; j++)
            if (!strcmp(kind, eq_cnn_kind_names[j])) o->kind = j;
        if (o->kind < 0) {
            PyErr_Format(PyExc_ValueError, "Cnn op %zd: unknown kind '%s' (stem, pw, dw, se, pool, dense)", i, kind);
            goto fail;
        }
        if (cnn_int(d, "src", -1, &o->src) || cnn_int(d, "dst", -1, &o->dst) || cnn_int(d, "res", -1, &o->res) ||
            cnn_int(d, "cin", 1, &o->cin) || cnn_int(d, "cout", 0, &o->cout) || cnn_int(d, "k", 1, &o->k) ||
            cnn_int(d, "stride", 1, &o->stride) || cnn_int(d, "act", 0, &o->epi.act))
            goto fail;
        if (o->cin < 1 || o->cout < 1 || o->k < 1 || o->k > 7 || o->cin > EQ_MAX_K || o->cout > EQ_MAX_K) {
            PyErr_Format(PyExc_ValueError, "Cnn op %zd (%s): sizes out of range (cin %d, cout %d, k %d)", i, kind,
                         o->cin, o->cout, o->k);
            goto fail;
        }
        const int I = (int)i;
        const Py_ssize_t ci = o->cin, co = o->cout;
        eq_cnn_epi *e = &o->epi;
#define ARR(key, type, count, opt, dst) \
    if (cnn_array(self, d, I, kind, key, type, count, opt, (const void **)&(dst)) < 0) goto fail
        switch (o->kind) {
        case EQ_CNN_STEM:
            ARR("fw", 'f', co * 9, 0, o->fw);
            ARR("fb", 'f', co, 0, o->fb);
            break;
        case EQ_CNN_PW:
            ARR("w", 'b', co * ci, 0, o->w);
            ARR("w_lo", 'b', co * ci, 1, o->w_lo);
            ARR("corr", 'i', co, 0, e->corr);
            ARR("res_scale", 'f', co, 1, e->res_scale);
            ARR("res_zero", 'i', co, e->res_scale == NULL, e->res_zero);
            break;
        case EQ_CNN_DW:
            ARR("w", 'b', co * o->k * o->k, 0, o->w);
            ARR("zero", 'i', co, 0, o->zero);
            break;
        case EQ_CNN_SE:
            ARR("fw", 'f', 2 * co * ci, 0, o->fw);
            ARR("fb", 'f', co + ci, 0, o->fb);
            ARR("scale", 'f', ci, 0, o->scale);
            ARR("zero", 'i', ci, 0, o->zero);
            break;
        case EQ_CNN_POOL:
            ARR("scale", 'f', ci, 0, o->scale);
            ARR("zero", 'i', ci, 0, o->zero);
            break;
        case EQ_CNN_DENSE:
            ARR("w", 'b', co * ci, 0, o->w);
            ARR("scale", 'f', co, 0, o->scale);
            ARR("fb", 'f', co, 0, o->fb);
            break;
        }
        if (o->kind == EQ_CNN_STEM || o->kind == EQ_CNN_PW || o->kind == EQ_CNN_DW) {
            if (o->kind != EQ_CNN_STEM) {
                ARR("w_scale", 'f', co, 0, e->w_scale);
                ARR("bias", 'f', co, 0, e->bias);
            }
            ARR("out_inv", 'f', co, 0, e->out_inv);
            ARR("out_zero", 'i', co, 0, e->out_zero);
        }
#undef ARR
    }
    Py_buffer *gb = cnn_hold(self, gate_o, 'i', "Cnn gate table");
    if (!gb) goto fail;
    if (gb->len != 4 * EQ_CNN_GATE_N) {
        PyErr_Format(PyExc_ValueError, "Cnn gate table must hold %d int32", EQ_CNN_GATE_N);
        goto fail;
    }
    int rc = eq_cnn_init(&self->E, K, op, (int)n, gb->buf, n_mels, frames); /* it keeps a copy of op */
    if (rc == -1) {
        const char *why = self->E.err ? self->E.err : "the operations do not chain";
        if (self->E.err_op >= 0)
            PyErr_Format(PyExc_ValueError, "Cnn op %d (%s): %s, for a %d x %d window", self->E.err_op,
                         eq_cnn_kind_names[op[self->E.err_op].kind], why, n_mels, frames);
        else
            PyErr_Format(PyExc_ValueError, "Cnn: %s, for a %d x %d window", why, n_mels, frames);
    } else if (rc < 0) {
        PyErr_NoMemory();
    }
    free(op);
    if (rc < 0) return -1;
    self->ready = 1;
    return 0;
fail:
    free(op);
    return -1;
}

/* run(mel, emb[, out]): mel (B, n_mels, frames) float32 -> emb (B, emb_dim), out (B, out_dim) */
static PyObject *Cnn_run(CnnObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run(mel, emb[, out])");
        return NULL;
    }
    NEED_READY(self, "Cnn", NULL);
    eq_cnn *E = &self->E;
    const Py_ssize_t win = (Py_ssize_t)E->n_mels * E->frames;
    Py_buffer b[3] = {{0}};
    int got = 0;
    PyObject *ret = NULL;
    if (eq_py_typed(args[0], &b[0], 'f', 0, "Cnn.run: mel") < 0) goto done;
    got = 1;
    if (eq_py_typed(args[1], &b[1], 'f', 1, "Cnn.run: emb") < 0) goto done;
    got = 2;
    const int with_out = nargs == 3 && args[2] != Py_None;
    if (with_out) {
        if (eq_py_typed(args[2], &b[2], 'f', 1, "Cnn.run: out") < 0) goto done;
        got = 3;
    }
    const Py_ssize_t batch = b[0].len / (4 * win);
    if (batch < 1 || b[0].len != 4 * batch * win || b[1].len != 4 * batch * E->emb_dim ||
        (with_out && b[2].len != 4 * batch * E->out_dim)) {
        PyErr_Format(PyExc_ValueError, "Cnn.run: mel must be B x %d x %d float32, emb B x %d, out B x %d", E->n_mels,
                     E->frames, E->emb_dim, E->out_dim);
        goto done;
    }
    const float *mel = b[0].buf;
    float *emb = b[1].buf, *out = with_out ? b[2].buf : NULL;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(eq_py_run_lock, WAIT_LOCK);
    for (Py_ssize_t i = 0; i < batch; i++)
        eq_cnn_run(E, mel + i * win, emb + i * E->emb_dim, out ? out + i * E->out_dim : NULL);
    PyThread_release_lock(eq_py_run_lock);
    Py_END_ALLOW_THREADS ret = Py_None;
    Py_INCREF(ret);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
}

static PyObject *Cnn_get_variant(CnnObject *self, void *c) {
    if (!self->ready) Py_RETURN_NONE;
    return PyUnicode_FromString(self->E.K->name);
}

static PyMethodDef Cnn_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Cnn_run, METH_FASTCALL,
     "run(mel, emb[, out]): windows of log-mel -> embeddings (and the dense layers' output)"},
    {NULL},
};

static PyGetSetDef Cnn_getset[] = {
    {"variant", (getter)Cnn_get_variant, NULL, "the kernel variant", NULL},
    {NULL},
};

static PyTypeObject CnnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeqmoe.kernels._ckernels.Cnn",
    .tp_basicsize = sizeof(CnnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Cnn_init,
    .tp_dealloc = (destructor)Cnn_dealloc,
    .tp_methods = Cnn_methods,
    .tp_getset = Cnn_getset,
    .tp_doc = "Cnn(variant, n_mels, frames, ops, gate): the integer convolutional embedder for one window length",
};

int eq_py_add_cnn(PyObject *m) { return eq_py_add_type(m, &CnnType, "Cnn"); }

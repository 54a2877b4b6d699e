/* The binding of the heads: Layer, Program, MoE and the test hooks acc and quantize.
 *
 *   Layer(fmt, n, k, w, scale, bias)        packed layer; holds the buffers (no copy)
 *   Program(variant, steps)                  a head: ("linear", Layer) | ("layernorm",
 *                                            gamma, beta, eps) | ("relu",); eq_program
 *   Program.run(x, out, batch)               float32 in, float32 out, GIL released
 *   MoE(router_in, router_out, experts, ...) a mixture of Programs (eq_moe); MoE.run(x,
 *                                            out, chosen, wk) -> (uncertainty, entropy)
 *   acc(variant, layer, xq, out, batch)      int32 accumulators of given quantized
 *                                            activations (int8, or -1/+1 for popcount;
 *                                            0/1 activations: (acc + wsum) / 2)
 *   quantize(variant, x, binary, q_out, tau, mode)  one activation row as the kernels see it
 *
 * The interpreter and the mixture live in eq_program.c; this file parses and checks
 * Python objects, turns problems into Python errors, and releases the GIL around runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eq_py.h"


typedef struct {
    PyObject_HEAD eq_layer L;
    Py_buffer w, scale, bias;
    int has_bias, inited, ready;
    int32_t *rowsum, *wsum;
} LayerObject;

static void Layer_dealloc(LayerObject *self) {
    if (self->w.obj) PyBuffer_Release(&self->w);
    if (self->scale.obj) PyBuffer_Release(&self->scale);
    if (self->has_bias) PyBuffer_Release(&self->bias);
    free(self->rowsum);
    free(self->wsum);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Layer_init(LayerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"fmt", "n", "k", "w", "scale", "bias", "act_mode", "tau", NULL};
    int fmt, n, k, act_mode = EQ_ACT_SIGN;
    float tau = 0.05f;
    PyObject *wo, *so, *bo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiOO|Oif", kwlist, &fmt, &n, &k, &wo, &so, &bo, &act_mode, &tau))
        return -1;
    INIT_ONCE(self, "Layer");
    if (act_mode != EQ_ACT_SIGN && act_mode != EQ_ACT_UNSIGNED) {
        PyErr_Format(PyExc_ValueError, "act_mode must be 0 (sign) or 1 (unsigned), not %d", act_mode);
        return -1;
    }
    if (fmt < 0 || fmt >= EQ_NFMT) {
        PyErr_Format(PyExc_ValueError, "unknown format code %d", fmt);
        return -1;
    }
    if (n < 1 || k < 1 || k > EQ_MAX_K) {
        PyErr_Format(PyExc_ValueError, "layer shape %d x %d out of range (1..%d inputs)", n, k, EQ_MAX_K);
        return -1;
    }
    if (eq_py_typed(wo, &self->w, 'B', 0, "packed weights") < 0) return -1;
    if (eq_py_typed(so, &self->scale, 'f', 0, "scale") < 0) return -1;
    const size_t want = eq_weight_bytes(fmt, n, k);
    if ((size_t)self->w.len != want) {
        PyErr_Format(PyExc_ValueError, "packed weights hold %zd bytes, format %d of %d x %d needs %zu", self->w.len,
                     fmt, n, k, want);
        return -1;
    }
    if (self->scale.len != 4 && self->scale.len != 4 * (Py_ssize_t)n) {
        PyErr_Format(PyExc_ValueError, "scale must be 1 or %d float32, got %zd bytes", n, self->scale.len);
        return -1;
    }
    if (bo != Py_None) {
        if (eq_py_typed(bo, &self->bias, 'f', 0, "bias") < 0) return -1;
        self->has_bias = 1;
        if (self->bias.len != 4 * (Py_ssize_t)n) {
            PyErr_Format(PyExc_ValueError, "bias must be %d float32, got %zd bytes", n, self->bias.len);
            return -1;
        }
    }
    eq_layer *L = &self->L;
    L->fmt = fmt;
    L->n = n;
    L->k = k;
    L->kp = eq_padded_k(k);
    L->w = self->w.buf;
    L->scale = self->scale.buf;
    L->scale_stride = self->scale.len == 4 ? 0 : 1;
    L->bias = self->has_bias ? self->bias.buf : NULL;
    L->act_mode = act_mode;
    L->tau = tau;
    if (fmt == EQ_FMT_Q8 || fmt == EQ_FMT_POPCOUNT) {
        self->rowsum = malloc(sizeof(int32_t) * (size_t)eq_stored_rows(fmt, n));
        self->wsum = malloc(sizeof(int32_t) * (size_t)eq_stored_rows(fmt, n));
        if (!self->rowsum || !self->wsum) {
            PyErr_NoMemory();
            return -1;
        }
        eq_layer_rowsums(L, self->rowsum, self->wsum);
        L->rowsum = self->rowsum;
        L->wsum = self->wsum;
    }
    self->ready = 1;
    return 0;
}

static PyObject *Layer_get_n(LayerObject *self, void *c) { return PyLong_FromLong(self->L.n); }
static PyObject *Layer_get_k(LayerObject *self, void *c) { return PyLong_FromLong(self->L.k); }
static PyObject *Layer_get_fmt(LayerObject *self, void *c) { return PyLong_FromLong(self->L.fmt); }
static PyObject *Layer_get_wsum(LayerObject *self, void *c) {
    if (!self->wsum) Py_RETURN_NONE;
    PyObject *l = PyList_New(self->L.n);
    for (int32_t i = 0; i < self->L.n; i++) PyList_SET_ITEM(l, i, PyLong_FromLong(self->wsum[i]));
    return l;
}

static PyGetSetDef Layer_getset[] = {
    {"n", (getter)Layer_get_n, NULL, "outputs", NULL},
    {"k", (getter)Layer_get_k, NULL, "inputs", NULL},
    {"fmt", (getter)Layer_get_fmt, NULL, "format code", NULL},
    {"wsum", (getter)Layer_get_wsum, NULL, "popcount: sum of ternary codes per row (derived)", NULL},
    {NULL},
};

static PyTypeObject LayerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeqmoe.kernels._ckernels.Layer",
    .tp_basicsize = sizeof(LayerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A packed linear layer over caller-owned buffers (kept alive, never copied).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Layer_init,
    .tp_dealloc = (destructor)Layer_dealloc,
    .tp_getset = Layer_getset,
};

/* ------------------------------------------------------------------ Program */

typedef struct {
    PyObject_HEAD eq_program prog;
    PyObject *keep;  /* list: Layer objects and buffer owners */
    Py_buffer *bufs; /* layernorm parameter views */
    int nbufs;
    int inited, ready;
} ProgramObject;

static void Program_dealloc(ProgramObject *self) {
    eq_program_free(&self->prog);
    for (int i = 0; i < self->nbufs; i++) PyBuffer_Release(&self->bufs[i]);
    free(self->bufs);
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Program(variant, steps): parses and checks the Python steps (with messages that name
 * the step), then eq_program_init does the rest. */
static int Program_init(ProgramObject *self, PyObject *args, PyObject *kw) {
    const char *variant;
    PyObject *steps;
    if (!PyArg_ParseTuple(args, "sO!", &variant, &PyList_Type, &steps)) return -1;
    INIT_ONCE(self, "Program");
    const eq_variant *V = eq_py_variant(variant);
    if (!V) return -1;
    const eq_kernels *K = V->head;
    Py_ssize_t ns = PyList_GET_SIZE(steps);
    if (ns < 1) {
        PyErr_SetString(PyExc_ValueError, "a program needs at least one step");
        return -1;
    }
    eq_step *st = calloc((size_t)ns, sizeof(eq_step));
    self->bufs = calloc((size_t)ns * 2, sizeof(Py_buffer));
    self->keep = PyList_New(0);
    if (!st || !self->bufs || !self->keep) {
        free(st);
        PyErr_NoMemory();
        return -1;
    }
    int32_t width = -1;
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *t = PyList_GET_ITEM(steps, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(t, 0))) {
            PyErr_Format(PyExc_TypeError, "step %zd must be a tuple starting with its kind", i);
            goto fail;
        }
        const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(t, 0));
        eq_step *s = &st[i];
        if (strcmp(kind, eq_step_names[EQ_STEP_LINEAR]) == 0) {
            PyObject *lo;
            if (PyTuple_GET_SIZE(t) != 2 || !PyObject_TypeCheck((lo = PyTuple_GET_ITEM(t, 1)), &LayerType)) {
                PyErr_Format(PyExc_TypeError, "step %zd: ('linear', Layer) expected", i);
                goto fail;
            }
            LayerObject *lobj = (LayerObject *)lo;
            if (!lobj->ready) {
                PyErr_Format(PyExc_ValueError, "step %zd: layer was not initialised", i);
                goto fail;
            }
            if (width >= 0 && width != lobj->L.k) {
                PyErr_Format(PyExc_ValueError, "step %zd: layer takes %d inputs but receives %d", i, lobj->L.k, width);
                goto fail;
            }
            s->kind = EQ_STEP_LINEAR;
            s->L = &lobj->L;
            if (PyList_Append(self->keep, lo) < 0) goto fail;
            width = lobj->L.n;
        } else if (strcmp(kind, eq_step_names[EQ_STEP_LAYERNORM]) == 0) {
            if (width < 0 || PyTuple_GET_SIZE(t) != 4) {
                PyErr_Format(PyExc_ValueError, "step %zd: ('layernorm', gamma, beta, eps) after a linear step", i);
                goto fail;
            }
            Py_buffer *g = &self->bufs[self->nbufs];
            if (eq_py_typed(PyTuple_GET_ITEM(t, 1), g, 'f', 0, "layernorm gamma") < 0) goto fail;
            self->nbufs++;
            Py_buffer *b = &self->bufs[self->nbufs];
            if (eq_py_typed(PyTuple_GET_ITEM(t, 2), b, 'f', 0, "layernorm beta") < 0) goto fail;
            self->nbufs++;
            if (g->len != 4 * (Py_ssize_t)width || b->len != 4 * (Py_ssize_t)width) {
                PyErr_Format(PyExc_ValueError, "step %zd: layernorm parameters must be %d float32", i, width);
                goto fail;
            }
            s->kind = EQ_STEP_LAYERNORM;
            s->gamma = g->buf;
            s->beta = b->buf;
            s->eps = (float)PyFloat_AsDouble(PyTuple_GET_ITEM(t, 3));
            if (PyErr_Occurred()) goto fail;
        } else if (strcmp(kind, eq_step_names[EQ_STEP_RELU]) == 0) {
            if (width < 0) {
                PyErr_Format(PyExc_ValueError, "step %zd: relu needs a linear step before it", i);
                goto fail;
            }
            s->kind = EQ_STEP_RELU;
        } else {
            PyErr_Format(PyExc_ValueError, "step %zd: unknown kind '%s' (linear, layernorm, relu)", i, kind);
            goto fail;
        }
        s->width = width;
    }
    int rc = eq_program_init(&self->prog, K, st, (int)ns);
    free(st);
    if (rc == EQ_ERR_NOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    if (rc < 0) {
        PyErr_SetString(PyExc_ValueError, "the steps do not chain");
        return -1;
    }
    self->ready = 1;
    return 0;
fail:
    free(st);
    return -1;
}

/* run(x, out[, batch]): batch defaults to the rows that x holds */
static PyObject *Program_run(ProgramObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run(x, out[, batch])");
        return NULL;
    }
    NEED_READY(self, "Program", NULL);
    const int32_t din = self->prog.in_width, dout = self->prog.out_width;
    Py_buffer xb, yb;
    if (eq_py_typed(args[0], &xb, 'f', 0, "run: x") < 0) return NULL;
    if (eq_py_typed(args[1], &yb, 'f', 1, "run: out") < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    Py_ssize_t batch = nargs == 3 ? PyLong_AsSsize_t(args[2]) : xb.len / (4 * (Py_ssize_t)din);
    if (batch < 1 || xb.len != 4 * batch * din || yb.len != 4 * batch * dout) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "run: x needs %zd x %d float32 and out %zd x %d (got %zd and %zd bytes)",
                         batch, din, batch, dout, xb.len, yb.len);
        PyBuffer_Release(&xb);
        PyBuffer_Release(&yb);
        return NULL;
    }
    const float *x = xb.buf;
    float *y = yb.buf;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(eq_py_run_lock, WAIT_LOCK);
    for (Py_ssize_t b = 0; b < batch; b++) eq_program_row(&self->prog, x + b * din, y + b * dout);
    PyThread_release_lock(eq_py_run_lock);
    Py_END_ALLOW_THREADS PyBuffer_Release(&xb);
    PyBuffer_Release(&yb);
    Py_RETURN_NONE;
}

static PyObject *Program_get_variant(ProgramObject *self, void *c) {
    if (!self->ready) Py_RETURN_NONE;
    return PyUnicode_FromString(self->prog.K->name);
}
static PyObject *Program_get_in(ProgramObject *self, void *c) { return PyLong_FromLong(self->prog.in_width); }
static PyObject *Program_get_out(ProgramObject *self, void *c) { return PyLong_FromLong(self->prog.out_width); }

static PyMethodDef Program_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Program_run, METH_FASTCALL,
     "run(x, out[, batch]): float32 rows in, rows out"},
    {NULL},
};

static PyGetSetDef Program_getset[] = {
    {"variant", (getter)Program_get_variant, NULL, "kernel variant", NULL},
    {"in_features", (getter)Program_get_in, NULL, "input width", NULL},
    {"out_features", (getter)Program_get_out, NULL, "output width", NULL},
    {NULL},
};

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeqmoe.kernels._ckernels.Program",
    .tp_basicsize = sizeof(ProgramObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A sequence of packed linear, LayerNorm and ReLU steps run in C with one kernel variant.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Program_init,
    .tp_dealloc = (destructor)Program_dealloc,
    .tp_methods = Program_methods,
    .tp_getset = Program_getset,
};

/* ------------------------------------------------------------------ test hooks */

static void load_act(const eq_layer *L, const int8_t *xq, eq_act *a) {
    a->kp = L->kp;
    if (L->fmt == EQ_FMT_POPCOUNT) {
        const int32_t words = L->kp / 64;
        memset(a->planes, 0, sizeof(uint64_t) * (size_t)words);
        for (int32_t j = 0; j < L->k; j++)
            if (xq[j] < 0) a->planes[j >> 6] |= 1ull << (j & 63);
        return;
    }
    int32_t sum = 0;
    for (int32_t j = 0; j < L->kp; j++) {
        int8_t q = j < L->k ? xq[j] : 0;
        a->q[j] = q;
        a->qu[j] = (uint8_t)(q ^ 0x80);
        sum += q;
    }
    a->qsum = sum;
}

static PyObject *py_acc(PyObject *m, PyObject *args) {
    const char *variant;
    PyObject *lo, *xo, *oo;
    Py_ssize_t batch;
    if (!PyArg_ParseTuple(args, "sO!OOn", &variant, &LayerType, &lo, &xo, &oo, &batch)) return NULL;
    const eq_variant *V = eq_py_variant(variant);
    if (!V) return NULL;
    const eq_kernels *K = V->head;
    NEED_READY((LayerObject *)lo, "Layer", NULL);
    const eq_layer *L = &((LayerObject *)lo)->L;
    if (L->fmt == EQ_FMT_F16) {
        PyErr_SetString(PyExc_ValueError, "f16 has no integer accumulators");
        return NULL;
    }
    Py_buffer xb, ob;
    if (eq_py_typed(xo, &xb, 'b', 0, "acc: xq") < 0) return NULL;
    if (eq_py_typed(oo, &ob, 'i', 1, "acc: out") < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    PyObject *ret = NULL;
    eq_scratch s;
    if (xb.len != batch * L->k || ob.len != 4 * batch * L->n) {
        PyErr_Format(PyExc_ValueError, "acc: xq needs %zd x %d int8 and out %zd x %d int32", batch, L->k, batch, L->n);
    } else if (eq_scratch_init(&s, L->kp, L->n) < 0) {
        PyErr_NoMemory();
    } else {
        for (Py_ssize_t b = 0; b < batch; b++) {
            load_act(L, (const int8_t *)xb.buf + b * L->k, &s.act);
            K->acc[L->fmt](L, &s.act, s.acc);
            memcpy((int32_t *)ob.buf + b * L->n, s.acc, sizeof(int32_t) * (size_t)L->n);
        }
        eq_scratch_free(&s);
        ret = Py_None;
        Py_INCREF(ret);
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    return ret;
}

static PyObject *py_quantize(PyObject *m, PyObject *args) {
    const char *variant;
    PyObject *xo, *qo;
    int binary, mode = EQ_ACT_SIGN;
    float tau = 0.05f;
    if (!PyArg_ParseTuple(args, "sOpO|fi", &variant, &xo, &binary, &qo, &tau, &mode)) return NULL;
    const eq_variant *V = eq_py_variant(variant);
    if (!V) return NULL;
    const eq_kernels *K = V->head;
    Py_buffer xb, qb;
    if (eq_py_typed(xo, &xb, 'f', 0, "quantize: x") < 0) return NULL;
    if (eq_py_typed(qo, &qb, 'b', 1, "quantize: q_out") < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    PyObject *ret = NULL;
    const int32_t k = (int32_t)(xb.len / 4);
    eq_scratch s;
    if (qb.len != k || k < 1 || k > EQ_MAX_K) {
        PyErr_SetString(PyExc_ValueError, "quantize: q_out must hold one int8 per float32 input");
    } else if (eq_scratch_init(&s, k, 1) < 0) {
        PyErr_NoMemory();
    } else {
        s.act.kp = eq_padded_k(k);
        int8_t *q = qb.buf;
        if (binary) {
            K->quant_sign(xb.buf, k, tau, mode, &s.act);
            const int8_t low = mode == EQ_ACT_UNSIGNED ? 0 : -1;
            for (int32_t j = 0; j < k; j++) q[j] = (s.act.planes[j >> 6] >> (j & 63) & 1) ? low : 1;
        } else {
            K->quant_i8(xb.buf, k, &s.act);
            memcpy(q, s.act.q, (size_t)k);
        }
        ret = Py_BuildValue("fi", s.act.scale, s.act.qsum);
        eq_scratch_free(&s);
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&qb);
    return ret;
}

/* ------------------------------------------------------------------ MoE
 * A whole mixture-of-experts window in one call (eq_moe in eq_program.c), GIL released,
 * no allocation. */
typedef struct {
    PyObject_HEAD eq_moe moe;
    PyObject *keep; /* the Programs */
    int inited, ready;
} MoEObject;

static void MoE_dealloc(MoEObject *self) {
    eq_moe_free(&self->moe);
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* float32 of exactly n values, or NULL (None) when allowed; the caller releases b */
static int floats_of(PyObject *o, Py_buffer *b, Py_ssize_t n, const char *what) {
    if (eq_py_typed(o, b, 'f', 0, what) < 0) return -1;
    if (n >= 0 && b->len != 4 * n) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd float32, got %zd bytes", what, n, b->len);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* MoE(router_in, router_out, experts, masks|None, mul|None, add|None, top_k, T,
 *     curiosity, alpha, evaluate_all, uniform, seed) */
static int MoE_init(MoEObject *self, PyObject *args, PyObject *kw) {
    PyObject *rin, *rout, *experts, *mo, *mulo, *addo;
    int top_k, curiosity, evaluate_all, uniform;
    float T, alpha;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "O!O!O!OOOifpfppK", &ProgramType, &rin, &ProgramType, &rout, &PyList_Type, &experts,
                          &mo, &mulo, &addo, &top_k, &T, &curiosity, &alpha, &evaluate_all, &uniform, &seed))
        return -1;
    INIT_ONCE(self, "MoE");
    self->keep = PyList_New(0);
    if (!self->keep) return -1;
    ProgramObject *ri = (ProgramObject *)rin, *ro = (ProgramObject *)rout;
    if (!ri->ready || !ro->ready) {
        PyErr_SetString(PyExc_ValueError, "MoE: the router Programs were not initialised");
        return -1;
    }
    const int32_t N = (int32_t)PyList_GET_SIZE(experts), D = ri->prog.in_width, H = ri->prog.out_width;
    if (N < 1 || N > EQ_MOE_MAX || ro->prog.in_width != H || ro->prog.out_width != N) {
        PyErr_Format(PyExc_ValueError, "MoE: %d experts (1..%d) and a router %d -> %d, %d -> %d that does not fit", N,
                     EQ_MOE_MAX, D, H, ro->prog.in_width, ro->prog.out_width);
        return -1;
    }
    eq_program *ex[EQ_MOE_MAX];
    int32_t C = -1;
    for (int32_t i = 0; i < N; i++) {
        PyObject *e = PyList_GET_ITEM(experts, i);
        if (!PyObject_TypeCheck(e, &ProgramType)) {
            PyErr_SetString(PyExc_TypeError, "MoE: experts must be Programs");
            return -1;
        }
        ProgramObject *pe = (ProgramObject *)e;
        if (!pe->ready) {
            PyErr_Format(PyExc_ValueError, "MoE: expert %d was not initialised", i);
            return -1;
        }
        if (i == 0) C = pe->prog.out_width;
        if (pe->prog.in_width != D || pe->prog.out_width != C || C > EQ_MOE_MAX) {
            PyErr_Format(PyExc_ValueError, "MoE: expert %d maps %d -> %d, the others %d -> %d (at most %d classes)", i,
                         pe->prog.in_width, pe->prog.out_width, D, C, EQ_MOE_MAX);
            return -1;
        }
        ex[i] = &pe->prog;
        if (PyList_Append(self->keep, e) < 0) return -1;
    }
    if (PyList_Append(self->keep, rin) < 0 || PyList_Append(self->keep, rout) < 0) return -1;
    if (top_k < 1 || top_k > N || !(T > 0.0f) || !isfinite(T) || !isfinite(alpha)) {
        char num[64]; /* PyErr_Format has no %g */
        snprintf(num, sizeof num, "%g, alpha %g", (double)T, (double)alpha);
        PyErr_Format(PyExc_ValueError, "MoE: top_k %d (1..%d) or temperature %s out of range", top_k, N, num);
        return -1;
    }
    Py_buffer mb = {0}, ub = {0}, ab = {0};
    int32_t S = 1, rc = -1;
    if (curiosity) {
        if (floats_of(mo, &mb, -1, "MoE: masks") < 0) return -1;
        S = (int32_t)(mb.len / (4 * (Py_ssize_t)H));
        if (S < 1 || mb.len != 4 * (Py_ssize_t)S * H) {
            PyErr_SetString(PyExc_ValueError, "MoE: curiosity needs dropout masks of the router's hidden width");
            goto done;
        }
    }
    if (mulo != Py_None && (floats_of(mulo, &ub, D, "MoE: mul") < 0 || floats_of(addo, &ab, D, "MoE: add") < 0))
        goto done;
    rc = eq_moe_init(&self->moe, &ri->prog, &ro->prog, ex, N, curiosity ? mb.buf : NULL, S, ub.obj ? ub.buf : NULL,
                     ab.obj ? ab.buf : NULL, top_k, T, curiosity, alpha, evaluate_all, uniform, seed);
    if (rc == EQ_ERR_NOMEM)
        PyErr_NoMemory();
    else if (rc < 0)
        PyErr_SetString(PyExc_ValueError, "MoE: the router and experts do not fit together");
    else
        self->ready = 1;
done:
    if (mb.obj) PyBuffer_Release(&mb);
    if (ub.obj) PyBuffer_Release(&ub);
    if (ab.obj) PyBuffer_Release(&ab);
    return self->ready ? 0 : -1;
}

/* run(x, out, chosen, wk) -> (uncertainty, entropy): one window */
static PyObject *MoE_run(MoEObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "run(x, out, chosen, wk)");
        return NULL;
    }
    NEED_READY(self, "MoE", NULL);
    Py_buffer b[4];
    static const char types[4] = {'f', 'f', 'i', 'f'};
    static const char *what[4] = {"MoE.run: x", "MoE.run: out", "MoE.run: chosen", "MoE.run: wk"};
    const eq_moe *M = &self->moe;
    const Py_ssize_t need[4] = {4 * (Py_ssize_t)M->D, 4 * (Py_ssize_t)M->C, 4 * (Py_ssize_t)M->top_k,
                                4 * (Py_ssize_t)M->top_k};
    int got = 0;
    PyObject *ret = NULL;
    for (; got < 4; got++)
        if (eq_py_typed(args[got], &b[got], types[got], got > 0, what[got]) < 0) goto done;
    for (int i = 0; i < 4; i++)
        if (b[i].len != need[i]) {
            PyErr_Format(PyExc_ValueError, "MoE.run: argument %d holds %zd bytes, needs %zd", i, b[i].len, need[i]);
            goto done;
        }
    float unc, ent;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(eq_py_run_lock, WAIT_LOCK);
    eq_moe_window(&self->moe, b[0].buf, b[1].buf, b[2].buf, b[3].buf, &unc, &ent);
    PyThread_release_lock(eq_py_run_lock);
    Py_END_ALLOW_THREADS ret = Py_BuildValue("ff", unc, ent);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
}

static PyMethodDef MoE_methods[] = {
    {"run", (PyCFunction)(void (*)(void))MoE_run, METH_FASTCALL,
     "run(x, out, chosen, wk) -> (uncertainty, entropy): one window, float32 x (in) and out (classes)"},
    {NULL},
};

static PyTypeObject MoEType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeqmoe.kernels._ckernels.MoE",
    .tp_basicsize = sizeof(MoEObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mixture of experts (router and expert Programs) run for one window in one call.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MoE_init,
    .tp_dealloc = (destructor)MoE_dealloc,
    .tp_methods = MoE_methods,
};


static PyMethodDef head_functions[] = {
    {"acc", py_acc, METH_VARARGS, "acc(variant, layer, xq, out, batch): int32 accumulators"},
    {"quantize", py_quantize, METH_VARARGS, "quantize(variant, x, binary, q_out, tau=0.05, mode=0) -> (scale, qsum)"},
    {NULL},
};

int eq_py_add_heads(PyObject *m) {
    if (eq_py_add_type(m, &LayerType, "Layer") < 0 || eq_py_add_type(m, &ProgramType, "Program") < 0 ||
        eq_py_add_type(m, &MoEType, "MoE") < 0)
        return -1;
    return PyModule_AddFunctions(m, head_functions);
}

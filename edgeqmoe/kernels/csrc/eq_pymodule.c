/* edgeqmoe.kernels._ckernels: the module, and the one place that states the Python/C
 * contract. The types live in a file each: eq_py_head.c (Layer, Program, MoE, acc,
 * quantize), eq_py_cnn.c (Cnn), eq_py_mel.c (Mel); eq_py.h is what they share.
 *
 *   variants()       the kernel variants this CPU runs, best first; one name picks the
 *                    head kernels, the integer embedder's and the front end's together
 *   cpu_features()   what the CPU was found to have
 *   CONTRACT         the names and numbers Python must agree on: packed formats (name ->
 *                    id, bits, offset), head steps, CNN operation kinds and activation
 *                    codes, the squeeze-excitation gate table's size; tests/test_kernels.py
 *                    checks Python's own tables against it
 */
#include <stdlib.h>
#include <string.h>

#include "eq_cnn.h"
#include "eq_mel.h"
#include "eq_py.h"

PyThread_type_lock eq_py_run_lock;

int eq_py_typed(PyObject *o, Py_buffer *b, char type, int writable, const char *what) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    const char *f = b->format ? b->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    const Py_ssize_t size = type == 'f' || type == 'i' ? 4 : 1;
    const int same = f[0] == type || (type == 'i' && f[0] == 'l' && b->itemsize == 4) ||
                     (type == 'B' && f[0] == 'c');
    if (!same || f[1] != 0 || b->itemsize != size) {
        const char *names = type == 'f' ? "float32" : type == 'i' ? "int32" : type == 'b' ? "int8" : "uint8";
        PyErr_Format(PyExc_TypeError, "%s must be %s, got buffer format '%s' of %zd-byte items", what, names,
                     b->format ? b->format : "B", b->itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

const eq_variant *eq_py_variant(const char *name) {
    const eq_variant *v = eq_variant_find(name);
    if (v) return v;
    const eq_variant *vs[8];
    char names[128] = "";
    const int n = eq_variants(vs, 8);
    for (int i = 0; i < n; i++) {
        strncat(names, vs[i]->name, sizeof names - strlen(names) - 1);
        if (i + 1 < n) strncat(names, ", ", sizeof names - strlen(names) - 1);
    }
    PyErr_Format(PyExc_ValueError, "kernel variant '%s' is not available on this CPU (it runs: %s)", name, names);
    return NULL;
}

static PyObject *py_variants(PyObject *m, PyObject *unused) {
    const eq_variant *vs[8];
    const int n = eq_variants(vs, 8);
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) PyList_SET_ITEM(l, i, PyUnicode_FromString(vs[i]->name));
    return l;
}

static PyObject *py_cpu_features(PyObject *m, PyObject *unused) { return PyUnicode_FromString(eq_cpu_features()); }

/* {name: index} of a table of names */
static PyObject *index_of(const char *const *names, int n) {
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < n; i++) {
        PyObject *v = PyLong_FromLong(i);
        if (!v || PyDict_SetItemString(d, names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *contract(void) {
    PyObject *fmts = PyDict_New();
    for (int i = 0; fmts && i < EQ_NFMT; i++) {
        PyObject *t = Py_BuildValue("{s:i,s:i,s:i}", "id", i, "bits", eq_fmt_bits[i], "offset", eq_fmt_offset[i]);
        if (!t || PyDict_SetItemString(fmts, eq_fmt_names[i], t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(fmts);
            break;
        }
        Py_DECREF(t);
    }
    if (!fmts) return NULL;
    return Py_BuildValue("{s:N,s:N,s:N,s:N,s:i,s:i,s:i,s:i,s:i,s:i}", "formats", fmts,
                         "steps", index_of(eq_step_names, EQ_NSTEPS),
                         "cnn_kinds", index_of(eq_cnn_kind_names, EQ_CNN_NKINDS),
                         "cnn_acts", index_of(eq_cnn_act_names, EQ_CNN_NACTS),
                         "gate_steps", EQ_CNN_GATE_STEPS, "gate_range", EQ_CNN_GATE_RANGE, "gate_n", EQ_CNN_GATE_N,
                         "row_align", EQ_ROW_ALIGN, "row_tile", EQ_ROW_TILE, "max_k", EQ_MAX_K);
}

static PyMethodDef module_methods[] = {
    {"variants", py_variants, METH_NOARGS, "kernel variants this CPU runs, best first"},
    {"cpu_features", py_cpu_features, METH_NOARGS, "CPU features detected at run time"},
    {NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_ckernels", "edgeqmoe packed low-bit kernels", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__ckernels(void) {
    eq_py_run_lock = PyThread_allocate_lock();
    if (!eq_py_run_lock) return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (eq_py_add_heads(m) < 0 || eq_py_add_cnn(m) < 0 || eq_py_add_mel(m) < 0) goto fail;
    PyObject *c = contract();
    if (!c || PyModule_AddObject(m, "CONTRACT", c) < 0) {
        Py_XDECREF(c);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "CNN_GATE_N", EQ_CNN_GATE_N) < 0 ||
        PyModule_AddIntConstant(m, "ROW_ALIGN", EQ_ROW_ALIGN) < 0 ||
        PyModule_AddIntConstant(m, "ROW_TILE", EQ_ROW_TILE) < 0 || PyModule_AddIntConstant(m, "MAX_K", EQ_MAX_K) < 0)
        goto fail;
    PyObject *bits = PyTuple_New(EQ_NFMT), *offs = PyTuple_New(EQ_NFMT);
    if (!bits || !offs) {
        Py_XDECREF(bits);
        Py_XDECREF(offs);
        goto fail;
    }
    for (int i = 0; i < EQ_NFMT; i++) {
        PyTuple_SET_ITEM(bits, i, PyLong_FromLong(eq_fmt_bits[i]));
        PyTuple_SET_ITEM(offs, i, PyLong_FromLong(eq_fmt_offset[i]));
    }
    PyModule_AddObject(m, "FMT_BITS", bits);
    PyModule_AddObject(m, "FMT_OFFSET", offs);
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

/* What the binding's files share (eq_pymodule.c, eq_py_head.c, eq_py_cnn.c, eq_py_mel.c):
 * typed buffers, the run lock, the variant by name, and each type's registration. */
#ifndef EQ_PY_H
#define EQ_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "eq_kernels.h"

#define EQ_MAX_K 131072 /* int32 accumulators are exact up to this many inputs */

/* Programs, mixtures, engines and front ends keep scratch buffers in their objects and
 * run with the GIL released, so two threads in one object would share them. One lock
 * serialises every such run: the daemon has one inference thread, and a caller with
 * several threads gets the same numbers as with one (tests/test_kernels.py). */
extern PyThread_type_lock eq_py_run_lock;

/* A C-contiguous buffer of one element type: 'f' float32, 'i' int32, 'b' int8, 'B'
 * uint8; anything else (float64, a strided view...) is a TypeError naming ``what``. */
int eq_py_typed(PyObject *o, Py_buffer *b, char type, int writable, const char *what);

/* The variant of that name this CPU runs, else NULL with a ValueError that lists them. */
const eq_variant *eq_py_variant(const char *name);

/* Each file's types (and functions) into the module; 0 or -1 with an exception set. */
int eq_py_add_heads(PyObject *m);
int eq_py_add_cnn(PyObject *m);
int eq_py_add_mel(PyObject *m);

/* __init__ runs once per object: a second call would leak or overrun what the first set up */
#define INIT_ONCE(self, what)                                                                  \
    do {                                                                                       \
        if ((self)->inited) {                                                                  \
            PyErr_SetString(PyExc_TypeError, what " objects cannot be initialised twice");     \
            return -1;                                                                         \
        }                                                                                      \
        (self)->inited = 1;                                                                    \
    } while (0)

#define NEED_READY(self, what, ret)                                                            \
    do {                                                                                       \
        if (!(self)->ready) {                                                                  \
            PyErr_SetString(PyExc_ValueError, what " object was not initialised (its __init__ failed or never ran)"); \
            return ret;                                                                        \
        }                                                                                      \
    } while (0)

/* a type into the module under its short name */
static inline int eq_py_add_type(PyObject *m, PyTypeObject *t, const char *name) {
    if (PyType_Ready(t) < 0) return -1;
    Py_INCREF(t);
    if (PyModule_AddObject(m, name, (PyObject *)t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

#endif

/* The binding of the log-mel front end: Mel(variant, ...) and Mel.run (eq_mel.h); the
 * variant is a kernel variant's name, whose front end it runs. */
#include <stdlib.h>
#include <string.h>

#include "eq_mel.h"
#include "eq_py.h"


typedef struct {
    PyObject_HEAD eq_mel M;
    int inited, ready;
} MelObject;

static void Mel_dealloc(MelObject *self) {
    eq_mel_free(&self->M);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Mel(variant, n_in, up2, he, ho, preemph, n_fft, hop, window, start, length, weights,
 * log_offset, shift, inv_scale): see eq_mel.h; the arrays are copied */
static int Mel_init(MelObject *self, PyObject *args, PyObject *kw) {
    const char *variant;
    int n_in, up2, n_fft, hop;
    float preemph, log_offset, shift, inv_scale;
    PyObject *o[6];
    if (!PyArg_ParseTuple(args, "siiOOfiiOOOOfff", &variant, &n_in, &up2, &o[0], &o[1], &preemph, &n_fft,
                          &hop, &o[2], &o[3], &o[4], &o[5], &log_offset, &shift, &inv_scale))
        return -1;
    INIT_ONCE(self, "Mel");
    const eq_variant *V = eq_py_variant(variant);
    if (!V) return -1;
    const eq_mel_kernels *K = V->mel;
    static const char types[6] = {'f', 'f', 'f', 'i', 'i', 'f'};
    static const char *names[6] = {"Mel: even-phase taps", "Mel: odd-phase taps", "Mel: window", "Mel: start", "Mel: length",
                                   "Mel: weights"};
    Py_buffer b[6] = {{0}};
    int got = 0, rc = -1;
    for (; got < 6; got++)
        if (eq_py_typed(o[got], &b[got], types[got], 0, names[got]) < 0) goto done;
    if (b[0].len != b[1].len + 4 || b[3].len != b[4].len || b[3].len == 0) {
        PyErr_SetString(PyExc_ValueError, "Mel: he must hold one tap more than ho, start and length equal sizes");
        goto done;
    }
    const int32_t *start = b[3].buf, *length = b[4].buf;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < b[3].len / 4; i++) total += length[i] > 0 ? length[i] : 0;
    if (b[5].len != 4 * total) {
        PyErr_SetString(PyExc_ValueError, "Mel: weights must hold sum(length) values");
        goto done;
    }
    rc = eq_mel_init(&self->M, K, n_in, up2, (int32_t)(b[1].len / 4), b[0].buf, b[1].buf, preemph, n_fft,
                     (int32_t)(b[2].len / 4), hop, b[2].buf, (int32_t)(b[3].len / 4), start, length, b[5].buf,
                     log_offset, shift, inv_scale);
    if (rc == -2)
        PyErr_NoMemory();
    else if (rc < 0)
        PyErr_Format(PyExc_ValueError,
                     "Mel: sizes out of range (n_in %d, n_fft %d, window %zd, hop %d; a window needs more than "
                     "n_fft / 2 samples after pre-emphasis)",
                     n_in, n_fft, b[2].len / 4, hop);
    else
        self->ready = 1;
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return rc < 0 ? -1 : 0;
}

/* run(x, out): x (B, n_in) float32 -> out (B, n_mels, frames) float32 */
static PyObject *Mel_run(MelObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run(x, out)");
        return NULL;
    }
    NEED_READY(self, "Mel", NULL);
    const eq_mel *M = &self->M;
    Py_buffer b[2] = {{0}};
    int got = 0;
    PyObject *ret = NULL;
    if (eq_py_typed(args[0], &b[0], 'f', 0, "Mel.run: x") < 0) goto done;
    got = 1;
    if (eq_py_typed(args[1], &b[1], 'f', 1, "Mel.run: out") < 0) goto done;
    got = 2;
    const Py_ssize_t per_out = (Py_ssize_t)M->n_mels * M->frames, batch = b[0].len / (4 * M->n_in);
    if (batch < 1 || b[0].len != 4 * batch * M->n_in || b[1].len != 4 * batch * per_out) {
        PyErr_Format(PyExc_ValueError, "Mel.run: x must be B x %d float32 and out B x %d x %d", M->n_in, M->n_mels,
                     M->frames);
        goto done;
    }
    const float *x = b[0].buf;
    float *out = b[1].buf;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(eq_py_run_lock, WAIT_LOCK);
    for (Py_ssize_t i = 0; i < batch; i++) eq_mel_run(M, x + i * M->n_in, out + i * per_out);
    PyThread_release_lock(eq_py_run_lock);
    Py_END_ALLOW_THREADS ret = Py_None;
    Py_INCREF(ret);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
}

static PyObject *Mel_get_variant(MelObject *self, void *c) {
    if (!self->ready) Py_RETURN_NONE;
    return PyUnicode_FromString(self->M.K->name);
}
static PyObject *Mel_get_frames(MelObject *self, void *c) { return PyLong_FromLong(self->ready ? self->M.frames : 0); }

static PyMethodDef Mel_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Mel_run, METH_FASTCALL, "run(x, out): windows of samples -> log-mel"},
    {NULL},
};

static PyGetSetDef Mel_getset[] = {
    {"variant", (getter)Mel_get_variant, NULL, "the SIMD variant", NULL},
    {"frames", (getter)Mel_get_frames, NULL, "frames per window", NULL},
    {NULL},
};

static PyTypeObject MelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeqmoe.kernels._ckernels.Mel",
    .tp_basicsize = sizeof(MelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mel_init,
    .tp_dealloc = (destructor)Mel_dealloc,
    .tp_methods = Mel_methods,
    .tp_getset = Mel_getset,
    .tp_doc = "Mel(variant, n_in, up2, he, ho, preemph, n_fft, hop, window, start, length, weights, "
              "log_offset, shift, inv_scale): the log-mel front end for one window length",
};

int eq_py_add_mel(PyObject *m) { return eq_py_add_type(m, &MelType, "Mel"); }

/* plugsafe._speedups: the per-call C call into wasm, made without cffi's ABI-mode call.
 *
 * Optional (setup.py builds it when a C compiler and Python's headers are there; without it
 * the cffi backend calls through cffi, as before). One thing only: ``bind`` makes a ``RawCall``
 * object holding the addresses of one exported function's call (wasmtime_func_call_unchecked,
 * the store's context, the function, its scratch slots, their count and the trap slot), all of
 * them plugsafe's own (plugsafe/_runtime/_cffi.py: cffi objects it made, kept alive by ``keep``);
 * calling the object makes that C call with the GIL released, as cffi's call does (the epoch
 * ticker, other threads and host callbacks, which are cffi callbacks that take the GIL back,
 * depend on it), and returns the error pointer as an int: 0 when the call succeeded.
 * Nothing here reads or writes guest memory or takes a value from a guest. No Python code runs
 * between releasing and retaking the GIL, so no Python exception can cross this boundary.
 * Also the get_memory callback of plugsafe's component memories (hostmem_get, below), which
 * must not fail, and WASI output captured in C (capture_write, below), which runs no Python.
 *
 * Why by hand: cffi's ABI-mode call (libffi, argument conversion of five cdata objects) costs
 * about 3,000 instructions; this one a few hundred (issue 14, goal 5; docs/performance.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <pthread.h>
#endif

/* This file's interface (bind's arguments, hostmem_setup, the constants): raise it with every
 * change to them, together with SPEEDUPS_API_VERSION in plugsafe/_runtime/_cffi.py. */
#define PLUGSAFE_SPEEDUPS_API_VERSION 3

/* wasmtime_func_call_unchecked(wasmtime_context_t *, const wasmtime_func_t *,
 *                              wasmtime_val_raw_t *, size_t, wasm_trap_t **) -> wasmtime_error_t * */
typedef void *(*call_unchecked_fn)(void *, const void *, void *, size_t, void **);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    call_unchecked_fn target;
    void *ctx;
    const void *func;
    void *slots;
    size_t width;
    void **trap;
    PyObject *keep; /* the objects that own the memory behind these addresses */
} RawCall;

static PyObject *
rawcall_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RawCall *self = (RawCall *)op;
    void *error;
    (void)args;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a RawCall takes no arguments");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    error = self->target(self->ctx, self->func, self->slots, self->width, self->trap);
    Py_END_ALLOW_THREADS
    if (error == NULL) {
        return PyLong_FromLong(0); /* the cached small int: nothing allocated */
    }
    return PyLong_FromVoidPtr(error);
}

static void
rawcall_dealloc(PyObject *op)
{
    Py_XDECREF(((RawCall *)op)->keep);
    PyObject_Free(op);
}

static PyTypeObject RawCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "plugsafe._speedups.RawCall",
    .tp_basicsize = sizeof(RawCall),
    .tp_dealloc = rawcall_dealloc,
    .tp_vectorcall_offset = offsetof(RawCall, vectorcall),
    .tp_call = PyVectorcall_Call,
    /* Made by bind() only: instantiated from Python, its addresses would be null. */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = "One exported function's C call, bound (made by bind()); call it with no arguments.",
};

/* An address: an exact int in 1..UINTPTR_MAX (every address bound is one, none is null). */
static int
address_arg(PyObject *value, const char *what, uintptr_t *out)
{
    unsigned long long v;
    if (!PyLong_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "bind(): %s must be an int", what);
        return -1;
    }
    v = PyLong_AsUnsignedLongLong(value); /* OverflowError if negative or too large */
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v == 0 || v > (unsigned long long)UINTPTR_MAX) {
        PyErr_Format(PyExc_ValueError, "bind(): %s is not an address", what);
        return -1;
    }
    *out = (uintptr_t)v;
    return 0;
}

PyDoc_STRVAR(bind_doc,
"bind(target, ctx, func, slots, width, trap, keep) -> RawCall\n\n"
"target: the address of wasmtime_func_call_unchecked; ctx, func, slots and trap: the addresses\n"
"of the call's arguments; width: the number of slots; keep: what owns that memory (held).");

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uintptr_t target, ctx, func, slots, trap;
    size_t width;
    RawCall *self;
    (void)module;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "bind() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    if (address_arg(args[0], "target", &target) < 0 || address_arg(args[1], "ctx", &ctx) < 0
        || address_arg(args[2], "func", &func) < 0 || address_arg(args[3], "slots", &slots) < 0
        || address_arg(args[5], "trap", &trap) < 0) {
        return NULL;
    }
    if (!PyLong_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "bind(): width must be an int");
        return NULL;
    }
    width = PyLong_AsSize_t(args[4]); /* OverflowError if negative */
    if (width == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    self = PyObject_New(RawCall, &RawCallType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = rawcall_vectorcall;
    /* An address made a function pointer: what cffi's cast did (implementation-defined, and
     * what every platform wasmtime's wheels are built for does). */
    self->target = (call_unchecked_fn)target;
    self->ctx = (void *)ctx;
    self->func = (const void *)func;
    self->slots = (void *)slots;
    self->width = width;
    self->trap = (void **)trap;
    Py_INCREF(args[6]);
    self->keep = args[6];
    return (PyObject *)self;
}

/* The get_memory callback of plugsafe's component memories (plugsafe/_runtime/_hostmem.py):
 * wasmtime_memory_get_callback_t, uint8_t *(*)(void *env, size_t *byte_size,
 * size_t *byte_capacity), reading a HostMemView that Python (ctypes) keeps for the memory (it
 * writes one only while wasmtime cannot read it: at creation, and in the grow callback).
 *
 * In C, not Python: the C API gives get_memory no way to fail (a null base is a Rust panic
 * that aborts the process), and a Python callback can fail before its first line runs (an
 * exception a signal handler raises at the frame's start: Ctrl-C during a component's
 * instantiation aborted the host; attack9). This one cannot fail. */
typedef struct {
    uint8_t *base;
    size_t size;
    size_t reserved;
} HostMemView;

static uint8_t *
hostmem_get(void *env, size_t *byte_size, size_t *byte_capacity)
{
    const HostMemView *view = (const HostMemView *)env;
    *byte_size = view->size;
    *byte_capacity = view->reserved;
    return view->base;
}

/* The new_memory and grow_memory callbacks of the same memories: C trampolines into
 * _hostmem's Python callbacks, set by hostmem_setup(). Both return a wasmtime_error_t * (null:
 * done). The Python ones catch everything once their first line runs, but an exception a
 * signal handler raises at the frame's start escapes them, and a ctypes callback that raised
 * returned 0, "done": a memory never made (wasmtime then panicked, "a callback must be set",
 * aborting the process) or a growth never made (attack9). Here such an exception refuses the
 * creation or growth with an error of wasmtime's, made without Python, and is kept on the
 * instantiating thread's Account (``interrupt``), which raises it once wasmtime returns, as it
 * does an interrupt the Python callbacks caught themselves. */
typedef void *(*error_new_fn)(const char *);

static PyObject *hostmem_py_new;  /* _hostmem._new_memory_at(env, ty, min, max, reserved, guard, out) */
static PyObject *hostmem_py_grow; /* _hostmem._grow_memory(env, new_size) */
static PyObject *hostmem_current; /* _hostmem._current: the thread's Account as ``account`` */
static error_new_fn hostmem_error_new;

/* The Python callback failed: keep what it raised (if not an Exception: a KeyboardInterrupt)
 * on the thread's Account, and return a new error. C API calls only: no Python frame runs. */
static void *
hostmem_failed(const char *what)
{
    PyObject *type, *value, *traceback, *account;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && !PyErr_GivenExceptionMatches(value, PyExc_Exception)) {
        account = PyObject_GetAttrString(hostmem_current, "account");
        if (account != NULL && account != Py_None) {
            if (PyObject_SetAttrString(account, "interrupt", value) < 0) {
                PyErr_Clear();
            }
        }
        Py_XDECREF(account);
        PyErr_Clear();
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return hostmem_error_new(what);
}

/* A Python callback's result: the error's address (0: done). */
static void *
hostmem_result(PyObject *result, const char *what)
{
    void *error;
    if (result == NULL) {
        return hostmem_failed(what);
    }
    error = PyLong_AsVoidPtr(result);
    Py_DECREF(result);
    if (error == NULL && PyErr_Occurred()) {
        return hostmem_failed(what);
    }
    return error;
}

static void *
hostmem_new(void *env, const void *ty, size_t minimum, size_t maximum, size_t reserved,
            size_t guard, void *out)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    void *error = hostmem_result(
        PyObject_CallFunction(hostmem_py_new, "KKKKKKK", (unsigned long long)(uintptr_t)env,
                              (unsigned long long)(uintptr_t)ty, (unsigned long long)minimum,
                              (unsigned long long)maximum, (unsigned long long)reserved,
                              (unsigned long long)guard, (unsigned long long)(uintptr_t)out),
        "plugsafe: creating a memory failed (interrupted)");
    PyGILState_Release(gil);
    return error;
}

static void *
hostmem_grow(void *env, size_t new_size)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    void *error = hostmem_result(
        PyObject_CallFunction(hostmem_py_grow, "KK", (unsigned long long)(uintptr_t)env,
                              (unsigned long long)new_size),
        "plugsafe: growing a memory failed (interrupted)");
    PyGILState_Release(gil);
    return error;
}

PyDoc_STRVAR(hostmem_setup_doc,
"hostmem_setup(new_memory, grow_memory, current, error_new) -> (new, grow)\n\n"
"Set the Python callbacks HOSTMEM_NEW and HOSTMEM_GROW call (held for good), the thread-local\n"
"whose ``account`` keeps an interrupt, and the address of wasmtime_error_new; returns the two\n"
"trampolines' addresses. Once only (a second call raises RuntimeError).");

static PyObject *
hostmem_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uintptr_t error_new;
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "hostmem_setup() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (hostmem_py_new != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "hostmem_setup() was called already");
        return NULL;
    }
    if (!PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hostmem_setup(): the callbacks must be callable");
        return NULL;
    }
    if (address_arg(args[3], "error_new", &error_new) < 0) {
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    hostmem_py_new = args[0];
    hostmem_py_grow = args[1];
    hostmem_current = args[2];
    hostmem_error_new = (error_new_fn)error_new;
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)hostmem_new,
                         (unsigned long long)(uintptr_t)hostmem_grow);
}

/* -- WASI output captured in C --------------------------------------------------------------
 *
 * wasmtime 50 hands a guest's writes to a custom stdout/stderr to a thread of its own (a tokio
 * worker), not the call's. A Python callback there must take the GIL; if that happens while the
 * interpreter finalizes (a daemon thread's plugin still writing at exit), CPython ends the
 * thread with pthread_exit, whose forced unwind through wasmtime's Rust frames aborts the
 * process ("panic in a function that cannot unwind"; measured: the panic in every such exit,
 * SIGABRT in 1 of 30). So the capture is kept here: capture_write runs no Python at all, only
 * a mutex and a memcpy. A capture is found by its key (the ``data`` wasmtime hands back), never
 * by a pointer: a write for a capture already closed (its Python owner gone) is EIO for the
 * guest, not a use after free. The table and its lock live as long as the process. */

typedef struct {
    unsigned long long key;
    unsigned char *data;
    size_t len;       /* bytes kept */
    size_t allocated; /* bytes of ``data`` */
    size_t limit;     /* bytes it may keep; past them writes are dropped, and counted as such */
    int truncated;
} Capture;

static PyThread_type_lock capture_lock;
static Capture **captures;      /* the open captures, in no order */
static size_t captures_len, captures_allocated;
static unsigned long long capture_next_key = 1;

#ifndef _WIN32
static void
capture_after_fork_child(void)
{
    /* A writer thread may have held the lock when the parent forked: the child's copy would
     * stay locked for ever. The child has no writer threads; a fresh lock (the old one leaked). */
    capture_lock = PyThread_allocate_lock();
}
#endif

/* Under capture_lock. */
static Capture *
capture_find(unsigned long long key, size_t *index)
{
    size_t i;
    for (i = 0; i < captures_len; i++) {
        if (captures[i]->key == key) {
            if (index != NULL) {
                *index = i;
            }
            return captures[i];
        }
    }
    return NULL;
}

/* plugsafe_output_callback_t: (void *data, const unsigned char *buf, size_t size) -> ssize_t.
 * Always the whole count when the capture is open (wasmtime's stream panics when told fewer
 * bytes were written, measured on wasmtime 50); what does not fit the limit is dropped. */
static Py_ssize_t
capture_write(void *data, const unsigned char *buf, size_t size)
{
    unsigned long long key = (unsigned long long)(uintptr_t)data;
    Py_ssize_t result = -EIO;
    Capture *c;
    if (capture_lock == NULL) {
        return -EIO;
    }
    PyThread_acquire_lock(capture_lock, WAIT_LOCK);
    c = capture_find(key, NULL);
    if (c != NULL && size <= (size_t)PY_SSIZE_T_MAX) {
        size_t room = c->limit - c->len;
        size_t keep = size < room ? size : room;
        result = (Py_ssize_t)size;
        if (keep < size) {
            c->truncated = 1;
        }
        if (keep > 0 && c->len + keep > c->allocated) {
            size_t want = c->allocated < 4096 ? 4096 : c->allocated;
            unsigned char *grown;
            while (want < c->len + keep) {
                want = want > c->limit / 2 ? c->limit : want * 2;
            }
            if (want > c->limit) {
                want = c->limit;
            }
            grown = realloc(c->data, want);
            if (grown == NULL) {
                c->truncated = 1; /* out of memory: dropped, and said so */
                keep = 0;
            } else {
                c->data = grown;
                c->allocated = want;
            }
        }
        if (keep > 0) {
            memcpy(c->data + c->len, buf, keep);
            c->len += keep;
        }
    }
    PyThread_release_lock(capture_lock);
    return result;
}

PyDoc_STRVAR(capture_open_doc,
"capture_open(limit) -> key\n\n"
"Open a capture keeping up to ``limit`` bytes; its key is the ``data`` to give wasmtime with\n"
"CAPTURE_WRITE. Close it with capture_close.");

static PyObject *
capture_open(PyObject *module, PyObject *arg)
{
    size_t limit;
    Capture *c;
    unsigned long long key;
    (void)module;
    if (!PyLong_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "capture_open(): the limit must be an int");
        return NULL;
    }
    limit = PyLong_AsSize_t(arg);
    if (limit == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    c = calloc(1, sizeof(Capture));
    if (c == NULL) {
        return PyErr_NoMemory();
    }
    c->limit = limit;
    PyThread_acquire_lock(capture_lock, WAIT_LOCK);
    if (captures_len == captures_allocated) {
        size_t want = captures_allocated ? captures_allocated * 2 : 16;
        Capture **grown = realloc(captures, want * sizeof(Capture *));
        if (grown == NULL) {
            PyThread_release_lock(capture_lock);
            free(c);
            return PyErr_NoMemory();
        }
        captures = grown;
        captures_allocated = want;
    }
    key = c->key = capture_next_key++;
    captures[captures_len++] = c;
    PyThread_release_lock(capture_lock);
    return PyLong_FromUnsignedLongLong(key);
}

static int
key_arg(PyObject *arg, const char *what, unsigned long long *key)
{
    if (!PyLong_CheckExact(arg)) {
        PyErr_Format(PyExc_TypeError, "%s(): the key must be an int", what);
        return -1;
    }
    *key = PyLong_AsUnsignedLongLong(arg);
    if (*key == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(capture_value_doc,
"capture_value(key) -> (bytes, truncated)\n\n"
"What the capture kept so far, and whether anything was dropped; KeyError once closed.");

static PyObject *
capture_value(PyObject *module, PyObject *arg)
{
    unsigned long long key;
    Capture *c;
    unsigned char *copy = NULL;
    size_t len = 0;
    int truncated = 0, found = 0;
    PyObject *bytes, *result;
    (void)module;
    if (key_arg(arg, "capture_value", &key) < 0) {
        return NULL;
    }
    /* Copied under the lock with malloc, made a bytes object after it: nothing that can run
     * Python (the collector, a __del__ closing a capture) happens while the lock is held. */
    PyThread_acquire_lock(capture_lock, WAIT_LOCK);
    c = capture_find(key, NULL);
    if (c != NULL) {
        found = 1;
        len = c->len;
        truncated = c->truncated;
        if (len > 0) {
            copy = malloc(len);
            if (copy != NULL) {
                memcpy(copy, c->data, len);
            }
        }
    }
    PyThread_release_lock(capture_lock);
    if (!found) {
        PyErr_SetString(PyExc_KeyError, "capture_value(): no such capture (closed)");
        return NULL;
    }
    if (len > 0 && copy == NULL) {
        return PyErr_NoMemory();
    }
    bytes = PyBytes_FromStringAndSize((const char *)copy, (Py_ssize_t)len);
    free(copy);
    if (bytes == NULL) {
        return NULL;
    }
    result = Py_BuildValue("(NO)", bytes, truncated ? Py_True : Py_False);
    return result;
}

PyDoc_STRVAR(capture_close_doc,
"capture_close(key) -> None\n\n"
"Forget the capture and free what it kept (idempotent): later writes to it are EIO.");

static PyObject *
capture_close(PyObject *module, PyObject *arg)
{
    unsigned long long key;
    size_t index = 0;
    Capture *c;
    (void)module;
    if (key_arg(arg, "capture_close", &key) < 0) {
        return NULL;
    }
    PyThread_acquire_lock(capture_lock, WAIT_LOCK);
    c = capture_find(key, &index);
    if (c != NULL) {
        captures[index] = captures[--captures_len];
    }
    PyThread_release_lock(capture_lock);
    if (c != NULL) {
        free(c->data);
        free(c);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(capture_count_doc, "capture_count() -> int\n\nHow many captures are open.");

static PyObject *
capture_count(PyObject *module, PyObject *unused)
{
    size_t n;
    (void)module;
    (void)unused;
    PyThread_acquire_lock(capture_lock, WAIT_LOCK);
    n = captures_len;
    PyThread_release_lock(capture_lock);
    return PyLong_FromSize_t(n);
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, bind_doc},
    {"hostmem_setup", (PyCFunction)(void (*)(void))hostmem_setup, METH_FASTCALL,
     hostmem_setup_doc},
    {"capture_open", capture_open, METH_O, capture_open_doc},
    {"capture_value", capture_value, METH_O, capture_value_doc},
    {"capture_close", capture_close, METH_O, capture_close_doc},
    {"capture_count", capture_count, METH_NOARGS, capture_count_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "plugsafe._speedups",
    .m_doc = "plugsafe's optional compiled call into wasm (see plugsafe/_runtime/_cffi.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module, *address;
    if (PyType_Ready(&RawCallType) < 0) {
        return NULL;
    }
    module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&RawCallType);
    if (PyModule_AddObject(module, "RawCall", (PyObject *)&RawCallType) < 0) {
        Py_DECREF(&RawCallType);
        Py_DECREF(module);
        return NULL;
    }
    /* hostmem_get's address (a function pointer made an integer, as bind's target is made a
     * function pointer) and the size of the view it reads, for _hostmem to check. */
    address = PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)hostmem_get);
    if (address == NULL || PyModule_AddObject(module, "HOSTMEM_GET", address) < 0) {
        Py_XDECREF(address);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "HOSTMEM_VIEW_SIZE", (long)sizeof(HostMemView)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    /* The loader (_cffi.load_speedups) uses a build only of the interface it was written for:
     * a build left from an older plugsafe would refuse bind's arguments. */
    if (PyModule_AddIntConstant(module, "API_VERSION", PLUGSAFE_SPEEDUPS_API_VERSION) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    /* The captures' lock and capture_write's address (for wasi_config_set_std*_custom). */
    if (capture_lock == NULL) {
        capture_lock = PyThread_allocate_lock();
        if (capture_lock == NULL) {
            Py_DECREF(module);
            return PyErr_NoMemory();
        }
#ifndef _WIN32
        pthread_atfork(NULL, NULL, capture_after_fork_child);
#endif
    }
    address = PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)capture_write);
    if (address == NULL || PyModule_AddObject(module, "CAPTURE_WRITE", address) < 0) {
        Py_XDECREF(address);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

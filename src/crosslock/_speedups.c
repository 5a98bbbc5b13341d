/* crosslock._speedups: the file backend's hot system calls, paired (Linux).
 *
 * A hold of a lock file costs two system calls that crosslock cannot drop:
 * flock, and a zero-timeout epoll_wait on the process's inotify instance
 * telling whether any watched lock file may have been removed or replaced
 * (see _backends/_watch.py). From Python each is a call of its own that
 * parses its arguments, builds its result and gives up the GIL; here one
 * call makes both, and gives up the GIL only where the kernel may block.
 *
 * Optional: where this module was not built, crosslock does the same in
 * Python (_backends/_file.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/file.h>

/* Drains of the inotify queue under way in this process: while one runs, an
 * empty queue proves nothing (the drain may not have marked what it read
 * yet). Changed only with the GIL held. */
static long drains_under_way = 0;

static int
as_fd(PyObject *obj, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_Format(PyExc_OverflowError, "descriptor out of range: %ld", value);
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* The backend's kept descriptor, and its quick-check descriptor: the
 * watcher's epoll descriptor while no event marks the lock file, else -1
 * (the caller must check the path itself). Read from the backend object at
 * the moment they are used, with the GIL held, so that a drain in another
 * thread cannot mark the file between the read and the check. */
static PyObject *str_fd, *str_quick;

static int
attr_fd(PyObject *backend, PyObject *name, int *out)
{
    PyObject *value = PyObject_GetAttr(backend, name);
    if (value == NULL)
        return -1;
    int rc = as_fd(value, out);
    Py_DECREF(value);
    return rc;
}

/* 1: nothing queued on the backend's quick-check descriptor, none is marked
 * and no drain is under way; 0: not so; -1: error (exception set). Never blocks. */
static int
quiet(PyObject *backend)
{
    int quick;
    struct epoll_event event;
    if (attr_fd(backend, str_quick, &quick) < 0)
        return -1;
    return quick >= 0 && drains_under_way == 0 && epoll_wait(quick, &event, 1, 0) == 0;
}

PyDoc_STRVAR(grab_doc,
"grab(backend, op) -> int\n\n"
"flock(backend._fd, op), then the quick check. Returns GRANTED (held, and no\n"
"watched file changed), BUSY (op has LOCK_NB and another holder has the\n"
"file), UNCHECKED (held, but the path must be checked) or NO_FD (no\n"
"descriptor open). Retries when a signal interrupts a blocking wait and no\n"
"handler raised; other failures raise OSError.");

enum { GRANTED = 0, BUSY = 1, UNCHECKED = 2, NO_FD = 3 };

static PyObject *
grab(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, op, rc;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "grab() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (attr_fd(args[0], str_fd, &fd) < 0 || as_fd(args[1], &op) < 0)
        return NULL;
    for (;;) {
        if (op & LOCK_NB) {
            rc = flock(fd, op);  /* cannot block: keep the GIL */
        }
        else {
            Py_BEGIN_ALLOW_THREADS
            rc = flock(fd, op);
            Py_END_ALLOW_THREADS
        }
        if (rc == 0)
            break;
        if (errno == EINTR) {
            /* As Python's own calls do (PEP 475): a handler that raises ends the wait. */
            if (PyErr_CheckSignals() < 0)
                return NULL;
            continue;
        }
        if (errno == EWOULDBLOCK)
            return PyLong_FromLong(BUSY);
        if (errno == EBADF)
            return PyLong_FromLong(NO_FD);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    rc = quiet(args[0]);
    if (rc < 0)
        return NULL;
    return PyLong_FromLong(rc ? GRANTED : UNCHECKED);
}

PyDoc_STRVAR(drop_doc,
"drop(backend) -> bool\n\n"
"If the quick check finds nothing changed, flock(backend._fd, LOCK_UN) and\n"
"return True; otherwise return False and leave the lock held (the caller\n"
"checks the path, then unlocks). A failed unlock raises OSError.");

static PyObject *
drop(PyObject *module, PyObject *backend)
{
    int fd, rc;
    if (attr_fd(backend, str_fd, &fd) < 0)
        return NULL;
    rc = quiet(backend);
    if (rc < 0)
        return NULL;
    if (!rc)
        Py_RETURN_FALSE;
    if (flock(fd, LOCK_UN) != 0)  /* never blocks */
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(drains_doc,
"drains(delta) -> int\n\n"
"Add delta to the count of inotify drains under way; return the new count.");

static PyObject *
drains(PyObject *module, PyObject *arg)
{
    long delta = PyLong_AsLong(arg);
    if (delta == -1 && PyErr_Occurred())
        return NULL;
    drains_under_way += delta;
    return PyLong_FromLong(drains_under_way);
}

PyDoc_STRVAR(blocked_doc,
"blocked(signum) -> bool\n\n"
"Whether the calling thread's signal mask blocks signum (one system call;\n"
"signal.pthread_sigmask builds a set of every blocked signal).");

static PyObject *
blocked(PyObject *module, PyObject *arg)
{
    int signum;
    sigset_t mask;
    if (as_fd(arg, &signum) < 0)
        return NULL;
    errno = pthread_sigmask(SIG_BLOCK, NULL, &mask);
    if (errno != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int member = sigismember(&mask, signum);
    if (member < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(member);
}

static PyMethodDef methods[] = {
    {"grab", (PyCFunction)(void (*)(void))grab, METH_FASTCALL, grab_doc},
    {"drop", drop, METH_O, drop_doc},
    {"drains", drains, METH_O, drains_doc},
    {"blocked", blocked, METH_O, blocked_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups = {
    PyModuleDef_HEAD_INIT, "crosslock._speedups",
    "The file backend's hot system calls, paired.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_fd = PyUnicode_InternFromString("_fd");
    str_quick = PyUnicode_InternFromString("_quick");
    if (str_fd == NULL || str_quick == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&speedups);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "GRANTED", GRANTED) < 0
        || PyModule_AddIntConstant(module, "BUSY", BUSY) < 0
        || PyModule_AddIntConstant(module, "UNCHECKED", UNCHECKED) < 0
        || PyModule_AddIntConstant(module, "NO_FD", NO_FD) < 0
        || PyModule_AddIntConstant(module, "LOCK_EX", LOCK_EX) < 0
        || PyModule_AddIntConstant(module, "LOCK_NB", LOCK_NB) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

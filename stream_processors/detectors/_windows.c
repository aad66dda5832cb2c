/* The per-event half of BatchWindows.add (stream_processors/detectors/suite.py), compiled.
 *
 * BatchWindows.add is the detectors' largest cost in the worker: about 10k machine instructions
 * per llm_call under CPython 3.11, most of them the interpreter's, not the dict and Decimal work
 * it asks for. This module does the same work for the common event (a FastLLMCall from the msgspec
 * fast path, ts in UTC, status a CallStatus member) and hands every other event to the Python method unchanged, so Python's
 * ``BatchWindows.add`` stays the definition: tests/unit/test_windows_native.py feeds both the
 * same generated events and requires identical sums, lists and ids.
 *
 * What it does per event, in the order and with the operations of the Python code:
 *   window   w = epoch seconds // BASE_WINDOW_S, the seconds from ts's own fields (only for
 *            tzinfo == datetime.UTC and 0 <= seconds < 2**33, where that equals Python's
 *            int(ts.timestamp()) // BASE_WINDOW_S; any other ts goes to the Python method)
 *   usage    [cost, tokens, first, last, max cost, max tokens, *ids] per (tenant, feature, w)
 *   requests (tenant, feature, request_id or trace_id) -> i, and the r_* columns
 *   models   [calls, errors, timeouts, rate_limited, latencies, ttfts, first, last, *ids]
 *            per (provider, model, w)
 * Fields are read at the offsets of the struct's slots (found once, from its member
 * descriptors, by ``bind``); sums and comparisons are the objects' own (PyNumber_Add,
 * PyObject_RichCompareBool), so Decimal stays exact and ints stay ints.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <datetime.h>

enum { F_TS, F_EID, F_TENANT, F_FEATURE, F_IN, F_OUT, F_RID, F_TRACE, F_PROVIDER, F_MODEL, F_STATUS,
       F_LATENCY, F_TTFT, N_FIELDS };
static const char *FIELD_NAMES[N_FIELDS] = {
    "ts", "event_id", "tenant_id", "feature", "input_tokens", "output_tokens", "request_id",
    "trace_id", "provider", "model", "status", "latency_ms", "ttft_ms"};

static PyTypeObject *llm_type = NULL;   /* FastLLMCall */
static Py_ssize_t offsets[N_FIELDS];
static PyObject *st_ok = NULL, *st_failures[3] = {NULL, NULL, NULL};  /* CallStatus members */
static PyObject *zero = NULL;           /* Decimal(0) */
static PyObject *one = NULL;            /* 1 */
static long long window_s = 10;
static Py_ssize_t usage_ids_end = 16, model_ids_end = 18;

#define FIELD(o, i) (*(PyObject **)((char *)(o) + offsets[i]))

/* days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's days_from_civil) */
static long long days_from_civil(long long y, unsigned m, unsigned d) {
    y -= m <= 2;
    const long long era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

/* Python's ``list[i] += x`` */
static int add_at(PyObject *list, Py_ssize_t i, PyObject *x) {
    PyObject *old = PyList_GET_ITEM(list, i);
    Py_INCREF(old);
    PyObject *s = PyNumber_InPlaceAdd(old, x);
    Py_DECREF(old);
    if (s == NULL) return -1;
    return PyList_SetItem(list, i, s);  /* steals s, releases the old item; checks i */
}

/* ``if x <op> list[i]: list[i] = x`` */
static int keep_if(PyObject *list, Py_ssize_t i, PyObject *x, int op) {
    int r = PyObject_RichCompareBool(x, PyList_GET_ITEM(list, i), op);
    if (r > 0) {
        Py_INCREF(x);
        PyList_SetItem(list, i, x);  /* steals x, releases the old item */
    }
    return r;
}

/* first/last of a group: ``if ts < l[a]: l[a] = ts  elif ts > l[b]: l[b] = ts`` */
static int first_last(PyObject *list, Py_ssize_t a, Py_ssize_t b, PyObject *ts) {
    int r = keep_if(list, a, ts, Py_LT);
    if (r != 0) return r < 0 ? -1 : 0;
    return keep_if(list, b, ts, Py_GT) < 0 ? -1 : 0;
}

static int is_list_of(PyObject *x, Py_ssize_t at_least) {
    if (!PyList_CheckExact(x) || PyList_GET_SIZE(x) < at_least) {
        PyErr_SetString(PyExc_SystemError, "BatchWindows: a group is not the list the detectors build");
        return 0;
    }
    return 1;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *usage, *models, *requests;                                  /* dicts */
    PyObject *r_calls, *r_tokens, *r_first, *r_last, *r_owner, *r_ids;    /* lists */
    PyObject *fallback;                                                   /* BatchWindows.add, bound */
} Adder;

static int adder_traverse(Adder *self, visitproc visit, void *arg) {
    Py_VISIT(self->usage); Py_VISIT(self->models); Py_VISIT(self->requests);
    Py_VISIT(self->r_calls); Py_VISIT(self->r_tokens); Py_VISIT(self->r_first);
    Py_VISIT(self->r_last); Py_VISIT(self->r_owner); Py_VISIT(self->r_ids); Py_VISIT(self->fallback);
    return 0;
}

static int adder_clear(Adder *self) {
    Py_CLEAR(self->usage); Py_CLEAR(self->models); Py_CLEAR(self->requests);
    Py_CLEAR(self->r_calls); Py_CLEAR(self->r_tokens); Py_CLEAR(self->r_first);
    Py_CLEAR(self->r_last); Py_CLEAR(self->r_owner); Py_CLEAR(self->r_ids); Py_CLEAR(self->fallback);
    return 0;
}

static void adder_dealloc(Adder *self) {
    PyObject_GC_UnTrack(self);
    adder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* the usage, requests and models work of one llm_call in window w; 0, or -1 with an exception */
static int add_llm(Adder *self, PyObject *ev, PyObject *cost, PyObject *ts, PyObject *wobj) {
    PyObject *eid = FIELD(ev, F_EID), *tenant = FIELD(ev, F_TENANT), *feature = FIELD(ev, F_FEATURE);
    PyObject *key = NULL, *tokens = NULL, *list = NULL, *idx = NULL;
    int rc = -1;

    tokens = PyNumber_Add(FIELD(ev, F_IN), FIELD(ev, F_OUT));
    if (tokens == NULL) goto done;

    /* usage[(tenant, feature, w)] */
    key = PyTuple_Pack(3, tenant, feature, wobj);
    if (key == NULL) goto done;
    PyObject *u = PyDict_GetItemWithError(self->usage, key);  /* borrowed */
    if (u == NULL) {
        if (PyErr_Occurred()) goto done;
        PyObject *c = cost != Py_None ? cost : zero;
        list = PyList_New(7);
        if (list == NULL) goto done;
        PyObject *items[7] = {c, tokens, ts, ts, c, tokens, eid};
        for (Py_ssize_t i = 0; i < 7; i++) {
            Py_INCREF(items[i]);
            PyList_SET_ITEM(list, i, items[i]);
        }
        if (PyDict_SetItem(self->usage, key, list) < 0) goto done;
        Py_CLEAR(list);
    } else {
        if (!is_list_of(u, 6)) goto done;
        if (cost != Py_None) {
            if (add_at(u, 0, cost) < 0 || keep_if(u, 4, cost, Py_GT) < 0) goto done;
        }
        if (add_at(u, 1, tokens) < 0 || keep_if(u, 5, tokens, Py_GT) < 0) goto done;
        if (first_last(u, 2, 3, ts) < 0) goto done;
        if (PyList_GET_SIZE(u) < usage_ids_end && PyList_Append(u, eid) < 0) goto done;
    }
    Py_CLEAR(key);

    /* requests[(tenant, feature, request_id or trace_id)] */
    PyObject *rid = FIELD(ev, F_RID);
    int truthy = PyObject_IsTrue(rid);
    if (truthy < 0) goto done;
    if (!truthy) {
        rid = FIELD(ev, F_TRACE);
        truthy = PyObject_IsTrue(rid);
        if (truthy < 0) goto done;
    }
    if (truthy) {
        key = PyTuple_Pack(3, tenant, feature, rid);
        if (key == NULL) goto done;
        PyObject *found = PyDict_GetItemWithError(self->requests, key);  /* borrowed */
        if (found == NULL) {
            if (PyErr_Occurred()) goto done;
            idx = PyLong_FromSsize_t(PyList_GET_SIZE(self->r_calls));
            if (idx == NULL || PyDict_SetItem(self->requests, key, idx) < 0
                || PyList_Append(self->r_calls, one) < 0 || PyList_Append(self->r_tokens, tokens) < 0
                || PyList_Append(self->r_first, ts) < 0 || PyList_Append(self->r_last, ts) < 0) goto done;
        } else {
            idx = found;
            Py_INCREF(idx);
            Py_ssize_t i = PyLong_AsSsize_t(idx);
            if (i == -1 && PyErr_Occurred()) goto done;
            if (i < 0 || i >= PyList_GET_SIZE(self->r_calls) || i >= PyList_GET_SIZE(self->r_tokens)
                || i >= PyList_GET_SIZE(self->r_first) || i >= PyList_GET_SIZE(self->r_last)) {
                PyErr_SetString(PyExc_SystemError, "BatchWindows: a request index outside its columns");
                goto done;
            }
            if (add_at(self->r_calls, i, one) < 0 || add_at(self->r_tokens, i, tokens) < 0) goto done;
            int r = keep_if(self->r_first, i, ts, Py_LT);
            if (r < 0 || (r == 0 && keep_if(self->r_last, i, ts, Py_GT) < 0)) goto done;
        }
        if (PyList_Append(self->r_owner, idx) < 0 || PyList_Append(self->r_ids, eid) < 0) goto done;
        Py_CLEAR(idx);
        Py_CLEAR(key);
    }

    /* models[(provider, model, w)] */
    key = PyTuple_Pack(3, FIELD(ev, F_PROVIDER), FIELD(ev, F_MODEL), wobj);
    if (key == NULL) goto done;
    PyObject *m = PyDict_GetItemWithError(self->models, key);  /* borrowed: the dict keeps it */
    if (m == NULL) {
        if (PyErr_Occurred()) goto done;
        list = Py_BuildValue("[iiii[][]OO]", 1, 0, 0, 0, ts, ts);
        if (list == NULL || PyDict_SetItem(self->models, key, list) < 0) goto done;
        m = list;
    } else {
        if (!is_list_of(m, 8)) goto done;
        if (add_at(m, 0, one) < 0 || first_last(m, 6, 7, ts) < 0) goto done;
    }
    PyObject *status = FIELD(ev, F_STATUS);  /* a CallStatus member (checked before any change) */
    Py_ssize_t slot = 0;
    int ok = status == st_ok;
    for (int k = 0; k < 3; k++)
        if (status == st_failures[k]) slot = k + 1;
    if (ok) {
        PyObject *lat = PyList_GET_ITEM(m, 4), *ttfts = PyList_GET_ITEM(m, 5);
        if (!PyList_Check(lat) || !PyList_Check(ttfts)) {
            PyErr_SetString(PyExc_SystemError, "BatchWindows: a model group without its latency lists");
            goto done;
        }
        if (PyList_Append(lat, FIELD(ev, F_LATENCY)) < 0) goto done;
        PyObject *ttft = FIELD(ev, F_TTFT);
        if (ttft != Py_None && PyList_Append(ttfts, ttft) < 0) goto done;
    } else if (slot > 0) {
        if (add_at(m, slot, one) < 0) goto done;
        if (PyList_GET_SIZE(m) < model_ids_end && PyList_Append(m, eid) < 0) goto done;
    }
    rc = 0;
done:
    Py_XDECREF(key);
    Py_XDECREF(tokens);
    Py_XDECREF(list);
    Py_XDECREF(idx);
    return rc;
}

static PyObject *adder_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Adder *self = (Adder *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "add(event, cost) takes exactly two positional arguments");
        return NULL;
    }
    PyObject *ev = args[0], *cost = args[1];
    if (llm_type == NULL || Py_TYPE(ev) != llm_type) goto fallback;
    for (int i = 0; i < N_FIELDS; i++)
        if (FIELD(ev, i) == NULL) goto fallback;
    PyObject *ts = FIELD(ev, F_TS);
    if (!PyDateTime_CheckExact(ts) || PyDateTime_DATE_GET_TZINFO(ts) != PyDateTime_TimeZone_UTC) goto fallback;
    if (Py_TYPE(FIELD(ev, F_STATUS)) != Py_TYPE(st_ok)) goto fallback;  /* a CallStatus: the decoder's always is */
    long long secs = days_from_civil(PyDateTime_GET_YEAR(ts), PyDateTime_GET_MONTH(ts), PyDateTime_GET_DAY(ts)) * 86400
        + PyDateTime_DATE_GET_HOUR(ts) * 3600 + PyDateTime_DATE_GET_MINUTE(ts) * 60 + PyDateTime_DATE_GET_SECOND(ts);
    if (secs < 0 || secs >= (1LL << 33)) goto fallback;
    PyObject *wobj = PyLong_FromLongLong(secs / window_s);
    if (wobj == NULL) return NULL;
    int rc = add_llm(self, ev, cost, ts, wobj);
    Py_DECREF(wobj);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
fallback:
    return PyObject_Vectorcall(self->fallback, args, 2, NULL);
}

static PyObject *adder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"usage", "models", "requests", "r_calls", "r_tokens", "r_first", "r_last", "r_owner",
                         "r_ids", "fallback", NULL};
    PyObject *usage, *models, *requests, *r_calls, *r_tokens, *r_first, *r_last, *r_owner, *r_ids, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!O!O!O!O!O:Adder", kw, &PyDict_Type, &usage,
                                     &PyDict_Type, &models, &PyDict_Type, &requests, &PyList_Type, &r_calls,
                                     &PyList_Type, &r_tokens, &PyList_Type, &r_first, &PyList_Type, &r_last,
                                     &PyList_Type, &r_owner, &PyList_Type, &r_ids, &fallback))
        return NULL;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "Adder: fallback must be callable");
        return NULL;
    }
    Adder *self = (Adder *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = adder_vectorcall;
    PyObject *all[10] = {usage, models, requests, r_calls, r_tokens, r_first, r_last, r_owner, r_ids, fallback};
    PyObject **slots[10] = {&self->usage, &self->models, &self->requests, &self->r_calls, &self->r_tokens,
                            &self->r_first, &self->r_last, &self->r_owner, &self->r_ids, &self->fallback};
    for (int i = 0; i < 10; i++) {
        Py_INCREF(all[i]);
        *slots[i] = all[i];
    }
    return (PyObject *)self;
}

static PyTypeObject AdderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flyball.stream_processors.detectors._windows.Adder",
    .tp_doc = "Adder(usage, models, requests, r_calls, r_tokens, r_first, r_last, r_owner, r_ids, fallback):\n"
              "add(event, cost) into one BatchWindows' containers; events it does not handle go to fallback.",
    .tp_basicsize = sizeof(Adder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = adder_new,
    .tp_dealloc = (destructor)adder_dealloc,
    .tp_traverse = (traverseproc)adder_traverse,
    .tp_clear = (inquiry)adder_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Adder, vectorcall),
};

/* bind(FastLLMCall, ok, (error, timeout, rate_limited), zero, window_s, usage_ids_end, model_ids_end): the
 * statuses are members of one enum (their type is the one the fast path accepts) */
static PyObject *bind(PyObject *module, PyObject *args) {
    PyObject *type, *ok, *failures, *zero_;
    long long win;
    Py_ssize_t uend, mend;
    if (!PyArg_ParseTuple(args, "O!OO!OLnn:bind", &PyType_Type, &type, &ok, &PyTuple_Type, &failures,
                          &zero_, &win, &uend, &mend))
        return NULL;
    if (PyTuple_GET_SIZE(failures) != 3 || win <= 0) {
        PyErr_SetString(PyExc_ValueError, "bind: three failure statuses and a positive window");
        return NULL;
    }
    Py_ssize_t found[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *d = PyObject_GetAttrString(type, FIELD_NAMES[i]);
        if (d == NULL) return NULL;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            Py_DECREF(d);
            return PyErr_Format(PyExc_TypeError, "bind: %s is not a slot of the event type", FIELD_NAMES[i]);
        }
        PyMemberDef *def = ((PyMemberDescrObject *)d)->d_member;
        int kind = def->type;
        found[i] = def->offset;
        Py_DECREF(d);
        if (kind != T_OBJECT_EX && kind != T_OBJECT)
            return PyErr_Format(PyExc_TypeError, "bind: %s is not an object slot", FIELD_NAMES[i]);
    }
    memcpy(offsets, found, sizeof(offsets));
    Py_INCREF(type); Py_XSETREF(llm_type, (PyTypeObject *)type);
    Py_INCREF(ok); Py_XSETREF(st_ok, ok);
    for (int k = 0; k < 3; k++) {
        PyObject *f = PyTuple_GET_ITEM(failures, k);
        Py_INCREF(f); Py_XSETREF(st_failures[k], f);
    }
    Py_INCREF(zero_); Py_XSETREF(zero, zero_);
    window_s = win;
    usage_ids_end = uend;
    model_ids_end = mend;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "Tell the module the event type and constants it works with (suite.py does)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_windows", NULL, -1, methods};

PyMODINIT_FUNC PyInit__windows(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    if (PyType_Ready(&AdderType) < 0) return NULL;
    one = PyLong_FromLong(1);
    if (one == NULL) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&AdderType);
    if (PyModule_AddObject(m, "Adder", (PyObject *)&AdderType) < 0) {
        Py_DECREF(&AdderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

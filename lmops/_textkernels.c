/* Compiled kernels of ingest's per-document text work: each is the exact equivalent of a Python function in
 * lmops/text.py or tasks/ingest.py (the *_py functions there), which stays the definition and the fallback where
 * this module was not built. tests/test_textkernels.py compares the two on random strings of every character
 * class the Python code treats apart.
 *
 * Why C: ingest spent most of its time in per-line and per-paragraph Python (str.strip on every line, a regex
 * split per paragraph, a list of pieces per chunk); here each is one pass over the string's own buffer. Strings
 * are read in their own width (1, 2 or 4 bytes a character) and results built in that width, then made canonical
 * by PyUnicode_FromKindAndData (a str must be stored in the narrowest width that holds it, or == fails).
 *
 * The scans over a long string's buffer run without the GIL (the str is immutable and referenced by the caller;
 * their buffers come from the raw allocator), so that ingest's threads clean several batches at once. A short one
 * keeps it: its scan takes microseconds, about what a release and a wait to take the GIL back cost. Batches of
 * short records stay on one thread anyway (tasks/ingest.py, _short_documents): on 7,500-character documents two
 * threads ingested 5 GB 7% slower than one, the Python between the scans taking turns. */

#define RELEASE_GIL_CHARS 32768
#define NOGIL_BEGIN(n) { PyThreadState *_save = (n) >= RELEASE_GIL_CHARS ? PyEval_SaveThread() : NULL;
#define NOGIL_END if (_save) PyEval_RestoreThread(_save); }

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ALWAYS_INLINE __attribute__((always_inline))
/* calls f with the string's width as a constant, so that each width gets its own loop without a switch per character */
#define SPECIALISE(kind, f, ...)                                    \
    switch (kind) {                                                 \
    case PyUnicode_1BYTE_KIND: f(PyUnicode_1BYTE_KIND, __VA_ARGS__); break; \
    case PyUnicode_2BYTE_KIND: f(PyUnicode_2BYTE_KIND, __VA_ARGS__); break; \
    default: f(PyUnicode_4BYTE_KIND, __VA_ARGS__); break;          \
    }

/* zero-width space/non-joiner/joiner, word joiner, soft hyphen, BOM, Mongolian vowel separator: text.py's
 * _INVISIBLE_CHARS */
static inline int is_invisible(Py_UCS4 c) {
    return c == 0x200b || c == 0x200c || c == 0x200d || c == 0x2060 || c == 0x00ad || c == 0xfeff || c == 0x180e;
}

/* what normalize_text turns into a space: the control characters [\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f], the space
 * and OTHER_SPACES (\t \r \xa0 \u1680 \u2000-\u200a \u2028 \u2029 \u202f \u205f \u3000); the line feed is apart */
static inline int is_space_like(Py_UCS4 c) {
    if (c < 0x20) return c != '\n';
    if (c == ' ') return 1;
    if (c < 0x7f) return 0;
    if (c <= 0xa0) return 1;
    if (c < 0x1680) return 0;
    return c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* normalize_text after NFC: invisible characters removed, control characters and every whitespace character but the
 * line feed made spaces, paragraphs (split on \n\s*\n) with their whitespace folded to single spaces, the empty ones
 * left out, joined by blank lines. A run of whitespace with two line feeds or more is a paragraph break. */
#define NFC_SAFE_BELOW 0x10000
#define NFC_UNSAFE (-1)

/* `safe`: a bitmap of the characters below NFC_SAFE_BELOW that NFC leaves alone wherever they stand (lmops.text's
 * nfc_safe); with it, a character outside it stops the fold (NFC_UNSAFE), the caller then normalizes first */
static inline ALWAYS_INLINE Py_ssize_t fold_into(const int kind, const void *data, Py_ssize_t n, void *out, const unsigned char *safe) {
    Py_ssize_t o = 0;
    int any_out = 0, cur_has = 0, in_ws = 0, newlines = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (cur_has && !in_ws) {
            /* most characters: printable ASCII inside a paragraph, and single spaces between its words, copied as
             * they are. One test per character, not a branch per kind of character: the branch on spaces, taken
             * at every word's end, was mispredicted as often (0.084 -> 0.056 s on the 10-K sample's documents) */
            while (i + 1 < n) {
                Py_UCS4 c = PyUnicode_READ(kind, data, i), d = PyUnicode_READ(kind, data, i + 1);
                if ((c - 0x20u >= 0x5fu) | ((c == ' ') & (d - 0x21u >= 0x5eu))) break;
                PyUnicode_WRITE(kind, out, o++, c);
                i++;
            }
        }
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c > ' ' && c < 0x7f && !in_ws && cur_has) {  /* (the last character) */
            PyUnicode_WRITE(kind, out, o++, c);
            continue;
        }
        if (safe && c >= 0x300 && (c >= NFC_SAFE_BELOW || !(safe[c >> 3] & (1 << (c & 7))))) return NFC_UNSAFE;
        if (c >= 0xad && is_invisible(c)) continue;
        if (c == '\n') {
            in_ws = 1;
            newlines++;
            continue;
        }
        if (is_space_like(c)) {
            in_ws = 1;
            continue;
        }
        if (in_ws) {
            if (newlines >= 2) cur_has = 0;  /* a new paragraph */
            else if (cur_has) PyUnicode_WRITE(kind, out, o++, ' ');
            in_ws = 0;
            newlines = 0;
        }
        if (!cur_has) {
            if (any_out) {
                PyUnicode_WRITE(kind, out, o++, '\n');
                PyUnicode_WRITE(kind, out, o++, '\n');
            }
            cur_has = any_out = 1;
        }
        PyUnicode_WRITE(kind, out, o++, c);
    }
    return o;
}

/* fold(text, safe): normalize_text of a text in NFC; with `safe` (the NFC bitmap, bytes) of any text, or None
 * where the text holds a character NFC might change */
static PyObject *fold(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *arg, *safe_obj = Py_None;
    if (!PyArg_ParseTuple(args, "U|O", &arg, &safe_obj)) return NULL;
    const unsigned char *safe = NULL;
    if (safe_obj != Py_None) {
        if (!PyBytes_Check(safe_obj) || PyBytes_GET_SIZE(safe_obj) != NFC_SAFE_BELOW / 8) {
            PyErr_SetString(PyExc_ValueError, "fold(): safe must be a bitmap of NFC_SAFE_BELOW bits");
            return NULL;
        }
        safe = (const unsigned char *)PyBytes_AS_STRING(safe_obj);
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg), o;
    int kind = PyUnicode_KIND(arg);
    const void *data = PyUnicode_DATA(arg);
    void *out = PyMem_RawMalloc((size_t)(n > 0 ? n : 1) * kind);
    if (!out) return PyErr_NoMemory();
    NOGIL_BEGIN(n)
    SPECIALISE(kind, o = fold_into, data, n, out, safe);
    NOGIL_END
    PyObject *res = o == NFC_UNSAFE ? Py_NewRef(Py_None) : PyUnicode_FromKindAndData(kind, out, o);
    PyMem_RawFree(out);
    return res;
}

/* Py_UNICODE_ISSPACE: what \s matches in a str pattern, and what str.strip() strips */
#define ISSPACE(c) Py_UNICODE_ISSPACE(c)

typedef struct {
    Py_ssize_t *start, *end;
    Py_ssize_t len, cap;
} Spans;

static int spans_add(Spans *s, Py_ssize_t a, Py_ssize_t b) {
    if (s->len == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 256;
        Py_ssize_t *na = PyMem_RawRealloc(s->start, cap * sizeof(Py_ssize_t));
        if (!na) return -1;
        s->start = na;
        Py_ssize_t *nb = PyMem_RawRealloc(s->end, cap * sizeof(Py_ssize_t));
        if (!nb) return -1;
        s->end = nb;
        s->cap = cap;
    }
    s->start[s->len] = a;
    s->end[s->len] = b;
    s->len++;
    return 0;
}

static void spans_free(Spans *s) {
    PyMem_RawFree(s->start);
    PyMem_RawFree(s->end);
}

/* n characters from width `from` to width `to`, which holds every one of them */
static void copy_chars(int to, void *dst, int from, const void *src, Py_ssize_t n) {
    if (to == from) {
        memcpy(dst, src, (size_t)n * from);
    } else if (to == PyUnicode_1BYTE_KIND && from == PyUnicode_2BYTE_KIND) {
        for (Py_ssize_t i = 0; i < n; i++) ((Py_UCS1 *)dst)[i] = (Py_UCS1)((const Py_UCS2 *)src)[i];
    } else if (to == PyUnicode_1BYTE_KIND) {
        for (Py_ssize_t i = 0; i < n; i++) ((Py_UCS1 *)dst)[i] = (Py_UCS1)((const Py_UCS4 *)src)[i];
    } else {
        for (Py_ssize_t i = 0; i < n; i++) ((Py_UCS2 *)dst)[i] = (Py_UCS2)((const Py_UCS4 *)src)[i];
    }
}

/* the or of the characters in data[s, e): below 0x80, 0x100 or 0x10000 exactly where all of them are, which is
 * all PyUnicode_New needs to know to give a str its canonical width */
static inline ALWAYS_INLINE Py_UCS4 or_chars(const int kind, const void *data, Py_ssize_t s, Py_ssize_t e) {
    Py_UCS4 acc = 0;
    for (Py_ssize_t j = s; j < e; j++) acc |= PyUnicode_READ(kind, data, j);
    return acc;
}

/* the pieces first..last-1 joined by `sep`, as one str: its width from an or of the pieces' characters, then the
 * pieces copied into it (PyUnicode_FromKindAndData of a joined buffer read and copied everything twice more) */
static PyObject *join_spans(int kind, const void *data, Spans *p, Py_ssize_t first, Py_ssize_t last, Py_UCS4 sep) {
    Py_ssize_t total = 0;
    Py_UCS4 bound = last - first > 1 ? sep : 0;
    for (Py_ssize_t k = first; k < last; k++) {
        total += p->end[k] - p->start[k] + (k > first);
        SPECIALISE(kind, bound |= or_chars, data, p->start[k], p->end[k]);
    }
    PyObject *res = PyUnicode_New(total, bound < 0x80 ? 0x7f : bound < 0x100 ? 0xff : bound < 0x10000 ? 0xffff : 0x10ffff);
    if (!res) return NULL;
    int to = PyUnicode_KIND(res);
    char *dst = PyUnicode_DATA(res);
    Py_ssize_t o = 0;
    for (Py_ssize_t k = first; k < last; k++) {
        if (k > first) PyUnicode_WRITE(to, dst, o++, sep);
        Py_ssize_t len = p->end[k] - p->start[k];
        copy_chars(to, dst + o * to, kind, (const char *)data + p->start[k] * kind, len);
        o += len;
    }
    return res;
}

/* the first line feed in data[i, n), or n: a 1-byte text by memchr, a wider one four (two) characters at a time,
 * each 64-bit word tested for a lane equal to '\n' at once (the lanes are the characters, so a byte 0x0A inside a
 * wider character is no match); a scan character by character took 1.2 ns each on the 10-K sample */
static inline ALWAYS_INLINE Py_ssize_t next_newline(const int kind, const void *data, Py_ssize_t i, Py_ssize_t n) {
    if (kind == PyUnicode_1BYTE_KIND) {
        const char *hit = i < n ? memchr((const char *)data + i, '\n', (size_t)(n - i)) : NULL;
        return hit ? hit - (const char *)data : n;
    }
    const uint64_t ones = kind == PyUnicode_2BYTE_KIND ? 0x0001000100010001ULL : 0x0000000100000001ULL;
    const uint64_t highs = kind == PyUnicode_2BYTE_KIND ? 0x8000800080008000ULL : 0x8000000080000000ULL;
    const Py_ssize_t per = 8 / kind;
    for (; i + per <= n; i += per) {
        uint64_t w;
        memcpy(&w, (const char *)data + i * kind, 8);
        w ^= ones * '\n';
        if ((w - ones) & ~w & highs) break;  /* some lane is zero: a line feed among these characters */
    }
    while (i < n && PyUnicode_READ(kind, data, i) != '\n') i++;
    return i;
}

/* chunk()'s pieces: spans of the text */
static inline ALWAYS_INLINE int chunk_pieces(const int kind, const void *data, Py_ssize_t n, Py_ssize_t cc, Spans *pieces) {
    Py_ssize_t p = 0;
    for (;;) {
        Py_ssize_t e = p;  /* the paragraph's end: the next "\n\n" (str.split's leftmost, non-overlapping) */
        while ((e = next_newline(kind, data, e, n)) < n && !(e + 1 < n && PyUnicode_READ(kind, data, e + 1) == '\n')) e++;
        if (e - p <= cc) {
            if (spans_add(pieces, p, e) < 0) return -1;
        } else {
            Py_ssize_t s = p, q = p;
            for (;;) {
                /* the next sentence end: a stop followed by whitespace; then the whitespace run is skipped */
                while (q < e) {
                    Py_UCS4 c = PyUnicode_READ(kind, data, q);
                    if ((c == '.' || c == '!' || c == '?') && q + 1 < e && ISSPACE(PyUnicode_READ(kind, data, q + 1))) break;
                    q++;
                }
                Py_ssize_t send = q < e ? q + 1 : e;  /* the sentence [s, send) */
                if (send - s > cc) {
                    for (Py_ssize_t a = s; a < send; a += cc)
                        if (spans_add(pieces, a, a + cc < send ? a + cc : send) < 0) return -1;
                } else if (send > s) {
                    if (spans_add(pieces, s, send) < 0) return -1;
                }
                if (q >= e) break;
                q = send;
                while (q < e && ISSPACE(PyUnicode_READ(kind, data, q))) q++;
                s = q;
            }
        }
        if (e >= n) return 0;
        p = e + 2;
    }
}

/* chunk_text: paragraphs (split on "\n\n") that fit a chunk are pieces; longer ones are cut after each [.!?]
 * followed by whitespace (the whitespace dropped), a sentence longer than a chunk cut hard every chunk_chars
 * characters; pieces are packed greedily, joined by spaces, and an empty chunk so far takes the next piece. */
static PyObject *chunk(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *text;
    Py_ssize_t cc;
    if (!PyArg_ParseTuple(args, "Un", &text, &cc)) return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (n <= cc) return Py_BuildValue("[O]", text);
    if (cc <= 0) {
        PyErr_SetString(PyExc_ValueError, "chunk_chars must be positive");
        return NULL;
    }
    int kind = PyUnicode_KIND(text), rc;
    const void *data = PyUnicode_DATA(text);
    Spans pieces = {0};
    PyObject *chunks = NULL;
    NOGIL_BEGIN(n)
    SPECIALISE(kind, rc = chunk_pieces, data, n, cc, &pieces);
    NOGIL_END
    if (rc < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    chunks = PyList_New(0);
    if (!chunks) goto fail;
    Py_ssize_t start = 0, size = 0;
    for (Py_ssize_t i = 0; i < pieces.len; i++) {
        Py_ssize_t len = pieces.end[i] - pieces.start[i];
        if (!size) {
            start = i;
            size = len;
        } else if (size + 1 + len > cc) {
            PyObject *c = join_spans(kind, data, &pieces, start, i, ' ');
            if (!c || PyList_Append(chunks, c) < 0) {
                Py_XDECREF(c);
                goto fail;
            }
            Py_DECREF(c);
            start = i;
            size = len;
        } else {
            size += 1 + len;
        }
    }
    if (size) {
        PyObject *c = join_spans(kind, data, &pieces, start, pieces.len, ' ');
        if (!c || PyList_Append(chunks, c) < 0) {
            Py_XDECREF(c);
            goto fail;
        }
        Py_DECREF(c);
    }
    spans_free(&pieces);
    return chunks;
fail:
    spans_free(&pieces);
    Py_XDECREF(chunks);
    return NULL;
}

/* [^\W\d_]: a word character that is not a decimal digit nor the underscore */
static inline int is_letter(Py_UCS4 c) { return Py_UNICODE_ISALNUM(c) && !Py_UNICODE_ISDECIMAL(c) && c != '_'; }

/* strip_lines()'s scan: every line's span, and its key's span (invisible characters and whitespace stripped from
 * both ends); a blank key is an empty span */
static inline ALWAYS_INLINE int line_keys(const int kind, const void *data, Py_ssize_t n, Spans *lines, Spans *keys) {
    Py_ssize_t a = 0;
    for (Py_ssize_t i = 0;; i++) {
        i = next_newline(kind, data, i, n);
        Py_ssize_t s = a, e = i;
        while (s < e) {
            Py_UCS4 c = PyUnicode_READ(kind, data, s);
            if (!(ISSPACE(c) || is_invisible(c))) break;
            s++;
        }
        while (e > s) {
            Py_UCS4 c = PyUnicode_READ(kind, data, e - 1);
            if (!(ISSPACE(c) || is_invisible(c))) break;
            e--;
        }
        if (spans_add(lines, a, i) < 0 || spans_add(keys, s, e) < 0) return -1;
        if (i >= n) return 0;
        a = i + 1;
    }
}

static inline ALWAYS_INLINE Py_ssize_t count_invisible(const int kind, const void *data, Py_ssize_t s, Py_ssize_t e) {
    Py_ssize_t k = 0;
    for (Py_ssize_t j = s; j < e; j++) k += is_invisible(PyUnicode_READ(kind, data, j));
    return k;
}

/* the signing kernel's constants (sign, below); the memo hashes its keys with FNV and the finalizer too */
#define PERMS 64
#define GRAM 5
static const uint64_t MIX[GRAM] = {0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL, 0x165667B19E3779F9ULL,
                                   0xD6E8FEB86659FD93ULL, 0xFF51AFD7ED558CCDULL};
#define FNV_OFFSET 0xCBF29CE484222325ULL
#define FNV_PRIME 0x100000001B3ULL
#define KEY_A 0x243F6A8885A308D3ULL
#define KEY_B 0x13198A2E03707344ULL

static inline uint64_t fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    return x ^ (x >> 33);
}

/* The verdicts on short keys, remembered across documents: half of a filing's lines are repeats ("$", "1",
 * "Total"). A hash table of the keys' code points, so that a document's lookups run without the GIL; as a dict
 * they held it, with a str built, hashed and compared per line (half of strip's time on the 10-K sample, which
 * ingest's threads then took in turns). One per Boilerplate (lmops.text), shared by ingest's threads under its
 * lock; emptied when it holds MEMO_MAX keys, so a long-running worker stays bounded. */
#define MEMO_CHARS 64
#define MEMO_MAX (1 << 17)

typedef struct {
    PyThread_type_lock lock;
    Py_ssize_t slots, count;    /* slots: a power of two, at most half full */
    uint64_t *hash;
    uint32_t *off;              /* the key's first code point in `keys` */
    uint8_t *len;               /* 0: an empty slot (a key is never empty) */
    uint8_t *hit;
    Py_UCS4 *keys;
    Py_ssize_t used, room;      /* code points in `keys`, and its size */
} Memo;

#define MEMO_CAPSULE "lmops._textkernels.memo"

static void memo_empty(Memo *m) {
    PyMem_RawFree(m->hash), PyMem_RawFree(m->off), PyMem_RawFree(m->len), PyMem_RawFree(m->hit), PyMem_RawFree(m->keys);
    m->hash = NULL, m->off = NULL, m->len = NULL, m->hit = NULL, m->keys = NULL;
    m->slots = m->count = m->used = m->room = 0;
}

static void memo_free(PyObject *capsule) {
    Memo *m = PyCapsule_GetPointer(capsule, MEMO_CAPSULE);
    if (!m) return;
    memo_empty(m);
    if (m->lock) PyThread_free_lock(m->lock);
    PyMem_RawFree(m);
}

/* line_memo(): a new, empty memo for strip_lines */
static PyObject *line_memo(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    Memo *m = PyMem_RawCalloc(1, sizeof(Memo));
    if (!m) return PyErr_NoMemory();
    m->lock = PyThread_allocate_lock();
    if (!m->lock) {
        PyMem_RawFree(m);
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(m, MEMO_CAPSULE, memo_free);
    if (!capsule) {
        PyThread_free_lock(m->lock);
        PyMem_RawFree(m);
    }
    return capsule;
}

/* FNV-1a over the key's code points, then MurmurHash3's finalizer (the same key hashes alike in any str width) */
static inline ALWAYS_INLINE uint64_t key_hash(const int kind, const void *data, Py_ssize_t s, Py_ssize_t e) {
    uint64_t h = FNV_OFFSET;
    for (Py_ssize_t j = s; j < e; j++) h = (h ^ PyUnicode_READ(kind, data, j)) * FNV_PRIME;
    return fmix64(h);
}


static inline ALWAYS_INLINE int memo_same(const int kind, const void *data, Py_ssize_t s, Py_ssize_t n, const Py_UCS4 *key) {
    for (Py_ssize_t j = 0; j < n; j++)
        if (PyUnicode_READ(kind, data, s + j) != key[j]) return 0;
    return 1;
}

/* the slot of key data[s, e) with hash h: the one holding it, or the empty one where it would go */
static inline ALWAYS_INLINE Py_ssize_t memo_slot(const int kind, const void *data, Py_ssize_t s, Py_ssize_t e, uint64_t h, const Memo *m) {
    Py_ssize_t mask = m->slots - 1, i = (Py_ssize_t)(h & (uint64_t)mask);
    while (m->len[i] && !(m->hash[i] == h && m->len[i] == e - s && memo_same(kind, data, s, e - s, m->keys + m->off[i]))) i = (i + 1) & mask;
    return i;
}

/* room for one more key of n code points (the lock held); -1 where memory ran out (the memo is then empty) */
static int memo_reserve(Memo *m, Py_ssize_t n) {
    if (m->count >= MEMO_MAX) memo_empty(m);
    if (m->used + n > m->room) {
        Py_ssize_t room = m->room ? m->room * 2 : 1 << 14;
        Py_UCS4 *keys = PyMem_RawRealloc(m->keys, (size_t)room * sizeof(Py_UCS4));
        if (!keys) return memo_empty(m), -1;
        m->keys = keys, m->room = room;
    }
    if (2 * (m->count + 1) <= m->slots) return 0;
    Py_ssize_t slots = m->slots ? m->slots * 2 : 1 << 12, mask = slots - 1;
    uint64_t *hash = PyMem_RawCalloc(slots, sizeof(uint64_t));
    uint32_t *off = PyMem_RawCalloc(slots, sizeof(uint32_t));
    uint8_t *len = PyMem_RawCalloc(slots, 1), *hit = PyMem_RawCalloc(slots, 1);
    if (!hash || !off || !len || !hit) {
        PyMem_RawFree(hash), PyMem_RawFree(off), PyMem_RawFree(len), PyMem_RawFree(hit);
        return memo_empty(m), -1;
    }
    for (Py_ssize_t i = 0; i < m->slots; i++) {  /* every key to its slot in the larger table (keys are distinct) */
        if (!m->len[i]) continue;
        Py_ssize_t j = (Py_ssize_t)(m->hash[i] & (uint64_t)mask);
        while (len[j]) j = (j + 1) & mask;
        hash[j] = m->hash[i], off[j] = m->off[i], len[j] = m->len[i], hit[j] = m->hit[i];
    }
    PyMem_RawFree(m->hash), PyMem_RawFree(m->off), PyMem_RawFree(m->len), PyMem_RawFree(m->hit);
    m->hash = hash, m->off = off, m->len = len, m->hit = hit, m->slots = slots;
    return 0;
}

/* Take the memo's lock. A thread that waited for it with the GIL released takes the GIL back holding it, so a
 * thread holding the GIL must never wait for the lock (the two would wait for each other): it only tries, and
 * otherwise waits with the GIL released. `gil`: whether the caller holds the GIL. */
static void memo_acquire(Memo *m, int gil) {
    if (PyThread_acquire_lock(m->lock, NOWAIT_LOCK)) return;
    if (!gil) {
        PyThread_acquire_lock(m->lock, WAIT_LOCK);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(m->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

/* the GIL-free part of strip_lines: each non-blank line's key length and flag 8; the lines that could match
 * (keys of at most max_key characters, or any with max_key -1) either decided from the memo (flag 1 where it
 * matched) or marked todo: 2 where the key is one the memo can hold (its hash in kh), 1 where not */
static inline ALWAYS_INLINE void line_verdicts(const int kind, const void *data, const Spans *kspan, Py_ssize_t max_key,
                                               const unsigned char *first, Memo *memo, Py_ssize_t *keylen, char *flag, char *todo,
                                               uint64_t *kh) {
    for (Py_ssize_t l = 0; l < kspan->len; l++) {
        Py_ssize_t s = kspan->start[l], e = kspan->end[l];
        if (s == e) continue;
        flag[l] = 8;
        Py_ssize_t in = count_invisible(kind, data, s, e);
        keylen[l] = e - s - in;
        if (max_key >= 0 && keylen[l] > max_key) continue;  /* it cannot match */
        Py_UCS4 c0 = PyUnicode_READ(kind, data, s);  /* (the key's first character: stripping ends at a visible one) */
        if (first && c0 < 128 && !(first[c0 >> 3] & (1 << (c0 & 7)))) continue;  /* no match begins with it */
        if (in || keylen[l] > MEMO_CHARS) {
            todo[l] = 1;
            continue;
        }
        kh[l] = key_hash(kind, data, s, e);
        Py_ssize_t i = memo->slots ? memo_slot(kind, data, s, e, kh[l], memo) : -1;
        if (i >= 0 && memo->len[i])
            flag[l] |= memo->hit[i];
        else
            todo[l] = 2;
    }
}

/* the line's key: the line stripped (data[s, e)) without its invisible characters */
static PyObject *line_key(PyObject *text, int kind, const void *data, Py_ssize_t s, Py_ssize_t e) {
    Py_ssize_t in;
    SPECIALISE(kind, in = count_invisible, data, s, e);
    if (!in) return PyUnicode_Substring(text, s, e);
    char *buf = PyMem_Malloc((size_t)(e - s) * kind);
    if (!buf) return PyErr_NoMemory();
    Py_ssize_t o = 0;
    for (Py_ssize_t i = s; i < e; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (!is_invisible(c)) PyUnicode_WRITE(kind, buf, o++, c);
    }
    PyObject *key = PyUnicode_FromKindAndData(kind, buf, o);
    PyMem_Free(buf);
    return key;
}

static inline ALWAYS_INLINE void memo_add(const int kind, const void *data, Py_ssize_t s, Py_ssize_t e, uint64_t h, int hit, Memo *m) {
    if (memo_reserve(m, e - s) < 0) return;  /* (out of memory: the verdict is simply not remembered) */
    Py_ssize_t i = memo_slot(kind, data, s, e, h, m);
    if (m->len[i]) return;  /* another thread's document had it too */
    for (Py_ssize_t j = s; j < e; j++) m->keys[m->used + j - s] = PyUnicode_READ(kind, data, j);
    m->hash[i] = h, m->off[i] = (uint32_t)m->used, m->len[i] = (uint8_t)(e - s), m->hit[i] = (uint8_t)hit;
    m->used += e - s;
    m->count++;
}

/* Boilerplate.strip with its patterns as `fullmatch` (and `memo`, line_memo()'s verdicts on short keys so far;
 * `max_key`, the patterns' longest match in characters, or -1: a longer key cannot match, so it is never passed
 * to the regex, and never built unless its line is a running header's candidate; `first`, the ASCII characters
 * a match can begin with, or None: a key beginning with another ASCII character is not passed to the regex):
 * lines whose key (the line without invisible characters, stripped) matches whole are page breaks; short lines with
 * a letter within `window` non-blank lines of one, whose key occurs `repeats` times or more among such lines, are
 * running headers. Returns (text without those lines, number of lines removed); the text itself where nothing
 * matched. */
static PyObject *strip_lines(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *text, *fullmatch, *memo_obj;
    PyObject *first_obj = Py_None;
    Py_ssize_t repeats, max_chars, window, max_key = -1;
    if (!PyArg_ParseTuple(args, "UOnnnO|nO", &text, &fullmatch, &repeats, &max_chars, &window, &memo_obj, &max_key, &first_obj)) return NULL;
    Memo *memo = PyCapsule_GetPointer(memo_obj, MEMO_CAPSULE);
    if (!memo) return NULL;
    const unsigned char *first = NULL;
    if (first_obj != Py_None) {
        if (!PyBytes_Check(first_obj) || PyBytes_GET_SIZE(first_obj) != 16) {
            PyErr_SetString(PyExc_ValueError, "strip_lines(): first must be a bitmap of the 128 ASCII characters");
            return NULL;
        }
        first = (const unsigned char *)PyBytes_AS_STRING(first_obj);
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Spans lines = {0}, kspan = {0};
    PyObject **keys = NULL;
    Py_ssize_t *keylen = NULL;
    uint64_t *kh = NULL;
    char *flag = NULL, *todo = NULL;  /* flag: 1 anchor (page break), 2 near a break, 4 dropped, 8 not blank */
    PyObject *counts = NULL, *asked = NULL, *res = NULL;
    int rc;
    NOGIL_BEGIN(n)
    SPECIALISE(kind, rc = line_keys, data, n, &lines, &kspan);
    NOGIL_END
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t L = lines.len;
    keys = PyMem_Calloc(L, sizeof(PyObject *));
    keylen = PyMem_Calloc(L, sizeof(Py_ssize_t));
    kh = PyMem_Calloc(L, sizeof(uint64_t));
    flag = PyMem_Calloc(L, 1);
    todo = PyMem_Calloc(L, 1);
    if (!keys || !keylen || !kh || !flag || !todo) {
        PyErr_NoMemory();
        goto done;
    }
    NOGIL_BEGIN(n)
    memo_acquire(memo, _save == NULL);
    SPECIALISE(kind, line_verdicts, data, &kspan, max_key, first, memo, keylen, flag, todo, kh);
    PyThread_release_lock(memo->lock);
    NOGIL_END
    /* the keys the memo did not know, through the regex (once per key: `asked`); then remembered, all under one
     * hold of the lock */
    Py_ssize_t learnt = 0;
    for (Py_ssize_t l = 0; l < L; l++) {
        if (!todo[l]) continue;
        PyObject *key = line_key(text, kind, data, kspan.start[l], kspan.end[l]);
        if (!key) goto done;
        keys[l] = key;
        PyObject *known = asked ? PyDict_GetItemWithError(asked, key) : NULL;
        if (!known && PyErr_Occurred()) goto done;
        if (known) {
            flag[l] |= known == Py_True;
        } else {
            PyObject *m = PyObject_CallOneArg(fullmatch, key);
            if (!m) goto done;
            flag[l] |= m != Py_None;
            Py_DECREF(m);
            if (!asked && !(asked = PyDict_New())) goto done;
            if (PyDict_SetItem(asked, key, flag[l] & 1 ? Py_True : Py_False) < 0) goto done;
        }
        learnt += todo[l] == 2;
    }
    if (learnt) {
        memo_acquire(memo, 1);
        for (Py_ssize_t l = 0; l < L; l++)
            if (todo[l] == 2) SPECIALISE(kind, memo_add, data, kspan.start[l], kspan.end[l], kh[l], flag[l] & 1, memo);
        PyThread_release_lock(memo->lock);
    }
    Py_ssize_t anchors = 0;
    for (Py_ssize_t l = 0; l < L; l++) anchors += flag[l] & 1;
    if (!anchors) {
        res = Py_BuildValue("(Oi)", text, 0);
        goto done;
    }
    Py_ssize_t removed = anchors;
    if (repeats) {
        for (Py_ssize_t l = 0; l < L; l++) {
            if (!(flag[l] & 1)) continue;
            for (int step = -1; step <= 1; step += 2) {
                Py_ssize_t i = l, seen = 0;
                while (seen < window) {
                    i += step;
                    if (i < 0 || i >= L) break;
                    if (!(flag[i] & 8)) continue;
                    seen++;
                    if (flag[i] & 1 || keylen[i] > max_chars) continue;
                    /* (an invisible character is no letter: the line's own characters do) */
                    for (Py_ssize_t j = kspan.start[i]; j < kspan.end[i]; j++)
                        if (is_letter(PyUnicode_READ(kind, data, j))) {
                            flag[i] |= 2;
                            break;
                        }
                }
            }
        }
        counts = PyDict_New();
        if (!counts) goto done;
        for (Py_ssize_t l = 0; l < L; l++) {
            if (!(flag[l] & 2)) continue;
            if (!keys[l] && !(keys[l] = line_key(text, kind, data, kspan.start[l], kspan.end[l]))) goto done;
            PyObject *c = PyDict_GetItemWithError(counts, keys[l]);
            if (!c && PyErr_Occurred()) goto done;
            PyObject *next = PyLong_FromSsize_t((c ? PyLong_AsSsize_t(c) : 0) + 1);
            if (!next || PyDict_SetItem(counts, keys[l], next) < 0) {
                Py_XDECREF(next);
                goto done;
            }
            Py_DECREF(next);
        }
        for (Py_ssize_t l = 0; l < L; l++) {
            if (!(flag[l] & 2)) continue;
            if (PyLong_AsSsize_t(PyDict_GetItem(counts, keys[l])) >= repeats) {
                flag[l] |= 4;
                removed++;
            }
        }
    }
    {
        /* the kept lines joined by line feeds */
        Spans kept = {0};
        for (Py_ssize_t l = 0; l < L; l++)
            if (!(flag[l] & 1) && !(flag[l] & 4) && spans_add(&kept, lines.start[l], lines.end[l]) < 0) {
                spans_free(&kept);
                goto done;
            }
        PyObject *joined = join_spans(kind, data, &kept, 0, kept.len, '\n');
        spans_free(&kept);
        if (!joined) goto done;
        res = Py_BuildValue("(Nn)", joined, removed);
    }
done:
    if (keys) {
        for (Py_ssize_t l = 0; l < lines.len; l++) Py_XDECREF(keys[l]);
        PyMem_Free(keys);
    }
    PyMem_Free(keylen);
    PyMem_Free(kh);
    PyMem_Free(flag);
    PyMem_Free(todo);
    Py_XDECREF(counts);
    Py_XDECREF(asked);
    spans_free(&lines);
    spans_free(&kspan);
    return res;
}

/* Duplicate detection's words, exact key and MinHash bins of one document (tasks/dedup.py: sign_py is the
 * definition). Words: the text lower-cased character by character (the simple case mapping, Py_UNICODE_TOLOWER:
 * str.lower() but for U+0130, whose full mapping is two characters) and split on whitespace, as str.split() does.
 * A word's hash: FNV-1a over its code points, then MurmurHash3's finalizer. The exact key: two 64-bit chains over
 * the word hashes, seeded by the role. MinHash: every 5-gram of word hashes mixed by odd multipliers (one shorter
 * gram for a document under 5 words), finalized with the seed, its top 6 bits choosing one of 64 bins, each bin
 * keeping its smallest value (UINT64_MAX where none fell). */
typedef struct {
    uint64_t a, b, seed, g[GRAM];  /* g: the last GRAM word hashes, g[GRAM - 1] the newest */
    Py_ssize_t words;
    uint64_t *bins;
} Signer;

/* the word hash w added: to both chains, and (with bins) its gram */
#define ADD_WORD(w)                                                                                        \
    do {                                                                                                   \
        uint64_t w_ = (w);                                                                                 \
        a = fmix64(a ^ w_);                                                                                \
        b = fmix64(b + w_ * MIX[4]);                                                                       \
        g0 = g1, g1 = g2, g2 = g3, g3 = g4, g4 = w_;                                                       \
        if (++words >= GRAM && bins) {                                                                     \
            uint64_t x = fmix64((g0 * MIX[0] + g1 * MIX[1] + g2 * MIX[2] + g3 * MIX[3] + g4 * MIX[4]) ^ seed); \
            int bin = (int)(x >> 58);                                                                      \
            if (x < bins[bin]) bins[bin] = x;                                                              \
        }                                                                                                  \
    } while (0)

/* one text's words into the signer; the text's end ends a word. (The state in locals: through the struct, each
 * word's stores and loads were a dependency the compiler kept; 0.083 -> 0.068 s on the 10-K sample.) */
static inline ALWAYS_INLINE void sign_words(const int kind, const void *data, Py_ssize_t n, Signer *st) {
    uint64_t a = st->a, b = st->b, seed = st->seed, *bins = st->bins;
    uint64_t g0 = st->g[0], g1 = st->g[1], g2 = st->g[2], g3 = st->g[3], g4 = st->g[4];
    Py_ssize_t words = st->words;
    uint64_t h = FNV_OFFSET;
    int in_word = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            if (c > ' ' && c != 0x7f) {  /* printable ASCII: the common case */
                if (c >= 'A' && c <= 'Z') c += 32;
                h = (h ^ c) * FNV_PRIME;
                in_word = 1;
                continue;
            }
            if (!ISSPACE(c)) {  /* the ASCII control characters that are not whitespace belong to words */
                h = (h ^ c) * FNV_PRIME;
                in_word = 1;
                continue;
            }
        } else if (!ISSPACE(c)) {
            h = (h ^ Py_UNICODE_TOLOWER(c)) * FNV_PRIME;
            in_word = 1;
            continue;
        }
        if (in_word) {
            ADD_WORD(fmix64(h));
            h = FNV_OFFSET;
            in_word = 0;
        }
    }
    if (in_word) ADD_WORD(fmix64(h));
    st->a = a, st->b = b, st->words = words;
    st->g[0] = g0, st->g[1] = g1, st->g[2] = g2, st->g[3] = g3, st->g[4] = g4;
}

/* sign(text, role, seed, bins=True): with bins false, the key and the word count alone (bins None). `text`: a str,
 * or a list of them signed as if joined by spaces (a document's chunks, without building their join) */
static PyObject *sign(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *text;
    unsigned long long role, seed;
    int want_bins = 1;
    if (!PyArg_ParseTuple(args, "OKK|p", &text, &role, &seed, &want_bins)) return NULL;
    /* the texts in a tuple of our own while the GIL is released: the caller's list could change meanwhile */
    PyObject *parts = PyUnicode_Check(text) ? PyTuple_Pack(1, text) : PyList_Check(text) ? PyList_AsTuple(text) : NULL;
    if (!parts) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "sign() takes a str or a list of str");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(parts), n = 0;
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *t = PyTuple_GET_ITEM(parts, j);
        if (!PyUnicode_Check(t)) {
            Py_DECREF(parts);
            PyErr_SetString(PyExc_TypeError, "sign() takes a str or a list of str");
            return NULL;
        }
        n += PyUnicode_GET_LENGTH(t);
    }
    PyObject *sig = want_bins ? PyBytes_FromStringAndSize(NULL, PERMS * sizeof(uint64_t)) : Py_NewRef(Py_None);
    if (!sig) {
        Py_DECREF(parts);
        return NULL;
    }
    Signer st = {fmix64(KEY_A ^ role), fmix64(KEY_B ^ role), seed, {0}, 0, want_bins ? (uint64_t *)PyBytes_AS_STRING(sig) : NULL};
    if (st.bins)
        for (int k = 0; k < PERMS; k++) st.bins[k] = UINT64_MAX;
    NOGIL_BEGIN(n)  /* (the bins are the new bytes object's own buffer, not yet seen by anyone else) */
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *t = PyTuple_GET_ITEM(parts, j);
        const void *data = PyUnicode_DATA(t);
        SPECIALISE(PyUnicode_KIND(t), sign_words, data, PyUnicode_GET_LENGTH(t), &st);
    }
    NOGIL_END
    Py_DECREF(parts);
    if (st.bins && st.words < GRAM) {  /* one shorter gram: the words there are, first to last */
        uint64_t g = 0;
        for (Py_ssize_t k = 0; k < st.words; k++) g += st.g[GRAM - st.words + k] * MIX[k];
        uint64_t h = fmix64(g ^ seed);
        st.bins[h >> 58] = h;
    }
    uint64_t key[2] = {fmix64(st.a ^ (uint64_t)st.words), fmix64(st.b ^ (uint64_t)st.words)};
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, sizeof key);
    if (!k) {
        Py_DECREF(sig);
        return NULL;
    }
    return Py_BuildValue("(NnN)", k, st.words, sig);
}

/* whether any of d[0..n) is a surrogate: blocks of 64 or-reduced without a branch (the compiler vectorizes them),
 * stopping at the first block that holds one */
#define SURROGATE_SCAN(T, d, n, mask, found)                                  \
    do {                                                                      \
        Py_ssize_t i_ = 0;                                                    \
        for (; i_ + 64 <= (n) && !(found); i_ += 64) {                        \
            T acc_ = 0;                                                       \
            for (int k_ = 0; k_ < 64; k_++) acc_ |= (T)(((d)[i_ + k_] & (mask)) == 0xD800); \
            found = acc_ != 0;                                                \
        }                                                                     \
        for (; i_ < (n) && !(found); i_++) found = ((d)[i_] & (mask)) == 0xD800; \
    } while (0)

/* whether the text holds a lone surrogate (ingest's _SURROGATE.search, without a regex pass over every character) */
static PyObject *has_surrogate(PyObject *Py_UNUSED(self), PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "has_surrogate() takes a str");
        return NULL;
    }
    int kind = PyUnicode_KIND(text), found = 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (kind == PyUnicode_1BYTE_KIND) Py_RETURN_FALSE;
    NOGIL_BEGIN(n)
    if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *d = PyUnicode_2BYTE_DATA(text);
        SURROGATE_SCAN(Py_UCS2, d, n, 0xF800, found);
    } else {
        const Py_UCS4 *d = PyUnicode_4BYTE_DATA(text);
        SURROGATE_SCAN(Py_UCS4, d, n, 0xFFFFF800u, found);
    }
    NOGIL_END
    return PyBool_FromLong(found);
}


static PyMethodDef methods[] = {
    {"fold", fold, METH_VARARGS, "fold(text, safe=None): normalize_text after NFC, or None (see lmops.text)"},
    {"chunk", chunk, METH_VARARGS, "chunk_text(text, chunk_chars) (see tasks/ingest.py)"},
    {"strip_lines", strip_lines, METH_VARARGS, "Boilerplate.strip (see lmops.text)"},
    {"line_memo", line_memo, METH_NOARGS, "line_memo(): a new memo of strip_lines' verdicts on short lines"},
    {"has_surrogate", has_surrogate, METH_O, "whether the text holds a lone surrogate"},
    {"sign", sign, METH_VARARGS, "sign(text, role, seed, bins=True) -> (key, words, bins or None) (see tasks/dedup.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_textkernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__textkernels(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "RELEASE_GIL_CHARS", RELEASE_GIL_CHARS) < 0) Py_CLEAR(m);
    return m;
}

/*
 * capture_export.export._cbor_json: a stored record's CBOR written straight as its JSON line, or as its values
 * for the Parquet columns.
 *
 *     json_line(body, record_id) -> bytes | None
 *     parquet_row(body, record_id) -> (record_id, ver, timestamp, ..., capture, raw_request, raw_response) | None
 *     spliced_records(rows, max_bytes) -> bytes | None
 *     seals_valid(rows, mac_key) -> bool | None
 *
 * The optional fast paths of the JSON Lines and Parquet encoders (export/batch.py). json_line's contract is
 * the Python path's bytes, exactly: what ``json_bytes({"id": record_id, **JsonLinesEncoder.decode_record(body)})
 * + b"\n"`` writes (export/formats.py: cbor2 decodes, orjson encodes, bytes become {"$base64": ...}, a
 * canonical tag-0 date/time stays its text). It handles the subset our own writer produces and returns None
 * for everything else, so that the caller takes the Python path for that row: other tags, undefined and
 * simple values, indefinite lengths, keys that are not text, a top-level "id", nesting deeper than
 * MAX_DEPTH, integers outside orjson's 64-bit range, invalid UTF-8, truncated or trailing bytes. It never
 * reads past the body, whatever the body holds: every length is checked against the bytes left before it is
 * used.
 *
 * parquet_row takes the records json_line takes but those with a field the typed columns do not have, a
 * timestamp that is not a date/time (or null), a struct that is not a map of its fields each of its
 * column's type (or null), or a half or single float (cbor2 writes doubles): the encoder puts what does not
 * fit in ``extra``, and only Python does that. Its contract is the Python Parquet path's column values: the
 * row's typed fields (formats._ROW_FIELDS, the Parquet schema's order) as the Python values cbor2 decodes
 * them to (None where the record lacks one; the encoder checks their types as it checks a decoded
 * record's), but the timestamp as microseconds since the epoch and each struct flattened into its fields'
 * values; the capture column's JSON (formats._captures: the capture without the request's and response's
 * raw bodies, written by json_line's writer; None where the record has no capture, or a null one), and the
 * raw bodies the raw body columns' bytes. The capture, most of a record, never becomes Python objects.
 *
 * privacy_prefilter and privacy_scrubbed (their own section below) are privacy mode's: a stored record
 * without what privacy mode drops, the rest of its bytes as they are. spliced_records (its own section too)
 * is the default format's: a batch of stored rows as its CBOR sequence, each row's id spliced in. seals_valid
 * (its own section) checks the seals of a batch of stored rows, as store/seal.py's RecordSeal.all_valid does.
 *
 * Plain CPython C API, no other library at build time; orjson (already imported by the caller) formats the
 * floats, so that they come out exactly as orjson writes them (a record holds a handful), and seals_valid
 * finds OpenSSL's SHA-256 at run time in the libcrypto Python's hashlib uses.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <dlfcn.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef CBOR_JSON_SOURCE_SHA256
#define CBOR_JSON_SOURCE_SHA256 "unknown"
#endif

/* Maps and arrays nested deeper than this are left to Python. orjson stops at 255 levels and cbor2 at
 * Python's recursion limit; a real record nests a dozen. */
#define MAX_DEPTH 64

/* Results of the writers: OK, BAIL (not ours to write: the caller returns None), or ERR (a Python
 * exception is set: out of memory). */
enum { OK = 0, BAIL = 1, ERR = -1 };

static PyObject *orjson_dumps; /* orjson.dumps */

/* -- output buffer ------------------------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} Out;

static int grow(Out *out, size_t extra) {
    if (extra > SIZE_MAX / 2 - out->len) {
        PyErr_NoMemory();
        return ERR;
    }
    size_t need = out->len + extra, cap = out->cap ? out->cap : 256;
    while (cap < need)
        cap *= 2;
    char *data = PyMem_Realloc(out->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return ERR;
    }
    out->data = data;
    out->cap = cap;
    return OK;
}

static inline int reserve(Out *out, size_t extra) {
    return extra <= out->cap - out->len ? OK : grow(out, extra);
}

static inline int put(Out *out, const char *text, size_t len) {
    if (reserve(out, len) != OK)
        return ERR;
    memcpy(out->data + out->len, text, len);
    out->len += len;
    return OK;
}

static int put_u64(Out *out, uint64_t value, int negative) {
    char digits[24];
    int at = sizeof digits;
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    if (negative)
        digits[--at] = '-';
    return put(out, digits + at, sizeof digits - at);
}

/* -- input -------------------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *at, *end;
} In;

/* A data item's head: major type (the top 3 bits), additional information (the low 5), and the argument
 * that follows in 0, 1, 2, 4 or 8 bytes. Additional information 28-30 is reserved and 31 means an
 * indefinite length (or, in major type 7, the "break" stop code): neither is ours. Major type 7 keeps its
 * raw additional information: there it says what the item is (false, true, null, a float's width). */
static int head(In *in, int *major, int *info, uint64_t *arg) {
    if (in->at >= in->end)
        return BAIL;
    uint8_t initial = *in->at++;
    *major = initial >> 5;
    *info = initial & 31;
    if (*info < 24) {
        *arg = (uint64_t)*info;
        return OK;
    }
    if (*info > 27)
        return BAIL;
    size_t size = (size_t)1 << (*info - 24);
    if ((size_t)(in->end - in->at) < size)
        return BAIL;
    uint64_t value = 0;
    for (size_t i = 0; i < size; i++)
        value = value << 8 | in->at[i];
    in->at += size;
    *arg = value;
    return OK;
}

/* -- strings ------------------------------------------------------------------------------------------ */

/* orjson's escapes: the quote, the backslash, \b \t \n \f \r, any other byte below 0x20 as \u00xx; nothing
 * else (not DEL, not "/", not U+2028). 0 copies the byte, 'u' writes \u00xx, else the letter after "\". */
static char escape[128];

static void init_escapes(void) {
    for (int c = 0; c < 0x20; c++)
        escape[c] = 'u';
    escape['\b'] = 'b';
    escape['\t'] = 't';
    escape['\n'] = 'n';
    escape['\f'] = 'f';
    escape['\r'] = 'r';
    escape['"'] = '"';
    escape['\\'] = '\\';
}

/* The length of the well-formed UTF-8 sequence at ``s`` (``left`` bytes available), or 0 if it is not one:
 * RFC 3629's table, which is what Python's strict decoder (and so cbor2) accepts: no overlong forms, no
 * surrogates (ED A0-BF), nothing beyond U+10FFFF. */
static size_t utf8_sequence(const uint8_t *s, size_t left) {
    uint8_t c = s[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* A CBOR text string's bytes as a JSON string, checked to be UTF-8. The output is reserved a run of the
 * input at a time (each byte written as \u00xx at most), not six times a long string at once. */
#define TEXT_RUN 4096

static int put_text(Out *out, const uint8_t *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    if (put(out, "\"", 1) != OK)
        return ERR;
    size_t i = 0;
    while (i < len) {
        size_t stop = len - i < TEXT_RUN ? len : i + TEXT_RUN;
        /* a sequence that starts before ``stop`` may end 3 bytes past it */
        if (reserve(out, 6 * (stop - i) + 8) != OK)
            return ERR;
        char *w = out->data + out->len;
        while (i < stop) {
            /* Eight bytes at a time while none needs a look of its own: none is 0x80 or above (UTF-8 to
             * check), below 0x20, a quote or a backslash (escaped). Exact tests (Bit Twiddling Hacks'
             * haszero/hasless); most of a record's text is such runs. */
            if (stop - i >= 8) {
                uint64_t x;
                memcpy(&x, s + i, 8);
                const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
                uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
                uint64_t special = (x | ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs;
                if (!special) {
                    memcpy(w, s + i, 8);
                    w += 8;
                    i += 8;
                    continue;
                }
            }
            uint8_t c = s[i];
            if (c < 0x80) {
                char e = escape[c];
                if (!e)
                    *w++ = (char)c;
                else if (e == 'u') {
                    memcpy(w, "\\u00", 4);
                    w[4] = hex[c >> 4];
                    w[5] = hex[c & 15];
                    w += 6;
                } else {
                    w[0] = '\\';
                    w[1] = e;
                    w += 2;
                }
                i++;
                continue;
            }
            size_t n = utf8_sequence(s + i, len - i);
            if (!n)
                return BAIL; /* Python's decoder refuses it: the Python path raises, not ours to write */
            memcpy(w, s + i, n);
            w += n;
            i += n;
        }
        out->len = (size_t)(w - out->data);
    }
    return put(out, "\"", 1);
}

/* A byte string as {"$base64":"<standard base64, padded>"} (json_default's form). */
static int put_base64(Out *out, const uint8_t *s, size_t len) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char open[] = "{\"$base64\":\"";
    if (len > SIZE_MAX / 2)
        return BAIL;
    size_t encoded = (len + 2) / 3 * 4;
    if (reserve(out, encoded + sizeof open + 2) != OK)
        return ERR;
    char *w = out->data + out->len;
    memcpy(w, open, sizeof open - 1);
    w += sizeof open - 1;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        w[0] = alphabet[v >> 18];
        w[1] = alphabet[v >> 12 & 63];
        w[2] = alphabet[v >> 6 & 63];
        w[3] = alphabet[v & 63];
        w += 4;
    }
    if (i < len) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < len ? (uint32_t)s[i + 1] << 8 : 0);
        w[0] = alphabet[v >> 18];
        w[1] = alphabet[v >> 12 & 63];
        w[2] = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
        w[3] = '=';
        w += 4;
    }
    memcpy(w, "\"}", 2);
    out->len = (size_t)(w + 2 - out->data);
    return OK;
}

/* -- tag 0: a date/time ------------------------------------------------------------------------------- */

static int digits(const uint8_t *s, int n, int *value) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *value = v;
    return 1;
}

/* Whether a tag-0 text is one the Python path writes as a timestamp text without parsing it into a
 * datetime first (formats._timestamp_text), or as the same text cbor2's datetime gives: our writer's two
 * forms. 27 bytes, YYYY-MM-DDTHH:MM:SS.ffffffZ: _CANONICAL_TIMESTAMP, kept as it is; 20 bytes,
 * YYYY-MM-DDTHH:MM:SSZ (cbor2 leaves out a fraction of zero): the datetime, written with ".000000" before
 * the Z. Either with a year from 1000 (_rfc3339 writes earlier years its own way) and a real time (the
 * check datetime.fromisoformat makes). Anything else is left to Python. */
static int canonical_timestamp(const uint8_t *s, size_t len) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int year, month, day, hour, minute, second, micro;
    if (len != 27 && len != 20)
        return 0;
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[len - 1] != 'Z' ||
        s[0] == '0')
        return 0;
    if (!digits(s, 4, &year) || !digits(s + 5, 2, &month) || !digits(s + 8, 2, &day) ||
        !digits(s + 11, 2, &hour) || !digits(s + 14, 2, &minute) || !digits(s + 17, 2, &second))
        return 0;
    if (len == 27 && (s[19] != '.' || !digits(s + 20, 6, &micro)))
        return 0;
    if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return day <= days[month - 1] + (month == 2 && leap);
}

static int put_timestamp(Out *out, const uint8_t *s, size_t len) {
    if (reserve(out, 29) != OK)
        return ERR;
    char *w = out->data + out->len;
    w[0] = '"';
    memcpy(w + 1, s, 19);
    memcpy(w + 20, len == 27 ? (const char *)s + 19 : ".000000Z", 8);
    w[28] = '"';
    out->len += 29;
    return OK;
}

/* -- floats ------------------------------------------------------------------------------------------- */

static double half_to_double(uint16_t h) {
    int exponent = h >> 10 & 0x1F, mantissa = h & 0x3FF;
    double value;
    if (exponent == 0)
        value = ldexp(mantissa, -24); /* subnormal */
    else if (exponent == 31)
        value = mantissa ? NAN : INFINITY;
    else
        value = ldexp(mantissa + 1024, exponent - 25);
    return h & 0x8000 ? -value : value;
}

/* A float as orjson writes it: NaN and the infinities as null, any other by orjson itself. */
static int put_float(Out *out, double value) {
    if (!isfinite(value))
        return put(out, "null", 4);
    PyObject *number = PyFloat_FromDouble(value);
    if (number == NULL)
        return ERR;
    PyObject *text = PyObject_CallOneArg(orjson_dumps, number);
    Py_DECREF(number);
    if (text == NULL)
        return ERR;
    int result = PyBytes_Check(text) ? put(out, PyBytes_AS_STRING(text), (size_t)PyBytes_GET_SIZE(text)) : BAIL;
    Py_DECREF(text);
    return result;
}

/* -- items -------------------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *text;
    size_t len;
} Key;

static int key_order(const void *a, const void *b) {
    const Key *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->text, y->text, x->len);
}

/* Whether a map's keys hold one twice. cbor2 would keep one (the last value, at the first position), so
 * such a map is left to Python; our writer cannot make one (it encodes a dict), so this costs little. */
static int duplicate_keys(Key *keys, size_t n) {
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (keys[i].len == keys[j].len && memcmp(keys[i].text, keys[j].text, keys[i].len) == 0)
                    return 1;
        return 0;
    }
    qsort(keys, n, sizeof *keys, key_order);
    for (size_t i = 1; i < n; i++)
        if (key_order(&keys[i - 1], &keys[i]) == 0)
            return 1;
    return 0;
}

/* The raw body put_pairs takes out of a capture's request or response (MAP_PART): its bytes in the body. */
typedef struct {
    const uint8_t *data; /* NULL: none */
    size_t len;
} Raw;

/* What put_pairs writes of a map. MAP_PLAIN: all of it. MAP_RECORD: the record's own map, whose ``{"id":N``
 * is already written, so each pair follows a comma and a key "id" is refused. For Parquet's capture column:
 * MAP_CAPTURE, the capture, whose "request" and "response" maps are written as MAP_PART, without a
 * "raw_body" that is a byte string (formats._split_raw: those bytes go to the raw body columns). */
typedef enum { MAP_PLAIN, MAP_RECORD, MAP_CAPTURE, MAP_PART } MapKind;

static int put_item(In *in, Out *out, int depth);
static int put_map(In *in, Out *out, int depth, MapKind kind, Raw *raws);

static inline int is_key(const Key *key, const char *name, size_t len) {
    return key->len == len && memcmp(key->text, name, len) == 0;
}

/* The major type of the next item, without reading it (-1 at the end of the input). */
static inline int next_major(const In *in) {
    return in->at < in->end ? *in->at >> 5 : -1;
}

/* A definite-length string of major type ``want`` (2: bytes, 3: text, not yet checked to be UTF-8): where its
 * bytes are in the input and how many, stepped over without copying. BAIL for any other item, an indefinite
 * length, or a length past the end of the input. */
static int read_string(In *in, int want, const uint8_t **data, size_t *len) {
    int major, info, result;
    uint64_t arg;
    if ((result = head(in, &major, &info, &arg)) != OK)
        return result;
    if (major != want || arg > (uint64_t)(in->end - in->at))
        return BAIL;
    *data = in->at;
    *len = (size_t)arg;
    in->at += arg;
    return OK;
}

/* A map key: a definite text string. */
static inline int read_key(In *in, Key *key) {
    return read_string(in, 3, &key->text, &key->len);
}

/* A map's ``n`` pairs (its head already read), written as ``{"k":v,...}`` as ``kind`` says; ``raws``: where
 * MAP_CAPTURE puts the request's and the response's raw bodies (two), and MAP_PART its side's (one). */
static int put_pairs(In *in, Out *out, uint64_t n, int depth, MapKind kind, Raw *raws) {
    /* Each pair takes two bytes at least: a longer count is truncated input (and no allocation for it). */
    if (n > (uint64_t)(in->end - in->at) / 2)
        return BAIL;
    Key few[16], *keys = n <= 16 ? few : PyMem_Malloc((size_t)n * sizeof *keys);
    if (keys == NULL) {
        PyErr_NoMemory();
        return ERR;
    }
    int result = OK, written = 0;
    if (kind != MAP_RECORD && (result = put(out, "{", 1)) != OK)
        goto done;
    for (uint64_t i = 0; i < n; i++) {
        Key *key = &keys[i];
        if ((result = read_key(in, key)) != OK)
            goto done;
        if (kind == MAP_RECORD && is_key(key, "id", 2)) { /* would override the id written first */
            result = BAIL;
            goto done;
        }
        if (kind == MAP_PART && is_key(key, "raw_body", 8) && next_major(in) == 2) {
            if ((result = read_string(in, 2, &raws->data, &raws->len)) != OK)
                goto done;
            continue;
        }
        if ((kind == MAP_RECORD || written++) && (result = put(out, ",", 1)) != OK)
            goto done;
        if ((result = put_text(out, key->text, key->len)) != OK || (result = put(out, ":", 1)) != OK)
            goto done;
        int side = is_key(key, "request", 7) ? 0 : is_key(key, "response", 8) ? 1 : -1;
        if (kind == MAP_CAPTURE && side >= 0 && next_major(in) == 5)
            result = put_map(in, out, depth, MAP_PART, &raws[side]);
        else
            result = put_item(in, out, depth);
        if (result != OK)
            goto done;
    }
    if (duplicate_keys(keys, (size_t)n))
        result = BAIL;
    else
        result = put(out, "}", 1);
done:
    if (keys != few)
        PyMem_Free(keys);
    return result;
}

/* A map at ``in`` (``depth``: the maps and arrays it is inside) written as ``kind`` says. */
static int put_map(In *in, Out *out, int depth, MapKind kind, Raw *raws) {
    int major, info, result;
    uint64_t n;
    if ((result = head(in, &major, &info, &n)) != OK)
        return result;
    if (major != 5 || depth >= MAX_DEPTH)
        return BAIL;
    return put_pairs(in, out, n, depth + 1, kind, raws);
}

/* One data item at ``in`` as JSON; ``depth``: the maps and arrays it is inside. */
static int put_item(In *in, Out *out, int depth) {
    int major, info, result;
    uint64_t arg;
    if ((result = head(in, &major, &info, &arg)) != OK)
        return result;
    size_t left = (size_t)(in->end - in->at);
    switch (major) {
    case 0: /* unsigned integer: orjson writes all of u64 */
        return put_u64(out, arg, 0);
    case 1: /* negative integer -1 - arg: orjson writes down to -2**63 */
        if (arg > (uint64_t)INT64_MAX)
            return BAIL;
        return put_u64(out, arg + 1, 1);
    case 2: /* byte string */
        if (arg > left)
            return BAIL;
        result = put_base64(out, in->at, (size_t)arg);
        in->at += arg;
        return result;
    case 3: /* text string */
        if (arg > left)
            return BAIL;
        result = put_text(out, in->at, (size_t)arg);
        in->at += arg;
        return result;
    case 4: /* array */
        if (depth >= MAX_DEPTH || arg > left) /* each element takes a byte at least */
            return BAIL;
        if (put(out, "[", 1) != OK)
            return ERR;
        for (uint64_t i = 0; i < arg; i++) {
            if (i && put(out, ",", 1) != OK)
                return ERR;
            if ((result = put_item(in, out, depth + 1)) != OK)
                return result;
        }
        return put(out, "]", 1);
    case 5: /* map */
        if (depth >= MAX_DEPTH)
            return BAIL;
        return put_pairs(in, out, arg, depth + 1, MAP_PLAIN, NULL);
    case 6: /* tag: only 0 (a date/time text) in the form our writer stores it */
        if (arg != 0 || (result = head(in, &major, &info, &arg)) != OK)
            return BAIL;
        if (major != 3 || arg > (uint64_t)(in->end - in->at) || !canonical_timestamp(in->at, (size_t)arg))
            return BAIL;
        result = put_timestamp(out, in->at, (size_t)arg);
        in->at += arg;
        return result;
    default: /* 7: simple values and floats, by their additional information */
        switch (info) {
        case 20:
            return put(out, "false", 5);
        case 21:
            return put(out, "true", 4);
        case 22:
            return put(out, "null", 4);
        case 25:
            return put_float(out, half_to_double((uint16_t)arg));
        case 26: {
            uint32_t bits = (uint32_t)arg;
            float value;
            memcpy(&value, &bits, sizeof value);
            return put_float(out, (double)value);
        }
        case 27: {
            double value;
            memcpy(&value, &arg, sizeof value);
            return put_float(out, value);
        }
        default: /* undefined (23), other simple values: cbor2 has Python objects for them */
            return BAIL;
        }
    }
}

/* -- Parquet: a record's column values ----------------------------------------------------------------- */

/* A Parquet row's values (formats._ROW_FIELDS is the same): the record's fields in the order of
 * formats.ParquetEncoder's schema, the timestamp as microseconds since the epoch, each struct flattened (the
 * struct's slot says whether the record has one: True, else None; its fields' slots follow), then the
 * capture column's JSON and the raw request and response bodies. */
static const char *const row_fields[] = {
    "id", "ver", "timestamp",
    "identity", "identity.login_name", "identity.node_id", "identity.tags",
    "model", "api_type",
    "usage", "usage.input_tokens", "usage.output_tokens", "usage.cached_tokens", "usage.reasoning_tokens",
    "estimated_cost", "estimated_cost.input", "estimated_cost.output", "estimated_cost.total",
    "estimated_cost.currency",
    "duration_ms", "capture_id", "session_id", "path", "status_code",
    "capture", "raw_request_body", "raw_response_body"};
enum {
    ROW_ID = 0, ROW_TIMESTAMP = 2, ROW_IDENTITY = 3, ROW_USAGE = 9, ROW_COST = 14, ROW_CAPTURE = 24, ROW_RAW_REQUEST = 25,
    ROW_RAW_RESPONSE = 26, ROW_SIZE = 27
};
/* The record's own fields: their slots. */
static const int top_slots[] = {0, 1, 2, ROW_IDENTITY, 7, 8, ROW_USAGE, ROW_COST, 19, 20, 21, 22, 23, ROW_CAPTURE};

/* What a struct's field holds for the struct to be flattened (else the record is left to Python, whose
 * encoder puts what does not fit in ``extra``): null, or text; a 64-bit integer; a double (what cbor2
 * writes of a float); an array of texts. */
typedef enum { FIT_TEXT, FIT_INT64, FIT_DOUBLE, FIT_TEXTS } Fit;
static const Fit identity_fits[] = {FIT_TEXT, FIT_TEXT, FIT_TEXTS};
static const Fit usage_fits[] = {FIT_INT64, FIT_INT64, FIT_INT64, FIT_INT64};
static const Fit cost_fits[] = {FIT_DOUBLE, FIT_DOUBLE, FIT_DOUBLE, FIT_TEXT};

static int valid_utf8(const uint8_t *s, size_t len);

/* The row slot of a record's key: 1..ROW_CAPTURE; 0 for "id" (a stored map never holds one) and -1 for a
 * field the typed columns do not have (both left to Python, which puts such a field in ``extra``). */
static int row_slot(const Key *key) {
    for (size_t i = 0; i < sizeof top_slots / sizeof *top_slots; i++) {
        const char *name = row_fields[top_slots[i]];
        if (key->len == strlen(name) && memcmp(key->text, name, key->len) == 0)
            return top_slots[i];
    }
    return -1;
}

/* A tag-0 text's date and time, in UTC. */
typedef struct {
    int year, month, day, hour, minute, second, micro;
} CivilTime;

/* The date and time of a tag-0 text in our writer's forms (canonical_timestamp: checked by the caller). */
static CivilTime civil_time(const uint8_t *s, size_t len) {
    CivilTime t = {.micro = 0};
    digits(s, 4, &t.year);
    digits(s + 5, 2, &t.month);
    digits(s + 8, 2, &t.day);
    digits(s + 11, 2, &t.hour);
    digits(s + 14, 2, &t.minute);
    digits(s + 17, 2, &t.second);
    if (len == 27)
        digits(s + 20, 6, &t.micro);
    return t;
}

/* A tag-0 text in our writer's forms (canonical_timestamp: checked) as the datetime cbor2 decodes it to. */
static PyObject *py_timestamp(const uint8_t *s, size_t len) {
    CivilTime t = civil_time(s, len);
    return PyDateTimeAPI->DateTime_FromDateAndTime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.micro,
                                                   PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

/* The days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t year, int64_t month, int64_t day) {
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* The record's timestamp at ``in`` as the timestamp column takes it: a tag-0 text in our writer's forms
 * (canonical_timestamp) as its microseconds since the epoch (UTC; what Arrow makes of the datetime cbor2
 * decodes it to), null as None; BAIL for anything else (the encoder puts it in ``extra``). */
static int py_timestamp_us(In *in, PyObject **value) {
    int major, info, result;
    uint64_t arg;
    if (in->at < in->end && *in->at == 0xF6) {
        in->at++;
        *value = Py_NewRef(Py_None);
        return OK;
    }
    if ((result = head(in, &major, &info, &arg)) != OK)
        return result;
    if (major != 6 || arg != 0 || (result = head(in, &major, &info, &arg)) != OK)
        return BAIL;
    if (major != 3 || arg > (uint64_t)(in->end - in->at) || !canonical_timestamp(in->at, (size_t)arg))
        return BAIL;
    CivilTime t = civil_time(in->at, (size_t)arg);
    in->at += arg;
    int64_t seconds = ((days_from_civil(t.year, t.month, t.day) * 24 + t.hour) * 60 + t.minute) * 60 + t.second;
    *value = PyLong_FromLongLong(seconds * 1000000 + t.micro);
    return *value != NULL ? OK : ERR;
}

/* One data item at ``in`` as the Python value cbor2 decodes it to, into ``*value`` (a new reference), for
 * the items json_line writes but half and single floats (cbor2 writes a float as a double): anything else
 * is BAIL, and the record is decoded the Python way. ``depth``: the maps and arrays it is inside. */
static int py_item(In *in, int depth, PyObject **value) {
    int major, info, result;
    uint64_t arg;
    *value = NULL;
    if ((result = head(in, &major, &info, &arg)) != OK)
        return result;
    size_t left = (size_t)(in->end - in->at);
    switch (major) {
    case 0:
        *value = PyLong_FromUnsignedLongLong(arg);
        break;
    case 1: /* -1 - arg; json_line leaves anything below -2**63 to Python */
        if (arg > (uint64_t)INT64_MAX)
            return BAIL;
        *value = PyLong_FromLongLong(-1 - (long long)arg);
        break;
    case 2:
        if (arg > left)
            return BAIL;
        *value = PyBytes_FromStringAndSize((const char *)in->at, (Py_ssize_t)arg);
        in->at += arg;
        break;
    case 3:
        if (arg > left || !valid_utf8(in->at, (size_t)arg))
            return BAIL;
        *value = PyUnicode_DecodeUTF8((const char *)in->at, (Py_ssize_t)arg, NULL);
        in->at += arg;
        break;
    case 4: {
        if (depth >= MAX_DEPTH || arg > left) /* each element takes a byte at least */
            return BAIL;
        PyObject *list = PyList_New((Py_ssize_t)arg);
        if (list == NULL)
            return ERR;
        for (uint64_t i = 0; i < arg; i++) {
            PyObject *item;
            if ((result = py_item(in, depth + 1, &item)) != OK) {
                Py_DECREF(list); /* the slots not yet set are NULL */
                return result;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        }
        *value = list;
        return OK;
    }
    case 5: {
        if (depth >= MAX_DEPTH || arg > left / 2) /* each pair takes two bytes at least */
            return BAIL;
        PyObject *dict = PyDict_New();
        if (dict == NULL)
            return ERR;
        for (uint64_t i = 0; i < arg; i++) {
            Key key;
            PyObject *name, *item;
            if ((result = read_key(in, &key)) != OK || !valid_utf8(key.text, key.len)) {
                Py_DECREF(dict);
                return result == OK ? BAIL : result;
            }
            if ((name = PyUnicode_DecodeUTF8((const char *)key.text, (Py_ssize_t)key.len, NULL)) == NULL) {
                Py_DECREF(dict);
                return ERR;
            }
            if ((result = py_item(in, depth + 1, &item)) != OK) {
                Py_DECREF(name);
                Py_DECREF(dict);
                return result;
            }
            int set = PyDict_SetItem(dict, name, item);
            Py_DECREF(name);
            Py_DECREF(item);
            if (set != 0) {
                Py_DECREF(dict);
                return ERR;
            }
        }
        if ((uint64_t)PyDict_GET_SIZE(dict) != arg) { /* a key twice: cbor2 keeps one, json_line leaves it */
            Py_DECREF(dict);
            return BAIL;
        }
        *value = dict;
        return OK;
    }
    case 6: /* tag 0, in the forms json_line writes */
        if (arg != 0 || (result = head(in, &major, &info, &arg)) != OK)
            return BAIL;
        if (major != 3 || arg > (uint64_t)(in->end - in->at) || !canonical_timestamp(in->at, (size_t)arg))
            return BAIL;
        *value = py_timestamp(in->at, (size_t)arg);
        in->at += arg;
        break;
    default:
        switch (info) {
        case 20:
            *value = Py_NewRef(Py_False);
            return OK;
        case 21:
            *value = Py_NewRef(Py_True);
            return OK;
        case 22:
            *value = Py_NewRef(Py_None);
            return OK;
        case 27: {
            double number;
            memcpy(&number, &arg, sizeof number);
            *value = PyFloat_FromDouble(number);
            break;
        }
        default: /* half and single floats, undefined, other simple values */
            return BAIL;
        }
    }
    return *value != NULL ? OK : ERR;
}

/* The struct at ``in`` (the value of the record's field in ``slot``; its ``count`` fields' slots follow,
 * each holding what ``fits`` says) flattened into ``row``: the struct's slot True, or None for a null.
 * BAIL for anything else, a field it does not have, or a value that does not fit: such a struct goes to
 * Python, whose encoder puts what its columns cannot hold in ``extra``. */
static int py_struct(In *in, PyObject **row, int slot, int count, const Fit *fits) {
    int major, info, result;
    uint64_t n;
    if (in->at < in->end && *in->at == 0xF6) { /* null: a null struct */
        in->at++;
        row[slot] = Py_NewRef(Py_None);
        return OK;
    }
    if ((result = head(in, &major, &info, &n)) != OK)
        return result;
    if (major != 5 || n > (uint64_t)count) /* not a map, or another field (or one twice) */
        return BAIL;
    size_t prefix = strlen(row_fields[slot]) + 1; /* "usage." */
    for (uint64_t i = 0; i < n; i++) {
        Key key;
        if ((result = read_key(in, &key)) != OK)
            return result;
        int field = -1;
        for (int j = 0; j < count && field < 0; j++) {
            const char *name = row_fields[slot + 1 + j] + prefix;
            if (key.len == strlen(name) && memcmp(key.text, name, key.len) == 0)
                field = j;
        }
        if (field < 0 || row[slot + 1 + field] != NULL) /* another field, or one twice */
            return BAIL;
        if (in->at >= in->end)
            return BAIL;
        uint8_t initial = *in->at;
        int fit;
        if (initial == 0xF6)
            fit = 1;
        else if (fits[field] == FIT_TEXT)
            fit = initial >> 5 == 3;
        else if (fits[field] == FIT_DOUBLE)
            fit = initial == 0xFB;
        else if (fits[field] == FIT_TEXTS)
            fit = initial >> 5 == 4;
        else { /* FIT_INT64: the integer heads, but for an argument of 8 bytes past 2**63 - 1 */
            fit = (initial >> 5 == 0 || initial >> 5 == 1) &&
                   ((initial & 31) != 27 || (in->end - in->at > 1 && in->at[1] < 0x80));
        }
        if (!fit)
            return BAIL;
        PyObject **value = &row[slot + 1 + field];
        if ((result = py_item(in, 2, value)) != OK)
            return result;
        if (fits[field] == FIT_TEXTS && *value != Py_None) { /* texts only */
            for (Py_ssize_t k = 0; k < PyList_GET_SIZE(*value); k++)
                if (!PyUnicode_CheckExact(PyList_GET_ITEM(*value, k)))
                    return BAIL;
        }
    }
    row[slot] = Py_NewRef(Py_True);
    return OK;
}

/* The record's map at ``in`` into ``row`` (ROW_SIZE slots, NULL where a field is missing: None), its
 * capture's JSON into ``capture`` and its raw bodies into ``raws``; BAIL for a record left to Python. */
static int row_values(In *in, PyObject **row, Out *capture, Raw *raws) {
    int major, info, result;
    uint64_t n;
    if ((result = head(in, &major, &info, &n)) != OK)
        return result;
    if (major != 5 || n > (uint64_t)(in->end - in->at) / 2)
        return BAIL;
    for (uint64_t i = 0; i < n; i++) {
        Key key;
        if ((result = read_key(in, &key)) != OK)
            return result;
        int slot = row_slot(&key);
        if (slot <= ROW_ID) /* "id", or a field only ``extra`` can hold */
            return BAIL;
        if (slot == ROW_CAPTURE) {
            if (capture->len || raws[0].data || raws[1].data || row[ROW_CAPTURE] != NULL)
                return BAIL; /* twice */
            if (in->at < in->end && *in->at == 0xF6) { /* null: as if missing, but seen */
                in->at++;
                row[ROW_CAPTURE] = Py_NewRef(Py_None);
                continue;
            }
            result = next_major(in) == 5 ? put_map(in, capture, 1, MAP_CAPTURE, raws) : put_item(in, capture, 1);
            if (result != OK)
                return result;
            if (!capture->len) /* cannot be: JSON of an item takes a byte at least */
                return BAIL;
            continue;
        }
        if (row[slot] != NULL) /* twice */
            return BAIL;
        if (slot == ROW_IDENTITY)
            result = py_struct(in, row, slot, 3, identity_fits);
        else if (slot == ROW_USAGE)
            result = py_struct(in, row, slot, 4, usage_fits);
        else if (slot == ROW_COST)
            result = py_struct(in, row, slot, 4, cost_fits);
        else if (slot == ROW_TIMESTAMP)
            result = py_timestamp_us(in, &row[slot]);
        else
            result = py_item(in, 1, &row[slot]);
        if (result != OK)
            return result;
    }
    return in->at == in->end ? OK : BAIL; /* or trailing bytes */
}

static PyObject *bytes_or_none(const char *data, size_t len) {
    if (data == NULL)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
}

static PyObject *parquet_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parquet_row(body, record_id) takes two arguments");
        return NULL;
    }
    Py_buffer body;
    if (PyObject_GetBuffer(args[0], &body, PyBUF_SIMPLE) != 0)
        return NULL;
    In in = {body.buf, (const uint8_t *)body.buf + body.len};
    Out capture = {NULL, 0, 0};
    Raw raws[2] = {{NULL, 0}, {NULL, 0}};
    PyObject *row[ROW_SIZE] = {NULL};
    PyObject *tuple = NULL;
    /* The capture is most of a record, and its JSON a little longer than its CBOR. */
    int result = grow(&capture, (size_t)body.len + (size_t)body.len / 2 + 64);
    if (result == OK)
        result = row_values(&in, row, &capture, raws);
    if (result == OK) { /* before the body is released: the raw bodies point into it */
        Py_CLEAR(row[ROW_CAPTURE]);
        row[ROW_ID] = Py_NewRef(args[1]);
        if ((row[ROW_CAPTURE] = bytes_or_none(capture.len ? capture.data : NULL, capture.len)) == NULL ||
            (row[ROW_RAW_REQUEST] = bytes_or_none((const char *)raws[0].data, raws[0].len)) == NULL ||
            (row[ROW_RAW_RESPONSE] = bytes_or_none((const char *)raws[1].data, raws[1].len)) == NULL ||
            (tuple = PyTuple_New(ROW_SIZE)) == NULL)
            result = ERR;
    }
    for (int i = 0; i < ROW_SIZE; i++) {
        if (tuple != NULL)
            PyTuple_SET_ITEM(tuple, i, row[i] != NULL ? row[i] : Py_NewRef(Py_None)); /* steals the reference */
        else
            Py_XDECREF(row[i]);
    }
    PyMem_Free(capture.data);
    PyBuffer_Release(&body);
    if (result == BAIL)
        Py_RETURN_NONE;
    return tuple; /* NULL when ERR: an exception is set */
}

/* == privacy mode: what privacy_scrub drops, dropped before Python decodes =============================== */

/*
 *     privacy_prefilter(body) -> bytes | None
 *     privacy_scrubbed(body) -> bytes | None
 *
 * Privacy mode (export/transform.py, privacy_scrub) decodes a record in full and then drops most of it:
 * prompts, completions, tool payloads and raw bodies, which are most of its bytes.
 *
 * privacy_prefilter returns the stored CBOR map without what privacy_scrub drops whatever it holds, every
 * other item's bytes copied as they are (nothing decoded or encoded again), so that Python decodes the small
 * rest and scrubs it as always: privacy_scrub(loads(result)) == privacy_scrub(loads(body)) for the decoding
 * privacy mode uses. Map heads whose keys were dropped are written again with the new count, in the width
 * of the old head. Only text keys are ever dropped, by name, every occurrence alike (cbor2 keeps a repeated
 * key's last value, which is then scrubbed either way); a key of any other type and its value stay, for
 * Python to judge (a tag 55799 text key decodes equal to the text). What a dropped item holds is checked to
 * decode in cbor2 without an error (UTF-8 text, no tags, no simple values but false/true/null/undefined),
 * so that a record Python refuses is still refused; an item kept is only stepped over. None (the caller
 * decodes the stored body) for anything else: a body that is not one definite-length map, truncated or
 * trailing bytes, indefinite lengths, nesting deeper than MAX_DEPTH, and the tags whose meaning depends on
 * other items (25 and 256: string references; 28 and 29: shared values), whose indices dropping items
 * would change.
 *
 * privacy_scrubbed goes the whole way where a record is as our writer stores it: the result is the
 * scrubbed record in the very bytes cbor2 writes for it, ``cbor2.dumps(privacy_scrub(decode_record(body)))``
 * for both formats' decode_record, so that the caller splices the id in (CBOR) or writes the JSON line
 * straight from it (json_line), decoding nothing. It returns None wherever Python's scrub would do more
 * than drop those keys (a non-text key, a repeated key, a request that is not a map, a value whose type
 * decides whether it stays) or cbor2 would write any item differently
 * (a head wider than needed, a float it writes in another width, a tag other than a date/time it writes
 * back as stored, invalid UTF-8): the caller then takes the privacy_prefilter path. The keys of a choice and
 * of a tool call are written in Python's order (index first).
 */

/* What happens to a map's value, by its key (a text key; any other key keeps its value). The last three
 * keep the value in privacy_prefilter; privacy_scrubbed returns None unless the value is text (KEEP_TEXT),
 * a number, flag or null (KEEP_SCALAR), or ever (REFUSE). */
typedef enum { KEEP, DROP, FILTER_MAP, FILTER_EACH, KEEP_TEXT, KEEP_SCALAR, REFUSE } Action;

typedef struct Rule Rule;

typedef struct {
    const char *name;
    size_t len;
    Action action;
    const Rule *inner; /* FILTER_MAP: the value's rule, if a map; FILTER_EACH: each map item's, if a list */
} Field;

struct Rule {
    const Field *fields;
    size_t count;
    Action others; /* for a text key not in ``fields`` */
    int ordered;   /* Python writes the kept keys in the order of ``fields`` (at most ORDERED_MAX of them) */
};

#define FIELD(name, action, inner) {name, sizeof name - 1, action, inner}
#define KEPT(name) FIELD(name, KEEP, NULL)
#define RULE_FIELDS(array) array, sizeof array / sizeof array[0]

/* Each mirrors transform.py: TOOL_USE_KEYS_KEPT, CHOICE_KEYS_KEPT, BODY_KEYS_KEPT, _scrub_exchange,
 * privacy_scrub. Keeping more than Python keeps is safe in privacy_prefilter (Python drops it); keeping
 * less is not, which tests/unit/test_native_privacy.py checks key by key. */
static const Field tool_call_fields[] = {KEPT("id"), KEPT("name"), KEPT("type")};
static const Rule tool_call_rule = {RULE_FIELDS(tool_call_fields), DROP, 1};

static const Field choice_fields[] = {KEPT("index"), KEPT("finish_reason")};
static const Rule choice_rule = {RULE_FIELDS(choice_fields), DROP, 1};

static const Field candidate_fields[] = {KEPT("index"), KEPT("finishReason")};
static const Rule candidate_rule = {RULE_FIELDS(candidate_fields), DROP, 1};

static const Field body_fields[] = {
    FIELD("choices", FILTER_EACH, &choice_rule), FIELD("candidates", FILTER_EACH, &candidate_rule),
    /* request settings */
    KEPT("model"), KEPT("max_tokens"), KEPT("max_completion_tokens"), KEPT("max_output_tokens"),
    KEPT("temperature"), KEPT("top_p"), KEPT("top_k"), KEPT("n"), KEPT("seed"), KEPT("stream"),
    KEPT("stream_options"), KEPT("reasoning"), KEPT("reasoning_effort"), KEPT("thinking"), KEPT("store"),
    KEPT("service_tier"), KEPT("parallel_tool_calls"), KEPT("tool_choice"), KEPT("generationConfig"),
    KEPT("metadata"), KEPT("user"), KEPT("frequency_penalty"), KEPT("presence_penalty"), KEPT("logprobs"),
    KEPT("top_logprobs"), KEPT("truncation"), KEPT("modalities"),
    /* response description */
    KEPT("id"), KEPT("object"), KEPT("type"), KEPT("role"), KEPT("created"), KEPT("created_at"), KEPT("status"),
    KEPT("stop_reason"), KEPT("stop_sequence"), KEPT("finish_reason"), KEPT("system_fingerprint"), KEPT("usage"),
    KEPT("usageMetadata"), KEPT("modelVersion"), KEPT("responseId"), KEPT("request_id"),
    KEPT("incomplete_details"), KEPT("error"),
};
static const Rule body_rule = {RULE_FIELDS(body_fields), DROP, 0};

/* A request or response: raw_body is dropped; other keys stay or go by the type of their value. */
static const Field exchange_fields[] = {
    FIELD("body", FILTER_MAP, &body_rule), FIELD("raw_body", DROP, NULL), KEPT("headers"),
    FIELD("raw_content_type", KEEP_TEXT, NULL),
};
static const Rule exchange_rule = {RULE_FIELDS(exchange_fields), KEEP_SCALAR, 0};

static const Field capture_fields[] = {
    FIELD("request", FILTER_MAP, &exchange_rule), FIELD("response", FILTER_MAP, &exchange_rule),
    FIELD("tool_use", FILTER_EACH, &tool_call_rule), KEPT("headers"),
};
static const Rule capture_rule = {RULE_FIELDS(capture_fields), DROP, 0};

/* "id": the caller puts the row's id first, which a stored "id" would override. */
static const Field record_fields[] = {FIELD("capture", FILTER_MAP, &capture_rule), FIELD("id", REFUSE, NULL)};
static const Rule record_rule = {RULE_FIELDS(record_fields), KEEP, 0};

static const Field *field_named(const Rule *rule, const uint8_t *text, size_t len) {
    for (size_t i = 0; i < rule->count; i++)
        if (rule->fields[i].len == len && memcmp(rule->fields[i].name, text, len) == 0)
            return &rule->fields[i];
    return NULL;
}

/* Whether ``len`` bytes are UTF-8 as Python's strict decoder takes it; ASCII eight bytes at a time. */
static int valid_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (len - i >= 8) {
            uint64_t x;
            memcpy(&x, s + i, 8);
            if (!(x & 0x8080808080808080u)) {
                i += 8;
                continue;
            }
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_sequence(s + i, len - i);
        if (!n)
            return 0;
        i += n;
    }
    return 1;
}

/* Tags cbor2 resolves against other items of the record: string references and shared values. */
static int stateful_tag(uint64_t tag) {
    return tag == 25 || tag == 256 || tag == 28 || tag == 29;
}

/* Whether a head's argument takes no more bytes than it needs, as cbor2 writes every head. */
static int shortest(int info, uint64_t arg) {
    static const uint64_t least[] = {24, 0x100, 0x10000, 0x100000000u};
    return info < 24 || arg >= least[info - 24];
}

/* Whether a tag-0 text decodes to a value cbor2 writes back as the same text: our writer's date/times
 * (``canonical_timestamp``), but for a fraction of zero, which cbor2 writes without a fraction. */
static int written_back_timestamp(const uint8_t *s, size_t len) {
    return canonical_timestamp(s, len) && !(len == 27 && memcmp(s + 20, "000000", 6) == 0);
}

/* Whether a float head is the form cbor2 writes: a finite double, or NaN and the infinities as halves. */
static int written_float(int info, uint64_t arg) {
    if (info == 25)
        return arg == 0x7E00 || arg == 0x7C00 || arg == 0xFC00;
    return info == 27 && ((arg >> 52) & 0x7FF) != 0x7FF;
}

/* How closely ``skip_item`` looks at what it steps over: its extent only (Python decodes it); that cbor2
 * decodes it without an error (dropped); that cbor2 writes it back byte for byte (privacy_scrubbed). */
typedef enum { EXTENT, DECODABLE, WRITTEN_BACK } Check;

typedef struct {
    In in;
    Out out;
    int whole; /* privacy_scrubbed: the whole scrub in cbor2's bytes, or BAIL */
} Walk;

static int skip_item(In *in, int depth, Check check);

/* A map's ``n`` pairs for WRITTEN_BACK: text keys only, none twice (cbor2 would keep one). */
static int skip_written_pairs(In *in, uint64_t n, int depth) {
    Key few[16], *keys = n <= 16 ? few : PyMem_Malloc((size_t)n * sizeof *keys);
    int result = OK, major, info;
    uint64_t len;
    if (keys == NULL) {
        PyErr_NoMemory();
        return ERR;
    }
    for (uint64_t i = 0; i < n && result == OK; i++) {
        if ((result = head(in, &major, &info, &len)) != OK)
            break;
        if (major != 3 || !shortest(info, len) || len > (uint64_t)(in->end - in->at) ||
            !valid_utf8(in->at, (size_t)len)) {
            result = BAIL;
            break;
        }
        keys[i].text = in->at;
        keys[i].len = (size_t)len;
        in->at += len;
        result = skip_item(in, depth, WRITTEN_BACK);
    }
    if (result == OK && duplicate_keys(keys, (size_t)n))
        result = BAIL;
    if (keys != few)
        PyMem_Free(keys);
    return result;
}

/* Step over one data item, checked as ``check`` says. ``depth``: the maps, arrays and tags it is inside. */
static int skip_item(In *in, int depth, Check check) {
    int major, info, result;
    uint64_t arg;
    if (depth >= MAX_DEPTH)
        return BAIL;
    if ((result = head(in, &major, &info, &arg)) != OK)
        return result;
    if (check == WRITTEN_BACK && major != 7 && !shortest(info, arg))
        return BAIL;
    size_t left = (size_t)(in->end - in->at);
    switch (major) {
    case 0:
    case 1:
        return OK;
    case 2:
    case 3:
        if (arg > left || (major == 3 && check != EXTENT && !valid_utf8(in->at, (size_t)arg)))
            return BAIL;
        in->at += arg;
        return OK;
    case 4:
    case 5: {
        /* each item takes a byte at least: a longer count is truncated input */
        if (arg > left || (major == 5 && arg > left / 2))
            return BAIL;
        if (major == 5 && check == WRITTEN_BACK)
            return skip_written_pairs(in, arg, depth + 1);
        uint64_t items = major == 5 ? arg * 2 : arg;
        for (uint64_t i = 0; i < items; i++)
            if ((result = skip_item(in, depth + 1, check)) != OK)
                return result;
        return OK;
    }
    case 6:
        if (check == WRITTEN_BACK) { /* only a date/time cbor2 writes back as stored */
            if (arg != 0 || head(in, &major, &info, &arg) != OK || major != 3 || !shortest(info, arg) ||
                arg > (uint64_t)(in->end - in->at) || !written_back_timestamp(in->at, (size_t)arg))
                return BAIL;
            in->at += arg;
            return OK;
        }
        if (check == DECODABLE || stateful_tag(arg))
            return BAIL;
        return skip_item(in, depth + 1, check);
    default: /* 7: false, true, null, undefined and the floats decode without an error; others may not */
        if (check == WRITTEN_BACK)
            return (info >= 20 && info <= 23) || written_float(info, arg) ? OK : BAIL;
        return check == EXTENT || (info >= 20 && info <= 23) || (info >= 25 && info <= 27) ? OK : BAIL;
    }
}

/* Copy one data item as it is (privacy_scrubbed: if cbor2 writes it so). */
static int copy_item(Walk *w, int depth) {
    const uint8_t *start = w->in.at;
    int result = skip_item(&w->in, depth, w->whole ? WRITTEN_BACK : EXTENT);
    if (result != OK)
        return result;
    return put(&w->out, (const char *)start, (size_t)(w->in.at - start));
}

/* Whether the item at ``in`` is a number, a flag or null (what _describes keeps, decoded the same way by
 * both formats; a date/time is not: JSON Lines decodes it to its text). */
static int scalar_item(const In *in) {
    if (in->at >= in->end)
        return 0;
    uint8_t initial = *in->at;
    return initial >> 5 <= 1 || (initial >= 0xF4 && initial <= 0xF6) || initial == 0xF9 || initial == 0xFB;
}

static int text_item(const In *in) {
    return in->at < in->end && *in->at >> 5 == 3;
}

/* A map head for ``count`` pairs: cbor2's (privacy_scrubbed), else in ``width`` bytes (that of the old
 * head, whose count was no smaller), which cbor2 reads as any other. The content written after the head
 * (from ``at + width`` to the end of the output) moves if the head's width changes. */
static void rewrite_map_head(Out *out, size_t at, size_t width, uint64_t count, int whole) {
    uint8_t *head_at = (uint8_t *)out->data + at;
    if (whole) {
        size_t need = count < 24 ? 1 : count < 0x100 ? 2 : count < 0x10000 ? 3 : count < 0x100000000u ? 5 : 9;
        if (need < width) {
            memmove(head_at + need, head_at + width, out->len - at - width);
            out->len -= width - need;
            width = need;
        }
    }
    if (width == 1) {
        head_at[0] = (uint8_t)(0xA0 | count);
        return;
    }
    head_at[0] = (uint8_t)(0xA0 | (24 + (width == 2 ? 0 : width == 3 ? 1 : width == 5 ? 2 : 3)));
    for (size_t i = width - 1; i >= 1; i--, count >>= 8)
        head_at[i] = (uint8_t)(count & 0xFF);
}

/* The text of the key at ``in`` (``in`` not moved): ``*text`` NULL when the key is not a text string. */
static int peek_text_key(const In *in, const uint8_t **text, size_t *len) {
    In probe = *in;
    int major, info, result;
    uint64_t arg;
    *text = NULL;
    if ((result = head(&probe, &major, &info, &arg)) != OK || major != 3)
        return result;
    if (arg > (uint64_t)(probe.end - probe.at))
        return BAIL;
    *text = probe.at;
    *len = (size_t)arg;
    return OK;
}

static int filter_value(Walk *w, const Field *field, int depth);

/* privacy_scrubbed's checks of one pair that stays: a text key (not one refused) with a value of the type
 * its action asks for. */
static int check_whole_pair(Walk *w, const uint8_t *text, Action action) {
    if (text == NULL || action == REFUSE)
        return BAIL;
    In value = w->in;
    int major, info;
    uint64_t len;
    if (head(&value, &major, &info, &len) != OK) /* the key */
        return BAIL;
    value.at += len;
    if ((action == KEEP_TEXT && !text_item(&value)) || (action == KEEP_SCALAR && !scalar_item(&value)))
        return BAIL;
    return OK;
}

/* The pairs of an ordered rule's map, as written from ``at`` in the output, put in the order of the rule's
 * fields (Python builds such a map key by key: {k: item[k] for k in keys if k in item}). ``starts`` and
 * ``ends``: where each field's pair was written (ends[i] == 0: not there). */
#define ORDERED_MAX 4

static int reorder_pairs(Out *out, size_t at, const size_t *starts, const size_t *ends, size_t count) {
    size_t len = out->len - at;
    char *copy = PyMem_Malloc(len ? len : 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return ERR;
    }
    memcpy(copy, out->data + at, len);
    size_t to = at;
    for (size_t i = 0; i < count; i++) {
        if (!ends[i])
            continue;
        memcpy(out->data + to, copy + (starts[i] - at), ends[i] - starts[i]);
        to += ends[i] - starts[i];
    }
    PyMem_Free(copy);
    return OK;
}

/* A map's ``n`` pairs (after its head, already copied to the output at ``head_at``, ``width`` bytes), each
 * kept, dropped or filtered as ``rule`` says; ``depth``: the containers the pairs are inside. */
static int filter_pairs(Walk *w, uint64_t n, size_t head_at, size_t width, const Rule *rule, int depth) {
    if (n > (uint64_t)(w->in.end - w->in.at) / 2) /* each pair takes two bytes at least */
        return BAIL;
    Key few[16], *keys = few; /* privacy_scrubbed: the keys kept, none twice */
    size_t starts[ORDERED_MAX] = {0}, ends[ORDERED_MAX] = {0}, last = 0;
    int reorder = 0;
    uint64_t kept = 0;
    int result = OK;
    for (uint64_t i = 0; i < n && result == OK; i++) {
        const uint8_t *text;
        size_t len = 0;
        if ((result = peek_text_key(&w->in, &text, &len)) != OK)
            break;
        const Field *field = text != NULL ? field_named(rule, text, len) : NULL;
        Action action = field != NULL ? field->action : text != NULL ? rule->others : KEEP;
        if (action == DROP) {
            if ((result = skip_item(&w->in, depth, DECODABLE)) == OK)
                result = skip_item(&w->in, depth, DECODABLE);
            continue;
        }
        if (w->whole) {
            if ((result = check_whole_pair(w, text, action)) != OK)
                break;
            if (kept == 16 && keys == few) {
                if ((keys = PyMem_Malloc((size_t)n * sizeof *keys)) == NULL) {
                    PyErr_NoMemory();
                    return ERR;
                }
                memcpy(keys, few, sizeof few);
            }
            keys[kept].text = text;
            keys[kept].len = len;
        }
        size_t start = w->out.len;
        if ((result = copy_item(w, depth)) != OK)
            break;
        result = action == FILTER_MAP || action == FILTER_EACH ? filter_value(w, field, depth) : copy_item(w, depth);
        kept++;
        if (w->whole && rule->ordered && field != NULL) { /* an ordered rule keeps only its fields */
            size_t at = (size_t)(field - rule->fields);
            reorder |= at < last;
            last = at;
            starts[at] = start;
            ends[at] = w->out.len;
        }
    }
    if (result == OK && w->whole && duplicate_keys(keys, (size_t)kept))
        result = BAIL;
    if (keys != few)
        PyMem_Free(keys);
    if (result == OK && reorder)
        result = reorder_pairs(&w->out, head_at + width, starts, ends, rule->count);
    if (result == OK && (kept != n || w->whole))
        rewrite_map_head(&w->out, head_at, width, kept, w->whole);
    return result;
}

/* A map filtered by ``rule``; anything else (Python drops what is not a map where a map belongs) as it is
 * (privacy_scrubbed: BAIL). */
static int filter_map(Walk *w, const Rule *rule, int depth) {
    const uint8_t *start = w->in.at;
    int major, info, result;
    uint64_t count;
    if (depth >= MAX_DEPTH)
        return BAIL;
    if ((result = head(&w->in, &major, &info, &count)) != OK)
        return result;
    if (major != 5) {
        w->in.at = start;
        return w->whole ? BAIL : copy_item(w, depth);
    }
    size_t width = (size_t)(w->in.at - start), head_at = w->out.len;
    if ((result = put(&w->out, (const char *)start, width)) != OK)
        return result;
    return filter_pairs(w, count, head_at, width, rule, depth + 1);
}

/* A list whose map items are filtered by ``rule`` (other items, and a value that is no list, as they are;
 * privacy_scrubbed: BAIL). */
static int filter_each(Walk *w, const Rule *rule, int depth) {
    const uint8_t *start = w->in.at;
    int major, info, result;
    uint64_t count;
    if (depth >= MAX_DEPTH)
        return BAIL;
    if ((result = head(&w->in, &major, &info, &count)) != OK)
        return result;
    if (major != 4) {
        w->in.at = start;
        return w->whole ? BAIL : copy_item(w, depth);
    }
    if (count > (uint64_t)(w->in.end - w->in.at) || (w->whole && !shortest(info, count)))
        return BAIL;
    if ((result = put(&w->out, (const char *)start, (size_t)(w->in.at - start))) != OK)
        return result;
    for (uint64_t i = 0; i < count; i++)
        if ((result = filter_map(w, rule, depth + 1)) != OK)
            return result;
    return OK;
}

static int filter_value(Walk *w, const Field *field, int depth) {
    return field->action == FILTER_MAP ? filter_map(w, field->inner, depth) : filter_each(w, field->inner, depth);
}

static PyObject *filter_record(PyObject *body_arg, int whole) {
    Py_buffer body;
    if (PyObject_GetBuffer(body_arg, &body, PyBUF_SIMPLE) != 0)
        return NULL;
    Walk w = {{body.buf, (const uint8_t *)body.buf + body.len}, {NULL, 0, 0}, whole};
    PyObject *smaller = NULL;
    int result;
    /* the result is never longer than the body: one allocation */
    if ((result = grow(&w.out, (size_t)body.len + 1)) != OK)
        goto done;
    if (body.len == 0 || *w.in.at >> 5 != 5) {
        result = BAIL;
        goto done;
    }
    if ((result = filter_map(&w, &record_rule, 0)) != OK)
        goto done;
    if (w.in.at != w.in.end) { /* trailing bytes: not one data item */
        result = BAIL;
        goto done;
    }
    smaller = PyBytes_FromStringAndSize(w.out.data, (Py_ssize_t)w.out.len);
    if (smaller == NULL)
        result = ERR;
done:
    PyMem_Free(w.out.data);
    PyBuffer_Release(&body);
    if (result == ERR)
        return NULL;
    if (result == BAIL)
        Py_RETURN_NONE;
    return smaller;
}

static PyObject *privacy_prefilter(PyObject *module, PyObject *body) {
    (void)module;
    return filter_record(body, 0);
}

static PyObject *privacy_scrubbed(PyObject *module, PyObject *body) {
    (void)module;
    return filter_record(body, 1);
}

/* -- the default format's batch ----------------------------------------------------------------------- */

/* The bytes of a CBOR head of major type ``major`` and argument ``value`` (records._uint_header's). */
static size_t put_head(uint8_t *to, int major, uint64_t value) {
    uint8_t initial = (uint8_t)(major << 5);
    if (value < 24) {
        to[0] = initial | (uint8_t)value;
        return 1;
    }
    int size = value < 0x100 ? 1 : value < 0x10000 ? 2 : value < 0x100000000ULL ? 4 : 8;
    to[0] = initial | (uint8_t)(size == 1 ? 24 : size == 2 ? 25 : size == 4 ? 26 : 27);
    for (int i = size; i > 0; i--, value >>= 8)
        to[i] = (uint8_t)(value & 0xFF);
    return 1 + (size_t)size;
}

/* A small definite map (its count, 0-22, in its initial byte) longer than any such map's count: the shape our
 * own append writes every record in, and the one records.id_head splices without reading further. */
static inline int small_map(const char *body, Py_ssize_t len) {
    return len > 22 && (uint8_t)body[0] >= 0xA0 && (uint8_t)body[0] <= 0xB6;
}

static PyObject *spliced_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "spliced_records(rows: list, max_bytes: int) takes a list and an int");
        return NULL;
    }
    PyObject *rows = args[0];
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[1]);
    if (max_bytes == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(rows), total = 0;
    /* First every row's shape and the size, so that nothing is allocated for a batch left to Python. Nothing
     * here runs Python code, so the list and its rows stay as they are between the two passes. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 3)
            Py_RETURN_NONE;
        PyObject *id = PyTuple_GET_ITEM(row, 0), *body = PyTuple_GET_ITEM(row, 2);
        if (!PyLong_CheckExact(id) || !PyBytes_CheckExact(body) ||
            !small_map(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body)))
            Py_RETURN_NONE;
        int overflow;
        long long record_id = PyLong_AsLongLongAndOverflow(id, &overflow);
        if (overflow || record_id < 0)
            Py_RETURN_NONE;
        /* the body's own head (1 byte) gives way to the new one (1), "id" (3) and the id's head (1-9) */
        uint8_t scratch[9];
        total += PyBytes_GET_SIZE(body) + 3 + (Py_ssize_t)put_head(scratch, 0, (uint64_t)record_id);
        if (total > max_bytes)
            Py_RETURN_NONE;
    }
    PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL)
        return NULL;
    uint8_t *to = (uint8_t *)PyBytes_AS_STRING(joined);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        PyObject *body = PyTuple_GET_ITEM(row, 2);
        const uint8_t *from = (const uint8_t *)PyBytes_AS_STRING(body);
        Py_ssize_t len = PyBytes_GET_SIZE(body);
        *to++ = (uint8_t)(from[0] + 1); /* one pair more: 0xA1-0xB7 */
        *to++ = 0x62;
        *to++ = 'i';
        *to++ = 'd';
        to += put_head(to, 0, (uint64_t)PyLong_AsLongLong(PyTuple_GET_ITEM(row, 0)));
        memcpy(to, from + 1, (size_t)(len - 1));
        to += len - 1;
    }
    return joined;
}

/* -- the seal check ------------------------------------------------------------------------------------ */

/* seals_valid(rows, mac_key) is RecordSeal.all_valid (store/seal.py) over a batch in one call: whether every
 * (id, ts_us, body, seal) row holds HMAC-SHA-256(mac_key, body) truncated to SEAL_SIZE bytes. This decides
 * which rows the export trusts without a check, so it answers only what it is sure of and leaves the rest to
 * Python: None for a row that is not a 4-tuple, a memoryview body whose buffer cannot be read (released, not
 * contiguous: hashlib raises there), or when no SHA-256 is found; False for a seal that is not bytes or not
 * SEAL_SIZE long, a body that is neither bytes nor a memoryview, or a seal that does not match (compared in
 * constant time), as all_valid answers them. A memoryview body (the encode pool's rows are views of one
 * buffer) is hashed as hashlib hashes it, its buffer held until the check is done.
 *
 * SHA-256 is OpenSSL's low-level one (SHA256_Init/Update/Final, in every libcrypto since 0.9.8, and using the
 * CPU's SHA instructions where it has them), taken from the libcrypto Python's own hashlib is linked with:
 * found at run time through the _hashlib module, so that building needs no OpenSSL headers and the extension no
 * link to it. Its context is plain data, so HMAC's two keyed states are computed once per call and copied per
 * row, where hashlib's objects copy OpenSSL 3's EVP contexts four times per row. Before its first use it must
 * hash FIPS 180-2's two examples to their digests, or it is not used. The hashing runs without the GIL, on the
 * call's own references to the rows (a copy of the list; the tuples and bytes in it cannot change). */

#define SEAL_SIZE 16
#define HMAC_BLOCK 64

typedef union { unsigned char bytes[256]; uint64_t align; } Sha256Context; /* SHA256_CTX is 112 bytes */

static int (*sha256_init)(void *context);
static int (*sha256_update)(void *context, const void *data, size_t len);
static int (*sha256_final)(unsigned char *digest, void *context);
static int sha256_found; /* 0: not looked for yet; 1: found and checked; -1: not there */

static int sha256_of(const void *data, size_t len, unsigned char digest[32]) {
    Sha256Context context;
    return sha256_init(&context) == 1 && sha256_update(&context, data, len) == 1 &&
           sha256_final(digest, &context) == 1;
}

/* Whether OpenSSL's SHA-256 is here (looked for once per process; with the GIL held). */
static int find_sha256(void) {
    if (sha256_found != 0)
        return sha256_found > 0;
    sha256_found = -1;
    PyObject *hashlib_openssl = PyImport_ImportModule("_hashlib"), *file = NULL, *path = NULL;
    if (hashlib_openssl != NULL)
        file = PyObject_GetAttrString(hashlib_openssl, "__file__");
    if (file != NULL && PyUnicode_Check(file))
        path = PyUnicode_EncodeFSDefault(file);
    Py_XDECREF(hashlib_openssl);
    Py_XDECREF(file);
    PyErr_Clear(); /* a Python without _hashlib (or a built-in one): no native check, not an error */
    if (path == NULL)
        return 0;
    /* _hashlib is loaded already; dlsym through its handle searches the libraries it was linked with. The
     * handle is kept: the functions must stay loaded. */
    void *library = dlopen(PyBytes_AS_STRING(path), RTLD_NOW | RTLD_NOLOAD);
    Py_DECREF(path);
    if (library == NULL)
        return 0;
    *(void **)&sha256_init = dlsym(library, "SHA256_Init");
    *(void **)&sha256_update = dlsym(library, "SHA256_Update");
    *(void **)&sha256_final = dlsym(library, "SHA256_Final");
    if (sha256_init == NULL || sha256_update == NULL || sha256_final == NULL)
        return 0;
    /* FIPS 180-2's examples: one block, and two (the padding in a block of its own) */
    static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    static const unsigned char abc[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    static const unsigned char two_blocks_digest[32] = {
        0x24, 0x8d, 0x6a, 0x61, 0xd2, 0x06, 0x38, 0xb8, 0xe5, 0xc0, 0x26, 0x93, 0x0c, 0x3e, 0x60, 0x39,
        0xa3, 0x3c, 0xe4, 0x59, 0x64, 0xff, 0x21, 0x67, 0xf6, 0xec, 0xed, 0xd4, 0x19, 0xdb, 0x06, 0xc1};
    unsigned char digest[32];
    if (!sha256_of("abc", 3, digest) || memcmp(digest, abc, 32) != 0 ||
        !sha256_of(two_blocks, sizeof two_blocks - 1, digest) || memcmp(digest, two_blocks_digest, 32) != 0)
        return 0;
    sha256_found = 1;
    return 1;
}

typedef struct {
    const unsigned char *body;
    size_t len;
    const unsigned char *seal;
    Py_buffer view; /* a memoryview body's buffer, held until the check is done */
    int viewed;
} SealedBody;

/* Whether every body holds its seal: HMAC from the two keyed states, compared in constant time. */
static int all_sealed(const Sha256Context *inner_keyed, const Sha256Context *outer_keyed, const SealedBody *rows,
                      Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        Sha256Context context;
        unsigned char digest[32];
        memcpy(&context, inner_keyed, sizeof context);
        if (sha256_update(&context, rows[i].body, rows[i].len) != 1 || sha256_final(digest, &context) != 1)
            return 0;
        memcpy(&context, outer_keyed, sizeof context);
        if (sha256_update(&context, digest, sizeof digest) != 1 || sha256_final(digest, &context) != 1)
            return 0;
        unsigned char difference = 0;
        for (int j = 0; j < SEAL_SIZE; j++)
            difference |= (unsigned char)(digest[j] ^ rows[i].seal[j]);
        if (difference != 0)
            return 0;
    }
    return 1;
}

static PyObject *seals_valid(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != HMAC_BLOCK) {
        PyErr_SetString(PyExc_TypeError, "seals_valid(rows: list, mac_key: bytes) takes a list and a 64-byte key");
        return NULL;
    }
    if (!find_sha256())
        Py_RETURN_NONE;
    PyObject *rows = PyList_GetSlice(args[0], 0, PY_SSIZE_T_MAX);
    if (rows == NULL)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(rows);
    SealedBody *sealed = PyMem_Malloc(sizeof *sealed * (size_t)(count > 0 ? count : 1));
    if (sealed == NULL) {
        Py_DECREF(rows);
        return PyErr_NoMemory();
    }
    PyObject *verdict = NULL;
    Py_ssize_t filled = 0;
    for (; filled < count; filled++) { /* every way out of it before the end sets a verdict */
        PyObject *row = PyList_GET_ITEM(rows, filled);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 4) {
            verdict = Py_None;
            break;
        }
        PyObject *body = PyTuple_GET_ITEM(row, 2), *seal = PyTuple_GET_ITEM(row, 3);
        SealedBody *entry = &sealed[filled];
        entry->viewed = 0;
        if (!PyBytes_CheckExact(seal) || PyBytes_GET_SIZE(seal) != SEAL_SIZE) {
            verdict = Py_False;
            break;
        }
        entry->seal = (const unsigned char *)PyBytes_AS_STRING(seal);
        if (PyBytes_CheckExact(body)) {
            entry->body = (const unsigned char *)PyBytes_AS_STRING(body);
            entry->len = (size_t)PyBytes_GET_SIZE(body);
        } else if (PyMemoryView_Check(body)) {
            /* hashlib hashes a memoryview's bytes as PyBUF_SIMPLE gives them; one it cannot (released, not
             * contiguous) raises there: Python's to answer */
            if (PyObject_GetBuffer(body, &entry->view, PyBUF_SIMPLE) != 0) {
                PyErr_Clear();
                verdict = Py_None;
                break;
            }
            entry->viewed = 1;
            entry->body = (const unsigned char *)entry->view.buf;
            entry->len = (size_t)entry->view.len;
        } else {
            verdict = Py_False;
            break;
        }
    }
    if (verdict == NULL) {
        const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(args[1]);
        unsigned char inner_pad[HMAC_BLOCK], outer_pad[HMAC_BLOCK];
        for (int j = 0; j < HMAC_BLOCK; j++) {
            inner_pad[j] = key[j] ^ 0x36;
            outer_pad[j] = key[j] ^ 0x5C;
        }
        Sha256Context inner_keyed, outer_keyed;
        int all = 0;
        Py_BEGIN_ALLOW_THREADS
        if (sha256_init(&inner_keyed) == 1 && sha256_update(&inner_keyed, inner_pad, HMAC_BLOCK) == 1 &&
            sha256_init(&outer_keyed) == 1 && sha256_update(&outer_keyed, outer_pad, HMAC_BLOCK) == 1)
            all = all_sealed(&inner_keyed, &outer_keyed, sealed, count);
        Py_END_ALLOW_THREADS
        verdict = all ? Py_True : Py_False;
    }
    for (Py_ssize_t i = 0; i < filled; i++) /* the rows before the one it stopped at, if it did */
        if (sealed[i].viewed)
            PyBuffer_Release(&sealed[i].view);
    PyMem_Free(sealed);
    Py_DECREF(rows);
    return Py_NewRef(verdict);
}

/* -- the module --------------------------------------------------------------------------------------- */

static PyObject *json_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "json_line(body, record_id) takes two arguments");
        return NULL;
    }
    if (!PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "record_id must be an int");
        return NULL;
    }
    if (!PyLong_CheckExact(args[1])) /* a bool (orjson writes true) or another subclass: Python's to write */
        Py_RETURN_NONE;
    int overflow;
    long long record_id = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (overflow) /* no store assigns such an id: Python's to write */
        Py_RETURN_NONE;
    if (record_id == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer body;
    if (PyObject_GetBuffer(args[0], &body, PyBUF_SIMPLE) != 0)
        return NULL;
    In in = {body.buf, (const uint8_t *)body.buf + body.len};
    /* JSON is usually a little longer than the CBOR it comes from: one allocation for most records. */
    Out out = {NULL, 0, 0};
    PyObject *line = NULL;
    int major, info, result;
    uint64_t pairs;
    if ((result = grow(&out, (size_t)body.len + (size_t)body.len / 2 + 64)) != OK)
        goto done;
    if ((result = head(&in, &major, &info, &pairs)) != OK || major != 5) {
        result = result == ERR ? ERR : BAIL;
        goto done;
    }
    if ((result = put(&out, "{\"id\":", 6)) != OK ||
        (result = put_u64(&out, record_id < 0 ? 0 - (uint64_t)record_id : (uint64_t)record_id, record_id < 0)) != OK)
        goto done;
    if ((result = put_pairs(&in, &out, pairs, 1, MAP_RECORD, NULL)) != OK)
        goto done;
    if (in.at != in.end) { /* trailing bytes: not one data item */
        result = BAIL;
        goto done;
    }
    if ((result = put(&out, "\n", 1)) != OK)
        goto done;
    line = PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len);
    if (line == NULL)
        result = ERR;
done:
    PyMem_Free(out.data);
    PyBuffer_Release(&body);
    if (result == ERR)
        return NULL;
    if (result == BAIL)
        Py_RETURN_NONE;
    return line;
}

static PyMethodDef methods[] = {
    {"json_line", (PyCFunction)(void (*)(void))json_line, METH_FASTCALL,
     "json_line(body, record_id) -> bytes | None\n\n"
     "The JSON line (newline included) the Python path writes for a stored record's CBOR map with its id "
     "first, or None where the record is not one this writes (the caller then takes the Python path)."},
    {"parquet_row", (PyCFunction)(void (*)(void))parquet_row, METH_FASTCALL,
     "parquet_row(body, record_id) -> tuple | None\n\n"
     "A stored record's values for the Parquet columns, in the order of PARQUET_ROW_FIELDS: record_id, the "
     "typed fields as cbor2 decodes them (None where missing), the capture as its column's JSON (None when "
     "there is none, or it is null) and the request's and the response's raw bodies (None when not bytes); "
     "None for a record left to Python (any json_line leaves, one with another field, a half or single float)."},
    {"privacy_prefilter", (PyCFunction)privacy_prefilter, METH_O,
     "privacy_prefilter(body) -> bytes | None\n\n"
     "A stored record's CBOR map without what privacy mode certainly drops (the other items' bytes as they "
     "are), or None where the body is not one this filters (the caller then decodes the body itself)."},
    {"privacy_scrubbed", (PyCFunction)privacy_scrubbed, METH_O,
     "privacy_scrubbed(body) -> bytes | None\n\n"
     "A stored record's CBOR map scrubbed for privacy mode, in the bytes cbor2 writes for the scrubbed record, "
     "or None where the record is not one this scrubs whole (the caller then takes privacy_prefilter's path)."},
    {"spliced_records", (PyCFunction)(void (*)(void))spliced_records, METH_FASTCALL,
     "spliced_records(rows, max_bytes) -> bytes | None\n\n"
     "The stored rows ((id, ts_us, body, ...) tuples: StoredRecords) as the default format's CBOR sequence, "
     "each record with its id spliced in first, joined: the bytes of records.id_head's splicing, one record "
     "after the other; None when a row is not a small map our append writes (the caller then splices in "
     "Python) or the records would take more than max_bytes."},
    {"seals_valid", (PyCFunction)(void (*)(void))seals_valid, METH_FASTCALL,
     "seals_valid(rows, mac_key) -> bool | None\n\n"
     "RecordSeal.all_valid of the stored rows ((id, ts_us, body, seal) tuples: StoredRecords) under the seal's "
     "64-byte HMAC key: whether every row holds the seal of its body; None when a row is not one this checks (not "
     "a 4-tuple, a memoryview it cannot read) or OpenSSL's SHA-256 is not found (the caller then checks in Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cbor_json",
    "A stored record's CBOR straight to its JSON line or its Parquet columns (see json_line, parquet_row).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cbor_json(void) {
    init_escapes();
    if (orjson_dumps == NULL) {
        PyObject *orjson = PyImport_ImportModule("orjson");
        if (orjson == NULL)
            return NULL;
        orjson_dumps = PyObject_GetAttrString(orjson, "dumps");
        Py_DECREF(orjson);
        if (orjson_dumps == NULL)
            return NULL;
    }
    if (PyDateTimeAPI == NULL) {
        PyDateTime_IMPORT;
        if (PyDateTimeAPI == NULL)
            return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    PyObject *fields = PyTuple_New(ROW_SIZE);
    for (int i = 0; fields != NULL && i < ROW_SIZE; i++) {
        PyObject *name = PyUnicode_FromString(row_fields[i]);
        if (name == NULL)
            Py_CLEAR(fields);
        else
            PyTuple_SET_ITEM(fields, i, name);
    }
    if (fields == NULL || PyModule_AddObject(module, "PARQUET_ROW_FIELDS", fields) != 0) {
        Py_XDECREF(fields);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddStringConstant(module, "SOURCE_SHA256", CBOR_JSON_SOURCE_SHA256) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

/*
 * mg_router — see mg_router.h. A trie whose edges are whole segments:
 * matching is one binary search per static level and costs nothing per route
 * that cannot match, unlike a list of regexes tried in order.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "mg_router.h"

#include <pcre2.h>
#include <stdio.h>
#include <strings.h>

typedef struct node node_t;

typedef struct route {
    int id;
    unsigned methods;
    char *host;          /* NULL any; "*.x" stored as ".x" with wildcard set */
    size_t host_len;
    int wildcard;
    int rank;            /* 0 exact host, 1 wildcard, 2 any: lower first */
    int seq;             /* declaration order */
    int nparams;
    char *names[MG_ROUTER_MAX_PARAMS];
    char *where;
} route_t;

typedef struct route_list {
    route_t **v;
    size_t n, cap;
} route_list_t;

typedef struct static_edge {
    char *seg;
    size_t len;
    node_t *child;
} static_edge_t;

typedef struct regex_edge {
    const char *source;       /* source and code borrowed from the router's pattern table */
    size_t len;
    pcre2_code *code;
    node_t *child;
} regex_edge_t;

/* A compiled constraint, shared by every edge with the same source: 10,000
 * routes with {id:[0-9]+} compile (and JIT) it once. */
typedef struct pattern {
    char *source;
    size_t len;
    uint64_t hash;
    pcre2_code *code;
} pattern_t;

struct node {
    static_edge_t *statics;   /* sorted by (len, bytes) for binary search */
    size_t nstatics, statics_cap;
    regex_edge_t *regexes;    /* declaration order */
    size_t nregexes, regexes_cap;
    node_t *param;
    route_list_t routes;      /* routes ending at this node */
    route_list_t catchalls;   /* routes with a catch-all at this position */
};

struct mg_router {
    node_t root;
    size_t count;
    pcre2_match_data *md;
    route_t **all;
    size_t all_cap;
    pattern_t *patterns;      /* open addressing, a power of two, at most half full */
    size_t npatterns, patterns_cap;
};

static const struct { const char *name; unsigned bit; } methods[] = {
    { "GET", MG_M_GET }, { "HEAD", MG_M_HEAD }, { "POST", MG_M_POST }, { "PUT", MG_M_PUT },
    { "DELETE", MG_M_DELETE }, { "PATCH", MG_M_PATCH }, { "OPTIONS", MG_M_OPTIONS },
    { "TRACE", MG_M_TRACE }, { "CONNECT", MG_M_CONNECT },
};

unsigned mg_method_bit(const char *m, size_t n)
{
    for (size_t i = 0; i < mg_countof(methods); i++)
        if (strlen(methods[i].name) == n && memcmp(methods[i].name, m, n) == 0)
            return methods[i].bit;
    return MG_M_OTHER;
}

size_t mg_methods_format(unsigned mask, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < mg_countof(methods); i++) {
        if (!(mask & methods[i].bit))
            continue;
        int w = snprintf(buf + len, size - len, "%s%s", len ? ", " : "", methods[i].name);
        if (w < 0 || (size_t)w >= size - len)
            break;
        len += (size_t)w;
    }
    return len;
}

mg_router_t *mg_router_new(void)
{
    mg_router_t *r = mg_calloc(1, sizeof(*r));
    r->md = pcre2_match_data_create(4, NULL);
    return r;
}

static void node_free(node_t *n, int is_root)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nstatics; i++) {
        free(n->statics[i].seg);
        node_free(n->statics[i].child, 0);
    }
    for (size_t i = 0; i < n->nregexes; i++)
        node_free(n->regexes[i].child, 0);
    node_free(n->param, 0);
    free(n->statics);
    free(n->regexes);
    free(n->routes.v);
    free(n->catchalls.v);
    if (!is_root)
        free(n);
}

static void route_free(route_t *rt)
{
    for (int k = 0; k < rt->nparams; k++)
        free(rt->names[k]);
    free(rt->host);
    free(rt->where);
    free(rt);
}

void mg_router_free(mg_router_t *r)
{
    if (!r)
        return;
    node_free(&r->root, 1);
    for (size_t i = 0; i < r->count; i++)
        route_free(r->all[i]);
    free(r->all);
    for (size_t i = 0; i < r->patterns_cap; i++) {
        if (r->patterns[i].code) {
            free(r->patterns[i].source);
            pcre2_code_free(r->patterns[i].code);
        }
    }
    free(r->patterns);
    pcre2_match_data_free(r->md);
    free(r);
}

size_t mg_router_count(const mg_router_t *r) { return r->count; }

/* Room for one more element in an array of n (capacity *cap), doubling: a root
 * with 10,000 children, or the route table, is not reallocated per route. */
static void *grow(void *v, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return v;
    *cap = *cap ? 2 * *cap : 1; /* most nodes have one child, one route */
    return mg_realloc(v, *cap * size);
}

static int cmp_seg(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

static node_t *static_child(node_t *n, const char *seg, size_t len, int create)
{
    size_t lo = 0, hi = n->nstatics;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = cmp_seg(seg, len, n->statics[mid].seg, n->statics[mid].len);
        if (c == 0)
            return n->statics[mid].child;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (!create)
        return NULL;
    n->statics = grow(n->statics, n->nstatics, &n->statics_cap, sizeof(*n->statics));
    memmove(&n->statics[lo + 1], &n->statics[lo], (n->nstatics - lo) * sizeof(*n->statics));
    n->statics[lo].seg = mg_strndup(seg, len);
    n->statics[lo].len = len;
    n->statics[lo].child = mg_calloc(1, sizeof(node_t));
    n->nstatics++;
    return n->statics[lo].child;
}

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static pattern_t *pattern_slot(pattern_t *tab, size_t cap, const char *src, size_t len, uint64_t h)
{
    for (size_t i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        pattern_t *p = &tab[i];
        if (!p->code || (p->hash == h && p->len == len && memcmp(p->source, src, len) == 0))
            return p;
    }
}

/*
 * The table's entry for a constraint: found, or compiled now. NULL with err on
 * a bad regex. The entry moves when the table grows; its source and code stay.
 */
static const pattern_t *pattern(mg_router_t *r, const char *src, size_t len, char *err, size_t errlen)
{
    uint64_t h = hash_bytes(src, len);
    if (r->patterns_cap) {
        pattern_t *p = pattern_slot(r->patterns, r->patterns_cap, src, len, h);
        if (p->code)
            return p;
    }
    int ec;
    PCRE2_SIZE eo;
    /* Anchored at both ends: a constraint describes the whole segment. */
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)src, len, PCRE2_ANCHORED | PCRE2_ENDANCHORED,
                                     &ec, &eo, NULL);
    if (!code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errlen, "bad regex '%.*s' at offset %zu: %s", (int)len, src, (size_t)eo, msg);
        return NULL;
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    if (2 * (r->npatterns + 1) > r->patterns_cap) {
        size_t cap = r->patterns_cap ? 2 * r->patterns_cap : 16;
        pattern_t *tab = mg_calloc(cap, sizeof(*tab));
        for (size_t i = 0; i < r->patterns_cap; i++)
            if (r->patterns[i].code)
                *pattern_slot(tab, cap, r->patterns[i].source, r->patterns[i].len, r->patterns[i].hash) = r->patterns[i];
        free(r->patterns);
        r->patterns = tab;
        r->patterns_cap = cap;
    }
    pattern_t *p = pattern_slot(r->patterns, r->patterns_cap, src, len, h);
    *p = (pattern_t){ .source = mg_strndup(src, len), .len = len, .hash = h, .code = code };
    r->npatterns++;
    return p;
}

static node_t *regex_child(mg_router_t *r, node_t *n, const char *src, size_t len, char *err, size_t errlen)
{
    for (size_t i = 0; i < n->nregexes; i++)
        if (n->regexes[i].len == len && memcmp(n->regexes[i].source, src, len) == 0)
            return n->regexes[i].child;
    const pattern_t *p = pattern(r, src, len, err, errlen);
    if (!p)
        return NULL;
    n->regexes = grow(n->regexes, n->nregexes, &n->regexes_cap, sizeof(*n->regexes));
    regex_edge_t *e = &n->regexes[n->nregexes++];
    e->source = p->source;
    e->len = p->len;
    e->code = p->code;
    e->child = mg_calloc(1, sizeof(node_t));
    return e->child;
}

static int valid_param_name(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (i && c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

static int host_match(const route_t *rt, const char *host, size_t len)
{
    if (!rt->host)
        return 1;
    if (!host)
        return 0;
    if (!rt->wildcard)
        return len == rt->host_len && memcmp(host, rt->host, len) == 0;
    /* ".example.com" matches any name with at least one label before it */
    return len > rt->host_len && memcmp(host + len - rt->host_len, rt->host, rt->host_len) == 0;
}

static int before(const route_t *a, const route_t *b)
{
    if (a->rank != b->rank)
        return a->rank < b->rank;
    if (a->rank == 1 && a->host_len != b->host_len)
        return a->host_len > b->host_len;
    return a->seq < b->seq;
}

static int list_insert(route_list_t *l, route_t *rt, char *err, size_t errlen)
{
    for (size_t i = 0; i < l->n; i++) {
        route_t *o = l->v[i];
        int same_host = (!o->host && !rt->host) ||
                        (o->host && rt->host && o->wildcard == rt->wildcard &&
                         strcmp(o->host, rt->host) == 0);
        if (same_host && (o->methods & rt->methods)) {
            char m[96];
            mg_methods_format(o->methods & rt->methods, m, sizeof(m));
            snprintf(err, errlen, "route conflicts with the route declared at %s (same path%s, methods %s)",
                     o->where, rt->host ? " and host" : "", m);
            return MG_ERROR;
        }
    }
    size_t pos = l->n;
    while (pos > 0 && before(rt, l->v[pos - 1]))
        pos--;
    l->v = grow(l->v, l->n, &l->cap, sizeof(*l->v));
    memmove(&l->v[pos + 1], &l->v[pos], (l->n - pos) * sizeof(*l->v));
    l->v[pos] = rt;
    l->n++;
    return MG_OK;
}

int mg_router_add(mg_router_t *r, const mg_route_spec_t *spec, char *err, size_t errlen)
{
    const char *path = spec->path;
    if (!path || path[0] != '/') {
        snprintf(err, errlen, "path must start with '/'");
        return MG_ERROR;
    }
    if (!spec->methods) {
        snprintf(err, errlen, "route has no methods");
        return MG_ERROR;
    }
    route_t *rt = mg_calloc(1, sizeof(*rt));
    rt->id = spec->id;
    rt->methods = spec->methods;
    if (rt->methods & MG_M_GET)
        rt->methods |= MG_M_HEAD;
    rt->seq = (int)r->count;
    rt->where = strdup(spec->where ? spec->where : "?");
    rt->rank = 2;
    if (spec->host && spec->host[0]) {
        const char *h = spec->host;
        if (h[0] == '*') {
            if (h[1] != '.' || !h[2]) {
                snprintf(err, errlen, "bad host pattern '%s': a wildcard is written '*.example.com'", h);
                route_free(rt);
                return MG_ERROR;
            }
            rt->wildcard = 1;
            rt->rank = 1;
            h++;
        } else {
            rt->rank = 0;
        }
        rt->host_len = strlen(h);
        rt->host = mg_strndup(h, rt->host_len);
        mg_lowercase(rt->host, rt->host, rt->host_len);
    }

    node_t *n = &r->root;
    const char *p = path + 1;
    int catchall = 0;
    /* "/" has no segments; otherwise every '/' starts one (so "/a/" has "a" and "") */
    while (path[1] != '\0') {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (catchall) {
            snprintf(err, errlen, "a catch-all parameter must be the last segment");
            goto fail;
        }
        if (len > 0 && p[0] == '{') {
            if (p[len - 1] != '}') {
                snprintf(err, errlen, "a parameter must span the whole segment: '%.*s'", (int)len, p);
                goto fail;
            }
            const char *name = p + 1;
            size_t inner = len - 2;
            const char *colon = memchr(name, ':', inner);
            size_t name_len = colon ? (size_t)(colon - name) : inner;
            int star = !colon && name_len > 0 && name[name_len - 1] == '*';
            if (star)
                name_len--;
            if (!valid_param_name(name, name_len)) {
                snprintf(err, errlen, "bad parameter name in '%.*s'", (int)len, p);
                goto fail;
            }
            if (rt->nparams == MG_ROUTER_MAX_PARAMS) {
                snprintf(err, errlen, "more than %d parameters", MG_ROUTER_MAX_PARAMS);
                goto fail;
            }
            for (int k = 0; k < rt->nparams; k++)
                if (strlen(rt->names[k]) == name_len && memcmp(rt->names[k], name, name_len) == 0) {
                    snprintf(err, errlen, "parameter '%.*s' appears twice", (int)name_len, name);
                    goto fail;
                }
            rt->names[rt->nparams++] = mg_strndup(name, name_len);
            if (star) {
                catchall = 1;
            } else if (colon) {
                size_t rlen = inner - name_len - 1;
                if (rlen == 0) {
                    snprintf(err, errlen, "empty regex in '%.*s'", (int)len, p);
                    goto fail;
                }
                n = regex_child(r, n, colon + 1, rlen, err, errlen);
                if (!n)
                    goto fail;
            } else {
                if (!n->param)
                    n->param = mg_calloc(1, sizeof(node_t));
                n = n->param;
            }
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len)) {
                snprintf(err, errlen, "a parameter must span the whole segment: '%.*s'", (int)len, p);
                goto fail;
            }
            n = static_child(n, p, len, 1);
        }
        if (!e)
            break;
        p = e + 1;
    }
    if (list_insert(catchall ? &n->catchalls : &n->routes, rt, err, errlen) != MG_OK)
        goto fail;
    r->all = grow(r->all, r->count, &r->all_cap, sizeof(*r->all));
    r->all[r->count++] = rt;
    return MG_OK;
fail:
    route_free(rt);
    return MG_ERROR;
}

typedef struct walk {
    mg_router_t *r;
    unsigned method;
    const char *host;
    size_t host_len;
    const mg_str_t *segs;
    size_t nsegs;
    mg_str_t vals[MG_ROUTER_MAX_PARAMS];
    unsigned allow;
    route_t *found;
    int found_nvals;
} walk_t;

static int pick(walk_t *w, const route_list_t *l, int nvals)
{
    for (size_t i = 0; i < l->n; i++) {
        route_t *rt = l->v[i];
        if (!host_match(rt, w->host, w->host_len))
            continue;
        if (rt->methods & w->method) {
            w->found = rt;
            w->found_nvals = nvals;
            return 1;
        }
        w->allow |= rt->methods;
    }
    return 0;
}

static int walk(walk_t *w, const node_t *n, size_t i, int nvals)
{
    if (i == w->nsegs) {
        if (pick(w, &n->routes, nvals))
            return 1;
        if (!n->catchalls.n || nvals >= MG_ROUTER_MAX_PARAMS)
            return 0;
        w->vals[nvals] = (mg_str_t){ "", 0 };
        return pick(w, &n->catchalls, nvals + 1);
    }
    const mg_str_t *s = &w->segs[i];
    node_t *c = static_child((node_t *)n, s->p, s->n, 0);
    if (c && walk(w, c, i + 1, nvals))
        return 1;
    if (nvals < MG_ROUTER_MAX_PARAMS) {
        for (size_t k = 0; k < n->nregexes; k++) {
            int rc = pcre2_match(n->regexes[k].code, (PCRE2_SPTR)s->p, s->n, 0, 0, w->r->md, NULL);
            if (rc >= 0) {
                w->vals[nvals] = *s;
                if (walk(w, n->regexes[k].child, i + 1, nvals + 1))
                    return 1;
            }
        }
        if (n->param && s->n > 0) {
            w->vals[nvals] = *s;
            if (walk(w, n->param, i + 1, nvals + 1))
                return 1;
        }
    }
    if (n->catchalls.n && nvals < MG_ROUTER_MAX_PARAMS) {
        /* the rest of the path, contiguous in the caller's decoded buffer */
        mg_str_t v = { w->segs[i].p, 0 };
        const mg_str_t *last = &w->segs[w->nsegs - 1];
        v.n = (size_t)(last->p + last->n - v.p);
        w->vals[nvals] = v;
        return pick(w, &n->catchalls, nvals + 1);
    }
    return 0;
}

int mg_router_match(mg_router_t *r, unsigned method, const char *host, size_t host_len,
                    const mg_str_t *segs, size_t nsegs, mg_route_match_t *m)
{
    walk_t w;
    w.r = r;
    w.method = method;
    w.host = host;
    w.host_len = host_len;
    w.segs = segs;
    w.nsegs = nsegs;
    w.allow = 0;
    w.found = NULL;
    if (walk(&w, &r->root, 0, 0)) {
        route_t *rt = w.found;
        m->id = rt->id;
        m->nparams = rt->nparams;
        for (int k = 0; k < rt->nparams; k++) {
            m->names[k] = rt->names[k];
            m->values[k] = w.vals[k];
        }
        m->allow = 0;
        return MG_ROUTER_FOUND;
    }
    m->id = -1;
    m->nparams = 0;
    m->allow = w.allow;
    return w.allow ? MG_ROUTER_NO_METHOD : MG_ROUTER_NOT_FOUND;
}

#include "mg_pool.h"

#define ALIGN16(n) (((n) + 15u) & ~(size_t)15u)

struct mg_pool_cleanup {
    mg_ledger_entry_t entry;
    void (*fn)(void *data);
    void *data;
};

void mg_pool_init(mg_pool_t *pool)
{
    pool->blocks = NULL;
    pool->cleanups.head = NULL;
    pool->used = 0;
}

void *mg_pool_alloc(mg_pool_t *pool, size_t n)
{
    n = ALIGN16(n ? n : 1);
    if (pool->used + n <= MG_POOL_INLINE) {
        void *p = pool->inline_buf + pool->used;
        pool->used += n;
        return p;
    }
    mg_pool_block_t *b = pool->blocks;
    if (b && b->used + n <= b->size) {
        void *p = b->data + b->used;
        b->used += n;
        return p;
    }
    /* Large allocations get their own block so they do not waste a shared one. */
    size_t size = n > 4096 ? n : 8192;
    b = mg_alloc(sizeof(*b) + size);
    b->size = size;
    b->used = n;
    b->next = pool->blocks;
    pool->blocks = b;
    return b->data;
}

char *mg_pool_strndup(mg_pool_t *pool, const char *s, size_t n)
{
    char *d = mg_pool_alloc(pool, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static void run_cleanup(mg_ledger_entry_t *e)
{
    mg_pool_cleanup_t *c = mg_ledger_of(e, mg_pool_cleanup_t, entry);
    c->fn(c->data);
}

mg_pool_cleanup_t *mg_pool_cleanup_add(mg_pool_t *pool, void (*fn)(void *data), void *data)
{
    mg_pool_cleanup_t *c = mg_pool_alloc(pool, sizeof(*c));
    c->entry.pprev = NULL;
    c->fn = fn;
    c->data = data;
    mg_ledger_add(&pool->cleanups, &c->entry, run_cleanup);
    return c;
}

void mg_pool_cleanup_remove(mg_pool_cleanup_t *c) { mg_ledger_remove(&c->entry); }

void mg_pool_reset(mg_pool_t *pool)
{
    /* before the memory goes: a cleanup may read what the pool holds */
    mg_ledger_run(&pool->cleanups);
    mg_pool_block_t *b = pool->blocks;
    while (b) {
        mg_pool_block_t *next = b->next;
        free(b);
        b = next;
    }
    pool->blocks = NULL;
    pool->used = 0;
}

/*
 * mg_pool — a per-request arena. Everything allocated from it is freed at
 * once by mg_pool_reset; nothing is freed one by one. The first block lives
 * inside the pool object, so a small request costs no malloc.
 *
 * Cleanups (nginx's ngx_pool_cleanup_add): what is not memory but must last
 * exactly as long as the arena registers a function with
 * mg_pool_cleanup_add; mg_pool_reset runs them, newest first, before it
 * frees the memory (so a cleanup may still read what the pool holds). The
 * entries are allocated from the pool itself: no limit, nothing to free.
 */
#ifndef MG_POOL_H
#define MG_POOL_H

#include "mg_core.h"
#include "mg_ledger.h"

#define MG_POOL_INLINE 2048

typedef struct mg_pool_block {
    struct mg_pool_block *next;
    size_t size, used;
    _Alignas(16) char data[];
} mg_pool_block_t;

typedef struct mg_pool {
    mg_pool_block_t *blocks;   /* overflow blocks, newest first */
    mg_ledger_t cleanups;      /* run by mg_pool_reset */
    size_t used;               /* bytes used of `inline_buf` */
    _Alignas(16) char inline_buf[MG_POOL_INLINE];
} mg_pool_t;

void mg_pool_init(mg_pool_t *pool);
/* Returns 16-byte aligned memory owned by the pool; never NULL. */
void *mg_pool_alloc(mg_pool_t *pool, size_t n);
char *mg_pool_strndup(mg_pool_t *pool, const char *s, size_t n);
/* Runs the cleanups (newest first), then frees every allocation; the pool stays usable. */
void mg_pool_reset(mg_pool_t *pool);

typedef struct mg_pool_cleanup mg_pool_cleanup_t;
/*
 * Calls fn(data) at the next mg_pool_reset. Returns a handle for
 * mg_pool_cleanup_remove, valid until that reset.
 */
mg_pool_cleanup_t *mg_pool_cleanup_add(mg_pool_t *pool, void (*fn)(void *data), void *data);
/* The resource was given back early: fn will not be called. */
void mg_pool_cleanup_remove(mg_pool_cleanup_t *c);

#endif

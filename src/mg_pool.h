/*
 * mg_pool — a per-request arena. Everything allocated from it is freed at
 * once by mg_pool_reset/mg_pool_free; nothing is freed one by one. The first
 * block lives inside the pool object, so a small request costs no malloc.
 */
#ifndef MG_POOL_H
#define MG_POOL_H

#include "mg_core.h"

#define MG_POOL_INLINE 2048

typedef struct mg_pool_block {
    struct mg_pool_block *next;
    size_t size, used;
    _Alignas(16) char data[];
} mg_pool_block_t;

typedef struct mg_pool {
    mg_pool_block_t *blocks;   /* overflow blocks, newest first */
    size_t used;               /* bytes used of `inline_buf` */
    _Alignas(16) char inline_buf[MG_POOL_INLINE];
} mg_pool_t;

void mg_pool_init(mg_pool_t *pool);
/* Returns 16-byte aligned memory owned by the pool; never NULL. */
void *mg_pool_alloc(mg_pool_t *pool, size_t n);
char *mg_pool_strndup(mg_pool_t *pool, const char *s, size_t n);
/* Frees every allocation; the pool stays usable. */
void mg_pool_reset(mg_pool_t *pool);

#endif

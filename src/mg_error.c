/*
 * mg_error — see mg_error.h.
 */
#include "mg_error.h"

#include <string.h>

const mg_error_t mg_errors[MG_ERR__COUNT] = {
#define MG_ERR_ROW(id, name, http, grpc, msg) { MG_ERR_##id, name, http, grpc, msg },
    MG_ERRORS(MG_ERR_ROW)
#undef MG_ERR_ROW
};

const mg_error_t *mg_error_by_name(const char *name)
{
    for (int i = 0; i < MG_ERR__COUNT; i++)
        if (strcmp(mg_errors[i].name, name) == 0)
            return &mg_errors[i];
    return NULL;
}

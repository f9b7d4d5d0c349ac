/* mg_router: priority, captures, hosts, 405 with Allow, conflicts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include "mg_router.h"

/* Splits a decoded path in place the way mg_req does ("/" has no segments). */
static size_t split(char *path, mg_str_t *segs)
{
    size_t n = 0;
    if (strcmp(path, "/") == 0)
        return 0;
    char *p = path + 1;
    for (;;) {
        char *e = strchr(p, '/');
        segs[n].p = p;
        segs[n].n = e ? (size_t)(e - p) : strlen(p);
        n++;
        if (!e)
            break;
        p = e + 1;
    }
    return n;
}

static int match(mg_router_t *r, const char *method, const char *host, const char *path,
                 mg_route_match_t *m)
{
    static char buf[512];
    mg_str_t segs[64];
    snprintf(buf, sizeof(buf), "%s", path);
    size_t n = split(buf, segs);
    return mg_router_match(r, mg_method_bit(method, strlen(method)), host, host ? strlen(host) : 0,
                           segs, n, m);
}

static void add(mg_router_t *r, int id, unsigned methods, const char *host, const char *path)
{
    char err[256];
    char where[32];
    snprintf(where, sizeof(where), "routes.lua:%d", id);
    mg_route_spec_t s = { .id = id, .methods = methods, .host = host, .path = path, .where = where };
    if (mg_router_add(r, &s, err, sizeof(err)) != MG_OK)
        fail_msg("add %s: %s", path, err);
}

static mg_router_t *fixture(void)
{
    mg_router_t *r = mg_router_new();
    add(r, 1, MG_M_ANY, NULL, "/files/{rest*}");
    add(r, 2, MG_M_GET, NULL, "/users/{id}");
    add(r, 3, MG_M_GET, NULL, "/users/{id:[0-9]+}");
    add(r, 4, MG_M_GET, NULL, "/users/me");
    add(r, 5, MG_M_POST, NULL, "/users/{id}");
    add(r, 6, MG_M_GET, NULL, "/");
    add(r, 7, MG_M_GET, NULL, "/users/{id}/posts/{post:[a-z]+}");
    add(r, 8, MG_M_GET, "api.example.com", "/host");
    add(r, 9, MG_M_GET, "*.example.com", "/host");
    add(r, 10, MG_M_GET, NULL, "/host");
    add(r, 11, MG_M_GET, "*.b.example.com", "/host");
    return r;
}

static void priority_static_regex_param_catchall(void **state)
{
    mg_router_t *r = fixture();
    mg_route_match_t m;
    assert_int_equal(match(r, "GET", NULL, "/users/me", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 4); /* static beats regex and param, although declared later */
    assert_int_equal(match(r, "GET", NULL, "/users/42", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 3); /* regex beats param */
    assert_string_equal(m.names[0], "id");
    assert_int_equal(m.values[0].n, 2);
    assert_memory_equal(m.values[0].p, "42", 2);
    assert_int_equal(match(r, "GET", NULL, "/users/bob", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 2);
    assert_int_equal(match(r, "GET", NULL, "/", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 6);
    assert_int_equal(match(r, "DELETE", NULL, "/files/a/b/c.txt", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 1);
    assert_string_equal(m.names[0], "rest");
    assert_int_equal(m.values[0].n, strlen("a/b/c.txt"));
    assert_memory_equal(m.values[0].p, "a/b/c.txt", m.values[0].n);
    assert_int_equal(match(r, "GET", NULL, "/files", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.values[0].n, 0);
    mg_router_free(r);
}

static void captures_and_backtracking(void **state)
{
    mg_router_t *r = fixture();
    mg_route_match_t m;
    assert_int_equal(match(r, "GET", NULL, "/users/7/posts/hello", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 7);
    assert_int_equal(m.nparams, 2);
    assert_memory_equal(m.values[0].p, "7", 1);
    assert_memory_equal(m.values[1].p, "hello", 5);
    /* the regex constraint is anchored to the whole segment */
    assert_int_equal(match(r, "GET", NULL, "/users/7/posts/hello1", &m), MG_ROUTER_NOT_FOUND);
    /* POST /users/me: the static node has no POST, backtrack to the POST param route */
    assert_int_equal(match(r, "POST", NULL, "/users/me", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 5);
    /* trailing slash is a distinct (empty) segment and a param never matches empty */
    assert_int_equal(match(r, "GET", NULL, "/users/", &m), MG_ROUTER_NOT_FOUND);
    assert_int_equal(match(r, "GET", NULL, "/nothing", &m), MG_ROUTER_NOT_FOUND);
    mg_router_free(r);
}

static void method_not_allowed(void **state)
{
    mg_router_t *r = fixture();
    mg_route_match_t m;
    assert_int_equal(match(r, "PUT", NULL, "/users/42", &m), MG_ROUTER_NO_METHOD);
    char allow[128];
    mg_methods_format(m.allow, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST");
    assert_int_equal(match(r, "HEAD", NULL, "/users/42", &m), MG_ROUTER_FOUND); /* GET serves HEAD */
    assert_int_equal(match(r, "BREW", NULL, "/users/42", &m), MG_ROUTER_NO_METHOD);
    mg_router_free(r);
}

static void hosts(void **state)
{
    mg_router_t *r = fixture();
    mg_route_match_t m;
    assert_int_equal(match(r, "GET", "api.example.com", "/host", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 8);
    assert_int_equal(match(r, "GET", "x.example.com", "/host", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 9);
    assert_int_equal(match(r, "GET", "x.b.example.com", "/host", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 11); /* longer wildcard suffix first */
    assert_int_equal(match(r, "GET", "example.com", "/host", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 10); /* "*.example.com" needs a label before it */
    assert_int_equal(match(r, "GET", NULL, "/host", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 10);
    mg_router_free(r);
}

static void conflicts_and_bad_patterns(void **state)
{
    mg_router_t *r = fixture();
    char err[256];
    mg_route_spec_t s = { .id = 99, .methods = MG_M_GET, .path = "/users/{name}", .where = "b.lua:3" };
    assert_int_equal(mg_router_add(r, &s, err, sizeof(err)), MG_ERROR);
    assert_non_null(strstr(err, "routes.lua:2"));
    s.path = "/users/{name}";
    s.methods = MG_M_PUT; /* different method: no conflict */
    assert_int_equal(mg_router_add(r, &s, err, sizeof(err)), MG_OK);
    static const char *bad[] = { "nope", "/a/{x", "/a/x{y}", "/a/{rest*}/b", "/a/{x:[}", "/a/{1x}",
                                 "/a/{x}/{x}", "/a/{x:}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        s.path = bad[i];
        s.methods = MG_M_GET;
        if (mg_router_add(r, &s, err, sizeof(err)) != MG_ERROR)
            fail_msg("pattern %s was accepted", bad[i]);
    }
    mg_router_free(r);
}

static void many_routes(void **state)
{
    mg_router_t *r = mg_router_new();
    char path[64];
    for (int i = 0; i < 100; i++) {
        snprintf(path, sizeof(path), "/api/v1/svc%d/users/{id}", i);
        add(r, i, MG_M_GET, NULL, path);
    }
    mg_route_match_t m;
    assert_int_equal(match(r, "GET", NULL, "/api/v1/svc77/users/42", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 77);
    assert_int_equal(match(r, "GET", NULL, "/api/v1/svc77/users/42/x", &m), MG_ROUTER_NOT_FOUND);
    assert_int_equal(mg_router_count(r), 100);
    mg_router_free(r);
}

/* Constraints are compiled once per distinct source and shared: each route still matches by its own. */
static void shared_and_distinct_constraints(void **state)
{
    mg_router_t *r = mg_router_new();
    char path[96];
    for (int i = 0; i < 300; i++) {
        /* every third route has a constraint of its own (the table grows), the rest share two */
        if (i % 3 == 0)
            snprintf(path, sizeof(path), "/svc%d/items/{id:%d[0-9]*}", i, i);
        else
            snprintf(path, sizeof(path), "/svc%d/items/{id:%s}", i, i % 3 == 1 ? "[0-9]+" : "[a-z]+");
        add(r, i, MG_M_GET, NULL, path);
    }
    mg_route_match_t m;
    assert_int_equal(match(r, "GET", NULL, "/svc4/items/123", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 4);
    assert_int_equal(match(r, "GET", NULL, "/svc4/items/abc", &m), MG_ROUTER_NOT_FOUND);
    assert_int_equal(match(r, "GET", NULL, "/svc5/items/abc", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 5);
    assert_int_equal(match(r, "GET", NULL, "/svc5/items/123", &m), MG_ROUTER_NOT_FOUND);
    assert_int_equal(match(r, "GET", NULL, "/svc297/items/29712", &m), MG_ROUTER_FOUND);
    assert_int_equal(m.id, 297);
    assert_int_equal(match(r, "GET", NULL, "/svc297/items/12", &m), MG_ROUTER_NOT_FOUND);
    mg_router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(priority_static_regex_param_catchall),
        cmocka_unit_test(captures_and_backtracking),
        cmocka_unit_test(method_not_allowed),
        cmocka_unit_test(hosts),
        cmocka_unit_test(conflicts_and_bad_patterns),
        cmocka_unit_test(many_routes),
        cmocka_unit_test(shared_and_distinct_constraints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

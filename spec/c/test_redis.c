/*
 * mg_redis without a Redis: what a shared connection refuses, reply kinds,
 * script digests, addresses; and against sockets that misbehave on purpose,
 * the failure contract: refused (then the back-off fails at once), a server
 * that never answers (redis_timeout for everything pending, no callback for
 * an abandoned call). Real Redis servers are the specs' (spec/integration).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mg_redis.h"

static void refused_commands(void **state)
{
    assert_non_null(mg_redis_refuse("BLPOP", 5, 0));
    assert_non_null(mg_redis_refuse("select", 6, 1));
    assert_non_null(mg_redis_refuse("Subscribe", 9, 1));
    assert_non_null(mg_redis_refuse("WATCH", 5, 1));
    assert_non_null(mg_redis_refuse("MULTI", 5, 0)); /* alone: it would open a transaction for everyone */
    assert_null(mg_redis_refuse("MULTI", 5, 1));     /* in a pipeline (which checks it is closed) */
    assert_null(mg_redis_refuse("GET", 3, 0));
    assert_null(mg_redis_refuse("EVALSHA", 7, 0));
    assert_null(mg_redis_refuse("averyveryverylongcommandname", 28, 0));
    assert_non_null(mg_redis_refuse("", 0, 0));
}

static void reply_kinds_and_scripts(void **state)
{
    redisReply r = { .type = REDIS_REPLY_ERROR, .str = (char *)"NOAUTH Authentication required.", .len = 31 };
    assert_ptr_equal(mg_redis_reply_kind(&r), MG_E(REDIS_AUTH));
    r.str = (char *)"WRONGPASS invalid username-password pair";
    assert_ptr_equal(mg_redis_reply_kind(&r), MG_E(REDIS_AUTH));
    r.str = (char *)"ERR value is not an integer";
    assert_ptr_equal(mg_redis_reply_kind(&r), MG_E(REDIS_ERROR));
    assert_true(mg_error_is_redis(MG_E(REDIS_TIMEOUT)));
    assert_false(mg_error_is_redis(MG_E(TIMEOUT)));
    mg_redis_script_t *s = mg_redis_script_new("return 1", 8);
    assert_string_equal(s->sha, "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"); /* what SCRIPT LOAD says */
    mg_redis_script_free(s);
}

static void addresses(void **state)
{
    char err[300];
    mg_redis_conf_t c = { 0 };
    assert_int_equal(mg_redis_parse_address(&c, "127.0.0.1:6379", err, sizeof(err)), MG_OK);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 6379);
    mg_redis_conf_free(&c);
    assert_int_equal(mg_redis_parse_address(&c, "[::1]:7000", err, sizeof(err)), MG_OK);
    assert_string_equal(c.host, "::1");
    mg_redis_conf_free(&c);
    assert_int_equal(mg_redis_parse_address(&c, "localhost:6379", err, sizeof(err)), MG_OK);
    mg_redis_conf_free(&c);
    assert_int_equal(mg_redis_parse_address(&c, "unix:/run/redis.sock", err, sizeof(err)), MG_OK);
    assert_string_equal(c.unix_path, "/run/redis.sock");
    mg_redis_conf_free(&c);
    assert_int_equal(mg_redis_parse_address(&c, "unix:relative", err, sizeof(err)), MG_ERROR);
    assert_int_equal(mg_redis_parse_address(&c, "127.0.0.1", err, sizeof(err)), MG_ERROR);
    assert_int_equal(mg_redis_parse_address(&c, "127.0.0.1:99999", err, sizeof(err)), MG_ERROR);
    assert_int_equal(mg_redis_parse_address(&c, "no-such-host.invalid:6379", err, sizeof(err)), MG_ERROR);
    assert_non_null(strstr(err, "cannot resolve"));
    mg_redis_conf_free(&c);
}

/* ---- against misbehaving sockets ---- */

typedef struct seen {
    int replies, done;
    const mg_error_t *kind;
    char msg[200];
} seen_t;

static void on_reply(mg_rcall_t *c, int i, const redisReply *reply, const mg_error_t *kind, const char *msg)
{
    seen_t *s = c->data;
    s->replies++;
    s->kind = kind;
    snprintf(s->msg, sizeof(s->msg), "%s", msg ? msg : "");
}

static void on_done(mg_rcall_t *c) { ((seen_t *)c->data)->done++; }

/* A listening socket on a free port: the kernel completes connects, nobody reads. */
static int deaf_server(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

static mg_redis_t *pool(struct event_base *base, int port, uint32_t command_ms)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    mg_redis_conf_t c = { .name = (char *)"test", .address = addr, .size = 1, .connect_ms = 500,
                          .command_ms = command_ms, .nodes = 1 };
    char err[200];
    assert_int_equal(mg_redis_parse_address(&c, addr, err, sizeof(err)), MG_OK);
    mg_redis_t *r = mg_redis_new(&c, base);
    free(c.host);
    return r;
}

static void run_until(struct event_base *base, int *flag, int ms)
{
    uint64_t until = mg_now_ms() + (uint64_t)ms;
    while (!*flag && mg_now_ms() < until)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
}

static void refused_then_back_off(void **state)
{
    struct event_base *base = event_base_new();
    int port, fd = deaf_server(&port);
    close(fd); /* now nothing listens there */
    mg_redis_t *r = pool(base, port, 100);
    const char *argv[] = { "PING" };
    size_t lens[] = { 4 };
    mg_rcmd_t cmd = { NULL, 1, argv, lens };
    const mg_error_t *kind = NULL;
    char msg[160];
    seen_t s = { 0 };
    mg_rcall_t *c = mg_redis_send(r, &cmd, 1, on_reply, on_done, &s, &kind, msg);
    if (c) {
        run_until(base, &s.done, 2000);
        assert_int_equal(s.done, 1);
        kind = s.kind;
    }
    assert_ptr_equal(kind, MG_E(REDIS_REFUSED));
    /* within the back-off: nothing is sent, the caller knows at once */
    seen_t s2 = { 0 };
    assert_null(mg_redis_send(r, &cmd, 1, on_reply, on_done, &s2, &kind, msg));
    assert_ptr_equal(kind, MG_E(REDIS_REFUSED));
    assert_non_null(strstr(msg, "next attempt in"));
    assert_int_equal(s2.replies, 0);
    mg_redis_stop(r);
    mg_redis_unref(r);
    mg_redis_loop_end(base);
    event_base_free(base);
}

static void timeout_fails_all_pending_but_the_abandoned(void **state)
{
    struct event_base *base = event_base_new();
    int port, fd = deaf_server(&port);
    mg_redis_t *r = pool(base, port, 80);
    const char *argv[] = { "GET", "k" };
    size_t lens[] = { 3, 1 };
    mg_rcmd_t cmds[2] = { { NULL, 2, argv, lens }, { NULL, 2, argv, lens } };
    const mg_error_t *kind;
    char msg[160];
    seen_t a = { 0 }, b = { 0 };
    mg_rcall_t *ca = mg_redis_send(r, cmds, 2, on_reply, on_done, &a, &kind, msg);
    mg_rcall_t *cb = mg_redis_send(r, cmds, 1, on_reply, on_done, &b, &kind, msg);
    assert_non_null(ca);
    assert_non_null(cb);
    mg_rcall_abandon(cb); /* e.g. its request hit the deadline */
    uint64_t t0 = mg_now_ms();
    run_until(base, &a.done, 3000);
    uint64_t took = mg_now_ms() - t0;
    assert_int_equal(a.done, 1);
    assert_int_equal(a.replies, 2);
    assert_ptr_equal(a.kind, MG_E(REDIS_TIMEOUT));
    assert_non_null(strstr(a.msg, "no reply within 80 ms"));
    assert_true(took >= 70 && took < 2000);
    assert_int_equal(b.replies, 0); /* abandoned: no callback, ever */
    assert_int_equal(b.done, 0);
    mg_redis_stop(r);
    mg_redis_unref(r);
    mg_redis_loop_end(base);
    event_base_free(base);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refused_commands), cmocka_unit_test(reply_kinds_and_scripts), cmocka_unit_test(addresses),
        cmocka_unit_test(refused_then_back_off), cmocka_unit_test(timeout_fails_all_pending_but_the_abandoned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * gatewayctl — controls a running gatewayd through its admin socket.
 *
 *   gatewayctl [-s SOCKET] status [--json] | routes | reload | check [FILE]
 *              | reopen-logs | stop [--drain SECONDS]
 *              | trace [--route R] [--status 5xx] [--slower 200ms] [--limit N] [--json] [--recent]
 *
 * `trace` is a stream: the gateway answers "STREAM\n" and then writes each
 * request's timeline as it ends; gatewayctl copies it to stdout until the
 * gateway closes (its --limit reached, or it stopped) or it is interrupted.
 *
 * Exit status: 0 done, 1 the gateway refused (the message says why, e.g. a
 * config error with file:line), 2 usage, 3 no gateway answers on the socket
 * (or its answer was cut short).
 *
 * The answer is read to the end, whatever its length ("OK <length>\n" says
 * how long it is, so a cut answer is an error, not a short one).
 */
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/tmp/moongate-gatewayd.sock"

typedef struct subcommand {
    const char *name;
    const char *usage;
} subcommand_t;

static const subcommand_t subcommands[] = {
    { "status", "status [--json]        workers, generations, connections, requests, semaphores" },
    { "routes", "routes [--json]        the compiled route table with plugins in order" },
    { "upstreams", "upstreams [--json]     targets per worker: health, in flight, idle pool, failures" },
    { "reload", "reload                 load the config again; on error nothing changes" },
    { "check", "check [FILE]           validate a config without applying it" },
    { "reopen-logs", "reopen-logs            reopen the log files (after rotation)" },
    { "trace", "trace [--route R] [--status 5xx|404] [--slower 200ms] [--limit N] [--json] [--recent]\n"
               "                         the recent requests, then live ones as they end: each phase, when it\n"
               "                         started, how long it ran and waited (and on what), every upstream attempt" },
    { "stop", "stop [--drain SECONDS] stop accepting, drain, exit" },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: gatewayctl [-s SOCKET] COMMAND\n  -s SOCKET   the admin socket (default $MOONGATE_SOCKET, else %s)\ncommands:\n",
            DEFAULT_SOCKET);
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        fprintf(f, "  %s\n", subcommands[i].usage);
}

/* Connects and sends the command line: the fd, or -(exit status) */
static int dial(const char *path, const char *line)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "gatewayctl: socket path too long: %s\n", path);
        return -2;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        fprintf(stderr, "gatewayctl: no gateway answers on %s (%s). Is gatewayd running? "
                        "Use -s or MOONGATE_SOCKET for another admin_socket.\n", path, strerror(errno));
        close(fd);
        return -3;
    }
    if (write(fd, line, strlen(line)) < 0 && errno != EPIPE) {
        fprintf(stderr, "gatewayctl: %s\n", strerror(errno));
        close(fd);
        return -3;
    }
    /* EPIPE: the gateway refused the connection (too many); its answer says so */
    return fd;
}

static int answer(const char *path, int fd, char *buf, size_t len);

/* Sends one command line; prints the answer. Returns the exit status. */
static int exchange(const char *path, const char *line)
{
    int fd = dial(path, line);
    if (fd < 0)
        return -fd;
    /* the whole answer, however long: "OK <length>\n" or "ERR <length>\n", the text, EOF */
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        if (!buf) {
            fprintf(stderr, "gatewayctl: out of memory\n");
            close(fd);
            return 3;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "gatewayctl: reading the answer: %s\n", strerror(errno));
            free(buf);
            close(fd);
            return 3;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    return answer(path, fd, buf, len);
}

/* The whole answer is in buf[0..len): print it. Closes fd, frees buf. */
static int answer(const char *path, int fd, char *buf, size_t len)
{
    close(fd);
    char *nl = memchr(buf, '\n', len);
    int ok = len >= 3 && strncmp(buf, "OK", 2) == 0 && (buf[2] == ' ' || buf[2] == '\n');
    int refused = len >= 4 && strncmp(buf, "ERR", 3) == 0 && (buf[3] == ' ' || buf[3] == '\n');
    if (!nl || (!ok && !refused)) {
        fprintf(stderr, "gatewayctl: the gateway on %s closed the connection without an answer\n", path);
        free(buf);
        return 3;
    }
    size_t head = (size_t)(nl - buf) + 1, want = len - head;
    char *end;
    if (buf[ok ? 2 : 3] == ' ') {
        want = strtoul(buf + (ok ? 3 : 4), &end, 10);
        if (end != nl)
            want = len - head;
    }
    if (len - head < want) {
        fwrite(buf + head, 1, len - head, ok ? stdout : stderr);
        fprintf(stderr, "\ngatewayctl: the answer was cut after %zu of its %zu bytes\n", len - head, want);
        free(buf);
        return 3;
    }
    fwrite(buf + head, 1, want, ok ? stdout : stderr);
    free(buf);
    return ok ? 0 : 1;
}

/*
 * `trace`: the first line says STREAM (then everything after it is the
 * stream, copied as it comes) or it is an ordinary answer (an error).
 */
static int stream(const char *path, const char *line)
{
    int fd = dial(path, line);
    if (fd < 0)
        return -fd;
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    int streaming = 0;
    for (;;) {
        if (!buf) {
            fprintf(stderr, "gatewayctl: out of memory\n");
            close(fd);
            return 3;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (streaming) {
                free(buf);
                close(fd);
                return n < 0 ? 3 : 0; /* the gateway ended the stream */
            }
            return answer(path, fd, buf, len);
        }
        len += (size_t)n;
        if (!streaming) {
            if (len >= 7 && memcmp(buf, "STREAM\n", 7) == 0) {
                streaming = 1;
                memmove(buf, buf + 7, len - 7);
                len -= 7;
            } else {
                /* an ordinary answer, or its first line still coming: read it whole */
                if (len == cap) {
                    cap *= 2;
                    buf = realloc(buf, cap);
                }
                continue;
            }
        }
        if (fwrite(buf, 1, len, stdout) != len) {
            free(buf);
            close(fd);
            return 0; /* stdout closed (e.g. | head): done */
        }
        fflush(stdout);
        len = 0;
    }
}

/* Appends " key=value" to line, %-escaping what the admin command line cannot hold. */
static void add_arg(char *line, size_t size, const char *key, const char *value)
{
    size_t n = strlen(line);
    n += (size_t)snprintf(line + n, n < size ? size - n : 0, " %s=", key);
    for (const unsigned char *p = (const unsigned char *)value; *p && n + 4 < size; p++) {
        if (*p <= ' ' || *p == '%' || *p >= 0x7f)
            n += (size_t)snprintf(line + n, size - n, "%%%02X", *p);
        else
            line[n++] = (char)*p;
    }
    line[n < size ? n : size - 1] = '\0';
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    const char *sock = getenv("MOONGATE_SOCKET");
    if (!sock)
        sock = DEFAULT_SOCKET;
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "-s") == 0) {
        sock = argv[i + 1];
        i += 2;
    }
    if (i >= argc || strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
        usage(i >= argc ? stderr : stdout);
        return i >= argc ? 2 : 0;
    }
    const char *cmd = argv[i++];
    char line[4200];
    int json = i < argc && strcmp(argv[i], "--json") == 0;
    if (strcmp(cmd, "status") == 0 || strcmp(cmd, "routes") == 0 || strcmp(cmd, "upstreams") == 0) {
        snprintf(line, sizeof(line), "%s%s\n", cmd, json ? " json" : "");
    } else if (strcmp(cmd, "reload") == 0 || strcmp(cmd, "reopen-logs") == 0) {
        snprintf(line, sizeof(line), "%s\n", cmd);
    } else if (strcmp(cmd, "check") == 0) {
        char abs[4096] = "";
        if (i < argc && !realpath(argv[i], abs)) {
            fprintf(stderr, "gatewayctl: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        if (i < argc && access(sock, F_OK) != 0) {
            /* no gateway running: validate with the gatewayd next to us */
            char self[4096];
            ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
            if (n > 0) {
                self[n] = '\0';
                char gd[4200];
                snprintf(gd, sizeof(gd), "%s/gatewayd", dirname(self));
                execl(gd, "gatewayd", "-t", "-c", abs, (char *)NULL);
            }
            execlp("gatewayd", "gatewayd", "-t", "-c", abs, (char *)NULL);
            fprintf(stderr, "gatewayctl: cannot run gatewayd -t: %s\n", strerror(errno));
            return 3;
        }
        snprintf(line, sizeof(line), "check%s%s\n", abs[0] ? " " : "", abs);
    } else if (strcmp(cmd, "trace") == 0) {
        snprintf(line, sizeof(line), "trace");
        for (; i < argc; i++) {
            const char *opt = argv[i];
            int valued = strcmp(opt, "--route") == 0 || strcmp(opt, "--status") == 0 ||
                         strcmp(opt, "--slower") == 0 || strcmp(opt, "--limit") == 0;
            if (valued && i + 1 < argc) {
                add_arg(line, sizeof(line) - 2, opt + 2, argv[++i]);
            } else if (strcmp(opt, "--json") == 0 || strcmp(opt, "--recent") == 0) {
                strcat(line, opt[2] == 'j' ? " json" : " recent");
            } else {
                fprintf(stderr, "gatewayctl: trace: %s '%s'\n", valued ? "a value must follow" : "unknown option", opt);
                usage(stderr);
                return 2;
            }
        }
        strcat(line, "\n");
        return stream(sock, line);
    } else if (strcmp(cmd, "stop") == 0) {
        if (i + 1 < argc && strcmp(argv[i], "--drain") == 0)
            snprintf(line, sizeof(line), "stop %s\n", argv[i + 1]);
        else
            snprintf(line, sizeof(line), "stop\n");
    } else {
        fprintf(stderr, "gatewayctl: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    return exchange(sock, line);
}

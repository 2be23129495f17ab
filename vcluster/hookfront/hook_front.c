/*
 * vcluster's hook front: the programs slurmctld runs (vcluster-prolog, vcluster-resume, ...)
 * as one small C program, chosen by the name it is run as (a link named vcluster-<kind>).
 *
 * Why it exists: a burst of 1,000 jobs runs 1,000 PrologSlurmctld programs on the
 * controller host in a few seconds, and each Python hook spends about 25 ms of CPU before
 * it has sent one line (the interpreter's start and imports). This program does the same
 * work as vcluster.hook_client's happy path in about 1 ms: read where the controller's
 * socket and the log are from the config, send Slurm's request to the controller over
 * <state_dir>/hooks.sock (mode 0600: the socket's permissions are the authentication),
 * wait for its answers, log one line, exit with the controller's code.
 *
 * Anything off that path is handed to the Python hook of the same kind, by exec (same
 * process, same environment, same SLURM_RESUME_FILE): a config this program does not read
 * plainly, input that is not plain ASCII, no controller listening. If the controller took
 * the request and then failed to record it in time (or hung up), the Python hook is run with
 * VCLUSTER_HOOK_FRONT_FAULT ("stale" or "hungup") and VCLUSTER_HOOK_FRONT_MESSAGE, and does
 * exactly what it does itself in that case (the request is not sent twice).
 *
 * Built by `vcluster hook-front` (vcluster/hook_front.py), which writes hook_front_config.h
 * with the Python side's constants: one source of truth for paths, protocol and exit codes.
 * No shell, no allocation beyond a few buffers, every wait bounded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hook_front_config.h"

/* Which source and constants this program was built from, for `vcluster doctor`
   (vcluster.hook_front.built_from_this): it warns about a front older than its vcluster. */
const char vc_build_id[] = VC_BUILD_ID;

#define MAX_CONFIG_BYTES (1024 * 1024)
#define MAX_LOG_MESSAGE 48000
#define MAX_RUN_ARGS 16

static const char *const KINDS[] = {"resume", "suspend", "resume-fail",
                                    "prolog", "epilog", "job-finished", NULL};

/* ---- growable buffers ---------------------------------------------------------------- */

struct buf {
    char *p;
    size_t n, cap;
};

static char **g_argv;
static const char *g_kind;
static double g_cpu_at_start; /* what the process had used when main began: its parent's
                                 fork (slurmscriptd) and the exec, not this program */

static void fallback(const char *fault, const char *message);

static void buf_grow(struct buf *b, size_t more) {
    if (b->n + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        fallback(NULL, NULL);
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const char *s, size_t n) {
    buf_grow(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_fmt(struct buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ---- the Python hook ------------------------------------------------------------------ */

/* Run the Python hook of this kind in this process. fault: NULL for "do all of it yourself"
 * (nothing was sent), else "stale" or "hungup" with the message the Python hook logs. */
static void fallback(const char *fault, const char *message) {
    char path[4096];
    snprintf(path, sizeof path, "%s/vcluster-%s", VC_PYTHON_DIR, g_kind ? g_kind : "");
    if (fault != NULL) {
        setenv("VCLUSTER_HOOK_FRONT_FAULT", fault, 1);
        setenv("VCLUSTER_HOOK_FRONT_MESSAGE", message ? message : "", 1);
    } else {
        unsetenv("VCLUSTER_HOOK_FRONT_FAULT");
        unsetenv("VCLUSTER_HOOK_FRONT_MESSAGE");
    }
    execv(path, g_argv);
    fprintf(stderr, "vcluster-%s: error: cannot run the Python hook %s: %s\n",
            g_kind ? g_kind : "hook", path, strerror(errno));
    exit(VC_EXIT_FAILED);
}

/* ---- small helpers -------------------------------------------------------------------- */

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_ms(void) {
    struct timespec ts;
    struct rusage ru;
    double ms = 0.0;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0)
        ms += (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
    if (getrusage(RUSAGE_CHILDREN, &ru) == 0)
        ms += (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
              (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
    return ms;
}

static int is_ascii_text(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80 || s[i] == '\0')
            return 0;
    return 1;
}

static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n || (len == 2 && c < 0xc2))
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        if (len == 3 && ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0)))
            return 0;
        if (len == 4 && ((c == 0xf0 && s[i + 1] < 0x90) || c > 0xf4 || (c == 0xf4 && s[i + 1] >= 0x90)))
            return 0;
        i += len;
    }
    return 1;
}

/* Read a whole file (at most max bytes) into b; 0 on success, else an errno. */
static int read_file(const char *path, struct buf *b, size_t max) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    for (;;) {
        buf_grow(b, 65536);
        ssize_t got = read(fd, b->p + b->n, 65536);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            return e;
        }
        if (got == 0)
            break;
        b->n += (size_t)got;
        b->p[b->n] = '\0';
        if (b->n > max) {
            close(fd);
            return EFBIG;
        }
    }
    close(fd);
    return 0;
}

/* ---- the config: [controller] state_dir, log_dir, log_to ------------------------------- */

struct hook_dirs {
    char state_dir[1024], log_dir[1024], log_to[64];
    int seen[3];
};

static const char *const HOOK_KEYS[] = {"state_dir", "log_dir", "log_to"};

static char *strip(char *s, char *end) {
    while (s < end && (*s == ' ' || *s == '\t' || *s == '\r'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    *end = '\0';
    return s;
}

static int bare_name(const char *s, int dots) {
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-' || (dots && *s == '.')))
            return 0;
    return 1;
}

/* A one-line string with nothing after it but a comment, without escapes: copied to out. */
static int plain_string(const char *v, char *out, size_t cap) {
    char quote = v[0];
    if (quote != '"' && quote != '\'')
        return 0;
    const char *end = strchr(v + 1, quote);
    if (end == NULL || (size_t)(end - v - 1) >= cap)
        return 0;
    if (quote == '"' && memchr(v + 1, '\\', (size_t)(end - v - 1)) != NULL)
        return 0;
    const char *rest = end + 1;
    while (*rest == ' ' || *rest == '\t')
        rest++;
    if (*rest != '\0' && *rest != '#')
        return 0;
    memcpy(out, v + 1, (size_t)(end - v - 1));
    out[end - v - 1] = '\0';
    return 1;
}

static int count_char(const char *s, char c) {
    int n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

/* Reads only the plainest TOML (stricter than vcluster.hook_client.scan_hook_keys): 1 if
 * read, 0 if the Python hook must read it. */
static int scan_config(char *text, size_t n, struct hook_dirs *d) {
    if (!utf8_valid((const unsigned char *)text, n) || memchr(text, '\0', n) != NULL ||
        strstr(text, "\"\"\"") != NULL || strstr(text, "'''") != NULL)
        return 0;
    const char *table = "";
    int controller_tables = 0;
    char *line = text;
    while (line != NULL && *line != '\0') {
        char *nl = strchr(line, '\n');
        char *next = nl ? nl + 1 : NULL;
        char *s = strip(line, nl ? nl : line + strlen(line));
        line = next;
        if (*s == '\0' || *s == '#')
            continue;
        if (*s == '[') {
            int dbl = s[1] == '[';
            char *close = strstr(s, dbl ? "]]" : "]");
            if (close == NULL)
                return 0;
            char *after = close + (dbl ? 2 : 1);
            char *name = strip(s + (dbl ? 2 : 1), close);
            while (*after == ' ' || *after == '\t')
                after++;
            if ((*after != '\0' && *after != '#') || !bare_name(name, 1))
                return 0;
            if (strncmp(name, "controller", 10) == 0 && (name[10] == '\0' || name[10] == '.')) {
                if (dbl || name[10] != '\0' || ++controller_tables > 1)
                    return 0;
            }
            table = dbl ? "[]" : (strcmp(name, "controller") == 0 ? "controller" : "other");
            continue;
        }
        char *eq = strchr(s, '=');
        if (eq == NULL)
            return 0;
        char *key = strip(s, eq);
        char *value = eq + 1;
        while (*value == ' ' || *value == '\t')
            value++;
        if (!bare_name(key, 0))
            return 0;
        if ((value[0] == '[' || value[0] == '{') &&
            (count_char(value, '[') != count_char(value, ']') ||
             count_char(value, '{') != count_char(value, '}')))
            return 0;
        if (table[0] == '\0' && strcmp(key, "controller") == 0)
            return 0;
        if (strcmp(table, "controller") != 0)
            continue;
        for (int k = 0; k < 3; k++) {
            if (strcmp(key, HOOK_KEYS[k]) != 0)
                continue;
            char *out = k == 0 ? d->state_dir : k == 1 ? d->log_dir : d->log_to;
            size_t cap = k == 0 ? sizeof d->state_dir : k == 1 ? sizeof d->log_dir : sizeof d->log_to;
            if (d->seen[k] || !plain_string(value, out, cap) || !is_ascii_text(out, strlen(out)))
                return 0;
            d->seen[k] = 1;
        }
    }
    return 1;
}

static const char *config_path(void) {
    static char beside[4096];
    const char *env = getenv("VCLUSTER_CONFIG");
    if (env != NULL && *env != '\0')
        return env;
    const char *slurm_conf = getenv("SLURM_CONF");
    if (access(VC_DEFAULT_CONFIG, F_OK) != 0 && slurm_conf != NULL && *slurm_conf != '\0') {
        /* os.path.join(os.path.dirname(SLURM_CONF), "vcluster.toml"), as the Python hook */
        const char *slash = strrchr(slurm_conf, '/');
        if (slash == NULL)
            snprintf(beside, sizeof beside, "vcluster.toml");
        else
            snprintf(beside, sizeof beside, "%.*s/vcluster.toml", (int)(slash - slurm_conf),
                     slurm_conf);
        if (access(beside, F_OK) == 0)
            return beside;
    }
    return VC_DEFAULT_CONFIG;
}

/* ---- the log: journald, syslog or <log_dir>/hooks.log ---------------------------------- */

struct hook_log {
    char program[64], path[1100], job[64], node[1001];
    int sink;      /* -1 none, else a connected datagram socket */
    int journal;   /* 1 journald, 0 syslog */
};

static int open_sink(const char *path) {
    if (access(path, F_OK) != 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void log_open(struct hook_log *log, const struct hook_dirs *d, int argc, char **argv) {
    snprintf(log->program, sizeof log->program, "vcluster-%s", g_kind);
    snprintf(log->path, sizeof log->path, "%s/hooks.log", d->log_dir);
    const char *job = getenv("SLURM_JOB_ID");
    const char *nodes = getenv("SLURM_JOB_NODELIST");
    if ((nodes == NULL || *nodes == '\0') && argc > 1 &&
        (!strcmp(g_kind, "resume") || !strcmp(g_kind, "suspend") || !strcmp(g_kind, "resume-fail")))
        nodes = argv[1];
    snprintf(log->job, sizeof log->job, "%s", job ? job : "");
    snprintf(log->node, sizeof log->node, "%s", nodes ? nodes : "");
    log->sink = -1;
    int want_journal = !strcmp(d->log_to, "auto") || !strcmp(d->log_to, "journal");
    int want_syslog = !strcmp(d->log_to, "auto") || !strcmp(d->log_to, "syslog");
    if (want_journal && (log->sink = open_sink(VC_JOURNAL_SOCKET)) >= 0)
        log->journal = 1;
    else if (want_syslog && (log->sink = open_sink(VC_SYSLOG_SOCKET)) >= 0)
        log->journal = 0;
}

static void journal_field(struct buf *b, const char *name, const char *value) {
    if (strchr(value, '\n') == NULL) {
        buf_fmt(b, "%s=", name);
        buf_str(b, value);
        buf_str(b, "\n");
        return;
    }
    uint64_t len = strlen(value);
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(len >> (8 * i));
    buf_fmt(b, "%s\n", name);
    buf_add(b, (const char *)le, 8);
    buf_str(b, value);
    buf_str(b, "\n");
}

static int log_send(struct hook_log *log, const char *level, const char *message) {
    if (log->sink < 0)
        return 0;
    int priority = !strcmp(level, "ERROR") ? 3 : !strcmp(level, "WARNING") ? 4 : 6;
    struct buf b = {0};
    char cut[MAX_LOG_MESSAGE + 1];
    snprintf(cut, sizeof cut, "%s", message);
    if (log->journal) {
        char num[32];
        journal_field(&b, "MESSAGE", cut);
        snprintf(num, sizeof num, "%d", priority);
        journal_field(&b, "PRIORITY", num);
        journal_field(&b, "SYSLOG_IDENTIFIER", log->program);
        snprintf(num, sizeof num, "%d", (int)getpid());
        journal_field(&b, "SYSLOG_PID", num);
        if (log->job[0])
            journal_field(&b, "JOB", log->job);
        if (log->node[0])
            journal_field(&b, "NODE", log->node);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(stamp, sizeof stamp, "%b %d %H:%M:%S", &tm);
        buf_fmt(&b, "<%d>%s %s[%d]: ", 3 * 8 + priority, stamp, log->program, (int)getpid());
        buf_str(&b, cut);
        if (log->job[0]) {
            buf_str(&b, " JOB=");
            buf_str(&b, log->job);
        }
        if (log->node[0]) {
            buf_str(&b, " NODE=");
            buf_str(&b, log->node);
        }
        for (size_t i = 0; i < b.n; i++)
            if (b.p[i] == '\n')
                b.p[i] = ' ';
    }
    ssize_t sent = send(log->sink, b.p, b.n, 0);
    free(b.p);
    return sent >= 0;
}

static int append_line(const char *path, const char *line) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return 0;
    ssize_t n = write(fd, line, strlen(line));
    close(fd);
    return n >= 0;
}

static void make_dirs(const char *dir) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0777);
            *p = '/';
        }
    }
    mkdir(tmp, 0777);
}

static void log_write(struct hook_log *log, const char *level, const char *message) {
    if (log_send(log, level, message))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    struct buf line = {0};
    buf_fmt(&line, "%s,%03d %s[%d] %s ", stamp, (int)(ts.tv_nsec / 1000000), log->program,
            (int)getpid(), level);
    buf_str(&line, message);
    buf_str(&line, "\n");
    if (!append_line(log->path, line.p)) {
        char dir[1100];
        snprintf(dir, sizeof dir, "%s", log->path);
        char *slash = strrchr(dir, '/');
        if (slash != NULL && slash != dir) {
            *slash = '\0';
            make_dirs(dir);
        }
        if (!append_line(log->path, line.p))
            fputs(line.p, stderr);
    }
    free(line.p);
}

static int finish(struct hook_log *log, int code, const char *message, double started) {
    if (code != VC_EXIT_OK && message != NULL && *message != '\0') {
        struct buf b = {0};
        buf_fmt(&b, "%s: ", log->program);
        buf_str(&b, message);
        buf_fmt(&b, " (exit %d)", code);
        log_write(log, "ERROR", b.p);
        fprintf(stderr, "%s: error: %s\n", log->program, message);
        free(b.p);
    }
    char line[256];
    snprintf(line, sizeof line, "%s done in %.3f s, cpu %.1f ms, %.1f ms of it before its main "
             "(exit %d)", log->program, monotonic_s() - started, cpu_ms(), g_cpu_at_start, code);
    log_write(log, "INFO", line);
    return code;
}

/* ---- JSON: the request out, the answers in --------------------------------------------- */

static void json_string(struct buf *b, const char *s) {
    buf_str(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_add(b, esc, 2);
        } else if (c < 0x20) {
            buf_fmt(b, "\\u%04x", c);
        } else {
            buf_add(b, (const char *)&c, 1);
        }
    }
    buf_str(b, "\"");
}

static const char *json_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

static void utf8_put(struct buf *b, unsigned long cp) {
    char o[4];
    size_t n;
    if (cp < 0x80) {
        o[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        o[0] = (char)(0xf0 | (cp >> 18));
        o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_add(b, o, n);
}

/* A JSON string at p (after its opening quote is p[0] == '"'): decoded into out (if not
 * NULL); returns the position after it, or NULL. */
static const char *json_parse_string(const char *p, struct buf *out) {
    if (*p != '"')
        return NULL;
    for (p++; *p != '"'; p++) {
        if (*p == '\0' || (unsigned char)*p < 0x20)
            return NULL;
        if (*p != '\\') {
            if (out)
                buf_add(out, p, 1);
            continue;
        }
        p++;
        const char *simple = strchr("\"\\/bfnrt", *p);
        if (*p != '\0' && simple != NULL) {
            if (out)
                buf_add(out, &"\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"], 1);
            continue;
        }
        if (*p != 'u')
            return NULL;
        unsigned long cp = 0;
        for (int i = 1; i <= 4; i++) {
            char c = p[i];
            int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (v < 0)
                return NULL;
            cp = cp * 16 + (unsigned long)v;
        }
        p += 4;
        if (cp >= 0xd800 && cp < 0xdc00 && p[1] == '\\' && p[2] == 'u') {
            unsigned long lo = strtoul((char[]){p[3], p[4], p[5], p[6], 0}, NULL, 16);
            if (lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }
        }
        if (out)
            utf8_put(out, cp);
    }
    return p + 1;
}

/* Skip any JSON value; the position after it, or NULL. */
static const char *json_skip(const char *p, int depth) {
    p = json_ws(p);
    if (depth > 64)
        return NULL;
    if (*p == '"')
        return json_parse_string(p, NULL);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = json_ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                p = json_parse_string(json_ws(p), NULL);
                if (p == NULL || *(p = json_ws(p)) != ':')
                    return NULL;
                p++;
            }
            p = json_skip(p, depth + 1);
            if (p == NULL)
                return NULL;
            p = json_ws(p);
            if (*p == close)
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    }
    const char *start = p;
    while (*p && strchr("+-0123456789.eEtruefalsn", *p) != NULL)
        p++;
    return p == start ? NULL : p;
}

struct answer {
    int has_recorded, has_code, code_is_int, has_run, run_ok, env_bad;
    long long recorded, code;
    double wait_s, timeout_s;
    struct buf message;
    const char *raw;
    /* {"run": [ARGV], "env": {"SLURM_CONF": ...}, "timeout_s": S}: a command to run */
    struct buf run_args[MAX_RUN_ARGS];
    int run_argc;
    struct buf slurm_conf;
};

static void free_answer(struct answer *a) {
    free(a->message.p);
    for (int i = 0; i < a->run_argc; i++)
        free(a->run_args[i].p);
    free(a->slurm_conf.p);
    a->run_argc = 0;
}

/* ["a", "b"]: strings into a->run_args; the position after it, or NULL. */
static const char *parse_run(const char *p, struct answer *a) {
    if (*p != '[')
        return NULL;
    p = json_ws(p + 1);
    if (*p == ']')
        return p + 1;
    for (;;) {
        if (a->run_argc >= MAX_RUN_ARGS)
            return NULL;
        struct buf *arg = &a->run_args[a->run_argc++];
        buf_str(arg, "");
        p = json_parse_string(json_ws(p), arg);
        if (p == NULL || strlen(arg->p) != arg->n)
            return NULL;
        p = json_ws(p);
        if (*p == ']')
            return p + 1;
        if (*p != ',')
            return NULL;
        p++;
    }
}

/* {"SLURM_CONF": "..."} (nothing else): into a->slurm_conf; the position after it, or NULL. */
static const char *parse_run_env(const char *p, struct answer *a) {
    if (*p != '{')
        return NULL;
    p = json_ws(p + 1);
    if (*p == '}')
        return p + 1;
    for (;;) {
        struct buf key = {0};
        p = json_parse_string(json_ws(p), &key);
        int known = p != NULL && key.p != NULL && strcmp(key.p, "SLURM_CONF") == 0;
        free(key.p);
        if (!known || *(p = json_ws(p)) != ':')
            return NULL;
        a->slurm_conf.n = 0;
        buf_str(&a->slurm_conf, "");
        p = json_parse_string(json_ws(p + 1), &a->slurm_conf);
        if (p == NULL || strlen(a->slurm_conf.p) != a->slurm_conf.n)
            return NULL;
        p = json_ws(p);
        if (*p == '}')
            return p + 1;
        if (*p != ',')
            return NULL;
        p++;
    }
}

/* Parse one answer line (a JSON object); 0 if it is not one. */
static int parse_answer(const char *line, struct answer *a) {
    memset(a, 0, sizeof *a);
    a->raw = line;
    const char *p = json_ws(line);
    if (*p != '{')
        return 0;
    p = json_ws(p + 1);
    if (*p == '}')
        return *json_ws(p + 1) == '\0';
    for (;;) {
        struct buf key = {0};
        p = json_parse_string(json_ws(p), &key);
        if (p == NULL || *(p = json_ws(p)) != ':') {
            free(key.p);
            return 0;
        }
        p = json_ws(p + 1);
        const char *value = p;
        const char *k = key.p ? key.p : "";
        if (!strcmp(k, "message") && *p == '"') {
            a->message.n = 0;
            buf_str(&a->message, "");
            p = json_parse_string(p, &a->message);
        } else if (!strcmp(k, "run")) {
            a->has_run = 1;
            const char *end = parse_run(p, a);
            a->run_ok = end != NULL;
            p = end ? end : json_skip(p, 0);
        } else if (!strcmp(k, "env")) {
            const char *end = parse_run_env(p, a);
            a->env_bad = end == NULL;
            p = end ? end : json_skip(p, 0);
        } else {
            p = json_skip(p, 0);
        }
        if (p != NULL && (!strcmp(k, "recorded") || !strcmp(k, "code") || !strcmp(k, "wait_s") ||
                          !strcmp(k, "timeout_s"))) {
            char *end;
            int is_int = strchr("-0123456789", *value) != NULL;
            for (const char *q = value; q < p; q++)
                if (*q == '.' || *q == 'e' || *q == 'E')
                    is_int = 0;
            double number = strtod(value, &end);
            int numeric = end == p && end != value;
            if (!strcmp(k, "recorded")) {
                a->has_recorded = 1;
                a->recorded = (long long)number;
            } else if (!strcmp(k, "code")) {
                a->has_code = 1;
                a->code_is_int = numeric && is_int;
                a->code = (long long)number;
            } else if (numeric && !strcmp(k, "timeout_s")) {
                a->timeout_s = number;
            } else if (numeric) {
                a->wait_s = number;
            }
        } else if (p != NULL && !strcmp(k, "message") && *value != '"') {
            a->message.n = 0;
            buf_add(&a->message, value, (size_t)(p - value));
        }
        free(key.p);
        if (p == NULL)
            return 0;
        p = json_ws(p);
        if (*p == '}')
            return *json_ws(p + 1) == '\0';
        if (*p != ',')
            return 0;
        p++;
    }
}

/* ---- a command the controller hands the hook: the prolog's strigger --------------- */

static void run_for_controller(struct hook_log *log, struct answer *a) {
    char **argv = NULL;
    const char *name = a->run_argc > 0 ? strrchr(a->run_args[0].p, '/') : NULL;
    if (!a->run_ok || a->env_bad || a->run_argc < 2 || a->run_args[0].p[0] != '/' ||
        name == NULL || strcmp(name + 1, "strigger") != 0 || strcmp(a->run_args[1].p, "--set") != 0) {
        struct buf b = {0};
        buf_str(&b, "not running what the controller asked: ");
        buf_str(&b, a->raw);
        log_write(log, "WARNING", b.p);
        free(b.p);
        return;
    }
    argv = calloc((size_t)a->run_argc + 1, sizeof *argv);
    if (argv == NULL)
        return;
    for (int i = 0; i < a->run_argc; i++)
        argv[i] = a->run_args[i].p;
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        free(argv);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        if (a->slurm_conf.p != NULL)
            setenv("SLURM_CONF", a->slurm_conf.p, 1);
        execv(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    struct buf said = {0};
    buf_str(&said, "");
    int status = 0, timed_out = 0;
    if (pid < 0) {
        buf_fmt(&said, "cannot fork: %s", strerror(errno));
        status = 127 << 8;
    } else {
        double deadline = monotonic_s() + (a->timeout_s > 0 ? a->timeout_s : 20.0);
        for (;;) {
            double left = deadline - monotonic_s();
            if (left <= 0) {
                timed_out = 1;
                kill(pid, SIGKILL);
                break;
            }
            struct pollfd pfd = {.fd = out[0], .events = POLLIN};
            int ready = poll(&pfd, 1, (int)(left * 1000) + 1);
            if (ready < 0 && errno != EINTR)
                break;
            if (ready <= 0)
                continue;
            char chunk[4096];
            ssize_t got = read(out[0], chunk, sizeof chunk);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0)
                break;
            if (said.n < 65536)
                buf_add(&said, chunk, (size_t)got);
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    close(out[0]);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if ((timed_out || code != 0) && strstr(said.p, VC_DUPLICATE_TRIGGER) == NULL) {
        char *nl = strchr(said.p, '\n');
        if (nl != NULL)
            *nl = '\0';
        struct buf b = {0};
        if (timed_out)
            buf_fmt(&b, "cannot register the job-end trigger: %s timed out after %g s", argv[0],
                    a->timeout_s > 0 ? a->timeout_s : 20.0);
        else {
            buf_fmt(&b, "cannot register the job-end trigger: %s exit %d: ", argv[0], code);
            buf_str(&b, said.p[0] ? said.p : "no message");
        }
        log_write(log, "WARNING", b.p);
        free(b.p);
    }
    free(said.p);
    free(argv);
}

/* ---- the wire ----------------------------------------------------------------------- */

struct reader {
    int fd;
    struct buf data;
    size_t start;
};

/* The next line before the deadline: 1 (in *line, NUL-terminated), 0 the peer closed,
 * -1 timeout, -2 error (errno set or EMSGSIZE). */
static int read_line(struct reader *r, double deadline, char **line) {
    for (;;) {
        char *nl = r->data.n > r->start ? memchr(r->data.p + r->start, '\n', r->data.n - r->start) : NULL;
        if (nl != NULL) {
            *nl = '\0';
            *line = r->data.p + r->start;
            r->start = (size_t)(nl - r->data.p) + 1;
            return 1;
        }
        if (r->data.n - r->start > VC_MAX_LINE_BYTES) {
            errno = EMSGSIZE;
            return -2;
        }
        double left = deadline - monotonic_s();
        if (left <= 0)
            return -1;
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        int ready = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            return -2;
        if (ready == 0)
            continue;
        buf_grow(&r->data, 65536);
        ssize_t got = recv(r->fd, r->data.p + r->data.n, 65536, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -2;
        if (got == 0)
            return 0;
        r->data.n += (size_t)got;
        r->data.p[r->data.n] = '\0';
    }
}

static void fault(const char *kind, const char *fmt, ...) {
    char message[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    fallback(kind, message);
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t sent = send(fd, p, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0)
            return -1;
        p += sent;
        n -= (size_t)sent;
    }
    return 0;
}

static void add_env(struct buf *req, const char *name, int *first) {
    const char *value = getenv(name);
    if (value == NULL)
        return;
    if (!is_ascii_text(value, strlen(value)))
        fallback(NULL, NULL);
    buf_str(req, *first ? "" : ",");
    *first = 0;
    json_string(req, name);
    buf_str(req, ":");
    json_string(req, value);
}

/* Exit with the controller's final answer (its code and message). */
static int finish_answer(struct hook_log *log, const struct answer *answer, double started) {
    if (!answer->has_code || !answer->code_is_int) {
        struct buf message = {0};
        buf_str(&message, "the controller answered ");
        buf_str(&message, answer->raw);
        return finish(log, VC_EXIT_FAILED, message.p, started);
    }
    return finish(log, (int)answer->code, answer->message.p ? answer->message.p : "", started);
}

int main(int argc, char **argv) {
    double started = monotonic_s();
    g_cpu_at_start = cpu_ms();
    g_argv = argv;
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strncmp(base, "vcluster-", 9) == 0)
        for (int i = 0; KINDS[i] != NULL; i++)
            if (strcmp(base + 9, KINDS[i]) == 0)
                g_kind = KINDS[i];
    if (g_kind == NULL) {
        fprintf(stderr, "%s: error: run this program as vcluster-<hook> (resume, suspend, "
                        "resume-fail, prolog, epilog or job-finished)\n", base);
        return VC_EXIT_CONFIG;
    }

    struct buf config = {0};
    struct hook_dirs dirs = {0};
    snprintf(dirs.state_dir, sizeof dirs.state_dir, "%s", VC_DEFAULT_STATE_DIR);
    snprintf(dirs.log_dir, sizeof dirs.log_dir, "%s", VC_DEFAULT_LOG_DIR);
    snprintf(dirs.log_to, sizeof dirs.log_to, "auto");
    if (read_file(config_path(), &config, MAX_CONFIG_BYTES) != 0 ||
        !scan_config(config.p ? config.p : (char *)"", config.n, &dirs))
        fallback(NULL, NULL);
    free(config.p);

    /* The request, as vcluster.hook_client.build_request writes it. */
    struct buf req = {0};
    buf_fmt(&req, "{\"v\":%d,\"kind\":", VC_PROTOCOL_VERSION);
    json_string(&req, g_kind);
    buf_str(&req, ",\"arg\":");
    if (argc > 1) {
        if (!is_ascii_text(argv[1], strlen(argv[1])))
            fallback(NULL, NULL);
        json_string(&req, argv[1]);
    } else {
        buf_str(&req, "null");
    }
    buf_str(&req, ",\"env\":{");
    int first = 1;
    add_env(&req, "SLURM_JOB_ID", &first);
    add_env(&req, "SLURM_JOB_NODELIST", &first);
    add_env(&req, "SLURM_JOB_EXIT_CODE", &first);
    buf_str(&req, "},\"runs\":[\"strigger\"]");
    const char *resume_path = getenv("SLURM_RESUME_FILE");
    if (strcmp(g_kind, "resume") == 0 && resume_path != NULL && *resume_path != '\0') {
        struct buf resume = {0};
        if (!is_ascii_text(resume_path, strlen(resume_path)) ||
            read_file(resume_path, &resume, VC_MAX_LINE_BYTES / 2) != 0 ||
            !is_ascii_text(resume.p ? resume.p : "", resume.n))
            fallback(NULL, NULL); /* the Python hook says why, or reads it */
        buf_str(&req, ",\"resume_path\":");
        json_string(&req, resume_path);
        buf_str(&req, ",\"resume\":");
        json_string(&req, resume.p ? resume.p : "");
        free(resume.p);
    }
    buf_str(&req, "}\n");

    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dirs.state_dir, VC_SOCKET_NAME) >= sizeof path)
        fallback(NULL, NULL);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fallback(NULL, NULL);
    struct timeval tv = {.tv_sec = (time_t)VC_RECORD_ANSWER_S,
                         .tv_usec = (suseconds_t)((VC_RECORD_ANSWER_S - (double)(time_t)VC_RECORD_ANSWER_S) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EAGAIN || errno == EINPROGRESS || errno == ETIMEDOUT)
            fault("stale", "the controller did not take the connection on %s within %g s", path,
                  (double)VC_RECORD_ANSWER_S);
        close(fd);
        fallback(NULL, NULL); /* nobody listening: the Python hook decides, as always */
    }

    struct hook_log log;
    log_open(&log, &dirs, argc, argv);
    struct reader reader = {.fd = fd};
    char *line = NULL;
    struct answer answer;
    if (send_all(fd, req.p, req.n) != 0) {
        /* closed while the request was being sent: a refusal said before is still to be
         * read (it is final); else the controller hung up before recording anything */
        int send_errno = errno;
        if (send_errno == EAGAIN || send_errno == EWOULDBLOCK) /* not taking the request */
            fault("stale", "no answer within %g s on %s", (double)VC_RECORD_ANSWER_S, path);
        if (read_line(&reader, monotonic_s() + VC_AFTER_FAILED_SEND_S, &line) != 1 ||
            !parse_answer(line, &answer) || answer.has_recorded || !answer.has_code)
            fault("hungup", "the controller hung up on %s: [Errno %d] %s", path, send_errno,
                  strerror(send_errno));
        close(fd);
        return finish_answer(&log, &answer, started);
    }
    free(req.p);
    int got = read_line(&reader, started + VC_RECORD_ANSWER_S, &line);
    if (got == -1)
        fault("stale", "no answer within %g s on %s", (double)VC_RECORD_ANSWER_S, path);
    if (got == 0)
        fault("hungup", "the controller hung up on %s before recording the request", path);
    if (got < 0 || !parse_answer(line, &answer))
        fault("hungup", "the controller hung up on %s: %s", path,
              got < 0 ? strerror(errno) : "not a JSON object");
    if (answer.has_recorded) {
        long long id = answer.recorded;
        double deadline = monotonic_s() + answer.wait_s + VC_FINAL_ANSWER_MARGIN_S;
        int parsed;
        for (;;) {
            free_answer(&answer);
            got = read_line(&reader, deadline, &line);
            parsed = got == 1 && parse_answer(line, &answer);
            if (!parsed || !answer.has_run || answer.has_code)
                break;
            run_for_controller(&log, &answer);
        }
        if (!parsed) {
            char message[512];
            if (got == 0)
                snprintf(message, sizeof message, "request %lld recorded, then the controller hung up", id);
            else
                snprintf(message, sizeof message, "request %lld recorded, then no answer: %s", id,
                         got == -1 ? "no answer in time" : got == 1 ? "not a JSON object" : strerror(errno));
            if (strcmp(g_kind, "prolog") == 0)
                strncat(message, ": the job starts once Slurm sees its nodes up",
                        sizeof message - strlen(message) - 1);
            log_write(&log, "WARNING", message);
            return finish(&log, VC_EXIT_OK, "", started);
        }
    }
    close(fd);
    return finish_answer(&log, &answer, started);
}

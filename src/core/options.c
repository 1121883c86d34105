/* options.c - table-driven option parsing and help (see options.h). */
#include "nnprec/options.h"
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Plain decimal text only: strtol/strtod would also take leading blanks, a '+' sign
 * (integers), and hexadecimal ("0x10"), none of which anyone means on a command line. */
static int plain_int(const char *v)
{
    v += *v == '-';
    if (!*v)
        return 0;
    for (; *v; v++)
        if (*v < '0' || *v > '9')
            return 0;
    return 1;
}

static int plain_number(const char *v)
{
    if (!*v)
        return 0;
    for (; *v; v++)
        if (!strchr("0123456789+-.eE", *v))
            return 0;
    return 1;
}

static nnp_status set_value(nnp_option *o, const char *v)
{
    char *end;
    errno = 0;
    switch (o->type) {
    case NNP_OPTT_INT: {
        long x = strtol(v, &end, 10);
        if (!plain_int(v) || errno || end == v || *end || x < -2147483647L || x > 2147483647L)
            return nnp_error(NNP_ERR_ARG, "--%s expects an integer, got '%s'", o->name, v);
        *(int *)o->dst = (int)x;
        return NNP_OK;
    }
    case NNP_OPTT_I64: {
        long long x = strtoll(v, &end, 10);
        if (!plain_int(v) || errno || end == v || *end)
            return nnp_error(NNP_ERR_ARG, "--%s expects an integer, got '%s'", o->name, v);
        *(int64_t *)o->dst = (int64_t)x;
        return NNP_OK;
    }
    case NNP_OPTT_DOUBLE: {
        double x = strtod(v, &end);
        if (!plain_number(v) || errno || end == v || *end || !isfinite(x))
            return nnp_error(NNP_ERR_ARG, "--%s expects a finite number, got '%s'", o->name, v);
        *(double *)o->dst = x;
        return NNP_OK;
    }
    case NNP_OPTT_STR:
        if (strlen(v) >= NNP_OPT_STRLEN)
            return nnp_error(NNP_ERR_ARG, "--%s value is too long", o->name);
        strcpy((char *)o->dst, v);
        return NNP_OK;
    case NNP_OPTT_FLAG:
        if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0)
            *(int *)o->dst = 1;
        else if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "no") == 0)
            *(int *)o->dst = 0;
        else
            return nnp_error(NNP_ERR_ARG, "--%s expects 0/1, got '%s'", o->name, v);
        return NNP_OK;
    }
    return nnp_error(NNP_ERR_ARG, "--%s: bad option type", o->name);
}

const nnp_option *nnp_options_find(const nnp_option *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(opts[i].name, name) == 0)
            return &opts[i];
    return NULL;
}

/* The option "--name" or, for a flag, "--no-name" (*negate set); NULL if neither. */
static nnp_option *lookup(nnp_option *opts, int n, const char *name, int *negate)
{
    nnp_option *o = (nnp_option *)nnp_options_find(opts, n, name);
    *negate = 0;
    if (!o && strncmp(name, "no-", 3) == 0) {
        o = (nnp_option *)nnp_options_find(opts, n, name + 3);
        *negate = o && o->type == NNP_OPTT_FLAG;
        if (!*negate)
            o = NULL;
    }
    return o;
}

/* Whether an option holds its default value. */
static int at_default(const nnp_option *o)
{
    if (o->type == NNP_OPTT_STR)
        return strcmp((const char *)o->dst, o->def) == 0;
    union {
        int i;
        int64_t l;
        double d;
    } v;
    nnp_option t = *o;
    t.dst = &v;
    if (set_value(&t, o->def) != NNP_OK) {
        nnp_error_clear();
        return 0;
    }
    switch (o->type) {
    case NNP_OPTT_INT:
    case NNP_OPTT_FLAG:
        return v.i == *(const int *)o->dst;
    case NNP_OPTT_I64:
        return v.l == *(const int64_t *)o->dst;
    case NNP_OPTT_DOUBLE:
        return v.d == *(const double *)o->dst;
    default:
        return 0;
    }
}

static nnp_status apply_defaults(nnp_option *opts, int n)
{
    for (int i = 0; i < n; i++) {
        opts[i].set = 0;
        NNP_CALL(set_value(&opts[i], opts[i].def));
    }
    return NNP_OK;
}

static nnp_status apply_args(nnp_option *opts, int n, int argc, char **argv, int *help)
{
    for (int a = 0; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = 1;
            return NNP_OK;
        }
        if (strncmp(arg, "--", 2) != 0)
            return nnp_error(NNP_ERR_ARG, "unexpected argument '%s' (options start with --)", arg);
        char name[128];
        const char *eq = strchr(arg + 2, '=');
        size_t len = eq ? (size_t)(eq - (arg + 2)) : strlen(arg + 2);
        if (len == 0 || len >= sizeof name)
            return nnp_error(NNP_ERR_ARG, "bad option '%s'", arg);
        memcpy(name, arg + 2, len);
        name[len] = '\0';
        int negate;
        nnp_option *o = lookup(opts, n, name, &negate);
        if (!o)
            return nnp_error(NNP_ERR_ARG, "unknown option '--%s' (see --help)", name);
        if (o->type == NNP_OPTT_FLAG && !eq) {
            *(int *)o->dst = !negate;
        } else {
            const char *v;
            if (eq) {
                v = eq + 1;
            } else {
                if (a + 1 >= argc)
                    return nnp_error(NNP_ERR_ARG, "option --%s needs a value", o->name);
                v = argv[++a];
            }
            NNP_CALL(set_value(o, v));
        }
        o->set = 1;
    }
    return NNP_OK;
}

/* v without the blanks around it (v points into line, which is changed). */
static const char *trim(const char *v, char *line, size_t *len)
{
    v += strspn(v, " \t");
    while (*len > 0 && (line[*len - 1] == ' ' || line[*len - 1] == '\t'))
        line[--*len] = '\0';
    return v;
}

/* The "--name value" lines of a --config file (see options.h); a number's or flag's value
 * may have blanks around it, a string's is kept as it stands. */
static nnp_status apply_file(nnp_option *opts, int n, const char *path)
{
    /* a regular file only, opened without blocking (a FIFO would wait for a writer) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return nnp_error(NNP_ERR_ARG, "--config %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return nnp_error(NNP_ERR_ARG, "--config %s: not a regular file", path);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return nnp_error(NNP_ERR_ARG, "--config %s: %s", path, strerror(errno));
    }
    char line[NNP_OPT_STRLEN + 256];
    nnp_status s = NNP_OK;
    for (int ln = 1; s == NNP_OK && fgets(line, sizeof line, f); ln++) {
        size_t len = strlen(line);
        if (len + 1 == sizeof line && line[len - 1] != '\n') {
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: longer than %zu characters", path,
                          ln, sizeof line - 2);
            break;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        const char *p = line + strspn(line, " \t");
        if (!*p || *p == '#')
            continue;
        if (strncmp(p, "--", 2) != 0 || !p[2]) {
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: expected '--name value', got '%s'",
                          path, ln, p);
            break;
        }
        char name[128];
        size_t nl = strcspn(p + 2, " =");
        if (nl >= sizeof name) {
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: bad option '%s'", path, ln, p);
            break;
        }
        memcpy(name, p + 2, nl);
        name[nl] = '\0';
        const char *v = p[2 + nl] ? p + 2 + nl + 1 : NULL; /* after one ' ' or '=' */
        int negate;
        nnp_option *o = lookup(opts, n, name, &negate);
        if (o && v && o->type != NNP_OPTT_STR && !*(v = trim(v, line, &len)))
            v = NULL;
        if (!o)
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: unknown option '--%s'", path, ln,
                          name);
        else if (strcmp(o->name, "config") == 0)
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: a --config file cannot name "
                                       "another",
                          path, ln);
        else if (negate && v)
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: --%s takes no value", path, ln,
                          name);
        else if (!v && o->type == NNP_OPTT_FLAG)
            *(int *)o->dst = !negate;
        else if (!v && o->type == NNP_OPTT_STR)
            ((char *)o->dst)[0] = '\0';
        else if (!v)
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: --%s needs a value", path, ln,
                          name);
        else if ((s = set_value(o, v)) != NNP_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", nnp_error_msg());
            nnp_error_clear();
            s = nnp_error(NNP_ERR_ARG, "--config %s, line %d: %s", path, ln, msg);
        }
        if (s == NNP_OK)
            o->set = !at_default(o);
    }
    if (s == NNP_OK && ferror(f))
        s = nnp_error(NNP_ERR_ARG, "--config %s: %s", path, strerror(errno));
    fclose(f);
    return s;
}

nnp_status nnp_options_parse(nnp_option *opts, int n, int argc, char **argv, int *help)
{
    *help = 0;
    NNP_CALL(apply_defaults(opts, n));
    NNP_CALL(apply_args(opts, n, argc, argv, help));
    const nnp_option *c = nnp_options_find(opts, n, "config");
    if (*help || !c || c->type != NNP_OPTT_STR || !((const char *)c->dst)[0])
        return NNP_OK;
    /* defaults, then the file, then the command line again: the command line wins */
    char path[NNP_OPT_STRLEN];
    snprintf(path, sizeof path, "%s", (const char *)c->dst);
    NNP_CALL(apply_defaults(opts, n));
    NNP_CALL(apply_file(opts, n, path));
    return apply_args(opts, n, argc, argv, help);
}

void nnp_options_help(FILE *f, const char *usage, const nnp_option *opts, int n)
{
    fprintf(f, "%s\n\nOptions (default in brackets):\n", usage);
    for (int i = 0; i < n; i++) {
        const nnp_option *o = &opts[i];
        char lhs[64];
        const char *meta = o->type == NNP_OPTT_FLAG     ? ""
                           : o->type == NNP_OPTT_STR    ? " S"
                           : o->type == NNP_OPTT_DOUBLE ? " X"
                                                        : " N";
        snprintf(lhs, sizeof lhs, "--%s%s", o->name, meta);
        fprintf(f, "  %-24s %s [%s]\n", lhs, o->help, o->def[0] ? o->def : "none");
    }
}

void nnp_options_dump(const nnp_option *opts, int n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len + 1 < cap; i++) {
        const nnp_option *o = &opts[i];
        int w = 0;
        switch (o->type) {
        case NNP_OPTT_INT:
        case NNP_OPTT_FLAG:
            w = snprintf(buf + len, cap - len, "%s=%d\n", o->name, *(int *)o->dst);
            break;
        case NNP_OPTT_I64:
            w = snprintf(buf + len, cap - len, "%s=%lld\n", o->name,
                         (long long)*(int64_t *)o->dst);
            break;
        case NNP_OPTT_DOUBLE:
        {
            char num[32];
            nnp_fmt_double(num, sizeof num, *(double *)o->dst);
            w = snprintf(buf + len, cap - len, "%s=%s\n", o->name, num);
            break;
        }
        case NNP_OPTT_STR:
            w = snprintf(buf + len, cap - len, "%s=%s\n", o->name, (const char *)o->dst);
            break;
        }
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

void nnp_fmt_double(char *buf, size_t cap, double x)
{
    if (!isfinite(x)) {
        snprintf(buf, cap, "%g", x);
        return;
    }
    /* the fewest significant digits that read back as the same double */
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    /* plain digits below a million: "10", not "1e+01" */
    const int e = x != 0 ? (int)floor(log10(fabs(x))) : 0;
    if (e >= prec && e < 6)
        prec = e + 1;
    snprintf(buf, cap, "%.*g", prec, x);
    if (strtod(buf, NULL) != x)
        snprintf(buf, cap, "%.17g", x);
    /* the exponent without '+' and leading zeros: "1e-8", not "1e-08" */
    char *p = strchr(buf, 'e');
    if (p) {
        char *q = p + 1 + (p[1] == '-' || p[1] == '+');
        char *d = p + 1 + (p[1] == '-');
        while (*q == '0' && q[1])
            q++;
        memmove(d, q, strlen(q) + 1);
    }
}

nnp_status nnp_options_write(FILE *f, const nnp_option *opts, int n)
{
    for (int i = 0; i < n; i++) {
        const nnp_option *o = &opts[i];
        char num[32];
        const char *v = num;
        switch (o->type) {
        case NNP_OPTT_INT:
        case NNP_OPTT_FLAG:
            snprintf(num, sizeof num, "%d", *(const int *)o->dst);
            break;
        case NNP_OPTT_I64:
            snprintf(num, sizeof num, "%lld", (long long)*(const int64_t *)o->dst);
            break;
        case NNP_OPTT_DOUBLE:
            nnp_fmt_double(num, sizeof num, *(const double *)o->dst);
            break;
        case NNP_OPTT_STR:
            v = (const char *)o->dst;
            break;
        }
        if (strcmp(o->name, "config") == 0)
            continue;
        if (strpbrk(v, "\n\r"))
            return nnp_error(NNP_ERR_ARG, "--%s: a value with a line break cannot be recorded",
                             o->name);
        if (fprintf(f, v[0] ? "--%s %s\n" : "--%s\n", o->name, v) < 0)
            return nnp_error(NNP_ERR_IO, "cannot write the options: %s", strerror(errno));
    }
    return NNP_OK;
}

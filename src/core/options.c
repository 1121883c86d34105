/* options.c - table-driven option parsing and help (see options.h). */
#include "nnprec/options.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

nnp_status nnp_options_parse(nnp_option *opts, int n, int argc, char **argv, int *help)
{
    *help = 0;
    for (int i = 0; i < n; i++) {
        opts[i].set = 0;
        NNP_CALL(set_value(&opts[i], opts[i].def));
    }
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
        nnp_option *o = (nnp_option *)nnp_options_find(opts, n, name);
        int negate = 0;
        if (!o && strncmp(name, "no-", 3) == 0) {
            o = (nnp_option *)nnp_options_find(opts, n, name + 3);
            negate = o && o->type == NNP_OPTT_FLAG;
            if (!negate)
                o = NULL;
        }
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
            w = snprintf(buf + len, cap - len, "%s=%.17g\n", o->name, *(double *)o->dst);
            break;
        case NNP_OPTT_STR:
            w = snprintf(buf + len, cap - len, "%s=%s\n", o->name, (const char *)o->dst);
            break;
        }
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

/* fuzz_options.c - libFuzzer harness: the option parser (src/core/options.c) on any command
 * line, and on any --config file. The input's first byte picks the mode; the rest is split
 * at NUL bytes into arguments (command line), or written out as the --config file. The
 * table has one option of every type, a string at the length limit included. */
#include <stdint.h>
#include "fuzz_util.h"
#include "nnprec/options.h"
#include "nnprec/status.h"

static struct {
    char s[NNP_OPT_STRLEN], model[NNP_OPT_STRLEN], config[NNP_OPT_STRLEN];
    double d;
    int i, f;
    int64_t l;
} O;

static nnp_option table[] = {
    {"config", NNP_OPTT_STR, O.config, "", "a --config file", 0},
    {"model", NNP_OPTT_STR, O.model, "lenet", "a string", 0},
    {"out", NNP_OPTT_STR, O.s, "", "a string", 0},
    {"lr", NNP_OPTT_DOUBLE, &O.d, "0.01", "a double", 0},
    {"batch", NNP_OPTT_INT, &O.i, "64", "an int", 0},
    {"steps", NNP_OPTT_I64, &O.l, "0", "an int64", 0},
    {"nesterov", NNP_OPTT_FLAG, &O.f, "0", "a flag", 0},
};
#define N_TABLE ((int)(sizeof table / sizeof table[0]))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    for (int k = 0; k < N_TABLE; k++)
        table[k].set = 0;
    int help = 0;
    if (data[0] & 1) { /* a --config file */
        const char *path = fuzz_file("config", data + 1, size - 1);
        char *argv[2] = {"--config", (char *)path};
        nnp_options_parse(table, N_TABLE, 2, argv, &help);
    } else { /* a command line: arguments separated by NUL bytes */
        char *buf = malloc(size);
        char *argv[256];
        int argc = 0;
        memcpy(buf, data + 1, size - 1);
        buf[size - 1] = '\0';
        for (size_t i = 0; i < size - 1 && argc < 256;) {
            argv[argc++] = buf + i;
            i += strlen(buf + i) + 1;
        }
        nnp_options_parse(table, N_TABLE, argc, argv, &help);
        char dump[8192];
        nnp_options_dump(table, N_TABLE, dump, sizeof dump);
        free(buf);
    }
    nnp_error_clear();
    return 0;
}

/* options.h - a table-driven command-line parser with generated --help.
 *
 * Each command declares a table of options (name, type, destination, default, help).
 * nnp_options_parse applies every default, then the arguments "--name value" or
 * "--name=value" (flags take no value, "--no-name" clears a flag). Unknown options,
 * missing values and malformed numbers are errors naming the option; nothing is left
 * half-parsed silently. Range checks belong to the command.
 */
#ifndef NNPREC_OPTIONS_H
#define NNPREC_OPTIONS_H
#include <stdint.h>
#include <stdio.h>
#include "nnprec/status.h"

typedef enum { NNP_OPTT_INT, NNP_OPTT_I64, NNP_OPTT_DOUBLE, NNP_OPTT_STR, NNP_OPTT_FLAG } nnp_opt_type;

typedef struct {
    const char *name;    /* without the leading "--" */
    nnp_opt_type type;
    void *dst;           /* int*, int64_t*, double*, char[NNP_OPT_STRLEN], int* (flag) */
    const char *def;     /* default as text ("" for an empty string, "0"/"1" for flags) */
    const char *help;
    int set;             /* out: 1 if given on the command line */
} nnp_option;

#define NNP_OPT_STRLEN 512

/* Parse argv[0..argc) (argv[0] is the first option, not the program). Sets *help when
 * --help or -h is present (and stops). */
nnp_status nnp_options_parse(nnp_option *opts, int n, int argc, char **argv, int *help);
/* Print "usage" and one line per option with its default. */
void nnp_options_help(FILE *f, const char *usage, const nnp_option *opts, int n);
/* The option named `name` in the table, or NULL. */
const nnp_option *nnp_options_find(const nnp_option *opts, int n, const char *name);
/* Write every option as "name=value" lines into buf (for logs and checkpoints). */
void nnp_options_dump(const nnp_option *opts, int n, char *buf, size_t cap);

#endif

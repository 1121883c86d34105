/* options.h - a table-driven command-line parser with generated --help.
 *
 * Each command declares a table of options (name, type, destination, default, help).
 * nnp_options_parse applies every default, then the arguments "--name value" or
 * "--name=value" (flags take no value, "--no-name" clears a flag). Unknown options,
 * missing values and malformed numbers are errors naming the option; nothing is left
 * half-parsed silently. Range checks belong to the command.
 *
 * A table with a string option named "config" reads the file it names (--config FILE):
 * the defaults, then the file, then the command line again, so an option on the command
 * line wins over the file's wherever --config stands. The file holds one "--name value"
 * (or "--name=value") a line, as nnp_options_write writes it: the value is the rest of the
 * line after the name's ' ' or '=' (spaces included); a flag without a value is set, a
 * string without one is empty; blank lines and lines starting with '#' are skipped; a
 * later line wins over an earlier one. Errors name the file and the line.
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
    int set;             /* out: 1 if given on the command line, or in the --config file
                            with another value than its default */
} nnp_option;

#define NNP_OPT_STRLEN 512

/* Parse argv[0..argc) (argv[0] is the first option, not the program). Sets *help when
 * --help or -h is present (and stops). */
nnp_status nnp_options_parse(nnp_option *opts, int n, int argc, char **argv, int *help);
/* Print "usage" and one line per option with its default. */
void nnp_options_help(FILE *f, const char *usage, const nnp_option *opts, int n);
/* The option named `name` in the table, or NULL. */
const nnp_option *nnp_options_find(const nnp_option *opts, int n, const char *name);
/* Write every option as "name=value" lines into buf (for logs and checkpoints); numbers
 * in their shortest form that reads back as the same value (nnp_fmt_double). */
void nnp_options_dump(const nnp_option *opts, int n, char *buf, size_t cap);
/* Write every option but "config" as a "--name value" line (flags 0 or 1; a string
 * without a value: "--name" alone) to f, readable back with --config. A string holding a
 * line break cannot be written (NNP_ERR_ARG). */
nnp_status nnp_options_write(FILE *f, const nnp_option *opts, int n);
/* x with the fewest significant digits ("%.{1..17}g") that read back as x: 0.9, not
 * 0.90000000000000002. */
void nnp_fmt_double(char *buf, size_t cap, double x);

#endif

/* fuzz_util.h - shared by the libFuzzer harnesses (scripts/fuzz.sh, docs/reliability.md).
 *
 * The readers under test take file paths, so each input is written to a file in a private
 * folder under /tmp (made once per process, removed at exit) and read back from there.
 */
#ifndef NNP_FUZZ_UTIL_H
#define NNP_FUZZ_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_dir[64];

static void fuzz_cleanup(void)
{
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", fuzz_dir);
    if (system(cmd) != 0) {
    }
}

/* dir/name, the folder made on first use */
static const char *fuzz_path(const char *name)
{
    static char path[128];
    if (!fuzz_dir[0]) {
        snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/nnp_fuzz_XXXXXX");
        if (!mkdtemp(fuzz_dir))
            abort();
        atexit(fuzz_cleanup);
    }
    snprintf(path, sizeof path, "%s/%s", fuzz_dir, name);
    return path;
}

/* Write n bytes to dir/name; returns the path (valid until the next fuzz_path call). */
static const char *fuzz_file(const char *name, const unsigned char *data, size_t n)
{
    const char *path = fuzz_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0)
        abort();
    return path;
}

#endif

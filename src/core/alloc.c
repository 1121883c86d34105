/* alloc.c - checked allocation with a process-wide counter (see alloc.h). */
#include "nnprec/alloc.h"

#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "nnprec/status.h"

static atomic_ulong n_allocs;
static size_t limit; /* nnp_alloc_set_limit; 0: none */

void nnp_alloc_set_limit(size_t bytes) { limit = bytes; }

void *nnp_malloc_at(size_t bytes, const char *file, int line)
{
    void *p = limit && bytes > limit ? NULL : malloc(bytes ? bytes : 1);
    if (!p) {
        nnp_error(NNP_ERR_NOMEM, "out of memory allocating %zu bytes (%s:%d)", bytes, file, line);
        return NULL;
    }
    atomic_fetch_add(&n_allocs, 1);
    return p;
}

void *nnp_calloc_at(size_t n, size_t size, const char *file, int line)
{
    const int over = limit && size && n > limit / size;
    void *p = over ? NULL : calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        nnp_error(NNP_ERR_NOMEM, "out of memory allocating %zu x %zu bytes (%s:%d)", n, size,
                  file, line);
        return NULL;
    }
    atomic_fetch_add(&n_allocs, 1);
    return p;
}

unsigned long nnp_alloc_count(void) { return atomic_load(&n_allocs); }

double nnp_peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    double kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1)
            break;
    fclose(f);
    return kb / 1024.0;
}

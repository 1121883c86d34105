/* alloc.h - checked allocation with an allocation counter.
 *
 * All library allocations go through nnp_malloc/nnp_calloc so that a test can assert that
 * the training step allocates nothing: nnp_alloc_count() before and after a step must be
 * equal. A failed allocation records an NNP_ERR_NOMEM message naming the size and site.
 */
#ifndef NNPREC_ALLOC_H
#define NNPREC_ALLOC_H
#include <stddef.h>

void *nnp_malloc_at(size_t bytes, const char *file, int line);
void *nnp_calloc_at(size_t n, size_t size, const char *file, int line);
#define nnp_malloc(bytes) nnp_malloc_at((bytes), __FILE__, __LINE__)
#define nnp_calloc(n, size) nnp_calloc_at((n), (size), __FILE__, __LINE__)
/* Free and set the pointer to NULL. */
#define NNP_FREE(p) \
    do {            \
        free(p);    \
        (p) = NULL; \
    } while (0)

/* Number of successful nnp_malloc/nnp_calloc calls so far in this process. */
unsigned long nnp_alloc_count(void);

/* A cap on the size of any one allocation (bytes; 0, the default: none): a larger request
 * fails as one the system refuses would, with the out-of-memory message. For the fuzz
 * harnesses (tests/fuzz), which must not hand the machine every size a model spec or a
 * damaged header asks for. */
void nnp_alloc_set_limit(size_t bytes);

/* This process's peak resident memory in MB (VmHWM of /proc/self/status; 0 where unknown). */
double nnp_peak_rss_mb(void);

#endif

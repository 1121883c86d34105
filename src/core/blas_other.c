/* blas_other.c - the OpenBLAS extensions nnprec calls (thread count, kernel name), for a
 * build against another cblas (cmake -DBLA_VENDOR=...). Compiled only in such a build; with
 * OpenBLAS its own functions are used.
 *
 * Threads: the library's own environment variable decides (BLIS_NUM_THREADS for BLIS,
 * OMP_NUM_THREADS for an OpenMP build, ...); nnprec's --threads is recorded, and reported
 * back, but cannot be applied portably. */
#ifndef NNP_BLAS_VENDOR
#define NNP_BLAS_VENDOR "unknown"
#endif

void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);
char *openblas_get_corename(void);
char *openblas_get_config(void);

static int threads = 1;

void openblas_set_num_threads(int n)
{
    threads = n > 0 ? n : 1;
}

int openblas_get_num_threads(void)
{
    return threads;
}

char *openblas_get_corename(void)
{
    static char name[] = "n/a (BLA_VENDOR=" NNP_BLAS_VENDOR ")";
    return name;
}

char *openblas_get_config(void)
{
    static char config[] = "not OpenBLAS: BLA_VENDOR=" NNP_BLAS_VENDOR;
    return config;
}

/* fuzz_h5data.c - libFuzzer harness: the HDF5 dataset reader (src/data/h5data.c) on any
 * file. The last byte of the input picks the split and the slice (all, a limit, a shard);
 * the rest is the file. HDF5 parses it; nnprec checks types, shapes, labels and values. */
#include <stdint.h>
#include "fuzz_util.h"
#include "nnprec/alloc.h"
#include "nnprec/h5data.h"
#include "nnprec/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nnp_alloc_set_limit((size_t)256 << 20); /* what a header asks for fails as NNP_ERR_NOMEM */
    if (size < 1)
        return 0;
    unsigned mode = data[size - 1];
    const char *path = fuzz_file("data.h5", data, size - 1);
    size_t limit = mode & 2 ? (size_t)(mode >> 4) : 0;
    size_t lo = mode & 4 ? (size_t)((mode >> 3) & 1) : 0, hi = mode & 4 ? lo + 3 : (size_t)-1;
    nnp_dataset d;
    if (nnp_h5_load(path, mode & 1 ? "test" : "train", limit, lo, hi, &d) == NNP_OK)
        nnp_dataset_free(&d);
    nnp_error_clear();
    return 0;
}

/* fuzz_idx.c - libFuzzer harness: the IDX reader (src/data/idx.c) on any pair of files.
 *
 * The input is split into the images file and the labels file at the offset its first two
 * bytes give; a third byte picks the slice a rank would read (all, a limit, a shard), so
 * the header checks, truncation, gzip and the sharded skipping are all reached. Every
 * outcome but a crash, a sanitizer report or a leak is fine: errors are expected.
 */
#include <stdint.h>
#include "fuzz_util.h"
#include "nnprec/alloc.h"
#include "nnprec/data.h"
#include "nnprec/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nnp_alloc_set_limit((size_t)256 << 20); /* what a header asks for fails as NNP_ERR_NOMEM */
    if (size < 3)
        return 0;
    size_t cut = ((size_t)data[0] << 8 | data[1]) % (size - 2);
    unsigned mode = data[2];
    data += 3;
    size -= 3;
    char img[128], lab[128];
    snprintf(img, sizeof img, "%s", fuzz_file("images", data, cut));
    snprintf(lab, sizeof lab, "%s", fuzz_file("labels", data + cut, size - cut));
    size_t limit = mode & 1 ? (size_t)(mode >> 4) : 0;
    size_t lo = mode & 2 ? (size_t)((mode >> 2) & 3) : 0, hi = mode & 2 ? lo + 2 : (size_t)-1;
    nnp_dataset d;
    if (nnp_idx_load(img, lab, limit, lo, hi, &d) == NNP_OK)
        nnp_dataset_free(&d);
    nnp_error_clear();
    return 0;
}

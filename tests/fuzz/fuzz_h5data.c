/* fuzz_h5data.c - libFuzzer harness: the HDF5 dataset reader (src/data/h5data.c) on any
 * file. The last byte of the input picks the split and the slice (all, a limit, a shard);
 * the rest is the file. HDF5 parses it; nnprec checks types, shapes, labels and values.
 * With bit 6 set (train split), the streaming reader (src/data/h5stream.c) opens the file
 * too: its layout checks, the chunk addresses of its direct reads, the moments pass, a
 * held-out sample and two batches read in the step (no thread). */
#include <stdint.h>
#include "fuzz_util.h"
#include "nnprec/alloc.h"
#include "nnprec/h5data.h"
#include "nnprec/stream.h"
#include "nnprec/status.h"

static void fuzz_stream(const char *path, size_t limit, unsigned mode)
{
    nnp_stream *s = NULL;
    nnp_dataset *h = NULL;
    size_t chunk_rows = 0;
    if (nnp_stream_open(path, limit, &s, &h, &chunk_rows) != NNP_OK || h->n == 0 ||
        h->n > ((size_t)1 << 20)) {
        nnp_stream_close(s);
        nnp_error_clear();
        return;
    }
    double mean, std;
    nnp_dataset val = {0};
    if (nnp_stream_moments(s, &mean, &std) == NNP_OK && h->n > 1 && (mode & 32))
        (void)nnp_stream_holdout(s, 1, 1, 0, 1, &val, NULL);
    nnp_dataset_free(&val);
    nnp_error_clear();
    h->mean = 0;
    h->std = 1;
    const nnp_shuffle sh = {chunk_rows, 2};
    const nnp_stream_plan p = {1, sh, 4, 0, 1, 0, 4, 0, 0, 2};
    static uint32_t idx[4], perm[(size_t)1 << 20];
    static float x[4 * (1 << 16)];
    unsigned char y[4];
    int pe = -1;
    double w;
    const size_t D = (size_t)h->c * h->h * h->w;
    if (D <= (1 << 16) && nnp_stream_start(s, &p) == NNP_OK)
        for (int64_t step = 0; step < 2; step++) {
            int B = nnp_step_samples(1, &sh, h->n, 4, 0, 1, 0, step, perm, &pe, idx);
            if (nnp_stream_batch(s, step, idx, B, x, y, &w) != NNP_OK)
                break;
        }
    nnp_error_clear();
    nnp_stream_close(s);
}

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
    if (!(mode & 1) && (mode & 64))
        fuzz_stream(path, limit, mode);
    return 0;
}

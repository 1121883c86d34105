/* fuzz_ckpt.c - libFuzzer harness: the checkpoint reader (src/io/ckpt_read.c) on any file.
 *
 * The input is written out as a checkpoint; its metadata is read, and when it names a
 * model that builds (small ones only), the whole validating read runs into that network
 * with an SGD-momentum optimizer and a dynamic preconditioner (the state the seed corpus's
 * checkpoints hold), then `info` and `--verify`. HDF5 itself parses the file: with the
 * checksums of its 1.8 format most damaged metadata is refused there. */
#include <stdint.h>
#include "fuzz_util.h"
#include "nnprec/alloc.h"
#include "nnprec/ckpt.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/precond.h"
#include "nnprec/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nnp_alloc_set_limit((size_t)256 << 20); /* what a header asks for fails as NNP_ERR_NOMEM */
    static nnp_ckpt_meta meta;
    const char *path = fuzz_file("ckpt.h5", data, size);
    if (nnp_ckpt_read_meta(path, &meta) == NNP_OK) {
        nnp_net *net = NULL;
        if (nnp_net_create(meta.model, (nnp_shape){1, 28, 28}, NNP_ACT_RELU, 1, &net) == NNP_OK &&
            net->n_params < 2000000) {
            nnp_optim opt;
            nnp_optim_cfg oc = {0};
            oc.kind = NNP_OPT_SGD;
            oc.momentum = 0.9;
            nnp_precond pc;
            nnp_precond_cfg pcfg;
            nnp_precond_defaults(&pcfg);
            pcfg.mode = NNP_PRECOND_DYNAMIC;
            if (nnp_optim_init(&opt, &oc, net->n_params) == NNP_OK) {
                if (nnp_precond_init(&pc, &pcfg, net) == NNP_OK) {
                    nnp_ckpt_read(path, net, &opt, &pc, NULL);
                    nnp_precond_free(&pc);
                }
                nnp_optim_free(&opt);
            }
        }
        nnp_net_free(net);
    }
    nnp_error_clear();
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull) {
        nnp_ckpt_info(path, devnull);
        fclose(devnull);
    }
    nnp_error_clear();
    int n;
    size_t bytes;
    nnp_ckpt_verify(path, &n, &bytes);
    nnp_error_clear();
    return 0;
}

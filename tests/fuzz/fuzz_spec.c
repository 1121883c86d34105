/* fuzz_spec.c - libFuzzer harness: the model-spec parser and network builder
 * (nnp_net_create, src/nn/net.c) on any string, with an input shape and activation taken
 * from the first bytes. A network that builds is run forward and backward on one sample,
 * so every layer the parser accepts is also sized consistently. */
#include <stdint.h>
#include "fuzz_util.h"
#include "nnprec/alloc.h"
#include "nnprec/net.h"
#include "nnprec/status.h"

/* Whether every number in the spec is at most 512: a spec may rightly ask for a network of
 * gigabytes (nnp_net_create then allocates it, or fails with NNP_ERR_NOMEM), which is not
 * what this harness looks for. */
static int small_numbers(const char *s)
{
    long v = 0;
    for (; *s; s++) {
        v = *s >= '0' && *s <= '9' ? v * 10 + (*s - '0') : 0;
        if (v > 512)
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nnp_alloc_set_limit((size_t)64 << 20); /* a huge network fails as NNP_ERR_NOMEM */
    if (size < 3 || size > 514)
        return 0;
    static const nnp_shape shapes[4] = {{1, 28, 28}, {3, 8, 8}, {784, 1, 1}, {2, 5, 7}};
    nnp_shape in = shapes[data[0] & 3];
    nnp_act act = (nnp_act)(data[1] % 5);
    char spec[516];
    memcpy(spec, data + 2, size - 2);
    spec[size - 2] = '\0';
    if (!small_numbers(spec))
        return 0;
    nnp_net *net = NULL;
    if (nnp_net_create(spec, in, act, 2, &net) == NNP_OK && net) {
        /* small networks only: a spec may ask for millions of units */
        size_t acts = 0;
        for (int i = 0; i < net->n_layers; i++)
            acts += nnp_shape_size(net->layers[i].out);
        if (net->n_params < 2000000 && acts < ((size_t)8 << 20)) {
            for (size_t i = 0; i < net->n_params; i++)
                net->params[i] = 0.01f * (float)(i % 13) - 0.06f;
            size_t n_in = nnp_shape_size(net->input);
            for (size_t i = 0; i < n_in; i++)
                net->act[0][i] = 0.1f * (float)(i % 7);
            net->training = 1;
            nnp_net_forward(net, 1, net->act[0]);
            memset(net->dact[net->n_layers], 0, (size_t)net->n_classes * sizeof(float));
            net->dact[net->n_layers][0] = 1.0f;
            nnp_net_backward(net, 1, NULL, NULL);
        }
        nnp_net_free(net);
    }
    nnp_error_clear();
    return 0;
}

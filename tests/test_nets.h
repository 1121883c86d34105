/* test_nets.h - building the nets and initializer settings the statistical tests use;
 * a spec or name that does not parse ends the test binary (exit 2) with the library's
 * message. */
#ifndef NNP_TEST_NETS_H
#define NNP_TEST_NETS_H
#include <stdio.h>
#include <stdlib.h>
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/status.h"

/* A relu net for 1x28x28 inputs, for batches of up to B samples. */
static inline nnp_net *make_net(const char *spec, int B)
{
    nnp_net *net = NULL;
    if (nnp_net_create(spec, (nnp_shape){1, 28, 28}, NNP_ACT_RELU, B, &net) != NNP_OK) {
        fprintf(stderr, "cannot build %s: %s\n", spec, nnp_error_msg());
        exit(2);
    }
    return net;
}

/* The --init setting called `name`. */
static inline nnp_init_cfg init_of(const char *name)
{
    nnp_init_cfg ic;
    if (nnp_init_parse(name, &ic) != NNP_OK) {
        fprintf(stderr, "init %s: %s\n", name, nnp_error_msg());
        exit(2);
    }
    return ic;
}

#endif

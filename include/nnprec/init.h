/* init.h - parameter initializers (every formula is below).
 *
 * Names accepted by nnp_init_parse (the --init option):
 *   pytorch            W, b ~ U(+-1/sqrt(fan_in))  (PyTorch's Linear/Conv2d default:
 *                      kaiming_uniform(a=sqrt 5) gives exactly this bound)
 *   xavier-uniform     W ~ U(+-gain*sqrt(6/(fan_in+fan_out))), b = 0
 *   xavier-normal      W ~ N(0, gain^2 * 2/(fan_in+fan_out)),  b = 0
 *   kaiming-uniform    W ~ U(+-gain*sqrt(3/fan_in)),           b = 0
 *   kaiming-normal     W ~ N(0, gain^2/fan_in),                b = 0
 *   lecun-normal       W ~ N(0, 1/fan_in),                     b = 0
 *   orthogonal         W = gain * Q (rows or columns orthonormal), b = 0
 *   normal:STD         W ~ N(0, STD^2), b = 0
 *   uniform:A          W ~ U(-A, A), b = 0
 *   constant:C         W = C, b = 0
 *   seed               the seed project's prior: W ~ N(0, 0.96/fan_in), variance divided by
 *                      the relu factor 0.34 for dense weights; b ~ N(0, 0.2^2)
 * gain is PyTorch's calculate_gain of the activation that follows the layer (relu sqrt 2,
 * leaky-relu sqrt(2/(1+a^2)), tanh 5/3, sigmoid/identity 1); fan_in/fan_out as nnp_tensor.
 * Every layer k draws from its own RNG stream (seed, NNP_STREAM_INIT + k).
 */
#ifndef NNPREC_INIT_H
#define NNPREC_INIT_H
#include <stdint.h>
#include "nnprec/net.h"

typedef enum {
    NNP_INIT_PYTORCH,
    NNP_INIT_XAVIER_UNIFORM,
    NNP_INIT_XAVIER_NORMAL,
    NNP_INIT_KAIMING_UNIFORM,
    NNP_INIT_KAIMING_NORMAL,
    NNP_INIT_LECUN_NORMAL,
    NNP_INIT_ORTHOGONAL,
    NNP_INIT_NORMAL,
    NNP_INIT_UNIFORM,
    NNP_INIT_CONSTANT,
    NNP_INIT_SEED,
} nnp_init_kind;

typedef struct {
    nnp_init_kind kind;
    double value;      /* STD, A or C for normal/uniform/constant */
    /* seed prior constants (defaults 0.96, 0.34, 0.2; shared with the preconditioner) */
    double prior_num, relu_factor, bias_std;
} nnp_init_cfg;

/* Parse "kaiming-normal", "normal:0.01", ... Fills defaults for the seed constants. */
nnp_status nnp_init_parse(const char *name, nnp_init_cfg *out);
/* Initialize every parameter of net. */
nnp_status nnp_init_net(nnp_net *net, const nnp_init_cfg *cfg, uint64_t seed);
/* PyTorch's calculate_gain for an activation. */
double nnp_init_gain(nnp_act a, float alpha);
/* Standard deviation this initializer gives tensor t of net (0 for constant), used by the
 * statistical tests and by the static preconditioner's "prior" mode. */
double nnp_init_std(const nnp_init_cfg *cfg, const nnp_net *net, const nnp_tensor *t);

#endif

/* test_lrscale.c - --lr-scaling and --warmup-epochs arithmetic: the rate given for a base
 * global batch scaled to the actual one (linear: G/B, sqrt: sqrt(G/B)), and warmup epochs
 * turned into whole steps (ceil, with products that are integers up to rounding kept). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "nnprec/optim.h"
#include "test_util.h"

static void test_scale(void)
{
    nnp_lr_scaling k;
    ASSERT_OK(nnp_lr_scaling_parse("none", &k));
    ASSERT_TRUE(k == NNP_LRS_NONE);
    ASSERT_OK(nnp_lr_scaling_parse("linear", &k));
    ASSERT_TRUE(k == NNP_LRS_LINEAR);
    ASSERT_OK(nnp_lr_scaling_parse("sqrt", &k));
    ASSERT_TRUE(k == NNP_LRS_SQRT);
    ASSERT_STATUS(nnp_lr_scaling_parse("square", &k), NNP_ERR_ARG);
    ASSERT_STATUS(nnp_lr_scaling_parse(NULL, &k), NNP_ERR_ARG);

    /* Goyal et al.'s example: 0.1 per 256 samples, 8192 samples -> 3.2 */
    ASSERT_CLOSE(nnp_lr_scale(0.1, NNP_LRS_LINEAR, 256, 8192), 3.2, 1e-15, 0);
    ASSERT_CLOSE(nnp_lr_scale(0.1, NNP_LRS_LINEAR, 256, 64), 0.025, 1e-15, 0);
    ASSERT_CLOSE(nnp_lr_scale(0.1, NNP_LRS_SQRT, 256, 1024), 0.2, 1e-15, 0);
    ASSERT_CLOSE(nnp_lr_scale(0.1, NNP_LRS_SQRT, 256, 64), 0.05, 1e-15, 0);
    ASSERT_CLOSE(nnp_lr_scale(0.01, NNP_LRS_SQRT, 3, 7), 0.01 * sqrt(7.0 / 3.0), 1e-15, 0);
    ASSERT_TRUE(nnp_lr_scale(0.1, NNP_LRS_NONE, 256, 8192) == 0.1);
    /* at the base batch every rule gives the rate itself */
    ASSERT_TRUE(nnp_lr_scale(0.05, NNP_LRS_LINEAR, 96, 96) == 0.05);
    ASSERT_TRUE(nnp_lr_scale(0.05, NNP_LRS_SQRT, 96, 96) == 0.05);
}

static void test_warmup(void)
{
    ASSERT_TRUE(nnp_warmup_steps(0, 469) == 0);
    ASSERT_TRUE(nnp_warmup_steps(1, 469) == 469);
    ASSERT_TRUE(nnp_warmup_steps(5, 469) == 2345);
    ASSERT_TRUE(nnp_warmup_steps(0.5, 469) == 235);  /* 234.5 -> 235 */
    ASSERT_TRUE(nnp_warmup_steps(0.1, 30) == 3);     /* 3.0000000000000004 in doubles */
    ASSERT_TRUE(nnp_warmup_steps(0.7, 10) == 7);     /* 7.000000000000001 */
    ASSERT_TRUE(nnp_warmup_steps(0.3, 10) == 3);
    ASSERT_TRUE(nnp_warmup_steps(0.01, 10) == 1);    /* any warmup is at least a step */
    ASSERT_TRUE(nnp_warmup_steps(2.25, 4) == 9);
    ASSERT_TRUE(nnp_warmup_steps(1.0 / 3.0, 7) == 3); /* 2.333... */
    ASSERT_TRUE(nnp_warmup_steps(1, 0) == 0);
}

/* The warmup that --warmup-epochs sets reaches the scaled rate after ceil(X * spe) steps. */
static void test_schedule(void)
{
    nnp_sched s = {0};
    s.kind = NNP_SCHED_CONSTANT;
    s.lr = nnp_lr_scale(0.1, NNP_LRS_LINEAR, 256, 1024);
    s.warmup = nnp_warmup_steps(0.5, 5); /* 3 steps */
    ASSERT_TRUE(s.warmup == 3);
    ASSERT_CLOSE(nnp_sched_lr(&s, 0, 0), 0.4 / 3, 1e-15, 0);
    ASSERT_CLOSE(nnp_sched_lr(&s, 2, 0), 0.4, 1e-15, 0);
    ASSERT_CLOSE(nnp_sched_lr(&s, 3, 0), 0.4, 1e-15, 0);
}

int main(void)
{
    test_scale();
    test_warmup();
    test_schedule();
    TEST_MAIN_END();
}

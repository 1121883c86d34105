/* dense.c - fully connected layer, y[B,out] = x[B,in] W^T + b, on OpenBLAS sgemm.
 *
 * W is stored [out, in] (PyTorch orientation), all matrices row-major. The backward pass
 * overwrites dW, db and (when not NULL) dx.
 */
#include <string.h>

#include <cblas.h>

#include "nnprec/layers.h"

void nnp_dense_forward(int B, int in, int out, const float *x, const float *W, const float *b,
                       float *y)
{
    if (B <= 0 || out <= 0)
        return;
    /* Seed every row of y with the bias, then accumulate x W^T on top (beta = 1). */
    for (int n = 0; n < B; n++) {
        float *yr = y + (size_t)n * out;
        if (b)
            memcpy(yr, b, (size_t)out * sizeof *yr);
        else
            memset(yr, 0, (size_t)out * sizeof *yr);
    }
    if (in <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, out, in, 1.0f, x, in, W, in, 1.0f,
                y, out);
}

void nnp_dense_backward(int B, int in, int out, const float *x, const float *W, const float *dy,
                        float *dx, float *dW, float *db)
{
    if (out <= 0 || in < 0)
        return;
    if (B <= 0) {
        /* No samples: every gradient is zero. */
        if (dW)
            memset(dW, 0, (size_t)out * in * sizeof *dW);
        if (db)
            memset(db, 0, (size_t)out * sizeof *db);
        return;
    }
    if (dW && in > 0) /* dW[out,in] = dy^T[out,B] x[B,in] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, B, 1.0f, dy, out, x, in,
                    0.0f, dW, in);
    if (db) { /* db[o] = sum over the batch of dy[n,o] */
        memcpy(db, dy, (size_t)out * sizeof *db);
        for (int n = 1; n < B; n++) {
            const float *r = dy + (size_t)n * out;
            for (int o = 0; o < out; o++)
                db[o] += r[o];
        }
    }
    if (dx && in > 0) /* dx[B,in] = dy[B,out] W[out,in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, in, out, 1.0f, dy, out, W, in,
                    0.0f, dx, in);
}

/* pool2d.c - max and average pooling, square window k, stride s, no padding, floor output.
 *
 * argmax convention: for output (n, c, oh, ow) the max-pooling forward stores the index
 * ih*W + iw of the chosen input WITHIN ITS OWN (n, c) PLANE, as PyTorch's return_indices.
 * The window is scanned row-major and only a strictly larger value replaces the current
 * one, so the first maximum wins on ties; a NaN is taken as the maximum (as PyTorch).
 * Backward zeroes dx and accumulates (+=), so overlapping windows (s < k) add up; the 2x2,
 * stride 2 window (no overlap) writes each dx element once instead, the same values.
 *
 * relu then max pooling, fused (nnp_maxpool_relu_*): the window's max of relu(x), taken with
 * the same compares on the same values as the two layers apart, so y and argmax are the
 * same bits; backward sends dy to argmax where x > 0, which is relu's backward applied to
 * max pooling's; it reads that from the pooled output (relu of x at the argmax: > 0 exactly
 * when x there is), so it needs neither x nor relu's output, and neither is written.
 */
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "nnprec/layers.h"
#include "pool_impl.h"

#if defined(__GNUC__)
#define POOL_INLINE static inline __attribute__((always_inline))
#else
#define POOL_INLINE static inline
#endif

/* relu as nnp_act_forward computes it: x > 0 ? x : 0 (a NaN gives 0) */
static inline float relu1(float v) { return v > 0.0f ? v : 0.0f; }

int nnp_pool_geom_init(nnp_pool_geom *g, int C, int H, int W, int k, int s)
{
    memset(g, 0, sizeof *g);
    if (C <= 0 || H <= 0 || W <= 0 || k <= 0 || s <= 0 || H < k || W < k)
        return -1;
    g->C = C;
    g->H = H;
    g->W = W;
    g->k = k;
    g->s = s;
    g->OH = (H - k) / s + 1;
    g->OW = (W - k) / s + 1;
    return 0;
}

/* take v over the running maximum m? (a NaN wins over a number, as in PyTorch; on ties
 * the earlier element stays) */
static inline int pool_take(float v, float m) { return (v > m) | ((v != v) & (m == m)); }

/* The common 2x2, stride 2 window. Plain compares (v > m) select the first maximum and
 * compile to branch-free max/blend code; a window that holds a NaN (rare) is redone with
 * pool_take so the NaN wins, as in PyTorch. */
POOL_INLINE void maxpool_2x2_body(const nnp_pool_geom *g, size_t planes, const float *x,
                                  float *y, int *argmax, const int relu)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        float *yp = y + pl * OH * OW;
        int *ap = argmax + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = xp + 2 * oh * W, *r1 = r0 + W; /* the window's two rows */
            float *yr = yp + oh * OW;
            int *ar = ap + oh * OW;
            const int base = 2 * oh * W;
            int nan = 0, ow = 0;
#if defined(__SSE2__)
            /* four windows at a time: deinterleave the even and odd columns of each row,
             * then the same compare-and-select as the scalar loop, in lanes */
            __m128 anynan = _mm_setzero_ps();
            for (; ow + 4 <= OW && 2 * ow + 8 <= W; ow += 4) {
                __m128 p0 = _mm_loadu_ps(r0 + 2 * ow), p1 = _mm_loadu_ps(r0 + 2 * ow + 4);
                __m128 q0 = _mm_loadu_ps(r1 + 2 * ow), q1 = _mm_loadu_ps(r1 + 2 * ow + 4);
                if (relu) { /* maxps(v, 0) is v > 0 ? v : 0, relu1 exactly */
                    const __m128 z = _mm_setzero_ps();
                    p0 = _mm_max_ps(p0, z);
                    p1 = _mm_max_ps(p1, z);
                    q0 = _mm_max_ps(q0, z);
                    q1 = _mm_max_ps(q1, z);
                }
                __m128i idx;
                _mm_storeu_ps(yr + ow, nnp_pool2x2_max4(p0, p1, q0, q1, W, base + 2 * ow, &idx));
                _mm_storeu_si128((__m128i *)(ar + ow), idx);
                anynan = _mm_or_ps(anynan, _mm_or_ps(_mm_cmpunord_ps(p0, p1), _mm_cmpunord_ps(q0, q1)));
            }
            nan = _mm_movemask_ps(anynan) != 0;
#endif
            for (; ow < OW; ow++) {
                float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
                if (relu) {
                    a = relu1(a);
                    b = relu1(b);
                    c = relu1(c);
                    d = relu1(d);
                }
                float m = a;
                int off = 0;
                off = b > m ? 1 : off;
                m = b > m ? b : m;
                off = c > m ? W : off;
                m = c > m ? c : m;
                off = d > m ? W + 1 : off;
                m = d > m ? d : m;
                yr[ow] = m;
                ar[ow] = base + 2 * ow + off;
                nan |= (a != a) | (b != b) | (c != c) | (d != d);
            }
            if (!nan || relu) /* relu leaves no NaN */
                continue;
            for (ow = 0; ow < OW; ow++) { /* NaN present: redo the row exactly */
                const int i0 = base + 2 * ow, idx[4] = {i0, i0 + 1, i0 + W, i0 + W + 1};
                float m = xp[i0];
                int best = i0;
                for (int q = 1; q < 4; q++)
                    if (pool_take(xp[idx[q]], m)) {
                        m = xp[idx[q]];
                        best = idx[q];
                    }
                yr[ow] = m;
                ar[ow] = best;
            }
        }
    }
}

static void maxpool_2x2(const nnp_pool_geom *g, size_t planes, const float *x, float *y,
                        int *argmax)
{
    maxpool_2x2_body(g, planes, x, y, argmax, 0);
}

static void maxpool_2x2_relu(const nnp_pool_geom *g, size_t planes, const float *x, float *y,
                             int *argmax)
{
    maxpool_2x2_body(g, planes, x, y, argmax, 1);
}

POOL_INLINE void maxpool_body(const nnp_pool_geom *g, int B, const float *x, float *y,
                              int *argmax, const int relu)
{
    const int H = g->H, W = g->W, k = g->k, s = g->s, OH = g->OH, OW = g->OW;
    const size_t planes = (size_t)(B > 0 ? B : 0) * g->C;
    if (k == 2 && s == 2) {
        (relu ? maxpool_2x2_relu : maxpool_2x2)(g, planes, x, y, argmax);
        return;
    }
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        float *yp = y + pl * OH * OW;
        int *ap = argmax + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                int best = oh * s * W + ow * s; /* top-left corner of the window */
                float m = relu ? relu1(xp[best]) : xp[best];
                for (int i = 0; i < k; i++) {
                    const int row = (oh * s + i) * W + ow * s;
                    for (int j = 0; j < k; j++) {
                        const float v = relu ? relu1(xp[row + j]) : xp[row + j];
                        /* branch-free select (random data mispredicts half the branches) */
                        const int take = pool_take(v, m);
                        m = take ? v : m;
                        best = take ? row + j : best;
                    }
                }
                yp[oh * OW + ow] = m;
                ap[oh * OW + ow] = best;
            }
        }
    }
}

void nnp_maxpool_forward(const nnp_pool_geom *g, int B, const float *x, float *y, int *argmax)
{
    maxpool_body(g, B, x, y, argmax, 0);
}

void nnp_maxpool_relu_forward(const nnp_pool_geom *g, int B, const float *x, float *y,
                              int *argmax)
{
    maxpool_body(g, B, x, y, argmax, 1);
}

/* Backward of the 2x2, stride 2 window: the windows tile the plane, so each dx element is
 * written once, dy (+ 0, as the general path's 0 + dy, so -0 becomes +0) at the argmax and 0
 * at the window's other three, with no zeroing pass and no read-modify-write; a row or
 * column that no window covers (odd H or W) gets 0. relu: dy only where the pooled output
 * y (relu of x at the argmax) is > 0. The same values as zeroing dx and adding dy at the
 * argmax. */
POOL_INLINE void maxpool_2x2_backward_body(const nnp_pool_geom *g, size_t planes,
                                           const float *dy, const int *argmax, const float *y,
                                           float *dx, const int relu)
{
    const int H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    for (size_t pl = 0; pl < planes; pl++) {
        float *dxp = dx + pl * H * W;
        const float *yp = relu ? y + pl * OH * OW : NULL;
        const float *dyp = dy + pl * OH * OW;
        const int *ap = argmax + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            float *r0 = dxp + 2 * oh * W, *r1 = r0 + W;
            const float *dr = dyp + oh * OW;
            const int *ar = ap + oh * OW;
            const int base = 2 * oh * W;
            int ow = 0;
#if defined(__SSE2__)
            const __m128i vW = _mm_set1_epi32(W), vW1 = _mm_set1_epi32(W + 1),
                          v1 = _mm_set1_epi32(1);
            /* four windows at a time; a row whose count is not a multiple of 4 ends with
             * the last four windows, writing some elements again with the same values */
            for (int last = 0; OW >= 4 && !last; ow = ow + 4 <= OW - 4 ? ow + 4 : OW - 4) {
                last = ow == OW - 4;
                __m128 v = _mm_add_ps(_mm_loadu_ps(dr + ow), _mm_setzero_ps());
                const __m128i a = _mm_loadu_si128((const __m128i *)(ar + ow));
                if (relu)
                    v = _mm_and_ps(v, _mm_cmpgt_ps(_mm_loadu_ps(yp + oh * OW + ow), _mm_setzero_ps()));
                /* the argmax's offset in its window: 0, 1, W or W + 1 */
                const __m128i off = _mm_sub_epi32(
                    a, _mm_set_epi32(base + 2 * ow + 6, base + 2 * ow + 4, base + 2 * ow + 2,
                                     base + 2 * ow));
                const __m128 e0 = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(off, _mm_setzero_si128())));
                const __m128 o0 = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(off, v1)));
                const __m128 e1 = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(off, vW)));
                const __m128 o1 = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(off, vW1)));
                _mm_storeu_ps(r0 + 2 * ow, _mm_unpacklo_ps(e0, o0));
                _mm_storeu_ps(r0 + 2 * ow + 4, _mm_unpackhi_ps(e0, o0));
                _mm_storeu_ps(r1 + 2 * ow, _mm_unpacklo_ps(e1, o1));
                _mm_storeu_ps(r1 + 2 * ow + 4, _mm_unpackhi_ps(e1, o1));
            }
            if (OW >= 4)
                ow = OW;
#endif
            for (; ow < OW; ow++) {
                const int off = ar[ow] - (base + 2 * ow);
                float v = dr[ow] + 0.0f;
                if (relu && !(yp[oh * OW + ow] > 0.0f))
                    v = 0.0f;
                r0[2 * ow] = off == 0 ? v : 0.0f;
                r0[2 * ow + 1] = off == 1 ? v : 0.0f;
                r1[2 * ow] = off == W ? v : 0.0f;
                r1[2 * ow + 1] = off == W + 1 ? v : 0.0f;
            }
            if (W > 2 * OW) { /* the column no window covers */
                r0[W - 1] = 0.0f;
                r1[W - 1] = 0.0f;
            }
        }
        if (H > 2 * OH) /* the row no window covers */
            memset(dxp + (size_t)(H - 1) * W, 0, (size_t)W * sizeof *dxp);
    }
}

void nnp_maxpool_relu_backward(const nnp_pool_geom *g, int B, const float *dy,
                               const int *argmax, const float *y, float *dx)
{
    const size_t HW = (size_t)g->H * g->W, OHW = (size_t)g->OH * g->OW;
    const size_t planes = (size_t)(B > 0 ? B : 0) * g->C;
    if (g->k == 2 && g->s == 2) {
        maxpool_2x2_backward_body(g, planes, dy, argmax, y, dx, 1);
        return;
    }
    memset(dx, 0, planes * HW * sizeof *dx);
    for (size_t pl = 0; pl < planes; pl++) {
        float *dxp = dx + pl * HW;
        const float *yp = y + pl * OHW, *dyp = dy + pl * OHW;
        const int *ap = argmax + pl * OHW;
        for (size_t j = 0; j < OHW; j++)
            if (yp[j] > 0.0f) /* relu(x) at the argmax, so x there > 0 */
                dxp[ap[j]] += dyp[j];
    }
}

void nnp_maxpool_backward(const nnp_pool_geom *g, int B, const float *dy, const int *argmax,
                          float *dx)
{
    const size_t HW = (size_t)g->H * g->W, OHW = (size_t)g->OH * g->OW;
    const size_t planes = (size_t)(B > 0 ? B : 0) * g->C;
    if (g->k == 2 && g->s == 2) {
        maxpool_2x2_backward_body(g, planes, dy, argmax, NULL, dx, 0);
        return;
    }
    memset(dx, 0, planes * HW * sizeof *dx);
    for (size_t pl = 0; pl < planes; pl++) {
        float *dxp = dx + pl * HW;
        const float *dyp = dy + pl * OHW;
        const int *ap = argmax + pl * OHW; /* indices are relative to the plane dxp */
        for (size_t j = 0; j < OHW; j++)
            dxp[ap[j]] += dyp[j];
    }
}

void nnp_avgpool_forward(const nnp_pool_geom *g, int B, const float *x, float *y)
{
    const int H = g->H, W = g->W, k = g->k, s = g->s, OH = g->OH, OW = g->OW;
    const size_t planes = (size_t)(B > 0 ? B : 0) * g->C;
    const float inv = 1.0f / (float)(k * k);
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * H * W;
        float *yp = y + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                float acc = 0.0f;
                for (int i = 0; i < k; i++) {
                    const float *r = xp + (size_t)(oh * s + i) * W + ow * s;
                    for (int j = 0; j < k; j++)
                        acc += r[j];
                }
                yp[oh * OW + ow] = acc * inv;
            }
        }
    }
}

void nnp_avgpool_backward(const nnp_pool_geom *g, int B, const float *dy, float *dx)
{
    const int H = g->H, W = g->W, k = g->k, s = g->s, OH = g->OH, OW = g->OW;
    const size_t planes = (size_t)(B > 0 ? B : 0) * g->C;
    const float inv = 1.0f / (float)(k * k);
    memset(dx, 0, planes * H * W * sizeof *dx);
    for (size_t pl = 0; pl < planes; pl++) {
        float *dxp = dx + pl * H * W;
        const float *dyp = dy + pl * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            for (int ow = 0; ow < OW; ow++) {
                const float d = dyp[oh * OW + ow] * inv;
                for (int i = 0; i < k; i++) {
                    float *r = dxp + (size_t)(oh * s + i) * W + ow * s;
                    for (int j = 0; j < k; j++)
                        r[j] += d;
                }
            }
        }
    }
}

/* pool_impl.h - what max pooling (pool2d.c) and the convolution that pools its own output
 * (conv2d_direct.c) share: four 2x2 windows at a time in SSE. Internal to src/nn. */
#ifndef NNPREC_POOL_IMPL_H
#define NNPREC_POOL_IMPL_H
#if defined(__SSE2__)
#include <emmintrin.h>

/* Four 2x2 windows side by side from their two rows, eight values each (r0[0..8) and
 * r1[0..8), already loaded as p0, p1 and q0, q1): the first maximum of each window in
 * row-major order (only a strictly larger value replaces it, so the top-left wins ties),
 * and in *idx the flat index of that maximum, first + {0, 2, 4, 6} plus its offset in the
 * window (0, 1, W or W + 1). No NaN handling: the caller redoes windows that hold one. */
static inline __m128 nnp_pool2x2_max4(__m128 p0, __m128 p1, __m128 q0, __m128 q1, int W,
                                      int first, __m128i *idx)
{
    const __m128 a = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 b = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(3, 1, 3, 1));
    const __m128 c = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 d = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(3, 1, 3, 1));
    __m128 m = a;
    __m128i off = _mm_setzero_si128();
    __m128 t = _mm_cmpgt_ps(b, m);
    m = _mm_or_ps(_mm_and_ps(t, b), _mm_andnot_ps(t, m));
    off = _mm_or_si128(_mm_and_si128(_mm_castps_si128(t), _mm_set1_epi32(1)),
                       _mm_andnot_si128(_mm_castps_si128(t), off));
    t = _mm_cmpgt_ps(c, m);
    m = _mm_or_ps(_mm_and_ps(t, c), _mm_andnot_ps(t, m));
    off = _mm_or_si128(_mm_and_si128(_mm_castps_si128(t), _mm_set1_epi32(W)),
                       _mm_andnot_si128(_mm_castps_si128(t), off));
    t = _mm_cmpgt_ps(d, m);
    m = _mm_or_ps(_mm_and_ps(t, d), _mm_andnot_ps(t, m));
    off = _mm_or_si128(_mm_and_si128(_mm_castps_si128(t), _mm_set1_epi32(W + 1)),
                       _mm_andnot_si128(_mm_castps_si128(t), off));
    *idx = _mm_add_epi32(_mm_set_epi32(first + 6, first + 4, first + 2, first), off);
    return m;
}
#endif
#endif

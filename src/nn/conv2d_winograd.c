/* conv2d_winograd.c - Winograd F(2x2, 3x3) for 3x3 convolutions of stride 1.
 *
 * Lavin & Gray 2016 ("Fast Algorithms for Convolutional Neural Networks"): a 2x2 block of
 * outputs of one channel pair is
 *   Y = A^T [ (G g G^T) .* (B^T d B) ] A,
 * d the 4x4 input patch, g the 3x3 kernel, with
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2;
 *   0 0 1],  A^T = [1 1 1 0; 0 1 -1 -1],
 * so summed over input channels, each of the 16 positions xi of the 4x4 transformed tile is a
 * product  M[xi][o][t] = sum_c U[xi][o][c] V[xi][c][t]  over all tiles t: 16 multiplications
 * per 4 outputs and channel pair where the direct convolution makes 36 (2.25x fewer).
 *
 *   forward: V from the input (zero-padded by p), the 16 products, Y from M, plus the bias;
 *   dx:      the forward again, of dy padded by 2 - p with the kernel flipped and its channel
 *            axes swapped (as the direct path does);
 *   dW:      the transpose of the forward's map g -> Y, tile by tile:
 *              dW[o][c] = G^T [ sum_t (A dY_o,t A^T) .* V_c,t ] G,
 *            the sum over tiles being 16 products of long inner dimension (the direct
 *            path's weight-gradient kernel), accumulated in double, transformed at the end.
 *
 * The products run on the direct path's AVX2/FMA micro-kernels (conv2d_direct.c), with the
 * tiles of a group of samples as the positions (about WINO_SPAN of them: a 7x7 map has 16
 * tiles). The transforms are vectorized over 8 tiles of a tile row (even and odd columns
 * split with shuffles; maps of 4 tiles a row put two tile rows in a vector). Every sum runs
 * in an order set by the shapes alone, so results depend only on (shapes, B, inputs), as on
 * the other paths. The rounding differs from the direct convolution's: the transforms add
 * and subtract inputs of both signs before the products, and each output sums 9x fewer
 * products; test_layers (test_wino_error) bounds the error against double loops and against
 * the direct path's (docs/results.md §4).
 *
 * Layout (floats): V[16][Ci][Ts] (tile t of sample i at i*T + th*TW + tw), M or Z[16][Ko][Ts],
 * U[16] unpacked and packed (pack_weights), and the even and odd columns of one zero-padded
 * input channel (two planes of Hb x (TWr + 16)).
 */
#include <string.h>

#include "conv2d_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NNP_HAVE_WINO 1
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))
#else
#define NNP_HAVE_WINO 0
#endif

/* tiles per group of samples: enough for the micro-kernel's strips (a 28x28 map has 196);
 * 128 to 768 measured the same on resnet8's layers (-DWINO_SPAN=N to try others) */
#ifndef WINO_SPAN
#define WINO_SPAN 384
#endif
#define WINO_GMAX 64

/* One Winograd pass: Ci channels of Hi x Wi padded by p in, Ko channels of OH x OW out. */
typedef struct {
    int Ci, Hi, Wi, p, Ko;
    int OH, OW, TH, TW, TWr; /* outputs, tiles (TWr: TW rounded up to 8) */
    int Hb;                  /* rows of the padded planes */
    int pair;                /* TW == 4: a vector holds the tiles of two tile rows */
    int G;                   /* samples per group */
    size_t T, Ts;            /* tiles per sample, row stride of V, M and Z */
} wgeom;

static wgeom wgeom_of(int Ci, int Hi, int Wi, int p, int Ko)
{
    wgeom w;
    w.Ci = Ci, w.Hi = Hi, w.Wi = Wi, w.p = p, w.Ko = Ko;
    w.OH = Hi + 2 * p - 2;
    w.OW = Wi + 2 * p - 2;
    w.TH = (w.OH + 1) / 2;
    w.TW = (w.OW + 1) / 2;
    w.TWr = (w.TW + 7) & ~7;
    /* tile (th, tw) reads rows 2th .. 2th+3 */
    w.pair = w.TW == 4;
    w.Hb = 2 * w.TH + (w.pair ? 4 : 2); /* pairs: the last odd tile row's partner reads zeros */
    w.T = (size_t)w.TH * w.TW;
    size_t G = (WINO_SPAN + w.T - 1) / w.T;
    w.G = G < 1 ? 1 : G > WINO_GMAX ? WINO_GMAX : (int)G;
    /* a group's tiles, the 7 a tile row's last vector may spill, whole micro-kernel strips */
    w.Ts = ((size_t)w.G * w.T + 8 + 47) / 48 * 48;
    return w;
}

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* floats for one pass: U packed and unpacked, tap offsets, the even/odd planes, V, M */
static size_t pass_floats(const wgeom *w)
{
    return 2 * round16((size_t)16 * w->Ko * w->Ci) + round16((size_t)w->Ci) +
           round16((size_t)2 * w->Hb * (w->TWr + 16)) + (size_t)16 * w->Ci * w->Ts +
           (size_t)16 * w->Ko * w->Ts;
}

int nnp_conv_wino_fits(const nnp_conv_geom *g)
{
    return g->k == 3 && g->s == 1 && g->p <= 2 && g->OH > 0 && g->OW > 0;
}

size_t nnp_conv_wino_workspace(const nnp_conv_geom *g)
{
    if (!nnp_conv_wino_fits(g))
        return 0;
    const wgeom f = wgeom_of(g->C, g->H, g->W, g->p, g->K);
    const wgeom b = wgeom_of(g->K, g->OH, g->OW, 2 - g->p, g->C);
    const size_t fwd = pass_floats(&f), bwd = pass_floats(&b);
    /* backward: the dW accumulator (16*K*C doubles) before the larger of the two passes */
    return round16((size_t)32 * g->K * g->C) + (fwd > bwd ? fwd : bwd);
}

/* U = G g G^T for one 3x3 kernel g (row-major), 16 floats */
static void kernel_tile(const float *g, float *u)
{
    float t[4][3];
    for (int j = 0; j < 3; j++) {
        const float a = g[j], b = g[3 + j], c = g[6 + j];
        t[0][j] = a;
        t[1][j] = 0.5f * (a + b + c);
        t[2][j] = 0.5f * (a - b + c);
        t[3][j] = c;
    }
    for (int i = 0; i < 4; i++) {
        const float a = t[i][0], b = t[i][1], c = t[i][2];
        u[4 * i + 0] = a;
        u[4 * i + 1] = 0.5f * (a + b + c);
        u[4 * i + 2] = 0.5f * (a - b + c);
        u[4 * i + 3] = c;
    }
}

/* The 16 packed products' weights: U[xi][o][c] of W[o][c] (flip 0, Ko = K, Ci = C) or of
 * Wt[c][o] = W[o][c] turned by 180 degrees (flip 1: Ko = C, Ci = K). */
static void pack_kernels(int K, int C, const float *W, int flip, float *upk, float *tmp)
{
    const int Ko = flip ? C : K, Ci = flip ? K : C;
    float u[16], g[9];
    for (int o = 0; o < K; o++)
        for (int c = 0; c < C; c++) {
            const float *w = W + ((size_t)o * C + c) * 9;
            for (int i = 0; i < 9; i++)
                g[i] = flip ? w[8 - i] : w[i];
            kernel_tile(g, u);
            const size_t oo = flip ? (size_t)c : (size_t)o, cc = flip ? (size_t)o : (size_t)c;
            for (int xi = 0; xi < 16; xi++)
                tmp[((size_t)xi * Ko + oo) * Ci + cc] = u[xi];
        }
    for (int xi = 0; xi < 16; xi++)
        nnp_conv_pack_weights(Ko, (size_t)Ci, tmp + (size_t)xi * Ko * Ci,
                              upk + (size_t)xi * Ko * Ci);
}

#if NNP_HAVE_WINO

/* even and odd elements of the 16 floats a, b */
INLINE TARGET void split2x8(__m256 a, __m256 b, __m256 *even, __m256 *odd)
{
    const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* even and odd elements of s[0 .. 16) */
INLINE TARGET void split16(const float *s, __m256 *even, __m256 *odd)
{
    split2x8(_mm256_loadu_ps(s), _mm256_loadu_ps(s + 8), even, odd);
}

/* The padded rows of one channel as two planes of its even and odd columns, E[r][u] =
 * xpad[r][2u] and O[r][u] = xpad[r][2u + 1] (We floats a row, zero outside the image): the
 * 4 columns 2tw .. 2tw+3 of tile tw are then E[tw], O[tw], E[tw + 1], O[tw + 1], 8 tiles at a
 * time by plain loads. Padded column j = w + p of input column w goes to E (j even) or O. */
static TARGET void split_channel(const wgeom *w, const float *xc, float *E, float *O, int We)
{
    const int p = w->p, Wi = w->Wi;
    /* chunk start w (even): x[w + 2i] lands at column w + p + 2i, x[w + 2i + 1] at the next */
    float *ev = (p & 1) ? O : E, *od = (p & 1) ? E : O;
    const int ue = (p & 1) ? (p - 1) / 2 : p / 2, uo = (p & 1) ? (p + 1) / 2 : p / 2;
    for (int h = 0; h < w->Hi; h++) {
        const float *xr = xc + (size_t)h * Wi;
        const size_t row = (size_t)(h + p) * We;
        int c = 0;
        for (; c + 16 <= Wi; c += 16) {
            __m256 e, o;
            split16(xr + c, &e, &o);
            _mm256_storeu_ps(ev + row + ue + c / 2, e);
            _mm256_storeu_ps(od + row + uo + c / 2, o);
        }
        if (c < Wi) { /* the tail, loaded masked: zeros past the row land on the padding */
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256 a = _mm256_maskload_ps(
                xr + c, _mm256_cmpgt_epi32(_mm256_set1_epi32(Wi - c), lane));
            const __m256 b = _mm256_maskload_ps(
                xr + c + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(Wi - c - 8), lane));
            __m256 e, o;
            split2x8(a, b, &e, &o);
            _mm256_storeu_ps(ev + row + ue + c / 2, e);
            _mm256_storeu_ps(od + row + uo + c / 2, o);
        }
    }
}

#define TARGET512 __attribute__((target("avx512f,avx2,fma")))

/* in_transform's tile rows outside pair mode on AVX-512: 16 tiles a vector, a row's last 8
 * (when TWr is not a multiple of 16) under a mask, so it writes what the AVX2 loop writes;
 * the same adds and subtracts per value, so the same bits. */
static TARGET512 void in_rows512(const wgeom *w, const float *E, const float *O, int We,
                                 float *Vc, size_t xs)
{
    for (int th = 0; th < w->TH; th++) {
        float *vt = Vc + (size_t)th * w->TW;
        for (int tw = 0; tw < w->TWr; tw += 16) {
            const __mmask16 m = w->TWr - tw >= 16 ? (__mmask16)0xFFFF : (__mmask16)0x00FF;
            __m512 d[4][4];
            for (int r = 0; r < 4; r++) {
                const size_t o = (size_t)(2 * th + r) * We + (size_t)tw;
                const __m512 e0 = _mm512_loadu_ps(E + o), o0 = _mm512_loadu_ps(O + o);
                const __m512 e1 = _mm512_loadu_ps(E + o + 1), o1 = _mm512_loadu_ps(O + o + 1);
                d[r][0] = _mm512_sub_ps(e0, e1);
                d[r][1] = _mm512_add_ps(o0, e1);
                d[r][2] = _mm512_sub_ps(e1, o0);
                d[r][3] = _mm512_sub_ps(o0, o1);
            }
            for (int j = 0; j < 4; j++) {
                float *v = vt + (size_t)j * xs + tw;
                _mm512_mask_storeu_ps(v, m, _mm512_sub_ps(d[0][j], d[2][j]));
                _mm512_mask_storeu_ps(v + 4 * xs, m, _mm512_add_ps(d[1][j], d[2][j]));
                _mm512_mask_storeu_ps(v + 8 * xs, m, _mm512_sub_ps(d[2][j], d[1][j]));
                _mm512_mask_storeu_ps(v + 12 * xs, m, _mm512_sub_ps(d[1][j], d[3][j]));
            }
        }
    }
}

/* V[xi][c][base + th*TW + tw] = (B^T d B)[xi] of the tiles of one sample: per channel the
 * even/odd planes, then per tile row 8 tiles at a time, columns then rows, straight from 16
 * loads. A tile row's last vector may write up to 7 tiles past its end, which the next row
 * (or sample) overwrites. */
static TARGET void in_transform(const wgeom *w, const float *x, float *plane, float *V,
                                size_t base)
{
    const int We = w->TWr + 16;
    float *E = plane, *O = plane + (size_t)w->Hb * We;
    const size_t xs = (size_t)w->Ci * w->Ts;
    const int wide = !w->pair && w->TWr >= 16 && nnp_conv2d_isa() >= NNP_CONV_ISA_AVX512;
    for (int c = 0; c < w->Ci; c++) {
        split_channel(w, x + (size_t)c * w->Hi * w->Wi, E, O, We);
        float *Vc = V + (size_t)c * w->Ts + base;
        if (wide) {
            in_rows512(w, E, O, We, Vc, xs);
            continue;
        }
        for (int th = 0; th < w->TH; th += 1 + w->pair) {
            float *vt = Vc + (size_t)th * w->TW;
            for (int tw = 0; tw < (w->pair ? 1 : w->TWr); tw += 8) {
                __m256 d[4][4]; /* d[row][col] after the column transform */
                for (int r = 0; r < 4; r++) {
                    const size_t o = (size_t)(2 * th + r) * We + (size_t)tw;
                    __m256 e0, o0, e1, o1;
                    if (w->pair) { /* tiles 0-3 of tile rows th and th + 1 */
                        const size_t o2 = o + (size_t)2 * We;
                        e0 = _mm256_set_m128(_mm_loadu_ps(E + o2), _mm_loadu_ps(E + o));
                        o0 = _mm256_set_m128(_mm_loadu_ps(O + o2), _mm_loadu_ps(O + o));
                        e1 = _mm256_set_m128(_mm_loadu_ps(E + o2 + 1), _mm_loadu_ps(E + o + 1));
                        o1 = _mm256_set_m128(_mm_loadu_ps(O + o2 + 1), _mm_loadu_ps(O + o + 1));
                    } else {
                        e0 = _mm256_loadu_ps(E + o), o0 = _mm256_loadu_ps(O + o);
                        e1 = _mm256_loadu_ps(E + o + 1), o1 = _mm256_loadu_ps(O + o + 1);
                    }
                    d[r][0] = _mm256_sub_ps(e0, e1);
                    d[r][1] = _mm256_add_ps(o0, e1);
                    d[r][2] = _mm256_sub_ps(e1, o0);
                    d[r][3] = _mm256_sub_ps(o0, o1);
                }
                for (int j = 0; j < 4; j++) {
                    float *v = vt + (size_t)j * xs + tw;
                    _mm256_storeu_ps(v, _mm256_sub_ps(d[0][j], d[2][j]));
                    _mm256_storeu_ps(v + 4 * xs, _mm256_add_ps(d[1][j], d[2][j]));
                    _mm256_storeu_ps(v + 8 * xs, _mm256_sub_ps(d[2][j], d[1][j]));
                    _mm256_storeu_ps(v + 12 * xs, _mm256_sub_ps(d[1][j], d[3][j]));
                }
            }
        }
    }
}

/* 8 floats of a row from column c, those at or past column n (or all, row NULL) read as 0 */
INLINE TARGET __m256 load8(const float *row, int c, int n)
{
    if (!row || c >= n)
        return _mm256_setzero_ps();
    if (c + 8 <= n)
        return _mm256_loadu_ps(row + c);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(row + c, _mm256_cmpgt_epi32(_mm256_set1_epi32(n - c), lane));
}

/* Z[xi][o][base + tile] = (A dy A^T)[xi] of one sample's 2x2 blocks of dy (Ko planes of
 * OH x OW; blocks past the edge read zeros), the rows' even and odd columns split as they
 * are loaded. */
static TARGET void dy_transform(const wgeom *w, const float *dy, float *Z, size_t base)
{
    const int OW = w->OW;
    const size_t zs = (size_t)w->Ko * w->Ts;
    for (int o = 0; o < w->Ko; o++) {
        const float *dyo = dy + (size_t)o * w->OH * OW;
        float *Zo = Z + (size_t)o * w->Ts + base;
        for (int th = 0; th < w->TH; th += 1 + w->pair) {
            const float *r[4];
            for (int i = 0; i < 4; i++)
                r[i] = 2 * th + i < w->OH ? dyo + (size_t)(2 * th + i) * OW : NULL;
            float *zt = Zo + (size_t)th * w->TW;
            for (int tw = 0; tw < (w->pair ? 1 : w->TWr); tw += 8) {
                __m256 e0, o0, e1, o1;
                if (w->pair) { /* columns 0-7 of dy rows 2th, 2th+2 (e0, o0), 2th+1, 2th+3 */
                    split2x8(load8(r[0], 0, OW), load8(r[2], 0, OW), &e0, &o0);
                    split2x8(load8(r[1], 0, OW), load8(r[3], 0, OW), &e1, &o1);
                } else {
                    split2x8(load8(r[0], 2 * tw, OW), load8(r[0], 2 * tw + 8, OW), &e0, &o0);
                    split2x8(load8(r[1], 2 * tw, OW), load8(r[1], 2 * tw + 8, OW), &e1, &o1);
                }
                /* columns: (e, e + o, e - o, -o); rows the same */
                const __m256 c0[4] = {e0, _mm256_add_ps(e0, o0), _mm256_sub_ps(e0, o0),
                                      _mm256_sub_ps(_mm256_setzero_ps(), o0)};
                const __m256 c1[4] = {e1, _mm256_add_ps(e1, o1), _mm256_sub_ps(e1, o1),
                                      _mm256_sub_ps(_mm256_setzero_ps(), o1)};
                for (int j = 0; j < 4; j++) {
                    float *z = zt + (size_t)j * zs + tw;
                    _mm256_storeu_ps(z, c0[j]);
                    _mm256_storeu_ps(z + 4 * zs, _mm256_add_ps(c0[j], c1[j]));
                    _mm256_storeu_ps(z + 8 * zs, _mm256_sub_ps(c0[j], c1[j]));
                    _mm256_storeu_ps(z + 12 * zs, _mm256_sub_ps(_mm256_setzero_ps(), c1[j]));
                }
            }
        }
    }
}

/* The output transform's last step for 8 tiles: from s[a][j] (row a of M A, column j) the
 * two output rows r of the tiles, each as columns 2t, 2t + 1 interleaved, plus the bias:
 * v[r][0] holds tiles 0-3, v[r][1] tiles 4-7. */
INLINE TARGET void out_rows(__m256 s[4][2], __m256 bo, __m256 v[2][2])
{
    for (int r = 0; r < 2; r++) {
        __m256 y0, y1;
        if (r == 0) {
            y0 = _mm256_add_ps(_mm256_add_ps(s[0][0], s[1][0]), s[2][0]);
            y1 = _mm256_add_ps(_mm256_add_ps(s[0][1], s[1][1]), s[2][1]);
        } else {
            y0 = _mm256_sub_ps(_mm256_sub_ps(s[1][0], s[2][0]), s[3][0]);
            y1 = _mm256_sub_ps(_mm256_sub_ps(s[1][1], s[2][1]), s[3][1]);
        }
        const __m256 lo = _mm256_unpacklo_ps(y0, y1), hi = _mm256_unpackhi_ps(y0, y1);
        v[r][0] = _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), bo);
        v[r][1] = _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x31), bo);
    }
}

/* Pair mode (TW == 4): the 8 tiles of s are tiles 0-3 of tile rows th and th + 1, i.e.
 * output rows h0 .. h0+3 (those < OH), 8 columns each, stored in row order (a row's 8th
 * float, past OW = 7, lands on the next row's first, stored next); the sample's last floats
 * masked. */
INLINE TARGET void pair_rows(const wgeom *w, __m256 s[4][2], __m256 bo, float *y, int h0,
                             const float *yend)
{
    const int OW = w->OW;
    __m256 v[2][2]; /* [output row within a tile row][tile row] */
    out_rows(s, bo, v);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(OW), lane);
    for (int i = 0; i < 4 && h0 + i < w->OH; i++) {
        float *yr = y + (size_t)i * OW;
        if (yr + 8 <= yend)
            _mm256_storeu_ps(yr, v[i % 2][i / 2]);
        else
            _mm256_maskstore_ps(yr, mask, v[i % 2][i / 2]);
    }
}

/* mask of the first n (0..16) lanes */
static inline __mmask16 first_lanes(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* out_transform outside pair mode with TWr a multiple of 16, on AVX-512: 16 tiles (32
 * columns of two rows) a vector, in the AVX2 loop's order (a row's last vectors first), its
 * stores and masks covering the same floats; the same adds per value, so the same bits. */
static TARGET512 void out_rows512(const wgeom *w, const float *M, size_t base, const float *b,
                                  float *y)
{
    const size_t ms = (size_t)w->Ko * w->Ts;
    const int OW = w->OW;
    const float *yend = y + (size_t)w->Ko * w->OH * OW;
    /* the 128-bit blocks of unpacklo/hi(y0, y1) in column order */
    const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i i1 =
        _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int o = 0; o < w->Ko; o++) {
        const float *Mo = M + (size_t)o * w->Ts + base;
        const __m512 bo = _mm512_set1_ps(b ? b[o] : 0.0f);
        float *yo = y + (size_t)o * w->OH * OW;
        for (int th = 0; th < w->TH; th++) {
            const float *mt = Mo + (size_t)th * w->TW;
            for (int tw = w->TWr - 16; tw >= 0; tw -= 16) {
                __m512 s[4][2];
                for (int a = 0; a < 4; a++) {
                    const float *m = mt + (size_t)(4 * a) * ms + tw;
                    const __m512 m0 = _mm512_loadu_ps(m), m1 = _mm512_loadu_ps(m + ms);
                    const __m512 m2 = _mm512_loadu_ps(m + 2 * ms), m3 = _mm512_loadu_ps(m + 3 * ms);
                    s[a][0] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    s[a][1] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                const int col = 2 * tw, left = OW - col;
                for (int r = 0; r < 2 && 2 * th + r < w->OH; r++) {
                    __m512 y0, y1;
                    if (r == 0) {
                        y0 = _mm512_add_ps(_mm512_add_ps(s[0][0], s[1][0]), s[2][0]);
                        y1 = _mm512_add_ps(_mm512_add_ps(s[0][1], s[1][1]), s[2][1]);
                    } else {
                        y0 = _mm512_sub_ps(_mm512_sub_ps(s[1][0], s[2][0]), s[3][0]);
                        y1 = _mm512_sub_ps(_mm512_sub_ps(s[1][1], s[2][1]), s[3][1]);
                    }
                    const __m512 lo = _mm512_unpacklo_ps(y0, y1), hi = _mm512_unpackhi_ps(y0, y1);
                    const __m512 v0 = _mm512_add_ps(_mm512_permutex2var_ps(lo, i0, hi), bo);
                    const __m512 v1 = _mm512_add_ps(_mm512_permutex2var_ps(lo, i1, hi), bo);
                    float *yr = yo + (size_t)(2 * th + r) * OW + col;
                    if (left >= 32 || yr + 32 <= yend) {
                        _mm512_storeu_ps(yr, v0);
                        _mm512_storeu_ps(yr + 16, v1);
                    } else {
                        _mm512_mask_storeu_ps(yr, first_lanes(left), v0);
                        _mm512_mask_storeu_ps(yr + 16, first_lanes(left - 16), v1);
                    }
                }
            }
        }
    }
}

/* y[o] (OH x OW) = A^T M[.][o] A of one sample's tiles, plus b[o], 8 tiles (16 columns of
 * two rows) at a time (out_rows512 on AVX-512 where it applies). */
static TARGET void out_transform(const wgeom *w, const float *M, size_t base, const float *b,
                                 float *y)
{
    if (!w->pair && w->TWr % 16 == 0 && nnp_conv2d_isa() >= NNP_CONV_ISA_AVX512) {
        out_rows512(w, M, base, b, y);
        return;
    }
    const size_t ms = (size_t)w->Ko * w->Ts;
    const int OW = w->OW;
    for (int o = 0; o < w->Ko; o++) {
        const float *Mo = M + (size_t)o * w->Ts + base;
        const __m256 bo = _mm256_set1_ps(b ? b[o] : 0.0f);
        float *yo = y + (size_t)o * w->OH * OW;
        /* a row's last vectors may run past OW into rows (channels, samples) written later;
         * only the sample's last floats are stored masked */
        const float *yend = y + (size_t)w->Ko * w->OH * OW;
        for (int th = 0; th < w->TH; th += 1 + w->pair) {
            const float *mt = Mo + (size_t)th * w->TW;
            /* the row's last vectors first: what they spill into the next row's first
             * columns, those columns' own stores (a later tw of this loop) overwrite */
            for (int tw = w->pair ? 0 : w->TWr - 8; tw >= 0; tw -= 8) {
                __m256 s[4][2];
                for (int a = 0; a < 4; a++) {
                    const float *m = mt + (size_t)(4 * a) * ms + tw;
                    const __m256 m0 = _mm256_loadu_ps(m), m1 = _mm256_loadu_ps(m + ms);
                    const __m256 m2 = _mm256_loadu_ps(m + 2 * ms), m3 = _mm256_loadu_ps(m + 3 * ms);
                    s[a][0] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                    s[a][1] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
                }
                const int col = 2 * tw, left = OW - col; /* columns of this row still to write */
                if (w->pair) {
                    pair_rows(w, s, bo, yo + (size_t)2 * th * OW, 2 * th, yend);
                    continue;
                }
                __m256 v[2][2];
                out_rows(s, bo, v);
                for (int r = 0; r < 2 && 2 * th + r < w->OH; r++) {
                    const __m256 v0 = v[r][0], v1 = v[r][1];
                    float *yr = yo + (size_t)(2 * th + r) * OW + col;
                    if (left >= 16 || yr + 16 <= yend) {
                        _mm256_storeu_ps(yr, v0);
                        _mm256_storeu_ps(yr + 8, v1);
                    } else {
                        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                        const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
                        const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(left - 8), lane);
                        _mm256_maskstore_ps(yr, m0, v0);
                        _mm256_maskstore_ps(yr + 8, m1, v1);
                    }
                }
            }
        }
    }
}

#else /* no AVX2 build: conv2d.c never takes this path */

static void in_transform(const wgeom *w, const float *x, float *plane, float *V, size_t base)
{
    (void)w; (void)x; (void)plane; (void)V; (void)base;
}
static void dy_transform(const wgeom *w, const float *dy, float *Z, size_t base)
{
    (void)w; (void)dy; (void)Z; (void)base;
}
static void out_transform(const wgeom *w, const float *M, size_t base, const float *b,
                          float *y)
{
    (void)w; (void)M; (void)base; (void)b; (void)y;
}

#endif

/* The pass's buffers in a workspace of pass_floats(w) floats. */
typedef struct {
    float *upk, *u, *plane, *V, *M;
    int *off;
} wbufs;

static wbufs carve(const wgeom *w, float *ws)
{
    wbufs q;
    q.upk = ws;
    ws += round16((size_t)16 * w->Ko * w->Ci);
    q.u = ws;
    ws += round16((size_t)16 * w->Ko * w->Ci);
    q.off = (int *)ws;
    ws += round16((size_t)w->Ci);
    q.plane = ws;
    ws += round16((size_t)2 * w->Hb * (w->TWr + 16));
    q.V = ws;
    q.M = ws + (size_t)16 * w->Ci * w->Ts;
    return q;
}

/* The products' tail: positions [L, L rounded up to 8) of every row of a [16][n][Ts] buffer
 * set to 0 (the micro-kernels read whole vectors; the dW sums must see zeros there). */
static void zero_tail(float *X, int n, size_t Ts, size_t L)
{
    const size_t L8 = (L + 7) & ~(size_t)7;
    if (L8 == L)
        return;
    for (size_t r = 0; r < (size_t)16 * n; r++)
        memset(X + r * Ts + L, 0, (L8 - L) * sizeof *X);
}

/* y[n] = the pass of x[n] for n < B, U already packed in q->upk. */
static void run_pass(const wgeom *w, const wbufs *q, int B, const float *x, const float *b,
                     float *y)
{
    const size_t nx = (size_t)w->Ci * w->Hi * w->Wi, ny = (size_t)w->Ko * w->OH * w->OW;
    for (int c = 0; c < w->Ci; c++)
        q->off[c] = (int)((size_t)c * w->Ts);
    memset(q->plane, 0, (size_t)2 * w->Hb * (w->TWr + 16) * sizeof *q->plane);
    for (int n0 = 0; n0 < B; n0 += w->G) {
        const int gn = B - n0 < w->G ? B - n0 : w->G;
        const size_t L = (size_t)gn * w->T;
        for (int i = 0; i < gn; i++)
            in_transform(w, x + (size_t)(n0 + i) * nx, q->plane, q->V, (size_t)i * w->T);
        zero_tail(q->V, w->Ci, w->Ts, L);
        for (int xi = 0; xi < 16; xi++)
            nnp_conv_flat_gemm(w->Ko, (size_t)w->Ci, q->off, q->V + (size_t)xi * w->Ci * w->Ts,
                               q->upk + (size_t)xi * w->Ko * w->Ci,
                               q->M + (size_t)xi * w->Ko * w->Ts, w->Ts, L);
        for (int i = 0; i < gn; i++)
            out_transform(w, q->M, (size_t)i * w->T, b, y + (size_t)(n0 + i) * ny);
    }
}

void nnp_conv_wino_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                           const float *b, float *y, float *ws)
{
    const wgeom w = wgeom_of(g->C, g->H, g->W, g->p, g->K);
    const wbufs q = carve(&w, ws);
    pack_kernels(g->K, g->C, W, 0, q.upk, q.u);
    run_pass(&w, &q, B, x, b, y);
}

/* dW[o][c] = G^T P G of the accumulated 4x4 products P (double), 9 floats */
static void dw_tile(const double *P, size_t stride, float *dw)
{
    double t[3][4];
    for (int j = 0; j < 4; j++) {
        const double p0 = P[(size_t)j * stride], p1 = P[(size_t)(4 + j) * stride];
        const double p2 = P[(size_t)(8 + j) * stride], p3 = P[(size_t)(12 + j) * stride];
        t[0][j] = p0 + 0.5 * (p1 + p2);
        t[1][j] = 0.5 * (p1 - p2);
        t[2][j] = 0.5 * (p1 + p2) + p3;
    }
    for (int i = 0; i < 3; i++) {
        dw[3 * i + 0] = (float)(t[i][0] + 0.5 * (t[i][1] + t[i][2]));
        dw[3 * i + 1] = (float)(0.5 * (t[i][1] - t[i][2]));
        dw[3 * i + 2] = (float)(0.5 * (t[i][1] + t[i][2]) + t[i][3]);
    }
}

void nnp_conv_wino_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                            const float *dy, float *dx, float *dW, float *db, float *ws)
{
    const int C = g->C, K = g->K;
    const size_t OHW = (size_t)g->OH * g->OW, nx = (size_t)C * g->H * g->W;
    double *acc = (double *)ws;
    float *rest = ws + round16((size_t)32 * K * C);
    if (db)
        nnp_conv_bias_grad(B, K, OHW, dy, db);
    if (dW) {
        /* the forward's tiles of x (V) and of dy (Z, in M's room); per position xi, P[xi][o][c]
         * = sum over the group's tiles of Z[xi][o][t] V[xi][c][t] */
        const wgeom w = wgeom_of(C, g->H, g->W, g->p, K);
        const wbufs q = carve(&w, rest);
        memset(acc, 0, (size_t)16 * K * C * sizeof *acc);
        for (int c = 0; c < C; c++)
            q.off[c] = (int)((size_t)c * w.Ts);
        memset(q.plane, 0, (size_t)2 * w.Hb * (w.TWr + 16) * sizeof *q.plane);
        for (int n0 = 0; n0 < B; n0 += w.G) {
            const int gn = B - n0 < w.G ? B - n0 : w.G;
            const size_t L = (size_t)gn * w.T;
            for (int i = 0; i < gn; i++) {
                in_transform(&w, x + (size_t)(n0 + i) * nx, q.plane, q.V, (size_t)i * w.T);
                dy_transform(&w, dy + (size_t)(n0 + i) * K * OHW, q.M, (size_t)i * w.T);
            }
            zero_tail(q.V, C, w.Ts, L);
            zero_tail(q.M, K, w.Ts, L);
            for (int xi = 0; xi < 16; xi++)
                nnp_conv_flat_dw(K, (size_t)C, q.off, q.V + (size_t)xi * C * w.Ts, 0,
                                 q.M + (size_t)xi * K * w.Ts, 0, 1, w.Ts, L,
                                 acc + (size_t)xi * K * C);
        }
        const size_t kc = (size_t)K * C;
        for (size_t i = 0; i < kc; i++)
            dw_tile(acc + i, kc, dW + 9 * i);
    }
    if (dx) {
        const wgeom w = wgeom_of(K, g->OH, g->OW, 2 - g->p, C);
        const wbufs q = carve(&w, rest);
        pack_kernels(K, C, W, 1, q.upk, q.u);
        run_pass(&w, &q, B, dy, NULL, dx);
    }
}

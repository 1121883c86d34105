/* conv2d_direct.c - direct convolution with AVX2/FMA micro-kernels, no im2col.
 *
 * One sample at a time. Its input is copied into a zero-padded buffer xp[C][Hp][Wp]
 * (Hp = H + 2p, Wp = W + 2p, the planes back to back, Cs = Hp*Wp floats apart). For stride
 * 1, output (oh, ow) of channel o reads xp[c][oh + ki][ow + kj], i.e. the flat index
 *   j + off(c, ki, kj),   j = oh*Wp + ow,   off = c*Cs + ki*Wp + kj,
 * so on the padded grid (the output rows laid out Wp apart, ow in [OW, Wp) being columns
 * that are computed and dropped) every kernel tap is the SAME contiguous strip of xp,
 * shifted by off. The convolution is then
 *   Yp[o][j] = sum_r W[o][r] xp[off(r) + j],   r = (c*k + ki)*k + kj,  j in [0, Ls),
 * a GEMM whose second operand is read straight from xp, never materialized. The micro-kernel
 * keeps 6 output channels x 16 positions or 4 x 24 (12 accumulators of 8 floats) in
 * registers and walks the R taps: per tap 2-3 unaligned loads of xp, 6 or 4 weight
 * broadcasts (the weights packed tap by tap), 12 FMAs.
 *
 * Backward, per sample:
 *   dW[o][r] += sum_j dYp[o][j] xp[off(r) + j], dYp being dy on the same padded grid with
 *     zeros in the dropped columns: 4 channels x 3 taps of 8-lane partial sums in registers,
 *     kept over a group of G samples (about DW_SPAN output positions in all; G from the
 *     shapes alone), reduced at the end of the group and added into a double accumulator
 *     over the batch;
 *   dx is the stride-1 convolution of dy zero-padded by q = k - 1 - p with the kernel
 *     flipped and its two channel axes swapped, Wt[c][o][ki][kj] = W[o][c][k-1-ki][k-1-kj]:
 *     the forward kernel again (this needs p <= k - 1).
 *   db is every path's shared sum (nnp_conv_bias_grad).
 * Stride s > 1 (split by stride phase). Output (oh, ow) reads xpad[c][s*oh + ki][s*ow + kj];
 * with the padded input split into s*s phase planes per channel,
 *   xs[(c*s + a)*s + b][u][v] = xpad[c][s*u + a][s*v + b],   Hs x Ws = (OH + k2 - 1) x
 *   (OW + k2 - 1),  k2 = ceil(k / s),
 * the tap (c, ki, kj) is the plane of phase (ki%s, kj%s) at (oh + ki/s, ow + kj/s): again one
 * contiguous strip per tap on a grid of rows Ws apart, so forward and dW are the kernels above
 * with other tap offsets (only the k*k real taps: no zero weights). dx: input pixel
 * (s*u + a - p, s*v + b - p) receives sum_{o, ti, tj} W[o][c][s*ti + a][s*tj + b]
 * dy[o][u - ti][v - tj], per phase (a, b) a stride-1 convolution of dy padded by k2 - 1 with
 * that phase's taps; pixels read by no output get 0.
 * Every sum runs in a fixed order set by the shapes alone, so the results depend only on
 * (shapes, B, inputs).
 *
 * Workspace (floats, in this order; nnp_conv_direct_workspace):
 *   acc   2*K*R      dW accumulator (double)
 *   wt    K*R        flipped, transposed kernel (dx)
 *   wpk   K*R        the kernel in use, packed per channel block (pack_weights)
 *   off   (C+K)*k*k  tap offsets into xp and into dyq (ints)
 *   xp    C*Hp*Wp + k + 32     padded input (its tail zeroed: strips read past the last plane);
 *                              stride s > 1: s*s*C*Hs*Ws + k + 32, the phase planes
 *   (stride s > 1: wt and wpk hold the per-phase dx kernels, off the per-phase dy taps; Hq, Wq
 *    are dy padded by q = k2 - 1, Lq covers Hs rows)
 *   yp    K*Ls       output strip Yp or dYp, Ls = OH*Wp rounded up to whole tiles
 *   dyq   K*Hq*Wq + k + 32     dy padded by q (dx)
 *   dxp   C*Lq       input-gradient strip, Lq = H*Wq rounded up to whole tiles (stride 2:
 *                    4*C*Lq, one strip per phase)
 * xp and yp are G times that size: the backward's weight gradient holds a group of G samples
 * (xp's G copies, then yp's); the forward and the input gradient use the first of each.
 * The build compiles the kernels for AVX2+FMA with a per-function target attribute; the
 * CPU is asked (cpuid) before they are used, and conv2d.c falls back to its GEMM path.
 * Where cpuid also reports AVX-512 (avx512f), the output/input-gradient products run 16 floats
 * a vector (fwd_block512) and the weight gradient two taps' 8-lane sums a register
 * (dw_block512): each output and each lane does the same FMAs in the same order as on AVX2,
 * so the results are the same bits (test_layers compares them); NNPREC_CONV_ISA=avx2 or
 * nnp_conv2d_set_isa asks for AVX2.
 */
#include <string.h>

#include "conv2d_impl.h"
#include "pool_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NNP_HAVE_DIRECT 1
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma")))
#define TARGET512 __attribute__((target("avx512f,avx2,fma")))
#define INLINE static inline __attribute__((always_inline))
#else
#define NNP_HAVE_DIRECT 0
#endif

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* The forward micro-kernel's tile for K output channels: blocks of 6 channels x 2 vectors
 * where 6 divides K, else 4 channels x 3 vectors (12 accumulators either way), the last
 * block narrower when the block does not divide K. */
static int block_of(int K) { return K % 6 == 0 ? 6 : 4; }
/* The AVX-512 kernel's: 8 channels x 3 vectors where 8 divides K, else block_of's. */
static int block512_of(int K) { return K % 8 == 0 ? 8 : block_of(K); }
static int vecs_of(int K) { return K % 6 == 0 ? 2 : 3; }
/* A strip of L positions rounded up to whole tiles of 8 * vecs_of(K). */
static size_t strip_of(size_t L, int K)
{
    const size_t t = (size_t)8 * vecs_of(K);
    return (L + t - 1) / t * t;
}

/* wpk: w[K][R] regrouped per channel block (block_of(K), or block512_of(K) for the AVX-512
 * kernels) as [R][ko], so the micro-kernel reads one block's weights for a tap from
 * consecutive floats. */
static void pack_weights(int K, size_t R, const float *w, float *wpk)
{
    const int blk = nnp_conv2d_isa() >= NNP_CONV_ISA_AVX512 ? block512_of(K) : block_of(K);
    for (int o = 0; o < K; o += blk) {
        const int ko = K - o < blk ? K - o : blk;
        float *dst = wpk + (size_t)o * R;
        for (size_t r = 0; r < R; r++)
            for (int t = 0; t < ko; t++)
                dst[r * ko + t] = w[(size_t)(o + t) * R + r];
    }
}

/* off[r] for the taps r = (c*k + ki)*k + kj of C channels: c*Cs + ki*Wp + kj on the padded
 * planes (s == 1), ((c*s + ki%s)*s + kj%s)*Cs + (ki/s)*Wp + kj/s on the phase planes. */
static void tap_offsets(int C, int k, int s, int Wp, size_t Cs, int *off)
{
    size_t r = 0;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < k; ki++)
            for (int kj = 0; kj < k; kj++)
                off[r++] = (int)((((size_t)c * s + ki % s) * s + kj % s) * Cs +
                                 (size_t)(ki / s) * Wp + (size_t)(kj / s));
}

/* the weight gradient's sample groups: about DW_SPAN output positions, at most DW_GMAX samples */
#define DW_SPAN 512
#define DW_GMAX 16

/* The padded-grid sizes of a geometry. */
typedef struct {
    int Hp, Wp;       /* padded input */
    size_t Cs, Ls;    /* padded plane, output strip */
    int q, Hq, Wq;    /* dy padded by q = k-1-p (dx) */
    size_t Cq, Lq;    /* its plane, dx strip */
    size_t nxp, nyp, ndyq, ndxp, R;
    int G;            /* samples per weight-gradient group (dw_group) */
} grid;

static grid grid_of(const nnp_conv_geom *g)
{
    grid d;
    const int s = g->s, k2 = (g->k + s - 1) / s;
    if (s == 1) {
        d.Hp = g->H + 2 * g->p;
        d.Wp = g->W + 2 * g->p;
        d.q = g->k - 1 - g->p;
    } else {
        /* phase planes: the rows and columns the outputs read, OH + k2 - 1 of each */
        d.Hp = g->OH + k2 - 1;
        d.Wp = g->OW + k2 - 1;
        d.q = k2 - 1;
    }
    d.Cs = (size_t)d.Hp * d.Wp;
    d.Ls = strip_of((size_t)g->OH * d.Wp, g->K);
    d.Hq = g->OH + 2 * d.q;
    d.Wq = g->OW + 2 * d.q;
    d.Cq = (size_t)d.Hq * d.Wq;
    d.Lq = strip_of((size_t)(s == 1 ? g->H : d.Hp) * d.Wq, g->C);
    d.R = (size_t)g->C * g->k * g->k;
    d.nxp = round16((size_t)s * s * g->C * d.Cs + (size_t)g->k + 32);
    d.nyp = (size_t)g->K * d.Ls;
    d.ndyq = round16((size_t)g->K * d.Cq + (size_t)g->k + 32);
    /* stride 2: the four phases' strips at once (phase_dx interleaves them) */
    d.ndxp = (size_t)(s == 2 ? 4 : 1) * g->C * d.Lq;
    /* The weight gradient's register partial sums run over G samples before they are added
     * into the double accumulator: about DW_SPAN positions (8-lane float sums of about
     * DW_SPAN/8 products each), so that small maps (7x7: 56 positions a sample) do not pay a
     * horizontal sum per sample and tap block. */
    const size_t L8 = ((size_t)g->OH * d.Wp + 7) & ~(size_t)7;
    d.G = (int)((DW_SPAN + L8 - 1) / L8);
    d.G = d.G < 1 ? 1 : d.G > DW_GMAX ? DW_GMAX : d.G;
    return d;
}

/* Floats before xp: acc (2*K*R), wt, wpk (K*R each), the tap offsets of x and of the padded
 * dy (ints). */
static size_t head_of(const nnp_conv_geom *g)
{
    const size_t kr = (size_t)g->K * g->C * g->k * g->k;
    const size_t taps = (size_t)(g->C + g->K) * g->k * g->k;
    return round16(4 * kr + taps);
}

int nnp_conv_direct_fits(const nnp_conv_geom *g)
{
    return g->s > 1 || g->p <= g->k - 1;
}

size_t nnp_conv_direct_workspace(const nnp_conv_geom *g)
{
    if (!nnp_conv_direct_fits(g))
        return 0;
    grid d = grid_of(g);
    return head_of(g) + (size_t)d.G * (d.nxp + d.nyp) + d.ndyq + d.ndxp;
}

/* d[0 .. n) = s[0 .. n): the rows here are 7-30 floats, too short for a memcpy call's
 * overhead (LeNet's backward made ~40,000 such calls per step). */
static inline void copy_row(float *d, const float *s, int n)
{
    int i = 0;
#if NNP_HAVE_DIRECT && defined(__SSE2__)
    for (; i + 4 <= n; i += 4)
        _mm_storeu_ps(d + i, _mm_loadu_ps(s + i));
#endif
    for (; i < n; i++)
        d[i] = s[i];
}

/* Copy C planes of H x W into a buffer of planes Hp x Wp with the image at (p, p) and zeros
 * around it, then zero `tail` floats after the last plane. The zeros never change between
 * samples: with `fresh` 0 the buffer already holds this layout (an earlier sample of the same
 * call) and only the image is copied. */
static void pad_planes(int C, int H, int W, int p, const float *x, float *xp, size_t tail,
                       int fresh)
{
    const int Hp = H + 2 * p, Wp = W + 2 * p;
    if (fresh)
        memset(xp, 0, ((size_t)C * Hp * Wp + tail) * sizeof *xp);
    for (int c = 0; c < C; c++) {
        const float *src = x + (size_t)c * H * W;
        float *row = xp + (size_t)c * Hp * Wp + (size_t)p * Wp + p;
        for (int h = 0; h < H; h++, row += Wp)
            copy_row(row, src + (size_t)h * W, W);
    }
}

/* Stride s > 1: the C planes of H x W (padding p) split into s*s phase planes Hs x Ws per
 * channel, plane (c*s + a)*s + b holding xpad[c][s*u + a][s*v + b] at (u, v) (zero outside
 * the image), then `tail` zeros. As in pad_planes, the zeros are written only when `fresh`;
 * later samples of the call overwrite the image's pixels alone. Input row h feeds row
 * u = (h + p) / s of the planes of phase a = (h + p) % s: for phase b its columns
 * v in [vlo, vhi) take x[h][w0 + s*t], w0 = s*vlo + b - p. For s = 2 the two phases b of a
 * row are its even and odd pixels, split four at a time with SSE shuffles. Phases a or b
 * >= k hold no tap (a 1x1 kernel of stride 2 reads phase (0, 0) alone): they stay zero. */
/* dst[e] = src[2e] for e < n, src having `avail` floats to read (SSE four at a time) */
static void take_even(const float *src, int avail, int n, float *dst)
{
    int t = 0;
#if NNP_HAVE_DIRECT && defined(__SSE2__)
    for (; t + 4 <= n && 2 * t + 8 <= avail; t += 4)
        _mm_storeu_ps(dst + t, _mm_shuffle_ps(_mm_loadu_ps(src + 2 * t),
                                              _mm_loadu_ps(src + 2 * t + 4),
                                              _MM_SHUFFLE(2, 0, 2, 0)));
#else
    (void)avail;
#endif
    for (; t < n; t++)
        dst[t] = src[2 * t];
}

static void split_phases(int C, int H, int W, int p, int s, int k, int Hs, int Ws,
                         const float *x, float *xp, size_t tail, int fresh)
{
    if (fresh)
        memset(xp, 0, ((size_t)C * s * s * Hs * Ws + tail) * sizeof *xp);
    int vlo[8], n[8], w0[8]; /* per phase b (s <= 8 here; larger s take the general loop) */
    for (int b = 0; b < s && b < 8; b++) {
        vlo[b] = p - b <= 0 ? 0 : (p - b + s - 1) / s;
        int vhi = W - 1 + p - b < 0 ? 0 : (W - 1 + p - b) / s + 1;
        vhi = vhi > Ws ? Ws : vhi < vlo[b] ? vlo[b] : vhi;
        n[b] = vhi > vlo[b] ? vhi - vlo[b] : 0;
        w0[b] = s * vlo[b] + b - p;
    }
    for (int c = 0; c < C; c++)
        for (int h = 0; h < H; h++) {
            const int a = (h + p) % s, u = (h + p) / s;
            if (u >= Hs || a >= k) /* a row no output reads (a >= k: no tap in that phase) */
                continue;
            const float *src = x + ((size_t)c * H + h) * W;
            float *plane0 = xp + ((size_t)c * s + a) * s * Hs * Ws + (size_t)u * Ws;
            if (s == 2 && k == 1) { /* phase (a, 0) alone: every other pixel */
                take_even(src + w0[0], W - w0[0], n[0], plane0 + vlo[0]);
                continue;
            }
            if (s == 2) {
                /* the phase b whose first pixel is even, and the other one */
                const int be = w0[0] == 0 ? 0 : 1, bo = 1 - be;
                float *de = plane0 + (size_t)be * Hs * Ws + vlo[be];
                float *dd = plane0 + (size_t)bo * Hs * Ws + vlo[bo];
                const int ne = n[be], no = n[bo];
                int t = 0;
#if NNP_HAVE_DIRECT && defined(__SSE2__)
                for (; 2 * t + 8 <= W && t + 4 <= ne && t + 4 <= no; t += 4) {
                    const __m128 lo = _mm_loadu_ps(src + 2 * t), hi = _mm_loadu_ps(src + 2 * t + 4);
                    _mm_storeu_ps(de + t, _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
                    _mm_storeu_ps(dd + t, _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
                }
#endif
                for (int e = t; e < ne; e++)
                    de[e] = src[2 * e];
                for (int e = t; e < no; e++)
                    dd[e] = src[2 * e + 1];
                continue;
            }
            for (int b = 0; b < s && b < k; b++) {
                float *row = plane0 + (size_t)b * Hs * Ws;
                if (b < 8) {
                    for (int e = 0; e < n[b]; e++)
                        row[vlo[b] + e] = src[w0[b] + (size_t)e * s];
                    continue;
                }
                for (int v = 0; v < Ws; v++) {
                    const int w = s * v + b - p;
                    if (w >= 0 && w < W)
                        row[v] = src[w];
                }
            }
        }
}

/* The input of one sample on the grid of the geometry: padded planes or phase planes. */
static void load_input(const nnp_conv_geom *g, const grid *d, const float *x, float *xp,
                       int fresh)
{
    const size_t used = (size_t)g->s * g->s * g->C * d->Cs;
    if (g->s == 1)
        pad_planes(g->C, g->H, g->W, g->p, x, xp, d->nxp - used, fresh);
    else
        split_phases(g->C, g->H, g->W, g->p, g->s, g->k, d->Hp, d->Wp, x, xp, d->nxp - used,
                     fresh);
}

#if NNP_HAVE_DIRECT

int nnp_conv_direct_available(void)
{
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return have;
}

/* The widest kernels the CPU runs: AVX-512 when cpuid reports avx512f (with AVX2 and FMA). */
static nnp_conv_isa cpu_isa(void)
{
    static int isa = -1;
    if (isa < 0) {
        __builtin_cpu_init();
        isa = !nnp_conv_direct_available()            ? NNP_CONV_ISA_NONE
              : __builtin_cpu_supports("avx512f") ? NNP_CONV_ISA_AVX512
                                                  : NNP_CONV_ISA_AVX2;
    }
    return (nnp_conv_isa)isa;
}

/* what NNPREC_CONV_ISA or nnp_conv2d_set_isa asked for; the environment is read once */
static int forced_isa = NNP_CONV_ISA_AUTO, isa_read = 0;

void nnp_conv2d_set_isa(nnp_conv_isa isa)
{
    forced_isa = (int)isa;
    isa_read = 1;
}

/* The kernels in use: the CPU's widest, or narrower when asked (NNPREC_CONV_ISA=avx2, or
 * nnp_conv2d_set_isa); never wider than the CPU runs. */
static nnp_conv_isa conv_isa(void)
{
    if (!isa_read) {
        static const char *const names[] = {"auto", "avx2", "avx512"};
        static const nnp_conv_isa isas[] = {NNP_CONV_ISA_AUTO, NNP_CONV_ISA_AVX2,
                                            NNP_CONV_ISA_AVX512};
        isa_read = 1;
        forced_isa = isas[nnp_conv_env_choice("NNPREC_CONV_ISA", names, 3)];
    }
    const nnp_conv_isa cpu = cpu_isa(), want = (nnp_conv_isa)forced_isa;
    return want == NNP_CONV_ISA_AUTO || want > cpu ? cpu : want;
}

nnp_conv_isa nnp_conv2d_isa(void) { return conv_isa(); }

/* KO output channels x 8*V positions from xp: yp[o*Ls + j] = sum_r wp[r*KO + o] xp[off[r] + j]
 * for j < 8V (wp: this channel block's weights packed tap by tap). */
INLINE TARGET void fwd_block(int KO, int V, size_t R, const int *off, const float *xp,
                             const float *wp, float *yp, size_t Ls)
{
    __m256 a[6][3], xv[3];
    for (int o = 0; o < KO; o++)
        for (int v = 0; v < V; v++)
            a[o][v] = _mm256_setzero_ps();
    for (size_t r = 0; r < R; r++, wp += KO) {
        const float *xr = xp + off[r];
        for (int v = 0; v < V; v++)
            xv[v] = _mm256_loadu_ps(xr + 8 * v);
        for (int o = 0; o < KO; o++) {
            const __m256 wv = _mm256_broadcast_ss(wp + o);
            for (int v = 0; v < V; v++)
                a[o][v] = _mm256_fmadd_ps(wv, xv[v], a[o][v]);
        }
    }
    for (int o = 0; o < KO; o++)
        for (int v = 0; v < V; v++)
            _mm256_storeu_ps(yp + (size_t)o * Ls + 8 * v, a[o][v]);
}

/* One tile of KO channels x 8*V positions, the constants dispatched (V < vecs_of(K) only for
 * the last, partial tile of a strip). */
INLINE TARGET void fwd_tile(int ko, int v, size_t R, const int *off, const float *xp,
                            const float *wp, float *yp, size_t Ls)
{
#define FWD(KO_, V_)                                                                    \
    case KO_ * 4 + V_:                                                                  \
        fwd_block(KO_, V_, R, off, xp, wp, yp, Ls);                                     \
        break;
    switch (ko * 4 + v) {
        FWD(6, 2) FWD(5, 2) FWD(4, 2) FWD(3, 2) FWD(2, 2) FWD(1, 2)
        FWD(6, 1) FWD(5, 1) FWD(4, 1) FWD(3, 1) FWD(2, 1) FWD(1, 1)
        FWD(4, 3) FWD(3, 3) FWD(2, 3) FWD(1, 3)
    }
#undef FWD
}

/* The same products with AVX-512 (16 floats a vector, 32 registers): KO channels x 16*V
 * positions, V up to 4 (up to 24 accumulators). Every output is the same chain of FMAs in
 * the same tap order as fwd_block's, so the bits are the same; only the width of the tile
 * differs. The last vector of a tile loads and stores under the mask `last`, so a strip's
 * end reads and writes exactly what the AVX2 kernel does (positions up to L rounded up to 8):
 * no change to the buffers' sizes or tails. */
INLINE TARGET512 void fwd_block512(int KO, int V, size_t R, const int *off, const float *xp,
                                   const float *wp, float *yp, size_t Ls, __mmask16 last)
{
    __m512 a[8][4], xv[4];
    for (int o = 0; o < KO; o++)
        for (int v = 0; v < V; v++)
            a[o][v] = _mm512_setzero_ps();
    for (size_t r = 0; r < R; r++, wp += KO) {
        const float *xr = xp + off[r];
        for (int v = 0; v < V - 1; v++)
            xv[v] = _mm512_loadu_ps(xr + 16 * v);
        xv[V - 1] = _mm512_maskz_loadu_ps(last, xr + 16 * (V - 1));
        for (int o = 0; o < KO; o++) {
            const __m512 wv = _mm512_set1_ps(wp[o]);
            for (int v = 0; v < V; v++)
                a[o][v] = _mm512_fmadd_ps(wv, xv[v], a[o][v]);
        }
    }
    for (int o = 0; o < KO; o++) {
        for (int v = 0; v < V - 1; v++)
            _mm512_storeu_ps(yp + (size_t)o * Ls + 16 * v, a[o][v]);
        _mm512_mask_storeu_ps(yp + (size_t)o * Ls + 16 * (V - 1), last, a[o][V - 1]);
    }
}

INLINE TARGET512 void fwd_tile512(int ko, int v, size_t R, const int *off, const float *xp,
                                  const float *wp, float *yp, size_t Ls, __mmask16 last)
{
#define FWD(KO_, V_)                                                                    \
    case KO_ * 8 + V_:                                                                  \
        fwd_block512(KO_, V_, R, off, xp, wp, yp, Ls, last);                            \
        break;
    switch (ko * 8 + v) {
        FWD(8, 3) FWD(8, 2) FWD(8, 1) FWD(6, 4) FWD(6, 3) FWD(6, 2) FWD(6, 1)
        FWD(4, 4) FWD(4, 3) FWD(4, 2) FWD(4, 1) FWD(3, 4) FWD(3, 3) FWD(3, 2) FWD(3, 1)
        FWD(2, 4) FWD(2, 3) FWD(2, 2) FWD(2, 1) FWD(1, 4) FWD(1, 3) FWD(1, 2) FWD(1, 1)
    }
#undef FWD
}

/* flat_conv on AVX-512: whole tiles (8 channels x 48 positions, else 6 or 4 x 64), then one
 * narrower tile (whole vectors and a masked last one) up to L rounded up to 8. A channel
 * block is block512_of(K) wide, as pack_weights packs it; an 8- or 6-block is never partial
 * (8 or 6 divides K). */
static TARGET512 void flat_conv512(int K, size_t R, const int *off, const float *xp,
                                   const float *wpk, float *yp, size_t Ls, size_t L)
{
    const int blk = block512_of(K), V = blk == 8 ? 3 : 4;
    const size_t L8 = (L + 7) & ~(size_t)7, t = (size_t)16 * V;
    for (int o = 0; o < K; o += blk) {
        const int ko = K - o < blk ? K - o : blk;
        const float *wp = wpk + (size_t)o * R;
        float *yo = yp + (size_t)o * Ls;
        size_t j = 0;
        for (; j + t <= L8; j += t)
            fwd_tile512(ko, V, R, off, xp + j, wp, yo + j, Ls, (__mmask16)0xFFFF);
        if (j < L8) {
            const size_t rem = L8 - j, v = (rem + 15) / 16, tail = rem - 16 * (v - 1);
            fwd_tile512(ko, (int)v, R, off, xp + j, wp, yo + j, Ls,
                        (__mmask16)((1u << tail) - 1u));
        }
    }
}

/* Yp[o][0 .. L) for every o < K (rows Ls apart; positions up to L rounded up to 8 are
 * written): sum over the R taps of wpk (pack_weights) times the strip of xp at off[r].
 * Whole tiles of 8 * vecs_of(K) positions, then one narrower tile for what is left. With
 * AVX-512 (conv_isa()), flat_conv512: the same bits. */
static TARGET void flat_conv(int K, size_t R, const int *off, const float *xp,
                             const float *wpk, float *yp, size_t Ls, size_t L)
{
    if (conv_isa() >= NNP_CONV_ISA_AVX512) {
        flat_conv512(K, R, off, xp, wpk, yp, Ls, L);
        return;
    }
    const int blk = block_of(K), V = vecs_of(K);
    const size_t t = (size_t)8 * V;
    for (int o = 0; o < K; o += blk) {
        const int ko = K - o < blk ? K - o : blk;
        const float *wp = wpk + (size_t)o * R;
        float *yo = yp + (size_t)o * Ls;
        size_t j = 0;
        for (; j + t <= L; j += t)
            fwd_tile(ko, V, R, off, xp + j, wp, yo + j, Ls);
        if (j < L)
            fwd_tile(ko, (int)((L - j + 7) / 8), R, off, xp + j, wp, yo + j, Ls);
    }
}

INLINE TARGET double hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return (double)_mm_cvtss_f32(s);
}

/* acc[o][t] += sum over the gn samples i of sum_{j < L} dyp_i[o*Ls + j] xp_i[off[t] + j] for
 * KO channels and NR taps (L a multiple of 8; sample i's buffers sx and sy floats after the
 * first): one set of register partial sums for the whole group, summed horizontally once. */
INLINE TARGET void dw_block(int KO, int NR, const float *dyp, size_t sy, size_t Ls, size_t L,
                            const float *xp, size_t sx, int gn, const size_t *off, double *acc,
                            size_t R)
{
    __m256 a[4][3];
    for (int o = 0; o < KO; o++)
        for (int t = 0; t < NR; t++)
            a[o][t] = _mm256_setzero_ps();
    for (int i = 0; i < gn; i++, xp += sx, dyp += sy) {
        const float *x0 = xp + off[0], *x1 = xp + off[NR > 1 ? 1 : 0];
        const float *x2 = xp + off[NR > 2 ? 2 : 0];
        for (size_t j = 0; j < L; j += 8) {
            __m256 xv[3];
            xv[0] = _mm256_loadu_ps(x0 + j);
            if (NR > 1)
                xv[1] = _mm256_loadu_ps(x1 + j);
            if (NR > 2)
                xv[2] = _mm256_loadu_ps(x2 + j);
            for (int o = 0; o < KO; o++) {
                const __m256 d = _mm256_loadu_ps(dyp + (size_t)o * Ls + j);
                for (int t = 0; t < NR; t++)
                    a[o][t] = _mm256_fmadd_ps(d, xv[t], a[o][t]);
            }
        }
    }
    for (int o = 0; o < KO; o++)
        for (int t = 0; t < NR; t++)
            acc[(size_t)o * R + t] += hsum(a[o][t]);
}

/* dw_block on AVX-512 for KO channels and six taps: each register holds two taps' 8-lane
 * partial sums (tap 2p in the low half, 2p + 1 in the high), so every lane does the same
 * FMAs in the same order as dw_block's and the halves' horizontal sums are hsum's: the same
 * bits, with half the FMA instructions. */
INLINE TARGET512 void dw_block512(int KO, const float *dyp, size_t sy, size_t Ls, size_t L,
                                  const float *xp, size_t sx, int gn, const size_t *off,
                                  double *acc, size_t R)
{
    __m512 a[4][3];
    for (int o = 0; o < KO; o++)
        for (int t = 0; t < 3; t++)
            a[o][t] = _mm512_setzero_ps();
    for (int i = 0; i < gn; i++, xp += sx, dyp += sy) {
        const float *x[6];
        for (int t = 0; t < 6; t++)
            x[t] = xp + off[t];
        for (size_t j = 0; j < L; j += 8) {
            __m512 xv[3];
            for (int t = 0; t < 3; t++)
                xv[t] = _mm512_castpd_ps(_mm512_insertf64x4(
                    _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(x[2 * t] + j))),
                    _mm256_castps_pd(_mm256_loadu_ps(x[2 * t + 1] + j)), 1));
            for (int o = 0; o < KO; o++) {
                const __m256 d8 = _mm256_loadu_ps(dyp + (size_t)o * Ls + j);
                const __m512 d = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(d8)));
                for (int t = 0; t < 3; t++)
                    a[o][t] = _mm512_fmadd_ps(d, xv[t], a[o][t]);
            }
        }
    }
    for (int o = 0; o < KO; o++)
        for (int t = 0; t < 3; t++) {
            acc[(size_t)o * R + 2 * t] += hsum(_mm512_castps512_ps256(a[o][t]));
            acc[(size_t)o * R + 2 * t + 1] +=
                hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[o][t]), 1)));
        }
}

/* The taps [0, R6) of every channel on dw_block512, R6 = R rounded down to a multiple of 6;
 * returns R6 (flat_dw does the rest). */
static TARGET512 size_t flat_dw512(int K, size_t R, const int *off, const float *xp, size_t sx,
                                   const float *dyp, size_t sy, int gn, size_t Ls, size_t L8,
                                   double *acc)
{
    const size_t R6 = R / 6 * 6;
    for (int o = 0; o < K; o += 4) {
        const int ko = K - o < 4 ? K - o : 4;
        const float *d = dyp + (size_t)o * Ls;
        for (size_t r = 0; r < R6; r += 6) {
            size_t o6[6];
            for (int t = 0; t < 6; t++)
                o6[t] = (size_t)off[r + (size_t)t];
            double *ac = acc + (size_t)o * R + r;
            switch (ko) {
            case 4: dw_block512(4, d, sy, Ls, L8, xp, sx, gn, o6, ac, R); break;
            case 3: dw_block512(3, d, sy, Ls, L8, xp, sx, gn, o6, ac, R); break;
            case 2: dw_block512(2, d, sy, Ls, L8, xp, sx, gn, o6, ac, R); break;
            default: dw_block512(1, d, sy, Ls, L8, xp, sx, gn, o6, ac, R); break;
            }
        }
    }
    return R6;
}

/* acc[K][R] += the weight gradient of a group of gn samples (see the header comment), their
 * padded inputs sx floats apart and their dYp sy apart: dYp's rows Ls apart, zero from L on,
 * so the sums stop at L rounded up to 8. With AVX-512 (conv_isa()), flat_dw512 takes the
 * taps in sixes first and dw_block the rest: the same bits. */
static TARGET void flat_dw(int K, size_t R, const int *off, const float *xp, size_t sx,
                           const float *dyp, size_t sy, int gn, size_t Ls, size_t L, double *acc)
{
    const size_t L8 = (L + 7) & ~(size_t)7;
    const size_t r0 = conv_isa() >= NNP_CONV_ISA_AVX512
                          ? flat_dw512(K, R, off, xp, sx, dyp, sy, gn, Ls, L8, acc)
                          : 0;
    for (int o = 0; o < K; o += 4) {
        const int ko = K - o < 4 ? K - o : 4;
        size_t r = r0;
        for (; r < R; r += 3) {
            const int nr = R - r < 3 ? (int)(R - r) : 3;
            size_t o3[3] = {(size_t)off[r], (size_t)off[r], (size_t)off[r]};
            for (int t = 1; t < nr; t++)
                o3[t] = (size_t)off[r + (size_t)t];
            const float *d = dyp + (size_t)o * Ls;
            double *ac = acc + (size_t)o * R + r;
#define DW_CASE(KO_)                                                                    \
    case KO_:                                                                           \
        if (nr == 3)                                                                    \
            dw_block(KO_, 3, d, sy, Ls, L8, xp, sx, gn, o3, ac, R);                     \
        else if (nr == 2)                                                               \
            dw_block(KO_, 2, d, sy, Ls, L8, xp, sx, gn, o3, ac, R);                     \
        else                                                                            \
            dw_block(KO_, 1, d, sy, Ls, L8, xp, sx, gn, o3, ac, R);                     \
        break;
            switch (ko) {
                DW_CASE(4)
                DW_CASE(3)
                DW_CASE(2)
                DW_CASE(1)
            }
#undef DW_CASE
        }
    }
}

#else /* no AVX2 build: conv2d.c never takes this path */

int nnp_conv_direct_available(void) { return 0; }
void nnp_conv2d_set_isa(nnp_conv_isa isa) { (void)isa; }
nnp_conv_isa nnp_conv2d_isa(void) { return NNP_CONV_ISA_NONE; }

static void flat_conv(int K, size_t R, const int *off, const float *xp, const float *wpk,
                      float *yp, size_t Ls, size_t L)
{
    (void)K; (void)R; (void)off; (void)xp; (void)wpk; (void)yp; (void)Ls; (void)L;
}

static void flat_dw(int K, size_t R, const int *off, const float *xp, size_t sx,
                    const float *dyp, size_t sy, int gn, size_t Ls, size_t L, double *acc)
{
    (void)K; (void)R; (void)off; (void)xp; (void)sx; (void)dyp; (void)sy; (void)gn; (void)Ls;
    (void)L; (void)acc;
}

#endif

/* The rows u (or columns) of a phase a of stride s that land in an image of n pixels
 * padded by p: u in [lo, hi), hi at most cap (the phase grid's size). */
static void phase_range(int n, int p, int a, int s, int cap, int *lo, int *hi)
{
    *lo = p - a <= 0 ? 0 : (p - a + s - 1) / s;
    *hi = n - 1 + p - a < 0 ? 0 : (n - 1 + p - a) / s + 1;
    *hi = *hi > cap ? cap : *hi;
}

/* dst[2j] = E[j], dst[2j + 1] = O[j] for the W floats of a row */
static void interleave_row(const float *E, const float *O, int W, float *dst)
{
    int j = 0;
#if NNP_HAVE_DIRECT && defined(__SSE2__)
    for (; 2 * j + 8 <= W; j += 4) {
        const __m128 e = _mm_loadu_ps(E + j), o = _mm_loadu_ps(O + j);
        _mm_storeu_ps(dst + 2 * j, _mm_unpacklo_ps(e, o));
        _mm_storeu_ps(dst + 2 * j + 4, _mm_unpackhi_ps(e, o));
    }
#endif
    for (; 2 * j < W; j++) {
        dst[2 * j] = E[j];
        if (2 * j + 1 < W)
            dst[2 * j + 1] = O[j];
    }
}

/* Stride s > 1, one sample's input gradient: for each phase (a, b) the stride-1
 * convolution of dyq (dy padded by q) with that phase's taps (wpk, offq as the backward
 * packs them) gives dx at the input pixels (s*u + a - p, s*v + b - p), u < Hs, v < Ws;
 * every other pixel of dxn (read by no output) is zero. Stride 2 with every pixel read (all
 * four phases have taps and reach the image's edges: resnet8's 3x3 stride-2 layers): the
 * four strips first, then each row of dx interleaved from two of them (its even and odd
 * pixels), no zeroing; the same values as the general scatter. */
static void phase_dx(const nnp_conv_geom *g, const grid *d, const float *dyq, const float *wpk,
                     const int *offq, float *dxp, float *dxn)
{
    const int C = g->C, K = g->K, k = g->k, s = g->s, H = g->H, W = g->W, p = g->p;
    int rows = 0, cols = 0;
    for (int a = 0; a < s && a < k; a++) {
        int lo, hi;
        phase_range(H, p, a, s, d->Hp, &lo, &hi);
        rows += hi > lo ? hi - lo : 0;
        phase_range(W, p, a, s, d->Wp, &lo, &hi);
        cols += hi > lo ? hi - lo : 0;
    }
    const int all4 = s == 2 && k >= 2 && rows == H && cols == W;
    size_t wbase = 0, obase = 0;
    if (!all4)
        memset(dxn, 0, (size_t)C * H * W * sizeof *dxn);
    for (int a = 0; a < s; a++)
        for (int b = 0; b < s; b++) {
            const int na = a < k ? (k - 1 - a) / s + 1 : 0;
            const int nb = b < k ? (k - 1 - b) / s + 1 : 0;
            const size_t Rab = (size_t)K * na * nb;
            if (!Rab)
                continue;
            float *strip = all4 ? dxp + (size_t)(a * 2 + b) * C * d->Lq : dxp;
            flat_conv(C, Rab, offq + obase, dyq, wpk + wbase, strip, d->Lq,
                      (size_t)d->Hp * d->Wq);
            wbase += (size_t)C * Rab;
            obase += Rab;
            if (all4)
                continue;
            int ulo, uhi, vlo, vhi;
            phase_range(H, p, a, s, d->Hp, &ulo, &uhi);
            phase_range(W, p, b, s, d->Wp, &vlo, &vhi);
            for (int c = 0; c < C; c++) {
                const float *src = dxp + (size_t)c * d->Lq;
                float *dst = dxn + (size_t)c * H * W;
                for (int u = ulo; u < uhi; u++) {
                    const float *sr = src + (size_t)u * d->Wq;
                    float *dr = dst + (size_t)(s * u + a - p) * W;
                    for (int v = vlo; v < vhi; v++)
                        dr[s * v + b - p] = sr[v];
                }
            }
        }
    if (!all4)
        return;
    /* pixel (h, w): phase (a, b) = ((h + p) % 2, (w + p) % 2) at (u, v) = ((h + p) / 2,
     * (w + p) / 2); the even pixels w = 2j of a row come from phase b = p % 2 at v = j + p/2,
     * the odd ones from the other phase at v = j + (p + 1 - b) / 2 */
    const int be = p & 1, bo = be ^ 1, ve = p >> 1, vo = (1 + p - bo) >> 1;
    for (int c = 0; c < C; c++)
        for (int h = 0; h < H; h++) {
            const int a = (h + p) & 1;
            const size_t row = (size_t)c * d->Lq + (size_t)((h + p) >> 1) * d->Wq;
            interleave_row(dxp + (size_t)(2 * a + be) * C * d->Lq + row + ve,
                           dxp + (size_t)(2 * a + bo) * C * d->Lq + row + vo, W,
                           dxn + ((size_t)c * H + h) * W);
        }
}

/* One sample's output strip (K channels, rows Wp apart) plus the bias, through relu and 2x2
 * max pooling of stride 2: yq[o][ph][pw] and its argmax, the index oh*OW + ow in the conv's
 * OH x OW plane. The values and compares are those of direct_forward's copy loop followed by
 * nnp_maxpool_relu_forward (y = strip + bias in float, relu as maxps(y, 0), the first
 * maximum of the window in row-major order), so the bits are the same. */
static void pool_strip(int K, int OH, int OW, int Wp, size_t Ls, const float *yp, const float *b,
                       float *yq, int *am)
{
    const int PH = OH / 2, PW = OW / 2;
    for (int o = 0; o < K; o++) {
        const float bo = b ? b[o] : 0.0f;
        const float *src = yp + (size_t)o * Ls;
        float *yo = yq + (size_t)o * PH * PW;
        int *ao = am + (size_t)o * PH * PW;
        for (int ph = 0; ph < PH; ph++) {
            const float *r0 = src + (size_t)2 * ph * Wp, *r1 = r0 + Wp;
            float *yr = yo + (size_t)ph * PW;
            int *ar = ao + (size_t)ph * PW;
            const int base = 2 * ph * OW;
            int pw = 0;
#if NNP_HAVE_DIRECT && defined(__SSE2__)
            const __m128 vb = _mm_set1_ps(bo), z = _mm_setzero_ps();
            /* four windows at a time; a row whose count is not a multiple of 4 ends with
             * the last four windows, recomputing some with the same values */
            for (int last = 0; PW >= 4 && !last; pw = pw + 4 <= PW - 4 ? pw + 4 : PW - 4) {
                last = pw == PW - 4;
                const __m128 p0 = _mm_max_ps(_mm_add_ps(_mm_loadu_ps(r0 + 2 * pw), vb), z);
                const __m128 p1 = _mm_max_ps(_mm_add_ps(_mm_loadu_ps(r0 + 2 * pw + 4), vb), z);
                const __m128 q0 = _mm_max_ps(_mm_add_ps(_mm_loadu_ps(r1 + 2 * pw), vb), z);
                const __m128 q1 = _mm_max_ps(_mm_add_ps(_mm_loadu_ps(r1 + 2 * pw + 4), vb), z);
                __m128i idx;
                _mm_storeu_ps(yr + pw, nnp_pool2x2_max4(p0, p1, q0, q1, OW, base + 2 * pw, &idx));
                _mm_storeu_si128((__m128i *)(ar + pw), idx);
            }
            if (PW >= 4)
                continue;
#endif
            for (; pw < PW; pw++) {
                float v[4] = {r0[2 * pw] + bo, r0[2 * pw + 1] + bo, r1[2 * pw] + bo,
                              r1[2 * pw + 1] + bo};
                const int offs[4] = {0, 1, OW, OW + 1};
                float m = v[0] > 0.0f ? v[0] : 0.0f;
                int off = 0;
                for (int q = 1; q < 4; q++) {
                    const float r = v[q] > 0.0f ? v[q] : 0.0f;
                    off = r > m ? offs[q] : off;
                    m = r > m ? r : m;
                }
                yr[pw] = m;
                ar[pw] = base + 2 * pw + off;
            }
        }
    }
}

/* The forward, each sample's output strip then either copied into y with the bias (yq
 * NULL) or pooled into yq and argmax (pool_strip). */
static void direct_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                           const float *b, float *y, float *yq, int *argmax, float *ws)
{
    const grid d = grid_of(g);
    const int C = g->C, K = g->K, OH = g->OH, OW = g->OW;
    const size_t kr = (size_t)K * d.R, nq = (size_t)K * (OH / 2) * (OW / 2);
    float *wpk = ws + 3 * kr, *xp = ws + head_of(g), *yp = xp + d.nxp;
    int *off = (int *)(ws + 4 * kr);
    const size_t nx = (size_t)C * g->H * g->W, OHW = (size_t)OH * OW;
    pack_weights(K, d.R, W, wpk);
    tap_offsets(C, g->k, g->s, d.Wp, d.Cs, off);
    for (int n = 0; n < B; n++) {
        load_input(g, &d, x + (size_t)n * nx, xp, n == 0);
        flat_conv(K, d.R, off, xp, wpk, yp, d.Ls, (size_t)OH * d.Wp);
        if (yq) {
            pool_strip(K, OH, OW, d.Wp, d.Ls, yp, b, yq + (size_t)n * nq, argmax + (size_t)n * nq);
            continue;
        }
        for (int o = 0; o < K; o++) {
            const float *src = yp + (size_t)o * d.Ls;
            float *dst = y + ((size_t)n * K + o) * OHW;
            const float bo = b ? b[o] : 0.0f;
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++)
                    dst[(size_t)oh * OW + ow] = src[(size_t)oh * d.Wp + ow] + bo;
        }
    }
}

void nnp_conv_direct_forward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                             const float *b, float *y, float *ws)
{
    direct_forward(g, B, x, W, b, y, NULL, NULL, ws);
}

void nnp_conv_direct_forward_pool(const nnp_conv_geom *g, int B, const float *x, const float *W,
                                  const float *b, float *yq, int *argmax, float *ws)
{
    direct_forward(g, B, x, W, b, NULL, yq, argmax, ws);
}

void nnp_conv_direct_backward(const nnp_conv_geom *g, int B, const float *x, const float *W,
                              const float *dy, float *dx, float *dW, float *db, float *ws)
{
    const grid d = grid_of(g);
    const int C = g->C, K = g->K, k = g->k, OH = g->OH, OW = g->OW;
    const size_t R = d.R, kr = (size_t)K * R;
    double *acc = (double *)ws;
    float *wt = ws + 2 * kr, *wpk = ws + 3 * kr, *xp = ws + head_of(g);
    float *yp = xp + (size_t)d.G * d.nxp; /* G samples' xp, then G samples' dYp */
    float *dyq = yp + (size_t)d.G * d.nyp, *dxp = dyq + d.ndyq;
    int *off = (int *)(ws + 4 * kr), *offq = off + R;
    const size_t nx = (size_t)C * g->H * g->W, OHW = (size_t)OH * OW;
    if (db)
        nnp_conv_bias_grad(B, K, OHW, dy, db);
    if (dW)
        memset(acc, 0, kr * sizeof *acc);
    if (dx && g->s > 1) {
        /* per phase (a, b) of the input: its own tap list (o, ti, tj) over dy padded by q,
         * Wt_ab[c][(o*na + ti)*nb + tj] = W[o][c][s*ti + a][s*tj + b], packed */
        const int s = g->s;
        size_t wbase = 0, obase = 0;
        for (int a = 0; a < s; a++)
            for (int b = 0; b < s; b++) {
                const int na = a < k ? (k - 1 - a) / s + 1 : 0;
                const int nb = b < k ? (k - 1 - b) / s + 1 : 0;
                const size_t Rab = (size_t)K * na * nb;
                float *w = wt + wbase;
                int *oq = offq + obase;
                for (int c = 0; c < C; c++)
                    for (int o = 0; o < K; o++)
                        for (int ti = 0; ti < na; ti++)
                            for (int tj = 0; tj < nb; tj++)
                                w[(size_t)c * Rab + ((size_t)o * na + ti) * nb + tj] =
                                    W[(((size_t)o * C + c) * k + s * ti + a) * k + s * tj + b];
                for (int o = 0; o < K; o++)
                    for (int ti = 0; ti < na; ti++)
                        for (int tj = 0; tj < nb; tj++)
                            oq[((size_t)o * na + ti) * nb + tj] =
                                (int)((size_t)o * d.Cq + (size_t)(d.q - ti) * d.Wq +
                                      (size_t)(d.q - tj));
                if (Rab)
                    pack_weights(C, Rab, w, wpk + wbase);
                wbase += (size_t)C * Rab;
                obase += Rab;
            }
    } else if (dx) {
        /* Wt[c][o][ki][kj] = W[o][c][k-1-ki][k-1-kj] */
        for (int o = 0; o < K; o++)
            for (int c = 0; c < C; c++)
                for (int ki = 0; ki < k; ki++)
                    for (int kj = 0; kj < k; kj++)
                        wt[(((size_t)c * K + o) * k + ki) * k + kj] =
                            W[(((size_t)o * C + c) * k + (k - 1 - ki)) * k + (k - 1 - kj)];
        pack_weights(C, (size_t)K * k * k, wt, wpk);
        tap_offsets(K, k, 1, d.Wq, d.Cq, offq);
    }
    if (dW)
        tap_offsets(C, k, g->s, d.Wp, d.Cs, off);
    for (int n0 = 0; n0 < B; n0 += d.G) {
        const int gn = B - n0 < d.G ? B - n0 : d.G;
        if (dW) {
            /* G samples' padded inputs and dYp (dy on the padded grid, zero in the dropped
             * columns and the tail: each slot zeroed at its first use, never written after) */
            for (int i = 0; i < gn; i++) {
                const int n = n0 + i;
                float *xpi = xp + (size_t)i * d.nxp, *ypi = yp + (size_t)i * d.nyp;
                load_input(g, &d, x + (size_t)n * nx, xpi, n0 == 0);
                if (n0 == 0)
                    memset(ypi, 0, d.nyp * sizeof *ypi);
                for (int o = 0; o < K; o++) {
                    float *dst = ypi + (size_t)o * d.Ls;
                    const float *src = dy + ((size_t)n * K + o) * OHW;
                    for (int oh = 0; oh < OH; oh++)
                        copy_row(dst + (size_t)oh * d.Wp, src + (size_t)oh * OW, OW);
                }
            }
            flat_dw(K, R, off, xp, d.nxp, yp, d.nyp, gn, d.Ls, (size_t)OH * d.Wp, acc);
        }
        for (int n = n0; n < n0 + gn && dx; n++) {
            const float *dyn = dy + (size_t)n * K * OHW;
            pad_planes(K, OH, OW, d.q, dyn, dyq, d.ndyq - (size_t)K * d.Cq, n == 0);
            if (g->s > 1) {
                phase_dx(g, &d, dyq, wpk, offq, dxp, dx + (size_t)n * nx);
                continue;
            }
            flat_conv(C, (size_t)K * k * k, offq, dyq, wpk, dxp, d.Lq, (size_t)g->H * d.Wq);
            float *dxn = dx + (size_t)n * nx;
            for (int c = 0; c < C; c++) {
                const float *src = dxp + (size_t)c * d.Lq;
                float *dst = dxn + (size_t)c * g->H * g->W;
                for (int h = 0; h < g->H; h++)
                    copy_row(dst + (size_t)h * g->W, src + (size_t)h * d.Wq, g->W);
            }
        }
    }
    if (dW)
        for (size_t i = 0; i < kr; i++)
            dW[i] = (float)acc[i];
}

/* ---- the micro-kernels for the Winograd path (conv2d_winograd.c) ------------------------ */

void nnp_conv_pack_weights(int K, size_t R, const float *w, float *wpk)
{
    pack_weights(K, R, w, wpk);
}

void nnp_conv_flat_gemm(int K, size_t R, const int *off, const float *xp, const float *wpk,
                        float *yp, size_t Ls, size_t L)
{
    flat_conv(K, R, off, xp, wpk, yp, Ls, L);
}

void nnp_conv_flat_dw(int K, size_t R, const int *off, const float *xp, size_t sx,
                      const float *dyp, size_t sy, int gn, size_t Ls, size_t L, double *acc)
{
    flat_dw(K, R, off, xp, sx, dyp, sy, gn, Ls, L, acc);
}

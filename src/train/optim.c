/* optim.c - SGD (momentum, dampening, Nesterov, weight decay), Adam, AdamW, LARS and LAMB
 * over the flat parameter buffer (see optim.h, docs/optimizers.md).
 *
 * The update rules are those of torch.optim.SGD / Adam / AdamW in PyTorch 1.13 (single-tensor
 * path, amsgrad off, maximize off). The per-tensor preconditioner scale s_j multiplies the
 * raw gradient before anything else, fused into the same pass:
 *   d = s_j*grad + wd*p                        (SGD, Adam)
 * LARS reuses SGD's loops: its local rate lambda_j multiplies d = s_j*g + wd*p, which is the
 * same as running them with scale lambda_j*s_j and decay lambda_j*wd; with kept norms
 * (nnp_optim_keep_norms, as the trainer runs it) the update pass also sums the squares of
 * the new parameters, so the next step's first pass reads only the gradient. LAMB is two
 * passes over a tensor: the first updates the moments, keeps u in a scratch buffer and sums
 * ||w||^2 and ||u||^2, the second steps along the kept u.
 * Every inner loop is a straight pass over one tensor with loop-invariant float
 * coefficients, so the compiler can vectorize it; the step allocates nothing. The update
 * loops also OR the exponent bits of the new parameters (fin_bits), so every step knows,
 * at no extra pass, the first tensor whose parameters are no longer finite.
 */
#include "nnprec/optim.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nnprec/alloc.h"
#include "nnprec/precond.h"

nnp_status nnp_opt_parse(const char *name, nnp_opt_kind *out)
{
    if (name && strcmp(name, "sgd") == 0)
        *out = NNP_OPT_SGD;
    else if (name && strcmp(name, "adam") == 0)
        *out = NNP_OPT_ADAM;
    else if (name && strcmp(name, "adamw") == 0)
        *out = NNP_OPT_ADAMW;
    else if (name && strcmp(name, "lars") == 0)
        *out = NNP_OPT_LARS;
    else if (name && strcmp(name, "lamb") == 0)
        *out = NNP_OPT_LAMB;
    else
        return nnp_error(NNP_ERR_ARG,
                         "unknown optimizer '%s' (expected sgd, adam, adamw, lars, lamb)",
                         name ? name : "(null)");
    return NNP_OK;
}

const char *nnp_opt_name(nnp_opt_kind k)
{
    switch (k) {
    case NNP_OPT_SGD: return "sgd";
    case NNP_OPT_ADAM: return "adam";
    case NNP_OPT_ADAMW: return "adamw";
    case NNP_OPT_LARS: return "lars";
    case NNP_OPT_LAMB: return "lamb";
    }
    return "?";
}

/* The element-wise loops are compiled twice, for AVX2 and for the baseline, and the loader
 * picks one by the CPU (GCC's target_clones, as in norm.c). AVX2 only widens the vectors:
 * no FMA, and the sums keep their explicit lanes, so both clones give the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define NNP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NNP_CLONES
#endif

/* The sums of squares of LARS and LAMB have AVX2 and AVX-512 variants in intrinsics beside
 * the portable one, picked per call by the CPU (or narrower by nnp_optim_set_sums_isa, for
 * the tests that hold them all to the same bits). */
#if defined(__GNUC__) && defined(__x86_64__)
#define NNP_SUMS_AVX2 1
#include <immintrin.h>
#else
#define NNP_SUMS_AVX2 0
#endif

/* The finiteness check folded into every update loop: fin_bits(v) has bit 31 set exactly
 * when v is an inf or a nan (all exponent bits set: adding 1 to the exponent field carries
 * into bit 31). The loops OR it over their new parameters, which vectorizes like the update
 * itself; (acc >> 31) is then 1 when any of them is no longer finite. */
static inline uint32_t fin_bits(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x7f800000u) + 0x00800000u;
}

/* x in [lo, hi) and finite */
static int in_range(double x, double lo, double hi) { return x >= lo && x < hi; }

static nnp_status validate(const nnp_optim_cfg *c)
{
    if (!(isfinite(c->weight_decay) && c->weight_decay >= 0))
        return nnp_error(NNP_ERR_ARG, "weight decay must be >= 0 (got %g)", c->weight_decay);
    if (c->kind == NNP_OPT_LARS && !(isfinite(c->lars_eta) && c->lars_eta > 0))
        return nnp_error(NNP_ERR_ARG, "lars eta must be > 0 (got %g)", c->lars_eta);
    if (c->kind == NNP_OPT_LAMB && !(c->lamb_clip > 0)) /* +inf: no clip */
        return nnp_error(NNP_ERR_ARG, "lamb clip must be > 0 (got %g)", c->lamb_clip);
    if (c->kind == NNP_OPT_SGD || c->kind == NNP_OPT_LARS) {
        if (!in_range(c->momentum, 0.0, 1.0))
            return nnp_error(NNP_ERR_ARG, "momentum must be in [0, 1) (got %g)", c->momentum);
        if (!(c->dampening >= 0.0 && c->dampening <= 1.0))
            return nnp_error(NNP_ERR_ARG, "dampening must be in [0, 1] (got %g)",
                             c->dampening);
        /* torch.optim.SGD: "Nesterov momentum requires a momentum and zero dampening" */
        if (c->nesterov && (c->momentum <= 0.0 || c->dampening != 0.0))
            return nnp_error(NNP_ERR_ARG,
                             "nesterov requires momentum > 0 and dampening 0 (got momentum %g, "
                             "dampening %g)",
                             c->momentum, c->dampening);
        return NNP_OK;
    }
    if (c->nesterov)
        return nnp_error(NNP_ERR_ARG, "nesterov applies to sgd and lars only, not %s",
                         nnp_opt_name(c->kind));
    if (!in_range(c->beta1, 0.0, 1.0) || !in_range(c->beta2, 0.0, 1.0))
        return nnp_error(NNP_ERR_ARG, "adam betas must be in [0, 1) (got %g, %g)", c->beta1,
                         c->beta2);
    if (!(isfinite(c->eps) && c->eps > 0))
        return nnp_error(NNP_ERR_ARG, "adam eps must be > 0 (got %g)", c->eps);
    return NNP_OK;
}

nnp_status nnp_optim_init(nnp_optim *o, const nnp_optim_cfg *cfg, size_t n)
{
    if (!o || !cfg)
        return nnp_error(NNP_ERR_ARG, "nnp_optim_init: NULL argument");
    memset(o, 0, sizeof *o);
    o->nonfinite = -1;
    o->w2_t = -1;
    if ((unsigned)cfg->kind > (unsigned)NNP_OPT_LAMB)
        return nnp_error(NNP_ERR_ARG, "unknown optimizer kind %d", (int)cfg->kind);
    NNP_CALL(validate(cfg));
    o->cfg = *cfg;
    o->n = n;
    int adam = cfg->kind != NNP_OPT_SGD && cfg->kind != NNP_OPT_LARS;
    if (adam || cfg->momentum > 0) {
        o->buf1 = nnp_calloc(n, sizeof(float));
        if (!o->buf1)
            return NNP_ERR_NOMEM;
    }
    if (adam) {
        o->buf2 = nnp_calloc(n, sizeof(float));
        if (!o->buf2) {
            NNP_FREE(o->buf1);
            return NNP_ERR_NOMEM;
        }
    }
    if (cfg->kind == NNP_OPT_LAMB) {
        o->buf3 = nnp_calloc(n, sizeof(float));
        if (!o->buf3) {
            NNP_FREE(o->buf1);
            NNP_FREE(o->buf2);
            return NNP_ERR_NOMEM;
        }
    }
    return NNP_OK;
}

void nnp_optim_free(nnp_optim *o)
{
    if (!o)
        return;
    NNP_FREE(o->buf1);
    NNP_FREE(o->buf2);
    NNP_FREE(o->buf3);
    NNP_FREE(o->w2);
    o->n = 0;
    o->t = 0;
    o->w2_t = -1;
}

nnp_status nnp_optim_keep_norms(nnp_optim *o, int n_tensors)
{
    if (!o || n_tensors <= 0)
        return nnp_error(NNP_ERR_ARG, "nnp_optim_keep_norms: no optimizer or no tensors");
    /* LAMB's first pass reads the parameters anyway (for wd*p and its update), so summing
     * them there costs no memory traffic; kept, they measured no faster (docs/optimizers.md) */
    if (o->cfg.kind != NNP_OPT_LARS)
        return NNP_OK;
    NNP_FREE(o->w2);
    o->w2 = nnp_calloc((size_t)n_tensors, sizeof(double));
    o->w2_t = -1;
    return o->w2 ? NNP_OK : NNP_ERR_NOMEM;
}

void nnp_optim_params_changed(nnp_optim *o)
{
    if (o)
        o->w2_t = -1;
}

/* The update kernels return 1 when one of their new parameters is not finite (fin_bits). */

/* p <- p - lr*(s*g + wd*p) */
NNP_CLONES static int sgd_plain(size_t n, float *restrict p, const float *restrict g, float s, float wd,
                     float lr)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float v = p[i] - lr * (s * g[i] + wd * p[i]);
        p[i] = v;
        bad |= fin_bits(v);
    }
    return (int)(bad >> 31);
}

/* First momentum step: buf <- d (torch clones d_p into the buffer, no dampening). */
NNP_CLONES static int sgd_mom_first(size_t n, float *restrict p, const float *restrict g,
                         float *restrict buf, float s, float wd, float lr, float mom,
                         int nesterov)
{
    uint32_t bad = 0;
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            buf[i] = d;
            const float v = p[i] - lr * (d + mom * d);
            p[i] = v;
            bad |= fin_bits(v);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            buf[i] = d;
            const float v = p[i] - lr * d;
            p[i] = v;
            bad |= fin_bits(v);
        }
    }
    return (int)(bad >> 31);
}

/* buf <- mom*buf + (1-dampening)*d; step along buf, or d + mom*buf for Nesterov. */
NNP_CLONES static int sgd_mom(size_t n, float *restrict p, const float *restrict g, float *restrict buf,
                   float s, float wd, float lr, float mom, float one_m_damp, int nesterov)
{
    uint32_t bad = 0;
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            float b = mom * buf[i] + one_m_damp * d;
            buf[i] = b;
            const float v = p[i] - lr * (d + mom * b);
            p[i] = v;
            bad |= fin_bits(v);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float d = s * g[i] + wd * p[i];
            float b = mom * buf[i] + one_m_damp * d;
            buf[i] = b;
            const float v = p[i] - lr * b;
            p[i] = v;
            bad |= fin_bits(v);
        }
    }
    return (int)(bad >> 31);
}

/* Adam with (coupled) decay wd and AdamW's decoupled factor `keep` = 1 - lr*wd_decoupled:
 *   p <- keep*p; d = s*g + wd*p; m <- b1 m + (1-b1) d; v <- b2 v + (1-b2) d^2;
 *   p <- p - step * m / (sqrt(v) * inv_sqrt_bc2 + eps)
 * with c1 = 1-b1, c2 = 1-b2 (formed in double), step = lr/(1-b1^t) and
 * inv_sqrt_bc2 = 1/sqrt(1-b2^t), as torch's _single_tensor_adam. */
NNP_CLONES static int adam_update(size_t n, float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, float s, float wd, float keep, float b1, float c1,
                       float b2, float c2, float step, float inv_sqrt_bc2, float eps)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float pi = keep * p[i];
        float d = s * g[i] + wd * pi;
        float mi = b1 * m[i] + c1 * d;
        float vi = b2 * v[i] + c2 * d * d;
        m[i] = mi;
        v[i] = vi;
        const float w = pi - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        p[i] = w;
        bad |= fin_bits(w);
    }
    return (int)(bad >> 31);
}

void nnp_optim_want_sums(nnp_optim *o, double *sums, size_t lo, size_t hi)
{
    o->sums = sums;
    o->sums_lo = lo;
    o->sums_hi = hi;
}

/* The requested sums of tensor T right after its update, while it is still in cache. */
static void tensor_sums(nnp_optim *o, const nnp_net *net, int j)
{
    const nnp_tensor *T = &net->tensors[j];
    size_t a = T->off > o->sums_lo ? T->off : o->sums_lo;
    size_t b = T->off + T->n < o->sums_hi ? T->off + T->n : o->sums_hi;
    o->sums[2 * j] = o->sums[2 * j + 1] = 0.0;
    if (a < b)
        nnp_precond_range_sums(net->params, a, b, &o->sums[2 * j], &o->sums[2 * j + 1]);
}

/* ---- LARS and LAMB ------------------------------------------------------------------------ */

int nnp_optim_layerwise(nnp_opt_kind k) { return k == NNP_OPT_LARS || k == NNP_OPT_LAMB; }

/* a tensor that keeps ratio 1 and no weight decay under exclude_bias */
static int excluded(const nnp_optim_cfg *c, const nnp_tensor *T)
{
    return c->exclude_bias && (T->is_bias || T->ndim <= 1);
}

/* Sums of squares for the trust ratios, in a fixed order. Blocks of 32 elements: the
 * squares of two elements 16 apart are added in float (16 independent lanes, which
 * vectorize), and each block's 16 float sums go into eight double lanes; the tail and the
 * lanes are added in double. A square in float is within 2^-24 of the exact one and a
 * block adds two, so the sum is within about 1e-7 of the exact sum, relative (the
 * trust ratio takes its square root); it runs 1.5x as fast as squares formed and added in
 * double, whose eight lanes are eight chains of dependent additions. */
#if defined(__GNUC__)
/* GCC's vector extension (clang has it too): four floats, four doubles (SSE2 pairs in the
 * baseline clone, one AVX register in the AVX2 one). The scalar loops below left the
 * block's float-to-double additions to the scalar unit. */
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));

typedef struct {
    v4d lo, hi; /* lanes 0-3 and 4-7 */
} lanes8;

static inline v4f ld4(const float *x)
{
    v4f v;
    memcpy(&v, x, sizeof v);
    return v;
}

/* one block of 32: f[k] = x[k]^2 + x[k+16]^2 in float, then lane k += f[k] + f[k+8] */
static inline void block_sumsq(const float *x, lanes8 *l)
{
    v4f f[4];
    for (int q = 0; q < 4; q++) {
        const v4f a = ld4(x + 4 * q), b = ld4(x + 16 + 4 * q);
        f[q] = a * a + b * b;
    }
    l->lo += __builtin_convertvector(f[0], v4d) + __builtin_convertvector(f[2], v4d);
    l->hi += __builtin_convertvector(f[1], v4d) + __builtin_convertvector(f[3], v4d);
}

static inline double lanes8_sum(const lanes8 *l, double t)
{
    return ((l->lo[0] + l->lo[1]) + (l->lo[2] + l->lo[3])) +
           ((l->hi[0] + l->hi[1]) + (l->hi[2] + l->hi[3])) + t;
}
#else
typedef struct {
    double l[8];
} lanes8;

static inline void block_sumsq(const float *x, lanes8 *l)
{
    float f[16];
    for (int k = 0; k < 16; k++)
        f[k] = x[k] * x[k] + x[k + 16] * x[k + 16];
    for (int k = 0; k < 8; k++)
        l->l[k] += (double)f[k] + (double)f[k + 8];
}

static inline double lanes8_sum(const lanes8 *l, double t)
{
    return ((l->l[0] + l->l[1]) + (l->l[2] + l->l[3])) +
           ((l->l[4] + l->l[5]) + (l->l[6] + l->l[7])) + t;
}
#endif

#if NNP_SUMS_AVX2
/* The block in AVX2 intrinsics, the same operations in the same order (no FMA), so the same
 * bits as block_sumsq: here the block's 32 elements are in registers (x0..x3: elements 0-7
 * .. 24-31). From GCC's generic vectors the AVX2 clone made each 4-float to 4-double
 * conversion two 2-lane ones and an insert, with spills, and the two sums of squares were
 * most of LAMB's extra time over Adam. */
__attribute__((target("avx2"))) static inline void regs_sumsq_avx2(__m256 x0, __m256 x1,
                                                                   __m256 x2, __m256 x3,
                                                                   lanes8 *l)
{
    const __m256 f0 = _mm256_add_ps(_mm256_mul_ps(x0, x0), _mm256_mul_ps(x2, x2));
    const __m256 f1 = _mm256_add_ps(_mm256_mul_ps(x1, x1), _mm256_mul_ps(x3, x3));
    const __m256d lo = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f0)),
                                     _mm256_cvtps_pd(_mm256_castps256_ps128(f1)));
    const __m256d hi = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(f0, 1)),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(f1, 1)));
    l->lo = _mm256_add_pd(l->lo, lo);
    l->hi = _mm256_add_pd(l->hi, hi);
}

/* block_sumsq's block of 32 read from x */
__attribute__((target("avx2"))) static inline void block_sumsq_avx2(const float *x, lanes8 *l)
{
    regs_sumsq_avx2(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16),
                    _mm256_loadu_ps(x + 24), l);
}
#endif

#if NNP_SUMS_AVX2
/* The block in AVX-512: x0, x1 are elements 0-15 and 16-31, f[k] = x[k]^2 + x[k+16]^2 as in
 * block_sumsq, and its two halves converted to eight doubles each are added lane by lane:
 * lane k gets f[k] + f[k+8], which is lanes8's lo (k < 4) and hi (k >= 4) in order. So the
 * same operations in the same order as the other variants, the same bits (the C standard
 * mode compiles with -ffp-contract=off, so nothing is fused into an FMA), with half the
 * conversions: the float-to-double conversions, four per block in AVX2, were what bounded
 * the AVX2 sums (more independent chains of additions did not help; docs/optimizers.md).
 * lamb_moments_avx512 below is lamb_moments_avx2 at this width, kept apart as the
 * convolutions' ISA variants are: one shape, two register types. */
__attribute__((target("avx512f"))) static inline __m512d sumsq512(__m512 x0, __m512 x1,
                                                                  __m512d acc)
{
    const __m512 f = _mm512_add_ps(_mm512_mul_ps(x0, x0), _mm512_mul_ps(x1, x1));
    const __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(f));
    const __m512d b =
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
    return _mm512_add_pd(acc, _mm512_add_pd(a, b));
}

/* lanes8 to and from one register of eight doubles (lo in lanes 0-3, hi in 4-7) */
__attribute__((target("avx512f"))) static inline __m512d lanes8_get(const lanes8 *l)
{
    double d[8];
    memcpy(d, l, sizeof d);
    return _mm512_loadu_pd(d);
}

__attribute__((target("avx512f"))) static inline void lanes8_put(lanes8 *l, __m512d v)
{
    double d[8];
    _mm512_storeu_pd(d, v);
    memcpy(l, d, sizeof d);
}
#endif

/* the sums' instruction set: what the CPU runs, at most what nnp_optim_set_sums_isa asked */
static nnp_opt_sums_isa sums_want = NNP_OPT_SUMS_AUTO;

static nnp_opt_sums_isa sums_cpu(void)
{
#if NNP_SUMS_AVX2
    static int isa = -1;
    if (isa < 0)
        isa = __builtin_cpu_supports("avx512f") ? NNP_OPT_SUMS_AVX512
              : __builtin_cpu_supports("avx2")  ? NNP_OPT_SUMS_AVX2
                                                : NNP_OPT_SUMS_PORTABLE;
    return (nnp_opt_sums_isa)isa;
#else
    return NNP_OPT_SUMS_PORTABLE;
#endif
}

static nnp_opt_sums_isa sums_isa(void)
{
    const nnp_opt_sums_isa cpu = sums_cpu();
    return sums_want == NNP_OPT_SUMS_AUTO || sums_want > cpu ? cpu : sums_want;
}

nnp_opt_sums_isa nnp_optim_set_sums_isa(nnp_opt_sums_isa want)
{
    sums_want = (unsigned)want <= NNP_OPT_SUMS_AVX512 ? want : NNP_OPT_SUMS_AUTO;
    return sums_isa();
}

typedef void (*block_fn)(const float *x, lanes8 *l);

/* Adds the nblk blocks of 32 of x into l: the blocks of a longer sum, taken in pieces */
static inline __attribute__((always_inline)) void blocks_body(const float *x, size_t nblk,
                                                              lanes8 *l, block_fn block)
{
    lanes8 a = *l;
    for (size_t b = 0; b < nblk; b++)
        block(x + 32 * b, &a);
    *l = a;
}

#if NNP_SUMS_AVX2
__attribute__((target("avx2"))) static void blocks_avx2(const float *x, size_t nblk, lanes8 *l)
{
    blocks_body(x, nblk, l, block_sumsq_avx2);
}

__attribute__((target("avx512f"))) static void blocks_avx512(const float *x, size_t nblk,
                                                             lanes8 *l)
{
    __m512d a = lanes8_get(l);
    for (size_t b = 0; b < nblk; b++)
        a = sumsq512(_mm512_loadu_ps(x + 32 * b), _mm512_loadu_ps(x + 32 * b + 16), a);
    lanes8_put(l, a);
}
#endif

static void blocks_base(const float *x, size_t nblk, lanes8 *l)
{
    blocks_body(x, nblk, l, block_sumsq);
}

static void sumsq_blocks(const float *x, size_t nblk, lanes8 *l)
{
#if NNP_SUMS_AVX2
    const nnp_opt_sums_isa isa = sums_isa();
    if (isa == NNP_OPT_SUMS_AVX512) {
        blocks_avx512(x, nblk, l);
        return;
    }
    if (isa == NNP_OPT_SUMS_AVX2) {
        blocks_avx2(x, nblk, l);
        return;
    }
#endif
    blocks_base(x, nblk, l);
}

/* the sum of squares of x from its full blocks in l and the tail x[32*(n/32), n) in double */
static double sumsq_finish(const float *x, size_t n, const lanes8 *l)
{
    double t = 0;
    for (size_t i = n / 32 * 32; i < n; i++)
        t += (double)x[i] * (double)x[i];
    return lanes8_sum(l, t);
}

/* the sum of squares of x: blocks of 32 into eight lanes, then the tail */
static double sumsq1(const float *x, size_t n)
{
    lanes8 l = {0};
    sumsq_blocks(x, n / 32, &l);
    return sumsq_finish(x, n, &l);
}

/* The per-step constants of Adam's and LAMB's bias correction, formed in double as
 * adam_update's: step = lr/(1-b1^t), inv_sqrt_bc2 = 1/sqrt(1-b2^t). */
typedef struct {
    float b1, c1, b2, c2, inv_bc1, inv_sqrt_bc2, eps;
} lamb_coef;

static lamb_coef lamb_coefs(const nnp_optim_cfg *c, int64_t t)
{
    lamb_coef k;
    k.b1 = (float)c->beta1;
    k.c1 = (float)(1.0 - c->beta1);
    k.b2 = (float)c->beta2;
    k.c2 = (float)(1.0 - c->beta2);
    k.inv_bc1 = (float)(1.0 / (1.0 - pow(c->beta1, (double)t)));
    k.inv_sqrt_bc2 = (float)(1.0 / sqrt(1.0 - pow(c->beta2, (double)t)));
    k.eps = (float)c->eps;
    return k;
}

/* u = m_hat/(sqrt(v_hat) + eps) + wd*p */
static inline float lamb_u(const lamb_coef *k, float m, float v, float p, float wd)
{
    return m * k->inv_bc1 / (sqrtf(v) * k->inv_sqrt_bc2 + k->eps) + wd * p;
}

/* One element of LAMB's first pass: new moments, the update u into ub[e], and w^2, u^2
 * added into the caller's accumulators. */
static inline void lamb_elem(const float *p, const float *g, float *m, float *v, float *ub,
                             float s, float wd, const lamb_coef *k, size_t e, double *aw,
                             double *au)
{
    float d = s * g[e];
    float mi = k->b1 * m[e] + k->c1 * d;
    float vi = k->b2 * v[e] + k->c2 * d * d;
    m[e] = mi;
    v[e] = vi;
    float u = lamb_u(k, mi, vi, p[e], wd);
    ub[e] = u;
    *aw += (double)p[e] * (double)p[e];
    *au += (double)u * (double)u;
}

#if NNP_SUMS_AVX2
/* LAMB's pass-1 element rule on 8 elements, the operations of lamb_moments_base in its
 * order (no FMA); returns u and leaves p in *pv */
__attribute__((target("avx2"))) static inline __m256
lamb8_avx2(const float *p, const float *g, float *m, float *v, float *ub, __m256 s, __m256 wd,
           __m256 b1, __m256 c1, __m256 b2, __m256 c2, __m256 ib1, __m256 isb2, __m256 eps,
           __m256 *pv)
{
    const __m256 d = _mm256_mul_ps(s, _mm256_loadu_ps(g));
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m)), _mm256_mul_ps(c1, d));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v)),
                                    _mm256_mul_ps(_mm256_mul_ps(c2, d), d));
    _mm256_storeu_ps(m, mi);
    _mm256_storeu_ps(v, vi);
    const __m256 pp = _mm256_loadu_ps(p);
    const __m256 den = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vi), isb2), eps);
    const __m256 u = _mm256_add_ps(_mm256_div_ps(_mm256_mul_ps(mi, ib1), den),
                                   _mm256_mul_ps(wd, pp));
    _mm256_storeu_ps(ub, u);
    *pv = pp;
    return u;
}

/* LAMB pass 1 in AVX2 intrinsics: the same bits as lamb_moments_base, with each block's
 * weights and updates summed from the registers that computed them (no reload of u) */
__attribute__((target("avx2"))) static void
lamb_moments_avx2(size_t n, const float *restrict p, const float *restrict g, float *restrict m,
                  float *restrict v, float *restrict ub, float s, float wd, const lamb_coef *k,
                  double *w2, double *u2)
{
    const __m256 vs = _mm256_set1_ps(s), vwd = _mm256_set1_ps(wd);
    const __m256 b1 = _mm256_set1_ps(k->b1), c1 = _mm256_set1_ps(k->c1);
    const __m256 b2 = _mm256_set1_ps(k->b2), c2 = _mm256_set1_ps(k->c2);
    const __m256 ib1 = _mm256_set1_ps(k->inv_bc1), isb2 = _mm256_set1_ps(k->inv_sqrt_bc2);
    const __m256 eps = _mm256_set1_ps(k->eps);
    lanes8 lw = {0}, lu = {0};
    double tw = 0, tu = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 p0, p1, p2, p3;
        const __m256 u0 = lamb8_avx2(p + i, g + i, m + i, v + i, ub + i, vs, vwd, b1, c1, b2, c2,
                                     ib1, isb2, eps, &p0);
        const __m256 u1 = lamb8_avx2(p + i + 8, g + i + 8, m + i + 8, v + i + 8, ub + i + 8, vs,
                                     vwd, b1, c1, b2, c2, ib1, isb2, eps, &p1);
        const __m256 u2v = lamb8_avx2(p + i + 16, g + i + 16, m + i + 16, v + i + 16,
                                      ub + i + 16, vs, vwd, b1, c1, b2, c2, ib1, isb2, eps, &p2);
        const __m256 u3 = lamb8_avx2(p + i + 24, g + i + 24, m + i + 24, v + i + 24,
                                     ub + i + 24, vs, vwd, b1, c1, b2, c2, ib1, isb2, eps, &p3);
        regs_sumsq_avx2(p0, p1, p2, p3, &lw);
        regs_sumsq_avx2(u0, u1, u2v, u3, &lu);
    }
    for (; i < n; i++)
        lamb_elem(p, g, m, v, ub, s, wd, k, i, &tw, &tu);
    *w2 = lanes8_sum(&lw, tw);
    *u2 = lanes8_sum(&lu, tu);
}
#endif

#if NNP_SUMS_AVX2
/* LAMB's pass-1 element rule on 16 elements in AVX-512: lamb8_avx2's operations, each
 * correctly rounded lane by lane (sqrt and division included), so the same bits */
__attribute__((target("avx512f"))) static inline __m512
lamb16_avx512(const float *p, const float *g, float *m, float *v, float *ub, __m512 s,
              __m512 wd, __m512 b1, __m512 c1, __m512 b2, __m512 c2, __m512 ib1, __m512 isb2,
              __m512 eps, __m512 *pv)
{
    const __m512 d = _mm512_mul_ps(s, _mm512_loadu_ps(g));
    const __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m)), _mm512_mul_ps(c1, d));
    const __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v)),
                                    _mm512_mul_ps(_mm512_mul_ps(c2, d), d));
    _mm512_storeu_ps(m, mi);
    _mm512_storeu_ps(v, vi);
    const __m512 pp = _mm512_loadu_ps(p);
    const __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), isb2), eps);
    const __m512 u = _mm512_add_ps(_mm512_div_ps(_mm512_mul_ps(mi, ib1), den),
                                   _mm512_mul_ps(wd, pp));
    _mm512_storeu_ps(ub, u);
    *pv = pp;
    return u;
}

/* LAMB pass 1 in AVX-512: lamb_moments_avx2 with 16 elements a vector and the blocks' sums
 * of squares as blocks_avx512 takes them */
__attribute__((target("avx512f"))) static void
lamb_moments_avx512(size_t n, const float *restrict p, const float *restrict g,
                    float *restrict m, float *restrict v, float *restrict ub, float s, float wd,
                    const lamb_coef *k, double *w2, double *u2)
{
    const __m512 vs = _mm512_set1_ps(s), vwd = _mm512_set1_ps(wd);
    const __m512 b1 = _mm512_set1_ps(k->b1), c1 = _mm512_set1_ps(k->c1);
    const __m512 b2 = _mm512_set1_ps(k->b2), c2 = _mm512_set1_ps(k->c2);
    const __m512 ib1 = _mm512_set1_ps(k->inv_bc1), isb2 = _mm512_set1_ps(k->inv_sqrt_bc2);
    const __m512 eps = _mm512_set1_ps(k->eps);
    __m512d lw = _mm512_setzero_pd(), lu = _mm512_setzero_pd();
    double tw = 0, tu = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 p0, p1;
        const __m512 u0 = lamb16_avx512(p + i, g + i, m + i, v + i, ub + i, vs, vwd, b1, c1, b2,
                                        c2, ib1, isb2, eps, &p0);
        const __m512 u1 = lamb16_avx512(p + i + 16, g + i + 16, m + i + 16, v + i + 16,
                                        ub + i + 16, vs, vwd, b1, c1, b2, c2, ib1, isb2, eps,
                                        &p1);
        lw = sumsq512(p0, p1, lw);
        lu = sumsq512(u0, u1, lu);
    }
    for (; i < n; i++)
        lamb_elem(p, g, m, v, ub, s, wd, k, i, &tw, &tu);
    lanes8 a, b;
    lanes8_put(&a, lw);
    lanes8_put(&b, lu);
    *w2 = lanes8_sum(&a, tw);
    *u2 = lanes8_sum(&b, tu);
}
#endif

/* LAMB pass 1 over n elements: the moments of d = s*g, u into ub, and ||p||^2, ||u||^2
 * summed as sumsq1 does (blocks of 32: the element-wise part is a plain float loop over
 * each block, which vectorizes, sqrt and division included) */
static void lamb_moments_base(size_t n, const float *restrict p, const float *restrict g,
                              float *restrict m, float *restrict v, float *restrict ub, float s,
                              float wd, const lamb_coef *k, double *w2, double *u2)
{
    const float b1 = k->b1, c1 = k->c1, b2 = k->b2, c2 = k->c2, ib1 = k->inv_bc1;
    const float isb2 = k->inv_sqrt_bc2, eps = k->eps;
    lanes8 lw = {0}, lu = {0};
    double tw = 0, tu = 0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (size_t e = i; e < i + 32; e++) {
            const float d = s * g[e];
            const float mi = b1 * m[e] + c1 * d;
            const float vi = b2 * v[e] + c2 * d * d;
            m[e] = mi;
            v[e] = vi;
            ub[e] = mi * ib1 / (sqrtf(vi) * isb2 + eps) + wd * p[e];
        }
        block_sumsq(p + i, &lw);
        block_sumsq(ub + i, &lu);
    }
    for (; i < n; i++)
        lamb_elem(p, g, m, v, ub, s, wd, k, i, &tw, &tu);
    *w2 = lanes8_sum(&lw, tw);
    *u2 = lanes8_sum(&lu, tu);
}

static void lamb_moments(size_t n, const float *restrict p, const float *restrict g,
                         float *restrict m, float *restrict v, float *restrict ub, float s,
                         float wd, const lamb_coef *k, double *w2, double *u2)
{
#if NNP_SUMS_AVX2
    const nnp_opt_sums_isa isa = sums_isa();
    if (isa == NNP_OPT_SUMS_AVX512) {
        lamb_moments_avx512(n, p, g, m, v, ub, s, wd, k, w2, u2);
        return;
    }
    if (isa == NNP_OPT_SUMS_AVX2) {
        lamb_moments_avx2(n, p, g, m, v, ub, s, wd, k, w2, u2);
        return;
    }
#endif
    lamb_moments_base(n, p, g, m, v, ub, s, wd, k, w2, u2);
}

/* LAMB pass 2: p <- p - step*u with step = lr * trust ratio */
NNP_CLONES static int lamb_apply(size_t n, float *restrict p, const float *restrict u, float step)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float v = p[i] - step * u[i];
        p[i] = v;
        bad |= fin_bits(v);
    }
    return (int)(bad >> 31);
}

/* Pass 1 for the part [a, b) of tensor j: its two partial squared norms. kept (LARS):
 * ||w||^2 of the part as the last update pass summed it (nnp_optim_keep_norms), or NULL.
 * LAMB writes the part's update u at buf3 + ua. */
static void layer_norms(nnp_optim *o, const nnp_net *net, int j, size_t a, size_t b, float s,
                        const lamb_coef *k, const double *kept, size_t ua, double *n1,
                        double *n2)
{
    const nnp_optim_cfg *c = &o->cfg;
    const float *p = net->params + a, *g = net->grads + a;
    size_t n = b - a;
    if (c->kind == NNP_OPT_LARS) {
        *n1 = kept ? *kept : sumsq1(p, n);
        *n2 = sumsq1(g, n);
    } else {
        float wd = excluded(c, &net->tensors[j]) ? 0.0f : (float)c->weight_decay;
        lamb_moments(n, p, g, o->buf1 + a, o->buf2 + a, o->buf3 + ua, s, wd, k, n1, n2);
    }
}

/* LAMB's step lr * phi(||w||)/||u|| with phi(||w||) = min(||w||, clip); ratio 1 when either
 * norm is 0 or the tensor is excluded */
static float lamb_step(const nnp_optim_cfg *c, int ex, double w2, double u2, double lr)
{
    const double wn = sqrt(w2), un = sqrt(u2);
    const double ratio =
        ex || !(wn > 0 && un > 0) ? 1.0 : (wn < c->lamb_clip ? wn : c->lamb_clip) / un;
    return (float)(lr * ratio);
}

/* One pass-2 kernel over n elements from offset e of the part (a chunk of it); LAMB's u of
 * the part at buf3 + ua */
static int apply_chunk(nnp_optim *o, float *p, const float *g, size_t a, size_t ua, size_t e,
                       size_t n, float s, float wdl, float step)
{
    const nnp_optim_cfg *c = &o->cfg;
    if (c->kind == NNP_OPT_LAMB)
        return lamb_apply(n, p + e, o->buf3 + ua + e, step);
    const float mom = (float)c->momentum, one_m_damp = (float)(1.0 - c->dampening);
    if (!o->buf1)
        return sgd_plain(n, p + e, g + e, s, wdl, step);
    if (o->t == 1)
        return sgd_mom_first(n, p + e, g + e, o->buf1 + a + e, s, wdl, step, mom, c->nesterov);
    return sgd_mom(n, p + e, g + e, o->buf1 + a + e, s, wdl, step, mom, one_m_damp,
                   c->nesterov);
}

/* With kept norms, pass 2 runs in chunks of this many elements (a multiple of 32) and sums
 * the squares of each chunk's new parameters right after writing them: the chunk's 8 KB of
 * each array it touches (three for LARS with momentum) are still in L1. */
#define W2_CHUNK 2048

/* Pass 2 for the part [a, b) of tensor j with its global squared norms n1, n2; sd is
 * scale[j] in double. Returns 1 when a new parameter is not finite. With kept norms, it
 * also leaves ||w||^2 of the new parameters of the part in o->w2[j]. */
static int layer_apply(nnp_optim *o, nnp_net *net, int j, size_t a, size_t b, size_t ua,
                       double lr, double sd, double n1, double n2)
{
    const nnp_optim_cfg *c = &o->cfg;
    const int ex = excluded(c, &net->tensors[j]);
    const double wd = ex ? 0.0 : c->weight_decay;
    const double wn = sqrt(n1);
    float *p = net->params + a;
    const float *g = net->grads + a;
    size_t n = b - a;
    float s = 0.0f, wdl = 0.0f, step;
    if (c->kind == NNP_OPT_LARS) {
        /* the local rate multiplies d = s*g + wd*p before the momentum buffer (Algorithm 1:
         * v <- m*v + gamma*lambda*(g + beta*w)); ||s*g|| = |s|*||g|| */
        const double gn = fabs(sd) * sqrt(n2);
        const double lam = ex || !(wn > 0 && gn > 0) ? 1.0 : c->lars_eta * wn / (gn + wd * wn);
        s = (float)(lam * sd);
        wdl = (float)(lam * wd);
        step = (float)lr;
    } else
        step = lamb_step(c, ex, n1, n2, lr);
    if (!o->w2)
        return apply_chunk(o, p, g, a, ua, 0, n, s, wdl, step);
    int bad = 0;
    lanes8 l = {0};
    for (size_t e = 0; e < n; e += W2_CHUNK) {
        const size_t m = n - e < W2_CHUNK ? n - e : W2_CHUNK;
        bad |= apply_chunk(o, p, g, a, ua, e, m, s, wdl, step);
        sumsq_blocks(p + e, m / 32, &l);
    }
    o->w2[j] = sumsq_finish(p, n, &l);
    return bad;
}

/* whether the kept norms are those of the parameters the step in [lo, hi) starts from:
 * asked before the step counter advances */
static int kept_valid(const nnp_optim *o, const nnp_net *net, size_t lo, size_t hi)
{
    return o->w2 && o->w2_t >= 0 && o->w2_t == o->t && o->w2_params == net->params &&
           o->w2_lo == lo && o->w2_hi == hi;
}

/* after a pass 2 over [lo, hi): the kept norms are those of this step's parameters (only
 * the tensors in the range have one; no other is read) */
static void kept_stamp(nnp_optim *o, const nnp_net *net, size_t lo, size_t hi)
{
    if (!o->w2)
        return;
    o->w2_t = o->t;
    o->w2_params = net->params;
    o->w2_lo = lo;
    o->w2_hi = hi;
}

void nnp_optim_norms_range(nnp_optim *o, const nnp_net *net, const double *scale, size_t lo,
                           size_t hi, double *part)
{
    const int kept = kept_valid(o, net, lo, hi);
    int64_t t = ++o->t;
    lamb_coef k = lamb_coefs(&o->cfg, t);
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *T = &net->tensors[j];
        size_t a = T->off > lo ? T->off : lo, b = T->off + T->n < hi ? T->off + T->n : hi;
        part[2 * j] = part[2 * j + 1] = 0.0;
        if (a < b)
            layer_norms(o, net, j, a, b, scale ? (float)scale[j] : 1.0f, &k,
                        kept ? &o->w2[j] : NULL, a, &part[2 * j], &part[2 * j + 1]);
    }
}

void nnp_optim_apply_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                           size_t lo, size_t hi, const double *norms)
{
    o->nonfinite = -1;
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *T = &net->tensors[j];
        size_t a = T->off > lo ? T->off : lo, b = T->off + T->n < hi ? T->off + T->n : hi;
        if (a < b && layer_apply(o, net, j, a, b, a, lr, scale ? scale[j] : 1.0, norms[2 * j],
                                 norms[2 * j + 1]) &&
            o->nonfinite < 0)
            o->nonfinite = j;
        if (o->sums)
            tensor_sums(o, net, j);
    }
    o->sums = NULL;
    kept_stamp(o, net, lo, hi);
}

/* LARS/LAMB on [lo, hi) with each tensor's norms over its part in the range: both passes
 * over one tensor before the next, while it is in cache. LAMB's u lives only from one pass
 * to the next, so every tensor's goes to the start of buf3: the u of one tensor (at most
 * 800 KB on the MLPs here) stays hot in cache between the passes instead of a whole model's
 * worth going to memory and back. */
static void layerwise_step_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                                 size_t lo, size_t hi)
{
    const int kept = kept_valid(o, net, lo, hi);
    int64_t t = ++o->t;
    lamb_coef k = lamb_coefs(&o->cfg, t);
    o->nonfinite = -1;
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *T = &net->tensors[j];
        size_t a = T->off > lo ? T->off : lo, b = T->off + T->n < hi ? T->off + T->n : hi;
        if (a < b) {
            double sd = scale ? scale[j] : 1.0, n1, n2;
            layer_norms(o, net, j, a, b, (float)sd, &k, kept ? &o->w2[j] : NULL, 0, &n1, &n2);
            if (layer_apply(o, net, j, a, b, 0, lr, sd, n1, n2) && o->nonfinite < 0)
                o->nonfinite = j;
        }
        if (o->sums)
            tensor_sums(o, net, j);
    }
    o->sums = NULL;
    kept_stamp(o, net, lo, hi);
}

void nnp_optim_step(nnp_optim *o, nnp_net *net, double lr, const double *scale)
{
    nnp_optim_step_range(o, net, lr, scale, 0, net->n_params);
}

void nnp_optim_step_range(nnp_optim *o, nnp_net *net, double lr, const double *scale,
                          size_t lo, size_t hi)
{
    if (nnp_optim_layerwise(o->cfg.kind)) {
        layerwise_step_range(o, net, lr, scale, lo, hi);
        return;
    }
    const nnp_optim_cfg *c = &o->cfg;
    int64_t t = ++o->t;
    float flr = (float)lr;
    float wd = (float)c->weight_decay, mom = (float)c->momentum;
    float one_m_damp = (float)(1.0 - c->dampening);
    double b1 = c->beta1, b2 = c->beta2;
    double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    int adamw = c->kind == NNP_OPT_ADAMW;
    float awd = adamw ? 0.0f : wd;
    float keep = adamw ? (float)(1.0 - lr * c->weight_decay) : 1.0f;
    float step = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    o->nonfinite = -1;
    for (int j = 0; j < net->n_tensors; j++) {
        const nnp_tensor *T = &net->tensors[j];
        /* the part [a, b) of tensor j inside [lo, hi) */
        size_t a = T->off > lo ? T->off : lo, b = T->off + T->n < hi ? T->off + T->n : hi;
        if (a < b) {
            size_t n = b - a;
            float s = scale ? (float)scale[j] : 1.0f;
            float *p = net->params + a;
            const float *g = net->grads + a;
            int bad;
            if (c->kind != NNP_OPT_SGD)
                bad = adam_update(n, p, g, o->buf1 + a, o->buf2 + a, s, awd, keep, (float)b1,
                                  (float)(1.0 - b1), (float)b2, (float)(1.0 - b2), step,
                                  inv_sqrt_bc2, (float)c->eps);
            else if (!o->buf1)
                bad = sgd_plain(n, p, g, s, wd, flr);
            else if (t == 1)
                bad = sgd_mom_first(n, p, g, o->buf1 + a, s, wd, flr, mom, c->nesterov);
            else
                bad = sgd_mom(n, p, g, o->buf1 + a, s, wd, flr, mom, one_m_damp, c->nesterov);
            if (bad && o->nonfinite < 0)
                o->nonfinite = j;
        }
        if (o->sums)
            tensor_sums(o, net, j);
    }
    o->sums = NULL;
}

/* cmd_bench.c - `nnprec bench`: the GEMM ceiling of a model's dense layers, the time of
 * each layer of the real network (--layers), and the gradient allreduce alone
 * (--allreduce-mb).
 *
 * For every dense layer of the model (out x in, batch B) a training step does three
 * products: forward y = x W^T (B x out x in), weight gradient dW = dy^T x (out x in x B)
 * and input gradient dx = dy W (B x in x out; skipped for the first layer, as the trainer
 * does). This command times exactly those cblas_sgemm calls, alone, with the BLAS threads
 * in force, and prints their GFLOP/s and the step time they would take. The speed
 * benchmark (scripts/bench_speed.py) divides the trainer's achieved GFLOP/s by this figure.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "nnprec/alloc.h"
#include "nnprec/data.h"
#include "nnprec/init.h"
#include "nnprec/net.h"
#include "nnprec/optim.h"
#include "nnprec/options.h"

char *openblas_get_corename(void);
char *openblas_get_config(void);
int openblas_get_num_threads(void);

static struct {
    char model[NNP_OPT_STRLEN], act[NNP_OPT_STRLEN], allreduce[NNP_OPT_STRLEN];
    char collective[NNP_OPT_STRLEN];
    int batch, reps, threads, layers, optim;
    double chunk_mb;
} B;

static nnp_option bench_opts[] = {
    {"model", NNP_OPTT_STR, B.model, "mlp:784-1024x4-10", "model spec (docs/models.md)", 0},
    {"act", NNP_OPTT_STR, B.act, "relu", "activation for mlp specs", 0},
    {"batch", NNP_OPTT_INT, &B.batch, "256", "batch size", 0},
    {"reps", NNP_OPTT_INT, &B.reps, "20", "timed repetitions of each product", 0},
    {"threads", NNP_OPTT_INT, &B.threads, "1", "BLAS threads (0: leave OpenBLAS's setting)", 0},
    {"layers", NNP_OPTT_FLAG, &B.layers, "0",
     "instead: time each layer's forward and backward in the network itself (the kernels "
     "each convolution runs are named; NNPREC_CONV_PATH=gemm|direct|winograd forces one)", 0},
    {"optim", NNP_OPTT_FLAG, &B.optim, "0",
     "instead: time one step of each optimizer (sgd, lars, adam, lamb) over the model's "
     "parameters, interleaved, against the layers' forward + backward of --batch", 0},
    {"allreduce-mb", NNP_OPTT_STR, B.allreduce, "",
     "instead: time the gradient allreduce for these sizes in MiB (e.g. 0.25,1,4,16), all ranks",
     0},
    {"chunk-mb", NNP_OPTT_DOUBLE, &B.chunk_mb, "4", "allreduce chunk size in MiB (as --bucket-mb)",
     0},
    {"collective", NNP_OPTT_STR, B.collective, "allreduce",
     "with --allreduce-mb: allreduce | reduce-scatter | allgather (the two halves of "
     "--allreduce sharded) | shm (--allreduce shm's reduce, update, fence: a whole allreduce)", 0},
};
#define N_BENCH ((int)(sizeof bench_opts / sizeof bench_opts[0]))

void openblas_set_num_threads(int n);

/* Median of reps timings of one sgemm C[M,N] = A[M,K] op B. */
static double time_gemm(int M, int N, int K, int transA, int transB, const float *A,
                        const float *Bm, float *C, int reps)
{
    double best[64];
    if (reps > 64)
        reps = 64;
    if (reps < 1)
        reps = 1;
    for (int r = -2; r < reps; r++) { /* two warm-up calls */
        double t0 = nnp_comm_wtime();
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                    transB ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, transA ? M : K, Bm,
                    transB ? K : N, 0.0f, C, N);
        if (r >= 0)
            best[r] = nnp_comm_wtime() - t0;
    }
    /* median by insertion sort (reps is small) */
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && best[j] < best[j - 1]; j--) {
            double t = best[j];
            best[j] = best[j - 1];
            best[j - 1] = t;
        }
    return best[reps / 2];
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return t[n / 2];
}

/* Floating-point operations of layer i's forward pass (dense and conv; 0 for the rest). */
static double layer_flop(const nnp_net *net, int i, int Bt)
{
    const nnp_layer *L = &net->layers[i];
    if (L->kind == NNP_L_DENSE)
        return 2.0 * Bt * (double)nnp_shape_size(L->in) * L->out.c;
    if (L->kind == NNP_L_CONV2D)
        return 2.0 * Bt * (double)nnp_shape_size(L->out) * L->conv.C * L->k * L->k;
    return 0;
}

/* The product a dense or conv layer's forward is, as one sgemm C[M,N] = A[M,Kd] B[Kd,N]
 * (dense: the batch times the weights; conv: the kernel times the im2col matrix of up to
 * 8,192 output positions, enough for the BLAS's full rate). 0 for the other layers. */
static int layer_gemm(const nnp_net *net, int i, int Bt, int *M, int *N, int *Kd)
{
    const nnp_layer *L = &net->layers[i];
    if (L->kind == NNP_L_DENSE) {
        *M = Bt, *N = L->out.c, *Kd = (int)nnp_shape_size(L->in);
        return 1;
    }
    if (L->kind == NNP_L_CONV2D) {
        const size_t pos = (size_t)Bt * L->out.h * L->out.w;
        *M = L->conv.K, *N = pos < 8192 ? (int)pos : 8192, *Kd = L->conv.C * L->k * L->k;
        return 1;
    }
    return 0;
}

/* Bytes a memory-bound layer must move at least in one forward + backward: BatchNorm reads
 * x and writes y, then reads x and dy and writes dx (5 tensors of its size); 0 for the
 * others. */
static double layer_bytes(const nnp_net *net, int i, int Bt)
{
    const nnp_layer *L = &net->layers[i];
    if (L->kind == NNP_L_BN)
        return 5.0 * Bt * (double)nnp_shape_size(L->in) * sizeof(float);
    return 0;
}

/* The machine's memory bandwidth in this run, the yardstick for the memory-bound layers:
 * the best of 5 copies of 128 MB (the bytes read and written, GB/s). Buffers 128x a 1 MB
 * L2 and far beyond a core's share of L3, so the copy runs from memory. */
static double copy_bandwidth(void)
{
    const size_t n = (size_t)128 << 20;
    char *a = nnp_malloc(n), *b = nnp_malloc(n);
    double best = 0;
    if (a && b) {
        memset(a, 1, n);
        memset(b, 2, n);
        for (int r = 0; r < 5; r++) {
            const double t0 = nnp_comm_wtime();
            memcpy(b, a, n);
            const double t = nnp_comm_wtime() - t0;
            if (t > 0 && 2.0 * (double)n / t > best)
                best = 2.0 * (double)n / t;
        }
    }
    free(a);
    free(b);
    return 1e-9 * best;
}

/* The network of --model, --act and --batch (not yet initialized) and the PyTorch
 * initialization for it. */
static nnp_status bench_net(nnp_net **net, nnp_init_cfg *ic)
{
    nnp_act act;
    NNP_CALL(nnp_act_parse(B.act, &act));
    NNP_CALL(nnp_init_parse("pytorch", ic));
    return nnp_net_create(B.model, (nnp_shape){1, 28, 28}, act, B.batch, net);
}

/* --layers: every layer's forward and backward in the network the trainer runs (same
 * kernels, buffers and batch), each timed alone; median of --reps full passes. */
static nnp_status bench_layers(void)
{
    nnp_init_cfg ic;
    nnp_net *net = NULL;
    NNP_CALL(bench_net(&net, &ic));
    const int n = net->n_layers, reps = B.reps;
    double *tf = nnp_malloc((size_t)n * (size_t)reps * sizeof(double));
    double *tb = nnp_malloc((size_t)n * (size_t)reps * sizeof(double));
    double *f = nnp_malloc(2 * (size_t)n * sizeof(double)), *b = f + n; /* the medians */
    nnp_status st = tf && tb && f ? nnp_init_net(net, &ic, 1) : NNP_ERR_NOMEM;
    if (st != NNP_OK)
        goto out;
    const size_t nin = (size_t)B.batch * nnp_shape_size(net->input);
    const size_t nout = (size_t)B.batch * (size_t)net->n_classes;
    for (size_t k = 0; k < nin; k++) /* inputs roughly as normalized pixels */
        net->act[0][k] = (float)((k * 7919) % 1000) * 2e-3f - 1.0f;
    for (size_t k = 0; k < nout; k++) /* a loss gradient of the usual size */
        net->dact[n][k] = ((float)((k * 104729) % 1000) * 2e-3f - 1.0f) / (float)B.batch;
    for (int r = -2; r < reps; r++) { /* two warm-up passes */
        for (int i = 0; i < n; i++) {
            double t0 = nnp_comm_wtime();
            nnp_net_forward_layer(net, i, B.batch);
            if (r >= 0)
                tf[(size_t)i * reps + r] = nnp_comm_wtime() - t0;
        }
        for (int i = n - 1; i >= 0; i--) {
            double t0 = nnp_comm_wtime();
            nnp_net_backward_layer(net, i, B.batch);
            if (r >= 0)
                tb[(size_t)i * reps + r] = nnp_comm_wtime() - t0;
        }
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
        f[i] = median(tf + (size_t)i * reps, reps);
        b[i] = median(tb + (size_t)i * reps, reps);
        sum += f[i] + b[i];
    }
    const double rss = nnp_peak_rss_mb(); /* before the sgemm yardsticks' buffers */
    /* the same-run cblas_sgemm rate on each dense and conv layer's own product shape */
    double *ref = nnp_malloc((size_t)n * sizeof(double));
    size_t na = 0, nb = 0, nc = 0;
    for (int i = 0; i < n; i++) {
        int M, N, Kd;
        if (layer_gemm(net, i, B.batch, &M, &N, &Kd)) {
            na = na > (size_t)M * Kd ? na : (size_t)M * Kd;
            nb = nb > (size_t)Kd * N ? nb : (size_t)Kd * N;
            nc = nc > (size_t)M * N ? nc : (size_t)M * N;
        }
    }
    float *ga = nnp_malloc((na + 1) * sizeof(float)), *gm = nnp_malloc((nb + 1) * sizeof(float));
    float *gc = nnp_malloc((nc + 1) * sizeof(float));
    if (!ref || !ga || !gm || !gc) {
        st = NNP_ERR_NOMEM;
        free(ref), free(ga), free(gm), free(gc);
        goto out;
    }
    for (size_t k = 0; k < na; k++)
        ga[k] = (float)(k % 13) * 0.01f;
    for (size_t k = 0; k < nb; k++)
        gm[k] = (float)(k % 7) * 0.01f;
    for (int i = 0; i < n; i++) {
        int M, N, Kd;
        ref[i] = 0;
        if (layer_gemm(net, i, B.batch, &M, &N, &Kd)) {
            const double t = time_gemm(M, N, Kd, 0, 0, ga, gm, gc, reps);
            ref[i] = t > 0 ? 2.0 * M * N * Kd / t * 1e-9 : 0;
        }
    }
    free(ga), free(gm), free(gc);
    /* and on a large square product, the BLAS's headline rate */
    const int sq = 1024;
    double sq_rate = 0;
    ga = nnp_malloc((size_t)sq * sq * sizeof(float));
    gm = nnp_malloc((size_t)sq * sq * sizeof(float));
    gc = nnp_malloc((size_t)sq * sq * sizeof(float));
    if (ga && gm && gc) {
        for (size_t k = 0; k < (size_t)sq * sq; k++)
            ga[k] = gm[k] = (float)(k % 11) * 0.01f;
        const double t = time_gemm(sq, sq, sq, 0, 0, ga, gm, gc, reps < 10 ? reps : 10);
        sq_rate = t > 0 ? 2.0 * sq * sq * sq / t * 1e-9 : 0;
    }
    free(ga), free(gm), free(gc);
    printf("%s, batch %d, %d BLAS thread(s) (core %s), median of %d\n", B.model, B.batch,
           openblas_get_num_threads(), openblas_get_corename(), reps);
    printf("%-48s %10s %10s %7s %9s %8s %8s\n", "layer", "fwd_ms", "bwd_ms", "share", "GFLOP/s",
           "sgemm", "GB/s");
    double gbs_lo = 0, gbs_hi = 0; /* the memory-bound layers' range of GB/s */
    for (int i = 0; i < n; i++) {
        char what[160], gf[16] = "", gb[16] = "", gr[16] = "", line[256];
        nnp_layer_describe(net, i, what, sizeof what);
        /* backward: the weight gradient, and the input gradient except for the first layer */
        double flop = layer_flop(net, i, B.batch) * (i > 0 ? 3.0 : 2.0);
        double bytes = layer_bytes(net, i, B.batch);
        if (flop > 0)
            snprintf(gf, sizeof gf, "%9.2f", flop / (f[i] + b[i]) * 1e-9);
        if (flop > 0 && ref[i] > 0)
            snprintf(gr, sizeof gr, "%7.0f%%", 100.0 * flop / (f[i] + b[i]) * 1e-9 / ref[i]);
        if (bytes > 0 && f[i] + b[i] > 0) {
            const double r = bytes / (f[i] + b[i]) * 1e-9;
            snprintf(gb, sizeof gb, "%8.2f", r);
            gbs_lo = gbs_lo > 0 && gbs_lo < r ? gbs_lo : r;
            gbs_hi = gbs_hi > r ? gbs_hi : r;
        }
        int len = snprintf(line, sizeof line, "%-48s %10.4f %10.4f %6.1f%% %9s %8s %8s", what,
                           1e3 * f[i], 1e3 * b[i], sum > 0 ? 100.0 * (f[i] + b[i]) / sum : 0.0,
                           gf, gr, gb);
        while (len > 0 && line[len - 1] == ' ') /* no trailing blanks where a column is empty */
            line[--len] = '\0';
        printf("%s\n", line);
    }
    printf("total: %.3f ms per forward + backward of batch %d, %.0f samples/s (layers only: "
           "no loss, data or optimizer)\n",
           1e3 * sum, B.batch, sum > 0 ? B.batch / sum : 0.0);
    int nf = 0; /* relu + max pooling pairs run as one (nnp_layer.fused), and a convolution
                 * before such a pair pools its own output (nnp_layer.fused_conv) */
    for (int i = 0; i + 1 < n; i++)
        if (net->fuse && net->layers[i].kind == NNP_L_ACT && net->layers[i].fused) {
            printf("%s ", nf++ ? "," : "layers run as one (a fused convolution's row holds the "
                                       "forward of its relu and pooling, a pooling's row its "
                                       "relu's backward):");
            if (i > 0 && net->layers[i - 1].fused_conv)
                printf("%d+", i - 1);
            printf("%d+%d", i, i + 1);
        }
    if (nf)
        printf("\n");
    int nconv = 0; /* the kernels each convolution runs (NNPREC_CONV_PATH, the CPU, the shape) */
    for (int i = 0; i < n; i++)
        if (net->layers[i].kind == NNP_L_CONV2D) {
            const nnp_conv_path p = nnp_conv2d_path(&net->layers[i].conv);
            printf("%s%d %s", nconv++ ? ", " : "convolution kernels: ", i,
                   p == NNP_CONV_WINOGRAD ? "winograd" : p == NNP_CONV_DIRECT ? "direct" : "gemm");
        }
    if (nconv) {
        const nnp_conv_isa isa = nnp_conv2d_isa();
        printf(" (direct and winograd products in %s; NNPREC_CONV_ISA=avx2 asks for AVX2)",
               isa == NNP_CONV_ISA_AVX512 ? "AVX-512" : isa == NNP_CONV_ISA_AVX2 ? "AVX2" : "none");
        printf(" (GFLOP/s counts a direct convolution's multiplications: Winograd makes up to "
               "2.25x fewer)\n");
    }
    if (gbs_hi > 0) {
        const double bw = copy_bandwidth();
        printf("memory bandwidth (this run: best of 5 copies of 128 MB): %.2f GB/s; batchnorm "
               "layers at %.2f-%.2f GB/s (%.0f-%.0f%% of it; bytes: x, y, dy, dx once each)\n",
               bw, gbs_lo, gbs_hi, bw > 0 ? 100 * gbs_lo / bw : 0, bw > 0 ? 100 * gbs_hi / bw : 0);
    }
    printf("sgemm: the layer's GFLOP/s as a share of cblas_sgemm's on the layer's own "
           "product in this run (dense: batch x in x out; conv: K x C*k*k x up to 8,192 "
           "output positions)\n");
    if (sq_rate > 0) {
        double lo = 0, hi = 0; /* the convolutions' GFLOP/s */
        for (int i = 0; i < n; i++)
            if (net->layers[i].kind == NNP_L_CONV2D && f[i] + b[i] > 0) {
                const double r = layer_flop(net, i, B.batch) * (i > 0 ? 3.0 : 2.0) /
                                 (f[i] + b[i]) * 1e-9;
                lo = lo > 0 && lo < r ? lo : r;
                hi = hi > r ? hi : r;
            }
        printf("cblas_sgemm on %dx%dx%d in this run: %.2f GFLOP/s", sq, sq, sq, sq_rate);
        if (hi > 0)
            printf("; convolutions at %.0f-%.0f%% of it", 100 * lo / sq_rate, 100 * hi / sq_rate);
        printf("\n");
    }
    free(ref);
    printf("peak resident memory: %.1f MB (this process: the network's buffers at batch %d, "
           "the libraries)\n", rss, B.batch);
out:
    free(tf);
    free(tb);
    free(f);
    nnp_net_free(net);
    return st;
}

/* --optim: what each optimizer's step costs next to the rest of a training step. Rounds of
 * (forward + backward of the batch, then one step of each optimizer) interleave them, so
 * a machine that is slower for a while is slower for all; medians of --reps rounds. The
 * rates are tiny, so the parameters stay where they are. */
static nnp_status bench_optim(void)
{
    static const struct {
        const char *name;
        nnp_opt_kind kind;
        double wd;
    } opts[] = {{"sgd", NNP_OPT_SGD, 0}, {"lars", NNP_OPT_LARS, 0}, {"adam", NNP_OPT_ADAM, 0},
                {"lamb", NNP_OPT_LAMB, 0.01}};
    enum { K = 4 };
    nnp_init_cfg ic;
    nnp_net *net = NULL;
    NNP_CALL(bench_net(&net, &ic));
    const int n = net->n_layers, reps = B.reps;
    nnp_optim o[K];
    memset(o, 0, sizeof o);
    double *t = nnp_malloc((size_t)(K + 1) * (size_t)reps * sizeof(double)), med[K + 1];
    nnp_status st = t ? nnp_init_net(net, &ic, 1) : NNP_ERR_NOMEM;
    for (int k = 0; k < K && st == NNP_OK; k++) {
        nnp_optim_cfg c = {opts[k].kind, 0.9, 0, opts[k].wd, 0, 0.9, 0.999, 1e-8, 0.001, 10, 1};
        st = nnp_optim_init(&o[k], &c, net->n_params);
        /* LARS and LAMB keep ||w||^2 from their update pass, as in training (the other
         * optimizers' steps of 1e-9 in between leave them a little stale: no matter here) */
        if (st == NNP_OK && nnp_optim_layerwise(c.kind))
            st = nnp_optim_keep_norms(&o[k], net->n_tensors);
    }
    if (st != NNP_OK)
        goto out;
    const size_t nin = (size_t)B.batch * nnp_shape_size(net->input);
    const size_t nout = (size_t)B.batch * (size_t)net->n_classes;
    for (size_t k = 0; k < nin; k++)
        net->act[0][k] = (float)((k * 7919) % 1000) * 2e-3f - 1.0f;
    for (int r = -2; r < reps; r++) { /* two warm-up rounds */
        for (size_t k = 0; k < nout; k++) /* backward may use dact[n] as scratch */
            net->dact[n][k] = ((float)((k * 104729) % 1000) * 2e-3f - 1.0f) / (float)B.batch;
        double t0 = nnp_comm_wtime();
        for (int i = 0; i < n; i++)
            nnp_net_forward_layer(net, i, B.batch);
        for (int i = n - 1; i >= 0; i--)
            nnp_net_backward_layer(net, i, B.batch);
        if (r >= 0)
            t[r] = nnp_comm_wtime() - t0;
        for (int k = 0; k < K; k++) {
            t0 = nnp_comm_wtime();
            nnp_optim_step(&o[k], net, 1e-9, NULL);
            if (r >= 0)
                t[(size_t)(k + 1) * reps + r] = nnp_comm_wtime() - t0;
        }
    }
    for (int k = 0; k <= K; k++)
        med[k] = median(t + (size_t)k * reps, reps);
    printf("%s, batch %d, %zu parameters in %d tensors, %d BLAS thread(s), median of %d rounds\n",
           B.model, B.batch, net->n_params, net->n_tensors, openblas_get_num_threads(), reps);
    printf("forward + backward: %.3f ms\n", 1e3 * med[0]);
    printf("%-6s %10s %12s %20s\n", "optim", "step_ms", "extra_ms", "extra/(fwd+bwd)");
    for (int k = 0; k < K; k++) {
        const int base = opts[k].kind == NNP_OPT_LARS ? 0 : opts[k].kind == NNP_OPT_LAMB ? 2 : -1;
        if (base < 0)
            printf("%-6s %10.4f %12s %20s\n", opts[k].name, 1e3 * med[k + 1], "", "");
        else
            printf("%-6s %10.4f %8.4f (%s) %19.2f%%\n", opts[k].name, 1e3 * med[k + 1],
                   1e3 * (med[k + 1] - med[base + 1]), opts[base].name,
                   100.0 * (med[k + 1] - med[base + 1]) / med[0]);
    }
out:
    for (int k = 0; k < K; k++)
        nnp_optim_free(&o[k]);
    free(t);
    nnp_net_free(net);
    return st;
}

/* --allreduce-mb: the trainer's gradient allreduce (nnp_comm_allreduce_sum_f32, in place,
 * in chunks) for each size; a repetition's time is the slowest rank's, after a barrier. */
static nnp_status bench_allreduce(nnp_comm *comm)
{
    const int rank = nnp_comm_rank(comm), p = nnp_comm_size(comm);
    double mb[32];
    int nsz = 0;
    for (char *s = B.allreduce, *end; *s && nsz < 32; s = *end ? end + 1 : end) {
        mb[nsz] = strtod(s, &end);
        /* at least one float */
        if (end == s || !(mb[nsz] * 1048576.0 >= sizeof(float)) || mb[nsz] > 4096 ||
            (*end && *end != ','))
            return nnp_error(NNP_ERR_ARG, "--allreduce-mb: expected sizes in MiB like 0.25,1,4 "
                                          "(4 bytes to 4096 MiB), got '%s'", B.allreduce);
        nsz++;
    }
    if (B.reps < 1 || B.reps > 1000 || !(B.chunk_mb >= 1.0 / 256))
        return nnp_error(NNP_ERR_ARG, "--reps must be in 1..1000 and --chunk-mb >= 1/256 (4 KiB)");
    int coll = strcmp(B.collective, "allreduce") == 0        ? 0
               : strcmp(B.collective, "reduce-scatter") == 0 ? 1
               : strcmp(B.collective, "allgather") == 0      ? 2
               : strcmp(B.collective, "shm") == 0            ? 3
                                                             : -1;
    if (coll < 0)
        return nnp_error(NNP_ERR_ARG, "--collective must be allreduce, reduce-scatter, "
                                      "allgather or shm, got '%s'", B.collective);
    double maxmb = 0;
    for (int i = 0; i < nsz; i++)
        maxmb = mb[i] > maxmb ? mb[i] : maxmb;
    size_t nmax = (size_t)(maxmb * 1048576.0 / sizeof(float));
    float *buf = nnp_malloc(nmax * sizeof(float));
    double *t = nnp_malloc((size_t)B.reps * sizeof(double));
    nnp_status st = buf && t ? NNP_OK : NNP_ERR_NOMEM;
    if (st == NNP_OK)
        st = nnp_comm_shard_setup(comm, nmax);
    st = nnp_comm_agree(comm, st);
    /* shm: the values go in this rank's shared gradients, the sums come out in the node's
     * shared parameters (as --allreduce shm's reduce, update, fence); one window per size */
    nnp_comm_shm *sh = NULL;
    float *shp = NULL, *data = buf;
    size_t slo = 0, shi = 0;
    if (rank == 0 && st == NNP_OK) {
        char chunks[64] = "";
        if (coll == 0)
            snprintf(chunks, sizeof chunks, ", chunks of %.3g MiB", B.chunk_mb);
        printf("%s over %d rank%s%s, median of %d (slowest rank each)\n%10s %10s %12s %12s\n",
               B.collective, p, p > 1 ? "s" : "", chunks, B.reps, "MiB", "ms", "algbw GB/s",
               "busbw GB/s");
    }
    for (int i = 0; i < nsz && st == NNP_OK; i++) {
        size_t n = (size_t)(mb[i] * 1048576.0 / sizeof(float));
        if (coll == 3) {
            nnp_comm_shm_stop(sh);
            sh = NULL;
            st = nnp_comm_agree(comm, nnp_comm_shm_start(comm, n, &sh));
            if (st != NNP_OK)
                break;
            nnp_comm_shm_buffers(sh, &shp, &data);
            int lr, ls;
            nnp_comm_shm_share(sh, &slo, &shi, &lr, &ls);
        }
        for (int r = -2; r < B.reps && st == NNP_OK; r++) { /* two warm-ups */
            for (size_t k = 0; k < n; k++)
                data[k] = (float)((k + (size_t)rank) % 7) * 0.125f;
            st = nnp_comm_barrier(comm);
            double t0 = nnp_comm_wtime();
            if (st == NNP_OK && coll == 3) {
                st = nnp_comm_shm_fence(sh);
                if (st == NNP_OK)
                    st = nnp_comm_shm_reduce(sh);
                memcpy(shp + slo, data + slo, (shi - slo) * sizeof(float));
                if (st == NNP_OK)
                    st = nnp_comm_shm_fence(sh);
            } else if (st == NNP_OK && coll == 0)
                st = nnp_comm_allreduce_sum_f32(comm, buf, n, (size_t)(B.chunk_mb * 1048576.0));
            else if (st == NNP_OK && coll == 1)
                st = nnp_comm_reduce_scatter_f32(comm, buf, n);
            else if (st == NNP_OK)
                st = nnp_comm_allgather_shares_f32(comm, buf, n);
            double dt = nnp_comm_wtime() - t0;
            if (st == NNP_OK)
                st = nnp_comm_allreduce_max_f64(comm, &dt, 1);
            if (r >= 0)
                t[r] = dt;
        }
        if (st != NNP_OK)
            break;
        /* the last repetition's result, checked: every value is a multiple of 1/8 below 1
         * and sums of up to 2^20 of them are exact in float */
        size_t lo = 0, hi = n, bad = 0;
        const float *res = coll == 3 ? shp : buf;
        if (coll == 1)
            nnp_split(n, p, rank, &lo, &hi); /* reduce-scatter: this rank's share only */
        for (size_t k = lo; k < hi; k++) {
            double want = 0;
            if (coll == 2) { /* allgather: the owner's own values */
                for (int q = 0; q < p; q++) {
                    size_t a, b;
                    nnp_split(n, p, q, &a, &b);
                    if (k >= a && k < b)
                        want = (double)((k + (size_t)q) % 7) * 0.125;
                }
            } else {
                for (int q = 0; q < p; q++)
                    want += (double)((k + (size_t)q) % 7) * 0.125;
            }
            bad += (double)res[k] != want;
        }
        double nbad = (double)bad;
        st = nnp_comm_allreduce_max_f64(comm, &nbad, 1);
        if (st == NNP_OK && nbad > 0)
            st = rank != 0 ? NNP_ERR_REMOTE
                           : nnp_error(NNP_ERR_COMM, "%s of %g MiB: %.0f wrong values on a rank",
                                       B.collective, mb[i], nbad);
        if (st != NNP_OK)
            break;
        qsort(t, (size_t)B.reps, sizeof(double), cmp_double);
        double s = t[B.reps / 2], bytes = (double)n * sizeof(float);
        if (rank == 0)
            printf("%10.3f %10.3f %12.2f %12.2f\n", mb[i], 1e3 * s, bytes / s * 1e-9,
                   bytes / s * 1e-9 * (coll == 1 || coll == 2 ? 1.0 : 2.0) * (p - 1) / p);
    }
    nnp_comm_shm_stop(sh);
    free(buf);
    free(t);
    return st;
}

nnp_status nnp_cmd_bench(nnp_comm *comm, int argc, char **argv)
{
    int help = 0;
    NNP_CALL(nnp_options_parse(bench_opts, N_BENCH, argc, argv, &help));
    if (help) {
        if (nnp_comm_rank(comm) == 0)
            nnp_options_help(stdout, "usage: nnprec bench [options]\n\nTimes the cblas_sgemm "
                                     "calls of one training step of the model's dense layers,\n"
                                     "with --layers each layer's forward and backward in the "
                                     "network itself,\nwith --optim each optimizer's step, "
                                     "or with --allreduce-mb the gradient "
                                     "allreduce over all ranks (run it under mpirun).",
                             bench_opts, N_BENCH);
        return NNP_OK;
    }
    if ((B.allreduce[0] != 0) + B.layers + B.optim > 1)
        return nnp_error(NNP_ERR_ARG, "give one of --layers, --optim and --allreduce-mb");
    if (!B.allreduce[0] && strcmp(B.collective, "allreduce") != 0)
        return nnp_error(NNP_ERR_ARG, "--collective goes with --allreduce-mb");
    if (B.allreduce[0])
        return bench_allreduce(comm);
    if (nnp_comm_rank(comm) != 0)
        return NNP_OK;
    if (B.batch < 1 || B.reps < 1 || B.reps > 1000 || B.threads < 0)
        return nnp_error(NNP_ERR_ARG, "--batch must be >= 1, --reps in 1..1000, --threads >= 0");
    if (B.threads > 0)
        openblas_set_num_threads(B.threads);
    if (B.layers)
        return bench_layers();
    if (B.optim)
        return bench_optim();
    nnp_act act;
    NNP_CALL(nnp_act_parse(B.act, &act));
    nnp_net *net = NULL;
    NNP_CALL(nnp_net_create(B.model, (nnp_shape){1, 28, 28}, act, 1, &net));
    int maxdim = 0;
    for (int j = 0; j < net->n_tensors; j += 2) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->fan_in > maxdim)
            maxdim = t->fan_in;
        if (t->fan_out > maxdim)
            maxdim = t->fan_out;
    }
    size_t big = (size_t)maxdim * (size_t)(maxdim > B.batch ? maxdim : B.batch);
    float *A = nnp_calloc(big, sizeof(float)), *Bm = nnp_calloc(big, sizeof(float)),
          *C = nnp_calloc(big, sizeof(float));
    if (!A || !Bm || !C) {
        free(A);
        free(Bm);
        free(C);
        nnp_net_free(net);
        return NNP_ERR_NOMEM;
    }
    for (size_t i = 0; i < big; i++) {
        A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
        Bm[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    }
    printf("openblas: core %s, config %s, %d thread(s)\n", openblas_get_corename(),
           openblas_get_config(), openblas_get_num_threads());
    printf("%-12s %-8s %6s %6s %6s %10s %9s\n", "layer", "product", "M", "N", "K", "ms",
           "GFLOP/s");
    double total_s = 0, total_flop = 0;
    int first = 1;
    for (int j = 0; j < net->n_tensors; j += 2) {
        const nnp_tensor *t = &net->tensors[j];
        if (t->ndim != 2)
            continue; /* conv layers are not plain GEMMs */
        int in = t->fan_in, out = t->fan_out, Bt = B.batch;
        struct { const char *name; int M, N, K, ta, tb; } prods[3] = {
            {"forward", Bt, out, in, 0, 1},  /* y[B,out] = x[B,in] W[out,in]^T */
            {"dW", out, in, Bt, 1, 0},       /* dW[out,in] = dy[B,out]^T x[B,in] */
            {"dx", Bt, in, out, 0, 0},       /* dx[B,in] = dy[B,out] W[out,in] */
        };
        for (int p = 0; p < 3; p++) {
            if (p == 2 && first)
                continue; /* the first layer's input gradient is never computed */
            double s = time_gemm(prods[p].M, prods[p].N, prods[p].K, prods[p].ta, prods[p].tb, A,
                                 Bm, C, B.reps);
            double flop = 2.0 * prods[p].M * prods[p].N * prods[p].K;
            total_s += s;
            total_flop += flop;
            char lname[16];
            snprintf(lname, sizeof lname, "%.11s", t->name);
            printf("%-12s %-8s %6d %6d %6d %10.3f %9.2f\n", lname, prods[p].name, prods[p].M,
                   prods[p].N, prods[p].K, 1e3 * s, flop / s * 1e-9);
        }
        first = 0;
    }
    printf("total: %.3f ms per step of batch %d, %.3f GFLOP, %.2f GFLOP/s, %.0f samples/s "
           "(GEMM ceiling)\n",
           1e3 * total_s, B.batch, total_flop * 1e-9, total_flop / total_s * 1e-9,
           B.batch / total_s);
    free(A);
    free(Bm);
    free(C);
    nnp_net_free(net);
    return NNP_OK;
}

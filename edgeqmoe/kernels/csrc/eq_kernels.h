/* edgeqmoe packed low-bit kernels: formats, structs and the kernel table.
 *
 * Mirrors edgeqmoe/kernels/formats.py; see its docstring for the bit layouts.
 * Kernels are framework-free: raw pointers, lengths and small structs.
 */
#ifndef EQ_KERNELS_H
#define EQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum {
    EQ_FMT_Q1 = 0,
    EQ_FMT_Q2 = 1,
    EQ_FMT_Q4 = 2,
    EQ_FMT_Q8 = 3,
    EQ_FMT_TERNARY = 4,
    EQ_FMT_F16 = 5,
    EQ_FMT_POPCOUNT = 6,
    EQ_NFMT = 7
};

#define EQ_ROW_ALIGN 64   /* every packed row holds a multiple of 64 codes */
#define EQ_ROW_TILE 16    /* q1, q2, ternary, q4: rows stored in tiles of 16 */
#define EQ_SPAN_BYTES 64  /* one span of a tile: 16 rows x 4 bytes */
#define EQ_ACT_QMAX 127
#define EQ_ACT_SIGN 0      /* popcount activations +1 (x > tau) / -1, scale mean|x| */
#define EQ_ACT_UNSIGNED 1  /* popcount activations 1 (x > tau) / 0, scale mean(x | x > tau) */

/* Prefetch (into L2) weights a kernel reads soon: a head's weights stream once per
 * window, usually cold (the embedder ran in between), and hardware prefetchers stop
 * at 4 KB pages. Used by the f16 kernels, whose tensors are the largest; the packed
 * kernels are L2-bound when warm and lose more to the extra loads than they gain.
 * Never faults, also past the end of a tensor. */
#define EQ_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 2)

/* storage bits per weight, indexed by format */
static const int eq_fmt_bits[EQ_NFMT] = {1, 2, 4, 8, 2, 16, 2};
/* value added to signed codes before storing them unsigned */
static const int eq_fmt_offset[EQ_NFMT] = {0, 2, 8, 0, 1, 0, 0};

_Static_assert(EQ_ROW_ALIGN % 64 == 0, "rows must hold whole 64-bit words of bits");
_Static_assert(EQ_ROW_ALIGN % 32 == 0, "a padded row holds whole spans (32 columns for q1)");
_Static_assert(EQ_ROW_TILE * 4 == EQ_SPAN_BYTES, "a span is 4 bytes of each row of a tile");

static inline int32_t eq_padded_k(int32_t k) { return (k + EQ_ROW_ALIGN - 1) / EQ_ROW_ALIGN * EQ_ROW_ALIGN; }
static inline size_t eq_row_bytes(int fmt, int32_t k) { return (size_t)eq_padded_k(k) * eq_fmt_bits[fmt] / 8; }
/* q1, q2, ternary, q4 and popcount store rows in tiles of 16 (see formats.py) */
static inline int eq_fmt_tiled(int fmt) {
    return fmt == EQ_FMT_Q1 || fmt == EQ_FMT_Q2 || fmt == EQ_FMT_Q4 || fmt == EQ_FMT_TERNARY || fmt == EQ_FMT_POPCOUNT;
}
static inline int32_t eq_tiled_rows(int32_t n) { return (n + EQ_ROW_TILE - 1) / EQ_ROW_TILE * EQ_ROW_TILE; }
static inline int32_t eq_stored_rows(int fmt, int32_t n) { return eq_fmt_tiled(fmt) ? eq_tiled_rows(n) : n; }
static inline size_t eq_weight_bytes(int fmt, int32_t n, int32_t k) {
    return (size_t)eq_stored_rows(fmt, n) * eq_row_bytes(fmt, k);
}

/* One packed linear layer y = W x + b (W: n x k, packed rows of eq_row_bytes). */
typedef struct eq_layer {
    int32_t fmt, n, k, kp;
    const uint8_t *w;       /* eq_weight_bytes(fmt, n, k): rows, or tiles of 16 rows */
    const float *scale;     /* weight scale(s) */
    int32_t scale_stride;   /* 0: one per layer, 1: one per output channel */
    const float *bias;      /* n floats, or NULL */
    const int32_t *rowsum;  /* derived per stored row: q8 sum of codes, popcount non-zero count */
    const int32_t *wsum;    /* derived per stored row, popcount: sum of the ternary codes */
    int32_t act_mode;       /* popcount activations: EQ_ACT_SIGN (+-1) or EQ_ACT_UNSIGNED (0/1) */
    float tau;              /* popcount: an activation is high when x > tau */
} eq_layer;

/* One quantized activation row; buffers are owned by the caller (64-byte aligned). */
typedef struct eq_act {
    int32_t kp;
    int8_t *q;        /* kp int8 codes (zero padded); popcount: unused */
    uint8_t *qu;      /* q ^ 0x80 (= q + 128 as u8), for unsigned x signed products */
    int32_t qsum;     /* sum of q */
    float scale;      /* multiplies the accumulator: max|x|/127, or mean|x| (popcount) */
    uint64_t *planes; /* popcount: kp/64 words, bit 1 = low (x <= tau: -1 or 0) */
    int8_t *lut;      /* q1 table kernels: 8 * kp bytes of scratch */
} eq_act;

/* Writes eq_stored_rows(fmt, n) accumulators (a tiled layer's padding rows too). */
typedef void (*eq_acc_fn)(const eq_layer *L, const eq_act *a, int32_t *acc);

/* A kernel variant: one function per job, all with the generic twin's signature. */
typedef struct eq_kernels {
    const char *name;
    /* x (k floats) -> a->q, a->qu, a->qsum, a->scale (int8 absmax) */
    void (*quant_i8)(const float *x, int32_t k, eq_act *a);
    /* x (k floats) -> a->planes (low bits), a->scale (binary activations, see act_mode) */
    void (*quant_sign)(const float *x, int32_t k, float tau, int32_t mode, eq_act *a);
    /* int32 accumulators of the signed codes, one per output; NULL for f16 */
    eq_acc_fn acc[EQ_NFMT];
    /* y = W x for f16 weights (no bias) */
    void (*gemv_f16)(const eq_layer *L, const float *x, float *y);
    /* y = acc * w_scale * act_scale + bias, once per output */
    void (*dequant)(const eq_layer *L, const int32_t *acc, float act_scale, float *y);
} eq_kernels;

extern const eq_kernels eq_kernels_generic;
#if defined(__x86_64__) || defined(_M_X64)
extern const eq_kernels eq_kernels_avx2;
extern const eq_kernels eq_kernels_avx512;
extern const eq_kernels eq_kernels_avx512vbmi;
#endif
#if defined(__aarch64__)
extern const eq_kernels eq_kernels_neon;
extern const eq_kernels eq_kernels_dotprod;
#endif

/* A variant of every C path, chosen together by one name: the head kernels, the integer
 * embedder's (eq_cnn.h) and the log-mel front end's (eq_mel.h). A variant without a
 * front end of its own (neon, dotprod) runs the portable one. */
struct eq_cnn_kernels;
struct eq_mel_kernels;
typedef struct eq_variant {
    const char *name;
    const eq_kernels *head;
    const struct eq_cnn_kernels *cnn;
    const struct eq_mel_kernels *mel;
} eq_variant;

/* The variants this CPU runs, best first (generic last). Returns the count. */
int eq_variants(const eq_variant **out, int max);
/* The variant of that name, when this CPU runs it; else NULL. */
const eq_variant *eq_variant_find(const char *name);
/* CPU feature names (space separated) detected at run time. */
const char *eq_cpu_features(void);

/* Scratch for one activation row of up to kp_max inputs. */
typedef struct eq_scratch {
    int32_t kp_max;
    eq_act act;
    int32_t *acc;   /* n_max int32, rounded up to a tile */
    void *mem;
} eq_scratch;

int eq_scratch_init(eq_scratch *s, int32_t kp_max, int32_t n_max);
void eq_scratch_free(eq_scratch *s);

/* y[n] = dequantized W x + b for one row x[k]. */
void eq_linear_row(const eq_kernels *K, const eq_layer *L, const float *x, float *y, eq_scratch *s);
/* Derived data of a layer (q8 code sums, popcount non-zero counts); one int32 per
 * stored row (eq_stored_rows) each;
 * wsum (popcount only, may be NULL otherwise): sum of the ternary codes per row. */
void eq_layer_rowsums(const eq_layer *L, int32_t *rowsum, int32_t *wsum);

void eq_layernorm(float *x, int32_t n, const float *gamma, const float *beta, float eps);

/* Mixture of experts for one input (see edgeqmoe/model/moe.py for the maths):
 * router logits (S x N; S Monte-Carlo samples, 1 without), expert logits (N x C; only
 * read with curiosity), temperature T, curiosity on/off and alpha, top_k. Writes the
 * chosen experts (top_k, by descending weight, ties to the lower index), their
 * weights (not renormalised: paper Eq. 6), the mixed logits (C; from the expert logits given), the router's
 * mutual information (nats) and the predictive entropy of the experts' mean (nats). */
void eq_moe_combine(const float *router, int32_t S, int32_t N, const float *experts, int32_t C, float T,
                    int curiosity, float alpha, int32_t top_k, float *out, int32_t *chosen, float *wk,
                    float *uncertainty, float *entropy);
void eq_relu(float *x, int32_t n);

/* ---- heads and mixtures (eq_program.c) ---- */
enum { EQ_ERR_SHAPE = -1, EQ_ERR_NOMEM = -2 };
enum { EQ_STEP_LINEAR, EQ_STEP_LAYERNORM, EQ_STEP_RELU, EQ_NSTEPS };
/* the packed formats' and the head steps' names, as Python names them */
static const char *const eq_fmt_names[EQ_NFMT] = {
    [EQ_FMT_Q1] = "q1", [EQ_FMT_Q2] = "q2", [EQ_FMT_Q4] = "q4", [EQ_FMT_Q8] = "q8",
    [EQ_FMT_TERNARY] = "ternary", [EQ_FMT_F16] = "f16", [EQ_FMT_POPCOUNT] = "popcount"};
static const char *const eq_step_names[EQ_NSTEPS] = {
    [EQ_STEP_LINEAR] = "linear", [EQ_STEP_LAYERNORM] = "layernorm", [EQ_STEP_RELU] = "relu"};
#define EQ_MOE_MAX 64 /* experts, and classes, of one mixture at most */

/* One step of a head: a packed linear layer, or LayerNorm / ReLU over ``width`` values. */
typedef struct eq_step {
    int kind;
    const eq_layer *L;
    const float *gamma, *beta;
    float eps;
    int32_t width;
} eq_step;

/* A head: steps run one row at a time with one kernel variant, in preallocated
 * buffers. Not for two threads at once (the scratch is the program's). */
typedef struct eq_program {
    const eq_kernels *K;
    eq_step *steps;
    int nsteps, last_linear;
    int32_t in_width, out_width;
    eq_scratch scratch;
    float *ping, *pong;
} eq_program;

/* Copies the steps (the layers and parameters they point to must outlive P) after
 * checking that they chain: a linear step first, each layer taking what the one before
 * gives. 0, EQ_ERR_SHAPE or EQ_ERR_NOMEM. */
int eq_program_init(eq_program *P, const eq_kernels *K, const eq_step *steps, int nsteps);
void eq_program_free(eq_program *P);
void eq_program_row(eq_program *P, const float *x, float *y);

/* A mixture of experts (edgeqmoe/model/moe.py documents the maths): input
 * normalisation x * mul + add, router (with its S Monte-Carlo dropout masks as S rows
 * when curious), experts and eq_moe_combine, all in buffers allocated once. ``uniform``
 * draws top_k distinct experts per window from a seeded splitmix64 generator instead of
 * routing. The programs must outlive M; not for two threads at once. */
typedef struct eq_moe {
    eq_program *rin, *rout, *ex[EQ_MOE_MAX];
    int32_t N, C, S, D, H, top_k, curiosity, evaluate_all, uniform;
    float T, alpha;
    float *mem, *xn, *h1, *hs, *rl, *el, *masks, *mul, *add;
    uint64_t rng;
} eq_moe;

/* masks: S x H (read only when curiosity); mul, add: D each or NULL (1 and 0).
 * 0, EQ_ERR_SHAPE or EQ_ERR_NOMEM. */
int eq_moe_init(eq_moe *M, eq_program *rin, eq_program *rout, eq_program *const *experts, int32_t N,
                const float *masks, int32_t S, const float *mul, const float *add, int32_t top_k, float T,
                int curiosity, float alpha, int evaluate_all, int uniform, uint64_t seed);
void eq_moe_free(eq_moe *M);
/* One window: out (C logits), chosen and wk (top_k), router uncertainty and entropy. */
void eq_moe_window(eq_moe *M, const float *x, float *out, int32_t *chosen, float *wk, float *unc, float *ent);
uint64_t eq_splitmix64(uint64_t *state);

/* helpers shared by the variants */
void eq_generic_quant_i8(const float *x, int32_t k, eq_act *a);
void eq_generic_quant_sign(const float *x, int32_t k, float tau, int32_t mode, eq_act *a);
void eq_generic_dequant(const eq_layer *L, const int32_t *acc, float act_scale, float *y);

#endif

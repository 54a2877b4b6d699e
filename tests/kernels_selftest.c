/* Every kernel variant this CPU runs against the generic twin, bit for bit (integer
 * formats) or within a float tolerance (f16). Built natively and for aarch64 (run
 * under qemu-aarch64) by tests/test_arm.py. Prints one line per variant; exit 0 when
 * all agree. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eq_kernels.h"

static uint32_t rng_state = 12345;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* a random packed layer of format fmt, n x k, with its derived sums */
static eq_layer random_layer(int fmt, int32_t n, int32_t k, float *scale) {
    const size_t wb = eq_weight_bytes(fmt, n, k), rows = (size_t)eq_stored_rows(fmt, n);
    uint8_t *w = aligned_alloc(64, (wb + 63) / 64 * 64);
    for (size_t i = 0; i < wb; i++) w[i] = (uint8_t)rnd();
    int32_t *rowsum = calloc(rows, 4), *wsum = calloc(rows, 4);
    eq_layer L = {fmt, n, k, eq_padded_k(k), w, scale, 0, NULL, rowsum, wsum, EQ_ACT_SIGN, 0.05f};
    if (fmt == EQ_FMT_Q8 || fmt == EQ_FMT_POPCOUNT) eq_layer_rowsums(&L, rowsum, wsum);
    return L;
}

/* Heads and mixtures (eq_program.c) built on each variant give what the generic twin
 * gives: the same experts chosen (uniform routing: the same seeded draws) and logits
 * within a float tolerance (the integer accumulators are exact, but the variants
 * dequantise with their own rounding). Returns the mismatches. */
static int check_programs(const eq_kernels *K) {
    enum { D = 96, H = 40, N = 3, C = 10, S = 4, K_TOP = 2 };
    static float scale = 0.02f, gamma[H], beta[H], masks[S * H], mul[D], add[D];
    for (int j = 0; j < H; j++) gamma[j] = 1.0f, beta[j] = 0.01f * (float)j;
    for (int j = 0; j < S * H; j++) masks[j] = (rnd() % 5) ? 1.25f : 0.0f;
    for (int j = 0; j < D; j++) mul[j] = 0.5f + (float)(rnd() % 100) / 100.0f, add[j] = 0.01f * (float)(j % 7);
    const int fmts[N] = {EQ_FMT_Q4, EQ_FMT_TERNARY, EQ_FMT_POPCOUNT};
    eq_layer ri = random_layer(EQ_FMT_Q8, H, D, &scale), ro = random_layer(EQ_FMT_Q8, N, H, &scale);
    eq_layer e1[N], e2[N];
    for (int i = 0; i < N; i++) e1[i] = random_layer(fmts[i], H, D, &scale), e2[i] = random_layer(EQ_FMT_Q2, C, H, &scale);
    const eq_kernels *both[2] = {&eq_kernels_generic, K};
    eq_program P[2][2 + N];
    eq_moe M[2][2];
    for (int v = 0; v < 2; v++) {
        eq_step r_in[2] = {{EQ_STEP_LINEAR, &ri, NULL, NULL, 0, H}, {EQ_STEP_RELU, NULL, NULL, NULL, 0, H}};
        eq_step r_out[1] = {{EQ_STEP_LINEAR, &ro, NULL, NULL, 0, N}};
        if (eq_program_init(&P[v][0], both[v], r_in, 2) || eq_program_init(&P[v][1], both[v], r_out, 1)) return 1;
        for (int i = 0; i < N; i++) {
            eq_step ex[4] = {{EQ_STEP_LINEAR, &e1[i], NULL, NULL, 0, H},
                             {EQ_STEP_LAYERNORM, NULL, gamma, beta, 1e-5f, H},
                             {EQ_STEP_RELU, NULL, NULL, NULL, 0, H},
                             {EQ_STEP_LINEAR, &e2[i], NULL, NULL, 0, C}};
            if (eq_program_init(&P[v][2 + i], both[v], ex, 4)) return 1;
        }
        eq_program *experts[N] = {&P[v][2], &P[v][3], &P[v][4]};
        /* curious and fixed work; then uniform routing from a seeded generator */
        if (eq_moe_init(&M[v][0], &P[v][0], &P[v][1], experts, N, masks, S, mul, add, K_TOP, 1.0f, 1, 0.5f, 1, 0, 7) ||
            eq_moe_init(&M[v][1], &P[v][0], &P[v][1], experts, N, NULL, 0, mul, add, K_TOP, 1.0f, 0, 0.0f, 0, 1, 7))
            return 1;
    }
    eq_step bad_chain[2] = {{EQ_STEP_LINEAR, &ri, NULL, NULL, 0, H}, {EQ_STEP_LINEAR, &ri, NULL, NULL, 0, H}};
    eq_program unused;
    int bad = eq_program_init(&unused, K, bad_chain, 2) != EQ_ERR_SHAPE;
    float x[D], out[2][C];
    int32_t chosen[2][K_TOP];
    float wk[2][K_TOP], unc[2], ent[2];
    for (int t = 0; t < 50; t++) {
        for (int j = 0; j < D; j++) x[j] = (float)((int32_t)(rnd() % 2001) - 1000) / 300.0f;
        for (int m = 0; m < 2; m++) {
            for (int v = 0; v < 2; v++) eq_moe_window(&M[v][m], x, out[v], chosen[v], wk[v], &unc[v], &ent[v]);
            float d = 0.0f, mag = 0.0f;
            for (int c = 0; c < C; c++) d = fmaxf(d, fabsf(out[0][c] - out[1][c])), mag = fmaxf(mag, fabsf(out[0][c]));
            if (memcmp(chosen[0], chosen[1], sizeof chosen[0]) || d > 1e-4f * (1.0f + mag)) {
                bad++;
                fprintf(stderr, "%s: mixture %d differs from generic at window %d: %d %d / %d %d, max diff %g of %g\n",
                        K->name, m, t, chosen[0][0], chosen[0][1], chosen[1][0], chosen[1][1], d, mag);
            }
            if (chosen[0][0] == chosen[0][1] || chosen[0][0] < 0 || chosen[0][0] >= N || chosen[0][1] < 0 ||
                chosen[0][1] >= N)
                bad++; /* top-k experts are distinct and in range */
        }
    }
    for (int v = 0; v < 2; v++) {
        for (int m = 0; m < 2; m++) eq_moe_free(&M[v][m]);
        for (int i = 0; i < 2 + N; i++) eq_program_free(&P[v][i]);
    }
    return bad;
}

int main(void) {
    const eq_kernels *ks[8];
    const int nk = eq_available(ks, 8);
    const int32_t ins[] = {1, 7, 33, 100, 1023, 1024, 1536};
    const int32_t outs[] = {1, 5, 17, 64};
    int failures = 0, checks = 0;
    printf("features: %s\n", eq_cpu_features());
    for (int v = 0; v < nk; v++) {
        const eq_kernels *K = ks[v];
        if (K == &eq_kernels_generic) continue;
        int bad = 0, n_checks = 0;
        for (int fmt = 0; fmt < EQ_NFMT; fmt++) {
            for (size_t a = 0; a < sizeof ins / sizeof ins[0]; a++) {
                for (size_t b = 0; b < sizeof outs / sizeof outs[0]; b++) {
                    const int32_t k = ins[a], n = outs[b], kp = eq_padded_k(k);
                    /* every stored byte random, tile padding included: the variants must
                     * agree on whatever is stored */
                    const size_t wb = eq_weight_bytes(fmt, n, k);
                    uint8_t *w = aligned_alloc(64, (wb + 63) / 64 * 64);
                    for (size_t i = 0; i < wb; i++) w[i] = (uint8_t)rnd();
                    if (fmt == EQ_FMT_F16) /* finite halves in [-2, 2) */
                        for (size_t i = 0; i < wb / 2; i++) ((uint16_t *)w)[i] = (uint16_t)((rnd() & 0x83ff) | 0x3800);
                    const size_t rows = (size_t)eq_stored_rows(fmt, n);
                    int32_t *rowsum = calloc(rows, 4);
                    float scale = 0.01f;
                    int32_t *wsum = calloc(rows, 4);
                    eq_layer L = {fmt, n, k, kp, w, &scale, 0, NULL, rowsum, wsum, EQ_ACT_SIGN, 0.05f};
                    if (fmt == EQ_FMT_Q8 || fmt == EQ_FMT_POPCOUNT) eq_layer_rowsums(&L, rowsum, wsum);
                    float *x = malloc(sizeof(float) * (size_t)k);
                    for (int32_t j = 0; j < k; j++) x[j] = (float)((int32_t)(rnd() % 2001) - 1000) / 37.0f;
                    eq_scratch s1, s2;
                    eq_scratch_init(&s1, k, n);
                    eq_scratch_init(&s2, k, n);
                    if (fmt == EQ_FMT_F16) {
                        float *y1 = malloc(4 * (size_t)n), *y2 = malloc(4 * (size_t)n);
                        eq_kernels_generic.gemv_f16(&L, x, y1);
                        K->gemv_f16(&L, x, y2);
                        /* float sums in another order: bound by the sum of |products| */
                        for (int32_t i = 0; i < n; i++) {
                            float mag = 0.0f;
                            for (int32_t j = 0; j < k; j++) mag += fabsf(x[j]) * 2.0f;
                            if (fabsf(y1[i] - y2[i]) > 1e-5f * mag) {
                                bad++;
                                fprintf(stderr, "%s f16 n %d k %d: %g vs %g\n", K->name, n, k, y1[i], y2[i]);
                            }
                        }
                        free(y1);
                        free(y2);
                    } else {
                        s1.act.kp = s2.act.kp = kp;
                        if (fmt == EQ_FMT_POPCOUNT) {
                            for (int mode = 1; mode >= 0; mode--) { /* ends on sign mode */
                                eq_kernels_generic.quant_sign(x, k, 0.05f, mode, &s1.act);
                                K->quant_sign(x, k, 0.05f, mode, &s2.act);
                                if (memcmp(s1.act.planes, s2.act.planes, (size_t)kp / 8)) bad++;
                            }
                        } else {
                            eq_kernels_generic.quant_i8(x, k, &s1.act);
                            K->quant_i8(x, k, &s2.act);
                            if (memcmp(s1.act.q, s2.act.q, (size_t)kp) || s1.act.qsum != s2.act.qsum) bad++;
                        }
                        eq_kernels_generic.acc[fmt](&L, &s1.act, s1.acc);
                        K->acc[fmt](&L, &s1.act, s2.acc); /* same activations for both */
                        if (memcmp(s1.acc, s2.acc, sizeof(int32_t) * rows)) {
                            bad++;
                            fprintf(stderr, "%s fmt %d n %d k %d: acc differs\n", K->name, fmt, n, k);
                        }
                    }
                    n_checks++;
                    eq_scratch_free(&s1);
                    eq_scratch_free(&s2);
                    free(x);
                    free(w);
                    free(rowsum);
                    free(wsum);
                }
            }
        }
        bad += check_programs(K);
        n_checks++;
        printf("variant %s: %d checks, %d mismatches\n", K->name, n_checks, bad);
        failures += bad;
        checks += n_checks;
    }
    printf("%s: %d checks\n", failures ? "FAIL" : "OK", checks);
    return failures ? 1 : 0;
}

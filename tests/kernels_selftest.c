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
        printf("variant %s: %d checks, %d mismatches\n", K->name, n_checks, bad);
        failures += bad;
        checks += n_checks;
    }
    printf("%s: %d checks\n", failures ? "FAIL" : "OK", checks);
    return failures ? 1 : 0;
}

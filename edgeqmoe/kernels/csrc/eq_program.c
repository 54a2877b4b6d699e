/* Heads and mixtures run in C: the step interpreter of a head (eq_program) and one
 * mixture-of-experts window (eq_moe). Framework-free, like the kernels: the Python
 * binding (eq_pymodule.c) only parses and checks Python objects and calls these, and
 * the C self-test (tests/kernels_selftest.c) runs them on every kernel variant. */
#include <stdlib.h>
#include <string.h>

#include "eq_kernels.h"

int eq_program_init(eq_program *P, const eq_kernels *K, const eq_step *steps, int nsteps) {
    memset(P, 0, sizeof *P);
    if (nsteps < 1 || steps[0].kind != EQ_STEP_LINEAR) return EQ_ERR_SHAPE;
    int32_t width = steps[0].L->k, maxw = 0, maxkp = 64;
    for (int i = 0; i < nsteps; i++) {
        const eq_step *s = &steps[i];
        if (s->kind == EQ_STEP_LINEAR) {
            if (s->L->k != width) return EQ_ERR_SHAPE;
            maxw = s->L->k > maxw ? s->L->k : maxw;
            maxw = s->L->n > maxw ? s->L->n : maxw;
            maxkp = s->L->kp > maxkp ? s->L->kp : maxkp;
            width = s->L->n;
        } else if (s->width != width) {
            return EQ_ERR_SHAPE;
        }
    }
    P->K = K;
    P->nsteps = nsteps;
    P->in_width = steps[0].L->k;
    P->out_width = width;
    P->last_linear = -1;
    for (int i = 0; i < nsteps; i++)
        if (steps[i].kind == EQ_STEP_LINEAR) P->last_linear = i;
    P->steps = malloc(sizeof(eq_step) * (size_t)nsteps);
    if (!P->steps || eq_scratch_init(&P->scratch, maxkp, maxw) < 0 ||
        posix_memalign((void **)&P->ping, 64, sizeof(float) * (size_t)eq_padded_k(maxw)) ||
        posix_memalign((void **)&P->pong, 64, sizeof(float) * (size_t)eq_padded_k(maxw))) {
        eq_program_free(P);
        return EQ_ERR_NOMEM;
    }
    memcpy(P->steps, steps, sizeof(eq_step) * (size_t)nsteps);
    return 0;
}

void eq_program_free(eq_program *P) {
    free(P->steps);
    free(P->ping);
    free(P->pong);
    if (P->scratch.mem) eq_scratch_free(&P->scratch);
    memset(P, 0, sizeof *P);
}

/* one row through all steps; the last linear writes straight into y */
void eq_program_row(eq_program *P, const float *x, float *y) {
    const float *cur = x;
    float *bufs[2] = {P->ping, P->pong};
    int which = 0;
    for (int i = 0; i < P->nsteps; i++) {
        const eq_step *s = &P->steps[i];
        if (s->kind == EQ_STEP_LINEAR) {
            float *dst = (i == P->last_linear) ? y : bufs[which];
            eq_linear_row(P->K, s->L, cur, dst, &P->scratch);
            cur = dst;
            which ^= 1;
        } else if (s->kind == EQ_STEP_LAYERNORM) {
            eq_layernorm((float *)cur, s->width, s->gamma, s->beta, s->eps);
        } else {
            eq_relu((float *)cur, s->width);
        }
    }
}

/* splitmix64: small, seeded, the same sequence on every machine */
uint64_t eq_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int eq_moe_init(eq_moe *M, eq_program *rin, eq_program *rout, eq_program *const *experts, int32_t N,
                const float *masks, int32_t S, const float *mul, const float *add, int32_t top_k, float T,
                int curiosity, float alpha, int evaluate_all, int uniform, uint64_t seed) {
    memset(M, 0, sizeof *M);
    if (N < 1 || N > EQ_MOE_MAX || rout->in_width != rin->out_width || rout->out_width != N) return EQ_ERR_SHAPE;
    const int32_t D = rin->in_width, H = rin->out_width, C = experts[0]->out_width;
    if (C > EQ_MOE_MAX || top_k < 1 || top_k > N || !(T > 0.0f)) return EQ_ERR_SHAPE;
    for (int32_t i = 0; i < N; i++)
        if (experts[i]->in_width != D || experts[i]->out_width != C) return EQ_ERR_SHAPE;
    if (curiosity && (!masks || S < 1)) return EQ_ERR_SHAPE;
    if (!curiosity) S = 1;
    const size_t total = (size_t)D * 3 + H + (size_t)S * H * 2 + (size_t)S * N + (size_t)N * C;
    M->mem = calloc(total, sizeof(float));
    if (!M->mem) return EQ_ERR_NOMEM;
    float *p = M->mem;
    M->xn = p, p += D;
    M->h1 = p, p += H;
    M->hs = p, p += (size_t)S * H;
    M->rl = p, p += (size_t)S * N;
    M->el = p, p += (size_t)N * C;
    M->masks = p, p += (size_t)S * H;
    M->mul = p, p += D;
    M->add = p;
    if (curiosity) memcpy(M->masks, masks, sizeof(float) * (size_t)S * H);
    for (int32_t j = 0; j < D; j++) {
        M->mul[j] = mul ? mul[j] : 1.0f;
        M->add[j] = add ? add[j] : 0.0f;
    }
    M->rin = rin;
    M->rout = rout;
    for (int32_t i = 0; i < N; i++) M->ex[i] = experts[i];
    M->N = N, M->C = C, M->S = S, M->D = D, M->H = H;
    M->top_k = top_k;
    M->T = T;
    M->alpha = alpha;
    M->curiosity = curiosity && !uniform;
    M->evaluate_all = evaluate_all || M->curiosity;
    M->uniform = uniform;
    M->rng = seed;
    return 0;
}

void eq_moe_free(eq_moe *M) {
    free(M->mem);
    memset(M, 0, sizeof *M);
}

void eq_moe_window(eq_moe *M, const float *x, float *out, int32_t *chosen, float *wk, float *unc, float *ent) {
    const int32_t D = M->D, H = M->H, N = M->N, C = M->C, k = M->top_k;
    for (int32_t j = 0; j < D; j++) M->xn[j] = x[j] * M->mul[j] + M->add[j];
    *unc = *ent = 0.0f;
    if (M->uniform) {
        int32_t idx[EQ_MOE_MAX];
        for (int32_t i = 0; i < N; i++) idx[i] = i;
        for (int32_t j = 0; j < k; j++) { /* partial Fisher-Yates */
            const int32_t r = j + (int32_t)(eq_splitmix64(&M->rng) % (uint64_t)(N - j)), t = idx[j];
            idx[j] = idx[r];
            idx[r] = t;
            chosen[j] = idx[j];
            wk[j] = 1.0f / (float)N; /* a uniform router: p_i = 1/N */
        }
    } else {
        eq_program_row(M->rin, M->xn, M->h1);
        if (M->curiosity) {
            for (int32_t s = 0; s < M->S; s++) {
                for (int32_t j = 0; j < H; j++) M->hs[(size_t)s * H + j] = M->h1[j] * M->masks[(size_t)s * H + j];
                eq_program_row(M->rout, M->hs + (size_t)s * H, M->rl + (size_t)s * N);
            }
        } else {
            eq_program_row(M->rout, M->h1, M->rl);
        }
    }
    if (M->evaluate_all)
        for (int32_t i = 0; i < N; i++) eq_program_row(M->ex[i], M->xn, M->el + (size_t)i * C);
    if (!M->uniform)
        eq_moe_combine(M->rl, M->curiosity ? M->S : 1, N, M->el, C, M->T, M->curiosity, M->alpha, k, out, chosen, wk,
                       unc, ent);
    if (!M->evaluate_all)
        for (int32_t j = 0; j < k; j++) eq_program_row(M->ex[chosen[j]], M->xn, M->el + (size_t)chosen[j] * C);
    if (M->uniform || !M->evaluate_all) {
        for (int32_t c = 0; c < C; c++) out[c] = 0.0f;
        for (int32_t j = 0; j < k; j++)
            for (int32_t c = 0; c < C; c++) out[c] += wk[j] * M->el[(size_t)chosen[j] * C + c];
    }
}

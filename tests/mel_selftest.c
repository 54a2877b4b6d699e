/* Runs the C log-mel front end (eq_mel.h) on a window and its plan written by
 * tests/test_arm.py, so that the test can compare the result with its float64 reference
 * on this machine and on 64-bit ARM under qemu.
 * usage: mel_selftest IN OUT VARIANT
 * IN: int32 n_in, up2, taps, n_fft, win, hop, n_mels; float32 preemph, log_offset, shift,
 * inv_scale; then float32 he[taps + 1], ho[taps], window[win]; int32 start[n_mels],
 * length[n_mels]; float32 weights[sum(length)], x[n_in]. OUT: float32 n_mels x frames. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eq_mel.h"

static void *take(FILE *f, size_t n, size_t size) {
    void *p = malloc(n * size + 1);
    if (!p || fread(p, size, n, f) != n) {
        fprintf(stderr, "short input\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    int32_t *h = take(f, 7, 4);
    float *c = take(f, 4, 4);
    const int32_t n_in = h[0], up2 = h[1], taps = h[2], win = h[4], n_mels = h[6];
    float *he = take(f, (size_t)taps + 1, 4), *ho = take(f, (size_t)taps, 4), *window = take(f, (size_t)win, 4);
    int32_t *start = take(f, (size_t)n_mels, 4), *length = take(f, (size_t)n_mels, 4);
    size_t total = 0;
    for (int32_t i = 0; i < n_mels; i++) total += (size_t)length[i];
    float *weights = take(f, total, 4), *x = take(f, (size_t)n_in, 4);
    fclose(f);
    const eq_mel_kernels *K = !strcmp(argv[3], "generic") ? &eq_mel_kernels_generic : NULL;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (!strcmp(argv[3], "avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        K = &eq_mel_kernels_avx2;
    if (!strcmp(argv[3], "avx512") && __builtin_cpu_supports("avx512f")) K = &eq_mel_kernels_avx512;
#endif
    if (!K) {
        printf("variant %s not available\n", argv[3]);
        return 3;
    }
    eq_mel M;
    if (eq_mel_init(&M, K, n_in, up2, taps, he, ho, c[0], h[3], win, h[5], window, n_mels, start, length, weights,
                    c[1], c[2], c[3]))
        return 4;
    float *out = malloc(sizeof(float) * (size_t)n_mels * (size_t)M.frames);
    eq_mel_run(&M, x, out);
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 4, (size_t)n_mels * (size_t)M.frames, o) != (size_t)n_mels * (size_t)M.frames) return 2;
    fclose(o);
    printf("variant %s: %d x %d\n", K->name, n_mels, M.frames);
    eq_mel_free(&M);
    return 0;
}

/* Throughput of the AVX-512 instructions the kernels are built from, in TSC cycles
 * per instruction (8 independent chains, so latency does not count). Explains what
 * bounds each packed format: see docs/benchmarks.md.
 *   cc -O2 tools/x86_throughput.c -o /tmp/tp && /tmp/tp [iterations]
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>

#define T __attribute__((target("avx512f,avx512bw,avx512vnni,avx512vpopcntdq,avx512vbmi,avx512vl")))
static long long iters = 100000000LL;

#define BENCH(NAME, OP)                                                                                  \
    T static void NAME(void) {                                                                           \
        __m512i a0 = _mm512_set1_epi32(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0; \
        const __m512i b = _mm512_set1_epi32(3), c = _mm512_set1_epi32(5);                                \
        unsigned long long t = __rdtsc();                                                                \
        for (long long i = 0; i < iters / 8; i++) {                                                      \
            OP(a0); OP(a1); OP(a2); OP(a3); OP(a4); OP(a5); OP(a6); OP(a7);                              \
            __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7)); \
        }                                                                                                \
        t = __rdtsc() - t;                                                                               \
        __m512i s = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));                \
        printf("%-22s %.2f TSC cycles/op  (check %d)\n", #NAME, (double)t / (double)iters,              \
               _mm512_reduce_add_epi32(s) & 1);                                                          \
    }
#define DP(a) a = _mm512_dpbusd_epi32(a, b, c)
#define AND(a) a = _mm512_and_si512(a, b)
#define TERN(a) a = _mm512_ternarylogic_epi64(a, b, c, 0x60)
#define SHUF(a) a = _mm512_shuffle_epi8(b, a)
#define PERMB(a) a = _mm512_permutexvar_epi8(a, b)
#define POPC(a) a = _mm512_popcnt_epi64(a)
#define MADDUBS(a) a = _mm512_maddubs_epi16(b, a)
BENCH(vpdpbusd_zmm, DP)
BENCH(vpandd_zmm, AND)
BENCH(vpternlogq_zmm, TERN)
BENCH(vpshufb_zmm, SHUF)
BENCH(vpermb_zmm, PERMB)
BENCH(vpopcntq_zmm, POPC)
BENCH(vpmaddubsw_zmm, MADDUBS)

int main(int argc, char **argv) {
    if (argc > 1) iters = atoll(argv[1]) / 8 * 8;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vpopcntdq") ||
        !__builtin_cpu_supports("avx512vbmi")) {
        printf("this CPU lacks AVX-512 VNNI/VPOPCNTDQ/VBMI: nothing to measure\n");
        return 0;
    }
    vpdpbusd_zmm();
    vpandd_zmm();
    vpternlogq_zmm();
    vpshufb_zmm();
    vpermb_zmm();
    vpopcntq_zmm();
    vpmaddubsw_zmm();
    return 0;
}

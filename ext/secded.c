/* SECDED (72,64) Hsiao code, compiled twin of edge/kernels/secded.py (same H matrix, same events).
 *
 * The work is the syndrome of every word: s = H_data * w ^ check byte, zero for a clean word.
 * Three paths compute it:
 *   - "table": portable; H_data * w as 8 byte-table lookups (one 256-entry table per byte position
 *     of the word, holding the XOR of the H columns of that byte's set bits);
 *   - "neon": aarch64 (baseline there); 16 words per step: ld4 + uzp gather byte j of 16 words into
 *     one register, and tbl looks up both nibbles of all 16 in 16-entry tables (two per position);
 *   - "avx512-gfni": x86 with AVX512-VBMI + GFNI (run-time detected); 8 words per step: one
 *     vpermb transposes the 8x8 bytes so that lane j holds byte j of each word, one gf2p8affineqb
 *     multiplies every byte of lane j by the 8x8 bit matrix of byte position j, and an XOR of the
 *     8 lanes leaves the 8 syndromes in one 64-bit value.
 * Words with a nonzero syndrome are rare; they are decoded one at a time with a 256-entry table.
 */
#include "secded.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGE_SECDED_X86 1
#include <immintrin.h>
#endif

#if defined(__aarch64__) && defined(__ARM_NEON) && defined(__BYTE_ORDER__) \
    && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EDGE_SECDED_NEON 1 /* NEON is baseline on ARMv8-A: no run-time check needed */
#include <arm_neon.h>
#endif

#define DATA_BITS 64
#define CHECK_BITS 8
#define WORD_BYTES 8
#define VECTOR_WORDS 8 /* words per 512-bit register */

/* Rows of H over the data bits: check bit r = parity(word & ROW_MASK[r]). Data bit k's column is
 * the k-th 3-subset of {0..7} in lexicographic order for k < 56, and the cyclic 5-run
 * {j, j+1, .., j+4} mod 8 for k = 56 + j; the check bits have the unit columns. Every row covers 26
 * data bits. Must equal edge/kernels/secded.py (the tests compare the two on every unit vector). */
static const uint64_t ROW_MASK[CHECK_BITS] = {
    0xf1000000001fffffULL, 0xe300000fffe0003fULL, 0xc7003ff003e007c1ULL, 0x8f0fc0f03c207842ULL,
    0x1f71c711c4438884ULL, 0x3eb65926488c9108ULL, 0x7cdaaa4a91152210ULL, 0xf8ed348d221a4420ULL,
};

static uint8_t syndrome_table[WORD_BYTES][256]; /* [byte position][byte value] -> partial H * w */
static int8_t decode_table[256];                /* syndrome -> event code */

typedef void (*encode_fn)(const uint64_t *words, uint8_t *parity, size_t n);
typedef size_t (*next_bad_fn)(const uint64_t *words, const uint8_t *parity, size_t i, size_t n);

static void encode_portable(const uint64_t *words, uint8_t *parity, size_t n);
static size_t next_bad_portable(const uint64_t *words, const uint8_t *parity, size_t i, size_t n);

static encode_fn encode_best = encode_portable;
static next_bad_fn next_bad_best = next_bad_portable;
static const char *secded_best_name = "table";
static int secded_ready = 0;

/* ---- portable path --------------------------------------------------------------------------- */

static inline uint8_t data_syndrome(uint64_t w)
{
    return syndrome_table[0][w & 0xff] ^ syndrome_table[1][(w >> 8) & 0xff]
         ^ syndrome_table[2][(w >> 16) & 0xff] ^ syndrome_table[3][(w >> 24) & 0xff]
         ^ syndrome_table[4][(w >> 32) & 0xff] ^ syndrome_table[5][(w >> 40) & 0xff]
         ^ syndrome_table[6][(w >> 48) & 0xff] ^ syndrome_table[7][w >> 56];
}

static void encode_portable(const uint64_t *words, uint8_t *parity, size_t n)
{
    for (size_t i = 0; i < n; i++)
        parity[i] = data_syndrome(words[i]);
}

/* Index of the first word at or after i whose syndrome is nonzero, or n. */
static size_t next_bad_portable(const uint64_t *words, const uint8_t *parity, size_t i, size_t n)
{
    /* Four words per branch: clean data is the common case. */
    for (; i + 4 <= n; i += 4) {
        uint8_t s0 = data_syndrome(words[i]) ^ parity[i];
        uint8_t s1 = data_syndrome(words[i + 1]) ^ parity[i + 1];
        uint8_t s2 = data_syndrome(words[i + 2]) ^ parity[i + 2];
        uint8_t s3 = data_syndrome(words[i + 3]) ^ parity[i + 3];
        if (s0 | s1 | s2 | s3)
            return i + (s0 ? 0 : s1 ? 1 : s2 ? 2 : 3);
    }
    for (; i < n; i++)
        if (data_syndrome(words[i]) != parity[i])
            return i;
    return n;
}

/* ---- AVX512-VBMI + GFNI path ----------------------------------------------------------------- */

#ifdef EDGE_SECDED_X86
#define GFNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi,gfni")))

static uint8_t transpose_index[64];  /* vpermb index: lane j, byte i <- byte j of word i */
static uint64_t byte_matrix[WORD_BYTES]; /* gf2p8affineqb matrix of byte position j */

/* Syndromes (without the check bytes) of words[0..8), byte i of the result for word i. */
GFNI_TARGET static inline uint64_t data_syndrome8(const uint64_t *words, __m512i index,
                                                  __m512i mats)
{
    __m512i v = _mm512_loadu_si512((const void *)words);
    __m512i t = _mm512_permutexvar_epi8(index, v);
    __m512i a = _mm512_gf2p8affine_epi64_epi8(t, mats, 0);
    __m256i x = _mm256_xor_si256(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    __m128i y = _mm_xor_si128(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    y = _mm_xor_si128(y, _mm_unpackhi_epi64(y, y));
    return (uint64_t)_mm_cvtsi128_si64(y);
}

GFNI_TARGET static void encode_gfni(const uint64_t *words, uint8_t *parity, size_t n)
{
    const __m512i index = _mm512_loadu_si512((const void *)transpose_index);
    const __m512i mats = _mm512_loadu_si512((const void *)byte_matrix);
    size_t i = 0;
    for (; i + VECTOR_WORDS <= n; i += VECTOR_WORDS) {
        uint64_t s = data_syndrome8(words + i, index, mats);
        memcpy(parity + i, &s, sizeof s);
    }
    for (; i < n; i++)
        parity[i] = data_syndrome(words[i]);
}

GFNI_TARGET static size_t next_bad_gfni(const uint64_t *words, const uint8_t *parity, size_t i,
                                        size_t n)
{
    const __m512i index = _mm512_loadu_si512((const void *)transpose_index);
    const __m512i mats = _mm512_loadu_si512((const void *)byte_matrix);
    for (; i + VECTOR_WORDS <= n; i += VECTOR_WORDS) {
        uint64_t stored;
        memcpy(&stored, parity + i, sizeof stored);
        uint64_t s = data_syndrome8(words + i, index, mats) ^ stored;
        if (s != 0)
            return i + (size_t)(__builtin_ctzll(s) / 8);
    }
    for (; i < n; i++)
        if (data_syndrome(words[i]) != parity[i])
            return i;
    return n;
}

static void build_gfni_tables(void)
{
    for (int j = 0; j < WORD_BYTES; j++)
        for (int i = 0; i < VECTOR_WORDS; i++)
            transpose_index[j * 8 + i] = (uint8_t)(i * 8 + j);
    /* gf2p8affineqb: output bit r = parity(matrix byte (7 - r) & input byte). */
    for (int j = 0; j < WORD_BYTES; j++) {
        uint64_t m = 0;
        for (int r = 0; r < CHECK_BITS; r++)
            m |= ((ROW_MASK[r] >> (8 * j)) & 0xff) << (8 * (7 - r));
        byte_matrix[j] = m;
    }
}
#endif

/* ---- NEON path (aarch64) --------------------------------------------------------------------- */

#ifdef EDGE_SECDED_NEON
#define NEON_WORDS 16 /* words per step: one syndrome byte per lane of a 128-bit register */

/* Per byte position j, the syndrome contribution of its low and of its high nibble: 16-entry
 * tables that fit one register each, looked up 16 lanes at a time with tbl. */
static uint8_t nibble_lo[WORD_BYTES][16], nibble_hi[WORD_BYTES][16];

typedef struct {
    uint8x16_t lo[WORD_BYTES], hi[WORD_BYTES];
} neon_tables;

static inline void load_neon_tables(neon_tables *t)
{
    for (int j = 0; j < WORD_BYTES; j++) {
        t->lo[j] = vld1q_u8(nibble_lo[j]);
        t->hi[j] = vld1q_u8(nibble_hi[j]);
    }
}

/* Syndromes (without the check bytes) of words[0..16), lane i for word i. */
static inline uint8x16_t data_syndrome16(const uint64_t *words, const neon_tables *t)
{
    const uint8_t *p = (const uint8_t *)words;
    /* ld4 de-interleaves by 4: lane 2i of a.val[k] is byte k of word i, lane 2i+1 byte k+4. */
    uint8x16x4_t a = vld4q_u8(p), b = vld4q_u8(p + 64);
    const uint8x16_t low_nibble = vdupq_n_u8(0x0f);
    uint8x16_t acc0 = vdupq_n_u8(0), acc1 = vdupq_n_u8(0); /* two chains for ILP */
    for (int k = 0; k < 4; k++) {
        uint8x16_t e = vuzp1q_u8(a.val[k], b.val[k]); /* byte k of words 0..15 */
        uint8x16_t f = vuzp2q_u8(a.val[k], b.val[k]); /* byte k + 4 */
        acc0 = veorq_u8(acc0, vqtbl1q_u8(t->lo[k], vandq_u8(e, low_nibble)));
        acc1 = veorq_u8(acc1, vqtbl1q_u8(t->hi[k], vshrq_n_u8(e, 4)));
        acc0 = veorq_u8(acc0, vqtbl1q_u8(t->lo[k + 4], vandq_u8(f, low_nibble)));
        acc1 = veorq_u8(acc1, vqtbl1q_u8(t->hi[k + 4], vshrq_n_u8(f, 4)));
    }
    return veorq_u8(acc0, acc1);
}

static void encode_neon(const uint64_t *words, uint8_t *parity, size_t n)
{
    neon_tables t;
    load_neon_tables(&t);
    size_t i = 0;
    for (; i + NEON_WORDS <= n; i += NEON_WORDS)
        vst1q_u8(parity + i, data_syndrome16(words + i, &t));
    for (; i < n; i++)
        parity[i] = data_syndrome(words[i]);
}

static size_t next_bad_neon(const uint64_t *words, const uint8_t *parity, size_t i, size_t n)
{
    neon_tables t;
    load_neon_tables(&t);
    for (; i + NEON_WORDS <= n; i += NEON_WORDS) {
        uint8x16_t s = veorq_u8(data_syndrome16(words + i, &t), vld1q_u8(parity + i));
        if (vmaxvq_u8(s) != 0)
            break; /* the scalar loop below finds which word */
    }
    for (; i < n; i++)
        if (data_syndrome(words[i]) != parity[i])
            return i;
    return n;
}

static void build_neon_tables(void)
{
    for (int j = 0; j < WORD_BYTES; j++)
        for (int x = 0; x < 16; x++) {
            nibble_lo[j][x] = syndrome_table[j][x];
            nibble_hi[j][x] = syndrome_table[j][x << 4];
        }
}
#endif

/* ---- scan: shared by check and correct ------------------------------------------------------- */

static inline size_t scan(uint64_t *words, uint8_t *parity, size_t n, size_t start, int correct,
                          int64_t *ev_word, int64_t *ev_code, size_t cap, size_t *n_events)
{
    size_t k = 0, i = start < n ? start : n;
    while (k < cap) {
        i = next_bad_best(words, parity, i, n);
        if (i >= n)
            break;
        int code = decode_table[data_syndrome(words[i]) ^ parity[i]];
        ev_word[k] = (int64_t)i;
        ev_code[k] = code;
        k++;
        if (correct && code >= DATA_BITS)
            parity[i] ^= (uint8_t)(1u << (code - DATA_BITS));
        else if (correct && code >= 0)
            words[i] ^= (uint64_t)1 << code;
        i++;
    }
    *n_events = k;
    return i;
}

/* ---- public API ------------------------------------------------------------------------------ */

void edge_secded_init(void)
{
    if (secded_ready)
        return;
    for (int j = 0; j < WORD_BYTES; j++)
        for (int b = 0; b < 256; b++) {
            uint8_t s = 0;
            for (int r = 0; r < CHECK_BITS; r++) {
                uint64_t covered = (ROW_MASK[r] >> (8 * j)) & (uint64_t)b;
                s |= (uint8_t)(__builtin_parityll(covered) << r);
            }
            syndrome_table[j][b] = s;
        }
    /* A single flipped bit leaves its own H column as the syndrome; all else is uncorrectable. */
    memset(decode_table, EDGE_SECDED_UNCORRECTABLE, sizeof decode_table);
    for (int k = 0; k < DATA_BITS; k++)
        decode_table[data_syndrome((uint64_t)1 << k)] = (int8_t)k;
    for (int r = 0; r < CHECK_BITS; r++)
        decode_table[1 << r] = (int8_t)(DATA_BITS + r);

#ifdef EDGE_SECDED_NEON
    build_neon_tables();
    encode_best = encode_neon;
    next_bad_best = next_bad_neon;
    secded_best_name = "neon";
#endif
#ifdef EDGE_SECDED_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni")) {
        build_gfni_tables();
        encode_best = encode_gfni;
        next_bad_best = next_bad_gfni;
        secded_best_name = "avx512-gfni";
    }
#endif
    secded_ready = 1;
}

int edge_secded_set_path(const char *name)
{
    edge_secded_init();
    if (strcmp(name, "table") == 0) {
        encode_best = encode_portable;
        next_bad_best = next_bad_portable;
        secded_best_name = "table";
        return 0;
    }
#ifdef EDGE_SECDED_NEON
    if (strcmp(name, "neon") == 0) {
        encode_best = encode_neon;
        next_bad_best = next_bad_neon;
        secded_best_name = "neon";
        return 0;
    }
#endif
#ifdef EDGE_SECDED_X86
    if (strcmp(name, "avx512-gfni") == 0 && __builtin_cpu_supports("avx512f")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi")
        && __builtin_cpu_supports("gfni")) {
        build_gfni_tables();
        encode_best = encode_gfni;
        next_bad_best = next_bad_gfni;
        secded_best_name = "avx512-gfni";
        return 0;
    }
#endif
    return -1;
}

void edge_secded_encode(const uint64_t *words, uint8_t *parity, size_t n)
{
    if (!secded_ready)
        edge_secded_init();
    encode_best(words, parity, n);
}

size_t edge_secded_check(const uint64_t *words, const uint8_t *parity, size_t n, size_t start,
                         int64_t *ev_word, int64_t *ev_code, size_t cap, size_t *n_events)
{
    if (!secded_ready)
        edge_secded_init();
    /* correct = 0: nothing is written through the cast-away const */
    return scan((uint64_t *)words, (uint8_t *)parity, n, start, 0, ev_word, ev_code, cap, n_events);
}

size_t edge_secded_correct(uint64_t *words, uint8_t *parity, size_t n, size_t start,
                           int64_t *ev_word, int64_t *ev_code, size_t cap, size_t *n_events)
{
    if (!secded_ready)
        edge_secded_init();
    return scan(words, parity, n, start, 1, ev_word, ev_code, cap, n_events);
}

const char *edge_secded_path(void)
{
    if (!secded_ready)
        edge_secded_init();
    return secded_best_name;
}

/* CRC-32C (Castagnoli), compiled twin of edge/kernels/crc32c.py.
 *
 * Three paths, one result:
 *   - "sse4.2"    x86-64 crc32 instruction (run-time detected, target attribute);
 *   - "armv8-crc" ARMv8 CRC extension, __crc32cd (run-time detected through HWCAP_CRC32);
 *   - "table"     portable slicing-by-8 (8 tables of 256 entries, 8 bytes per step).
 *
 * The crc32 instruction has a latency of ~3 cycles but a throughput of one per cycle, so a
 * single dependent chain runs at a third of the possible speed. The hardware paths therefore run
 * three independent chains over the three thirds of a block and join them: a CRC state is affine
 * in its input, so state(A || B) = shift_|B|(state(A)) ^ state_from_zero(B), where shift_n is the
 * linear map "append n zero bytes". shift_n is a 32x32 GF(2) matrix, applied as 4 byte tables
 * (Mark Adler's scheme in his crc32c.c); no carry-less multiply is needed, so x86 and ARM share it.
 */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGE_CRC32C_X86 1
#include <nmmintrin.h>
#endif

#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__) \
    && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EDGE_CRC32C_ARM 1
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7) /* arch/arm64/include/uapi/asm/hwcap.h */
#endif
#endif

/* Castagnoli polynomial 0x1EDC6F41, bit-reversed (the CRC is computed LSB first). */
#define CRC32C_POLY_REFLECTED 0x82F63B78u

/* Bytes per stream in the three-stream blocks: a long block for large buffers, a short one so
 * that buffers of a few KiB get the interleaving too. */
#define STREAM_LONG 8192
#define STREAM_SHORT 256

static uint32_t slice_table[8][256]; /* slice_table[k][b]: byte b followed by k zero bytes */
static uint32_t shift_long[4][256];  /* "append STREAM_LONG zero bytes", one table per state byte */
static uint32_t shift_short[4][256]; /* "append STREAM_SHORT zero bytes" */

typedef uint32_t (*crc32c_fn)(uint32_t state, const unsigned char *p, size_t len);

static uint32_t crc32c_table_state(uint32_t state, const unsigned char *p, size_t len);
static crc32c_fn crc32c_best = crc32c_table_state;
static const char *crc32c_best_name = "table";
static int crc32c_ready = 0;

/* ---- little helpers ------------------------------------------------------------------------ */

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w); /* unaligned-safe; compiles to one load */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* One zero byte through the CRC register: the linear map the shift tables are built from. */
static uint32_t zero_byte_step(uint32_t state)
{
    return slice_table[0][state & 0xff] ^ (state >> 8);
}

/* GF(2) 32x32 matrices stored as columns: m[i] is the image of bit i. */
static uint32_t gf2_apply(const uint32_t m[32], uint32_t v)
{
    uint32_t r = 0;
    for (int i = 0; v != 0; i++, v >>= 1)
        if (v & 1)
            r ^= m[i];
    return r;
}

static void gf2_compose(uint32_t out[32], const uint32_t a[32], const uint32_t b[32])
{
    uint32_t tmp[32];
    for (int i = 0; i < 32; i++)
        tmp[i] = gf2_apply(a, b[i]);
    memcpy(out, tmp, sizeof tmp);
}

/* Byte tables of the map "append n zero bytes", by squaring the one-byte map. */
static void build_shift_table(uint32_t table[4][256], size_t n)
{
    uint32_t result[32], base[32];
    for (int i = 0; i < 32; i++) {
        result[i] = (uint32_t)1 << i;
        base[i] = zero_byte_step((uint32_t)1 << i);
    }
    for (; n != 0; n >>= 1) {
        if (n & 1)
            gf2_compose(result, base, result);
        gf2_compose(base, base, base);
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++)
            table[k][b] = gf2_apply(result, b << (8 * k));
}

static inline uint32_t shift_state(const uint32_t table[4][256], uint32_t state)
{
    return table[0][state & 0xff] ^ table[1][(state >> 8) & 0xff]
         ^ table[2][(state >> 16) & 0xff] ^ table[3][state >> 24];
}

/* ---- portable path: slicing-by-8 ------------------------------------------------------------ */

static uint32_t crc32c_table_state(uint32_t state, const unsigned char *p, size_t len)
{
    while (len > 0 && ((uintptr_t)p & 7) != 0) {
        state = slice_table[0][(state ^ *p++) & 0xff] ^ (state >> 8);
        len--;
    }
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w = load_le64(p) ^ state;
        state = slice_table[7][w & 0xff] ^ slice_table[6][(w >> 8) & 0xff]
              ^ slice_table[5][(w >> 16) & 0xff] ^ slice_table[4][(w >> 24) & 0xff]
              ^ slice_table[3][(w >> 32) & 0xff] ^ slice_table[2][(w >> 40) & 0xff]
              ^ slice_table[1][(w >> 48) & 0xff] ^ slice_table[0][w >> 56];
    }
    while (len-- > 0)
        state = slice_table[0][(state ^ *p++) & 0xff] ^ (state >> 8);
    return state;
}

/* ---- hardware paths: three interleaved streams --------------------------------------------- */

/* One block of 3 * STREAM bytes at p: three chains over its thirds, joined with the shift table. */
#define CRC32C_THREE_STREAMS(CRC_T, CRC_U64, STREAM, SHIFT)                            \
    while (len >= 3 * (size_t)(STREAM)) {                                              \
        CRC_T c0 = state, c1 = 0, c2 = 0;                                              \
        const unsigned char *end = p + (STREAM);                                       \
        do {                                                                           \
            c0 = CRC_U64(c0, load_le64(p));                                            \
            c1 = CRC_U64(c1, load_le64(p + (STREAM)));                                 \
            c2 = CRC_U64(c2, load_le64(p + 2 * (STREAM)));                             \
            p += 8;                                                                    \
        } while (p < end);                                                             \
        state = shift_state(SHIFT, (uint32_t)c0) ^ (uint32_t)c1;                       \
        state = shift_state(SHIFT, state) ^ (uint32_t)c2;                              \
        p += 2 * (STREAM);                                                             \
        len -= 3 * (size_t)(STREAM);                                                   \
    }

/* Whole-buffer body shared by the x86 and ARM functions (macro: the intrinsics may only be
 * expanded inside a function compiled for the matching target). CRC_T is the register type the
 * 8-byte instruction works on: on x86 a 64-bit one, so that no zero-extending move lands in the
 * dependency chain (it would add a cycle to the 3-cycle latency). */
#define CRC32C_HW_BODY(CRC_T, CRC_U8, CRC_U64)                                         \
    while (len > 0 && ((uintptr_t)p & 7) != 0) {                                      \
        state = CRC_U8(state, *p++);                                                   \
        len--;                                                                         \
    }                                                                                  \
    CRC32C_THREE_STREAMS(CRC_T, CRC_U64, STREAM_LONG, shift_long)                      \
    CRC32C_THREE_STREAMS(CRC_T, CRC_U64, STREAM_SHORT, shift_short)                    \
    {                                                                                  \
        CRC_T c = state;                                                               \
        for (; len >= 8; p += 8, len -= 8)                                             \
            c = CRC_U64(c, load_le64(p));                                              \
        state = (uint32_t)c;                                                           \
    }                                                                                  \
    while (len-- > 0)                                                                  \
        state = CRC_U8(state, *p++);                                                   \
    return state;

#ifdef EDGE_CRC32C_X86
#define X86_CRC_U8(c, b) _mm_crc32_u8((c), (b))
#define X86_CRC_U64(c, w) _mm_crc32_u64((c), (w))

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42_state(uint32_t state, const unsigned char *p, size_t len)
{
    CRC32C_HW_BODY(uint64_t, X86_CRC_U8, X86_CRC_U64)
}
#endif

#ifdef EDGE_CRC32C_ARM
#define ARM_CRC_U8(c, b) __crc32cb((c), (b))
#define ARM_CRC_U64(c, w) __crc32cd((c), (w))

__attribute__((target("+crc")))
static uint32_t crc32c_armv8_state(uint32_t state, const unsigned char *p, size_t len)
{
    CRC32C_HW_BODY(uint32_t, ARM_CRC_U8, ARM_CRC_U64)
}
#endif

/* ---- public API ------------------------------------------------------------------------------ */

void edge_crc32c_init(void)
{
    if (crc32c_ready)
        return;
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int bit = 0; bit < 8; bit++)
            c = (c & 1) ? (c >> 1) ^ CRC32C_POLY_REFLECTED : c >> 1;
        slice_table[0][b] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int b = 0; b < 256; b++)
            slice_table[k][b] = zero_byte_step(slice_table[k - 1][b]);
    build_shift_table(shift_long, STREAM_LONG);
    build_shift_table(shift_short, STREAM_SHORT);

#ifdef EDGE_CRC32C_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        crc32c_best = crc32c_sse42_state;
        crc32c_best_name = "sse4.2";
    }
#endif
#ifdef EDGE_CRC32C_ARM
    if (getauxval(AT_HWCAP) & HWCAP_CRC32) {
        crc32c_best = crc32c_armv8_state;
        crc32c_best_name = "armv8-crc";
    }
#endif
    crc32c_ready = 1;
}

uint32_t edge_crc32c(uint32_t crc, const void *data, size_t len)
{
    if (!crc32c_ready)
        edge_crc32c_init();
    return ~crc32c_best(~crc, (const unsigned char *)data, len);
}

uint32_t edge_crc32c_table(uint32_t crc, const void *data, size_t len)
{
    if (!crc32c_ready)
        edge_crc32c_init();
    return ~crc32c_table_state(~crc, (const unsigned char *)data, len);
}

const char *edge_crc32c_path(void)
{
    if (!crc32c_ready)
        edge_crc32c_init();
    return crc32c_best_name;
}

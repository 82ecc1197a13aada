/* Tile preprocessing, compiled twin of edge/kernels/preprocess.py:preprocess_reference.
 *
 * Per tile, the rows inside the frame go through a "rows" function (the tile's valid width, all
 * valid rows), then the padding (pixels outside the frame, raw value 0) is filled. The source rows
 * of a tile are a frame row apart -- too far for the hardware prefetchers -- so the rows a few
 * rows ahead are prefetched by hand. The per-pixel facts "bright in every channel" and "zero in
 * every channel" are the min and the max (or OR) over the channels, compared once per pixel.
 *
 * Paths, one result (each checked against the numpy reference by the tests):
 *   - "avx512vbmi" (x86-64, run-time detected): uint8 frames with a pixel stride of 1..16 bytes
 *     into 1-byte outputs. A channel's 64 pixels come into one register: planar rows load directly;
 *     3 interleaved bands (RGB HWC) take two byte blends and one VPERMB per band; other strides
 *     gather from 128-byte windows with VPERMT2B. The 256-entry LUT is two VPERMT2B over 128-entry
 *     halves selected by the index's high bit; sums come from VPSADBW, the per-pixel facts are
 *     k-masks counted with POPCNT. Up to 4 channels (NCHW or NHWC, interleaved back with VPERMB /
 *     VPERMT2B) keep their tables and sums in registers for a whole tile; more channels (NCHW) go
 *     through a planar scratch per 256-pixel chunk. Large outputs take non-temporal stores.
 *   - "neon" (aarch64 baseline): the same case (NCHW; NHWC up to 4 channels). Interleaved pixels of
 *     2..4 bytes are split with LD2/LD3/LD4 into a per-chunk planar scratch; the LUT is TBL/TBX
 *     over four 64-byte quarters; sums via UADALP; NHWC interleaves with ST2/ST3/ST4.
 *   - "scalar": everything else (uint16 frames: a gather on the 65536-entry table; float32
 *     outputs; negative or zero pixel strides; more than 4 channels in NHWC) and the fallback on
 *     every CPU.
 */
#include "preprocess_core.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDGE_PP_X86 1
#include <immintrin.h>
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
#define EDGE_PP_NEON 1
#include <arm_neon.h>
#endif

/* Pixels per chunk of the scalar path: its per-pixel min / max arrays (2 x 1 KiB) stay in L1. */
#define SCALAR_CHUNK 256
/* Largest raw value of a uint8 frame: thresholds above it make every pixel "not bright". */
#define U8_MAX_RAW 255
/* Rows ahead whose bytes are prefetched. Frame rows and band planes are often a multiple of 4 KiB
 * apart, so the same bytes of every row and plane land in the same L1 set (12 ways): the rows in
 * flight times the separate spans (planes) must stay below that, or the prefetches evict each
 * other (measured, 4096x4096x3: HWC is as fast at 2..16 rows ahead; CHW takes 7 ms at 2 rows
 * ahead, 11 ms at 3 or 4). */
#define PREFETCH_ROWS_MAX 4
#define PREFETCH_LINES_PER_SET 9
#define CACHE_LINE 64
/* Outputs at least this large are written with non-temporal stores where the SIMD path can: they
 * cannot stay in cache anyway, and skipping the read-for-ownership saves a third of the traffic. */
#define STREAM_MIN_BYTES ((uint64_t)8 << 20)

typedef struct {
    uint64_t sum[EDGE_PP_MAX_CHANNELS]; /* exact sums of raw values, per output channel */
    uint64_t bright;                    /* pixels >= threshold in every channel */
    uint64_t nodata;                    /* pixels == 0 in every channel */
} tile_acc;

/* Bytes [lo, hi] (relative to a row segment's first pixel) that its channels read. */
typedef struct {
    ptrdiff_t lo[EDGE_PP_MAX_CHANNELS], hi[EDGE_PP_MAX_CHANNELS];
    int n;
    int rows_ahead; /* prefetch distance in rows */
} read_span;

struct pp_ctx;
/* One row segment of `count` pixels in the frame; outp[c]: channel c's first output element. */
typedef void (*row_fn)(const struct pp_ctx *cx, const unsigned char *src, int64_t count,
                       unsigned char *const *outp, tile_acc *acc);
/* `rows` row segments, stride_y apart in the frame and out_row_step apart in out. */
typedef void (*rows_fn)(const struct pp_ctx *cx, const unsigned char *src, ptrdiff_t stride_y,
                        int64_t rows, int64_t count, const read_span *span,
                        unsigned char *const *outp, ptrdiff_t out_row_step, tile_acc *acc);

typedef struct pp_ctx {
    int64_t n_channels;
    ptrdiff_t stride_x;                           /* bytes between the pixels of a row */
    ptrdiff_t band_offset[EDGE_PP_MAX_CHANNELS];  /* bytes from a pixel to channel c's band */
    const unsigned char *lut[EDGE_PP_MAX_CHANNELS];
    ptrdiff_t out_step;                           /* bytes between a channel's pixels in out */
    int out_size;
    uint32_t threshold;                           /* clamped to EDGE_PP_THRESHOLD_NONE */
    row_fn row;                                   /* for rows_by_row */
    int stream;                                   /* out is large: non-temporal stores */
    /* distinct source bands ("planes") of the channels: the statistics are per plane */
    int n_planes;
    ptrdiff_t plane_offset[EDGE_PP_MAX_CHANNELS];
    int channel_plane[EDGE_PP_MAX_CHANNELS];
    ptrdiff_t max_offset;                         /* largest plane offset (>= 0 when used) */
#ifdef EDGE_PP_X86
    /* VBMI gather at stride_x: window w holds bytes [128w, 128w + 128) of the 64 pixels' span;
     * lane k takes byte k*stride_x - 128w of its window (window_index[w][k]). */
    int n_windows;
    unsigned char window_index[8][64] __attribute__((aligned(64)));
    uint64_t window_lanes[8];
    /* 3 interleaved bands: lane p of the 3 loaded vectors r0, r1, r2 holds band (j + p) % 3 in r_j,
     * so band o is blended from r1 where (o - p) % 3 == 1, r2 where == 2, then put in pixel order. */
    unsigned char rgb_index[3][64] __attribute__((aligned(64)));
    uint64_t rgb_from_r1[3], rgb_from_r2[3];
    /* NHWC interleave of C = 2, 3, 4 channel vectors (the inverse of the splits above) */
    unsigned char nhwc2_index[2][64] __attribute__((aligned(64)));
    unsigned char nhwc3_index[3][64] __attribute__((aligned(64)));
    uint64_t nhwc3_from[3][3];
    unsigned char nhwc4_index[4][64] __attribute__((aligned(64)));
    uint64_t nhwc4_upper;
#endif
#ifdef EDGE_PP_NEON
    int neon_mode;
#endif
} pp_ctx;

/* ---- prefetch ---------------------------------------------------------------------------------- */

static void plan_prefetch(const pp_ctx *cx, int64_t count, read_span *sp)
{
    const ptrdiff_t run = (ptrdiff_t)(count - 1) * cx->stride_x;
    const ptrdiff_t step = cx->stride_x < 0 ? -cx->stride_x : cx->stride_x;
    ptrdiff_t lo_all = 0, hi_all = 0;
    sp->n = 0;
    for (int p = 0; p < cx->n_planes; p++) {
        const ptrdiff_t a = cx->plane_offset[p] + (run < 0 ? run : 0);
        const ptrdiff_t b = cx->plane_offset[p] + (run > 0 ? run : 0);
        lo_all = p == 0 || a < lo_all ? a : lo_all;
        hi_all = p == 0 || b > hi_all ? b : hi_all;
        sp->lo[sp->n] = a;
        sp->hi[sp->n] = b;
        sp->n++;
    }
    /* interleaved bands (HWC): one span covers every plane */
    if (hi_all - lo_all <= 2 * (ptrdiff_t)count * (step > 0 ? step : 1)) {
        sp->lo[0] = lo_all;
        sp->hi[0] = hi_all;
        sp->n = 1;
    }
    const int ahead = PREFETCH_LINES_PER_SET / sp->n - 1;
    sp->rows_ahead = ahead > PREFETCH_ROWS_MAX ? PREFETCH_ROWS_MAX : ahead < 1 ? 1 : ahead;
}

static inline void prefetch_span(const unsigned char *src, const read_span *sp)
{
    for (int s = 0; s < sp->n; s++) {
        for (ptrdiff_t b = sp->lo[s]; b < sp->hi[s]; b += CACHE_LINE)
            __builtin_prefetch(src + b, 0, 3);
        __builtin_prefetch(src + sp->hi[s], 0, 3);
    }
}

/* ---- scalar path ------------------------------------------------------------------------------- */

static inline uint32_t load_raw8(const unsigned char *p) { return *p; }
static inline uint32_t load_raw16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v); /* frames may be unaligned views: no uint16_t* dereference */
    return v;
}
static inline void copy_out1(unsigned char *o, const unsigned char *lut, uint32_t r) { *o = lut[r]; }
static inline void copy_out4(unsigned char *o, const unsigned char *lut, uint32_t r)
{
    memcpy(o, lut + 4 * (size_t)r, 4);
}
/* One row segment, channel by channel over chunks of SCALAR_CHUNK pixels. */
#define DEFINE_ROW_SCALAR(NAME, LOAD, STORE)                                                      \
    static void NAME(const pp_ctx *cx, const unsigned char *src, int64_t count,                    \
                     unsigned char *const *outp, tile_acc *acc)                                    \
    {                                                                                              \
        uint32_t lo[SCALAR_CHUNK], hi[SCALAR_CHUNK]; /* per pixel: min, max over the channels */  \
        const ptrdiff_t sx = cx->stride_x, os = cx->out_step;                                      \
        const uint32_t thr = cx->threshold;                                                        \
        for (int64_t k0 = 0; k0 < count; k0 += SCALAR_CHUNK) {                                     \
            const int64_t m = count - k0 < SCALAR_CHUNK ? count - k0 : SCALAR_CHUNK;               \
            for (int64_t c = 0; c < cx->n_channels; c++) {                                         \
                const unsigned char *s = src + cx->band_offset[c] + k0 * sx;                       \
                const unsigned char *lut = cx->lut[c];                                             \
                unsigned char *o = outp[c] + k0 * os;                                              \
                uint64_t sum = 0;                                                                  \
                if (c == 0) {                                                                      \
                    for (int64_t k = 0; k < m; k++) {                                              \
                        const uint32_t r = LOAD(s + k * sx);                                       \
                        STORE(o + k * os, lut, r);                                                 \
                        sum += r;                                                                  \
                        lo[k] = hi[k] = r;                                                         \
                    }                                                                              \
                } else {                                                                           \
                    for (int64_t k = 0; k < m; k++) {                                              \
                        const uint32_t r = LOAD(s + k * sx);                                       \
                        STORE(o + k * os, lut, r);                                                 \
                        sum += r;                                                                  \
                        lo[k] = r < lo[k] ? r : lo[k];                                             \
                        hi[k] = r > hi[k] ? r : hi[k];                                             \
                    }                                                                              \
                }                                                                                  \
                acc->sum[c] += sum;                                                                \
            }                                                                                      \
            uint64_t bright = 0, nodata = 0;                                                       \
            for (int64_t k = 0; k < m; k++) {                                                      \
                bright += lo[k] >= thr;                                                            \
                nodata += hi[k] == 0;                                                              \
            }                                                                                      \
            acc->bright += bright;                                                                 \
            acc->nodata += nodata;                                                                 \
        }                                                                                          \
    }

DEFINE_ROW_SCALAR(row_scalar_u8_o1, load_raw8, copy_out1)
DEFINE_ROW_SCALAR(row_scalar_u8_o4, load_raw8, copy_out4)
DEFINE_ROW_SCALAR(row_scalar_u16_o1, load_raw16, copy_out1)
DEFINE_ROW_SCALAR(row_scalar_u16_o4, load_raw16, copy_out4)

/* Few channels (1..4, a compile-time constant): pixel by pixel, every channel's sum and the
 * per-pixel min / max in registers (about twice the speed of the channel-by-channel loop). */
#define DEFINE_ROW_SCALAR_FEW(NAME, LOAD, STORE, NC)                                               \
    static void NAME(const pp_ctx *cx, const unsigned char *src, int64_t count,                    \
                     unsigned char *const *outp, tile_acc *acc)                                    \
    {                                                                                              \
        const ptrdiff_t sx = cx->stride_x, os = cx->out_step;                                      \
        const uint32_t thr = cx->threshold;                                                        \
        const unsigned char *s[NC], *lut[NC];                                                      \
        unsigned char *o[NC];                                                                      \
        uint64_t sum[NC], bright = 0, nodata = 0;                                                  \
        for (int c = 0; c < NC; c++) {                                                             \
            s[c] = src + cx->band_offset[c];                                                       \
            lut[c] = cx->lut[c];                                                                   \
            o[c] = outp[c];                                                                        \
            sum[c] = 0;                                                                            \
        }                                                                                          \
        for (int64_t k = 0; k < count; k++) {                                                      \
            uint32_t lo = UINT32_MAX, hi = 0;                                                      \
            for (int c = 0; c < NC; c++) {                                                         \
                const uint32_t r = LOAD(s[c] + k * sx);                                            \
                STORE(o[c] + k * os, lut[c], r);                                                   \
                sum[c] += r;                                                                       \
                lo = r < lo ? r : lo;                                                              \
                hi = r > hi ? r : hi;                                                              \
            }                                                                                      \
            bright += lo >= thr;                                                                   \
            nodata += hi == 0;                                                                     \
        }                                                                                          \
        for (int c = 0; c < NC; c++)                                                               \
            acc->sum[c] += sum[c];                                                                 \
        acc->bright += bright;                                                                     \
        acc->nodata += nodata;                                                                     \
    }

#define DEFINE_ROW_SCALAR_FEW_ALL(PREFIX, LOAD, STORE)                                             \
    DEFINE_ROW_SCALAR_FEW(PREFIX##_1, LOAD, STORE, 1)                                              \
    DEFINE_ROW_SCALAR_FEW(PREFIX##_2, LOAD, STORE, 2)                                              \
    DEFINE_ROW_SCALAR_FEW(PREFIX##_3, LOAD, STORE, 3)                                              \
    DEFINE_ROW_SCALAR_FEW(PREFIX##_4, LOAD, STORE, 4)                                              \
    static const row_fn PREFIX[4] = {PREFIX##_1, PREFIX##_2, PREFIX##_3, PREFIX##_4};

DEFINE_ROW_SCALAR_FEW_ALL(row_few_u8_o1, load_raw8, copy_out1)
DEFINE_ROW_SCALAR_FEW_ALL(row_few_u8_o4, load_raw8, copy_out4)
DEFINE_ROW_SCALAR_FEW_ALL(row_few_u16_o1, load_raw16, copy_out1)
DEFINE_ROW_SCALAR_FEW_ALL(row_few_u16_o4, load_raw16, copy_out4)

/* Padding: `count` pixels outside the frame, raw value 0 in every channel. */
static void pad_fill(const pp_ctx *cx, int64_t count, unsigned char *const *outp, tile_acc *acc)
{
    for (int64_t c = 0; c < cx->n_channels; c++) {
        unsigned char *o = outp[c];
        const unsigned char *entry = cx->lut[c]; /* lut[c][0] */
        if (cx->out_size == 1 && cx->out_step == 1) {
            memset(o, entry[0], (size_t)count);
        } else {
            for (int64_t k = 0; k < count; k++)
                memcpy(o + k * cx->out_step, entry, (size_t)cx->out_size);
        }
    }
    acc->nodata += (uint64_t)count;
    if (cx->threshold == 0)
        acc->bright += (uint64_t)count;
}

/* Rows one at a time through cx->row, prefetching span->rows_ahead ahead (scalar, NEON paths). */
static void rows_by_row(const pp_ctx *cx, const unsigned char *src, ptrdiff_t stride_y,
                        int64_t rows, int64_t count, const read_span *span,
                        unsigned char *const *outp, ptrdiff_t out_row_step, tile_acc *acc)
{
    unsigned char *o[EDGE_PP_MAX_CHANNELS];
    for (int64_t i = 0; i < rows; i++) {
        const unsigned char *row = src + i * stride_y;
        if (i + span->rows_ahead < rows)
            prefetch_span(row + span->rows_ahead * stride_y, span);
        for (int64_t c = 0; c < cx->n_channels; c++)
            o[c] = outp[c] + i * out_row_step;
        cx->row(cx, row, count, o, acc);
    }
}

/* ---- x86-64: AVX-512 VBMI ---------------------------------------------------------------------- */

#ifdef EDGE_PP_X86
#define VBMI_TARGET __attribute__((target("avx512f,avx512bw,avx512vbmi,popcnt")))
#define VBMI_INLINE VBMI_TARGET static inline __attribute__((always_inline))
/* Pixels per chunk: its planes (one 64-byte vector per 64 pixels per plane) sit in a stack scratch
 * of EDGE_PP_MAX_CHANNELS x VBMI_CHUNK bytes, L1-resident between phase A and phase B. */
#define VBMI_CHUNK 256
/* Largest pixel stride (bytes) the window gather serves: 64 pixels then span 8 windows. */
#define VBMI_MAX_STRIDE 16

enum { VBMI_WINDOWS = 0, VBMI_PLANAR = 1, VBMI_RGB = 3 };

static const unsigned char byte_iota[64] __attribute__((aligned(64))) = {
    0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
    44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};

static inline uint64_t low_lanes(int64_t n) /* mask of the n lowest of 64 lanes, 0 <= n <= 64 */
{
    return n >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1);
}

/* 64 bytes from p, of which only the first `avail` may be read (the rest read as 0). Masked lanes
 * of a masked load never fault, so a segment that ends at the end of a mapping is safe. */
VBMI_INLINE __m512i vbmi_load(const unsigned char *p, ptrdiff_t avail)
{
    if (avail >= 64)
        return _mm512_loadu_si512((const void *)p);
    if (avail <= 0)
        return _mm512_setzero_si512();
    return _mm512_maskz_loadu_epi8(low_lanes(avail), p);
}

/* Bytes p[0], p[sx], ..., p[63*sx] (0 beyond the `need` readable bytes): window w (bytes
 * [128w, 128w + 128)) fills its own lanes with one VPERMT2B. */
VBMI_INLINE __m512i vbmi_gather(const pp_ctx *cx, int n_windows, const unsigned char *p,
                                ptrdiff_t need)
{
    const int inside = (ptrdiff_t)128 * n_windows <= need;
    __m512i res = _mm512_setzero_si512();
    for (int w = 0; w < n_windows; w++) {
        const ptrdiff_t at = (ptrdiff_t)w * 128;
        const __m512i a = inside ? _mm512_loadu_si512((const void *)(p + at))
                                 : vbmi_load(p + at, need - at);
        const __m512i b = inside ? _mm512_loadu_si512((const void *)(p + at + 64))
                                 : vbmi_load(p + at + 64, need - at - 64);
        const __m512i idx = _mm512_load_si512((const void *)cx->window_index[w]);
        const __m512i got = _mm512_permutex2var_epi8(a, idx, b);
        res = w == 0 ? got : _mm512_mask_blend_epi8(cx->window_lanes[w], res, got);
    }
    return res;
}

/* Raw vectors -> output bytes through one channel's 256-entry table (t0..t3: 64 entries each). */
VBMI_INLINE __m512i vbmi_lut(__m512i t0, __m512i t1, __m512i t2, __m512i t3, __m512i raw)
{
    const __m512i low = _mm512_permutex2var_epi8(t0, raw, t1);  /* entries 0..127 */
    const __m512i high = _mm512_permutex2var_epi8(t2, raw, t3); /* entries 128..255 */
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(raw), low, high);
}

VBMI_INLINE void vbmi_rows(const pp_ctx *cx, const int mode, const ptrdiff_t sx,
                           const int n_windows, const unsigned char *src, ptrdiff_t stride_y, int64_t rows,
                           int64_t count, const read_span *span, unsigned char *const *outp,
                           ptrdiff_t out_row_step, tile_acc *acc)
{
    unsigned char plane[EDGE_PP_MAX_CHANNELS][VBMI_CHUNK] __attribute__((aligned(64)));
    __m512i plane_sum[EDGE_PP_MAX_CHANNELS];
    const int P = cx->n_planes;
    const int bright_possible = cx->threshold <= U8_MAX_RAW;
    const __m512i thr = _mm512_set1_epi8((char)(bright_possible ? cx->threshold : U8_MAX_RAW));
    const __m512i zero = _mm512_setzero_si512(), ones = _mm512_set1_epi8(-1);
    uint64_t bright = 0, nodata = 0;
    for (int p = 0; p < P; p++)
        plane_sum[p] = zero;

    for (int64_t i = 0; i < rows; i++) {
        const unsigned char *row = src + i * stride_y;
        if (i + span->rows_ahead < rows)
            prefetch_span(row + span->rows_ahead * stride_y, span);
        for (int64_t k0 = 0; k0 < count; k0 += VBMI_CHUNK) {
            const int64_t m = count - k0 < VBMI_CHUNK ? count - k0 : VBMI_CHUNK;
            const int nv = (int)((m + 63) / 64);
            const unsigned char *px = row + k0 * sx;

            /* A. planes, and the statistics from them */
            for (int v = 0; v < nv; v++) {
                const int64_t left = m - (int64_t)v * 64;
                __m512i lowest = ones, any = zero; /* per pixel: min and OR over the planes */
                __m512i r0 = zero, r1 = zero, r2 = zero;
                if (mode == VBMI_RGB) {
                    const ptrdiff_t at = (ptrdiff_t)v * 192;
                    const ptrdiff_t readable = (ptrdiff_t)(m - 1) * 3 + cx->max_offset + 1;
                    if (at + 192 <= readable) {
                        r0 = _mm512_loadu_si512((const void *)(px + at));
                        r1 = _mm512_loadu_si512((const void *)(px + at + 64));
                        r2 = _mm512_loadu_si512((const void *)(px + at + 128));
                    } else {
                        r0 = vbmi_load(px + at, readable - at);
                        r1 = vbmi_load(px + at + 64, readable - at - 64);
                        r2 = vbmi_load(px + at + 128, readable - at - 128);
                    }
                }
                for (int p = 0; p < P; p++) {
                    const unsigned char *base = px + cx->plane_offset[p];
                    __m512i x;
                    if (mode == VBMI_RGB) {
                        const ptrdiff_t o = cx->plane_offset[p];
                        __m512i b = _mm512_mask_blend_epi8(cx->rgb_from_r1[o], r0, r1);
                        b = _mm512_mask_blend_epi8(cx->rgb_from_r2[o], b, r2);
                        x = _mm512_permutexvar_epi8(
                            _mm512_load_si512((const void *)cx->rgb_index[o]), b);
                    } else if (mode == VBMI_PLANAR) {
                        x = left >= 64 ? _mm512_loadu_si512((const void *)(base + v * 64))
                                       : _mm512_maskz_loadu_epi8(low_lanes(left), base + v * 64);
                    } else {
                        const ptrdiff_t at = (ptrdiff_t)v * 64 * sx;
                        x = vbmi_gather(cx, n_windows, base + at, (ptrdiff_t)(m - 1) * sx + 1 - at);
                    }
                    _mm512_store_si512((void *)(plane[p] + v * 64), x);
                    plane_sum[p] = _mm512_add_epi64(plane_sum[p], _mm512_sad_epu8(x, zero));
                    lowest = _mm512_min_epu8(lowest, x);
                    any = _mm512_or_si512(any, x);
                }
                const uint64_t valid = low_lanes(left); /* lanes past m read as 0: sums unharmed */
                bright += (uint64_t)__builtin_popcountll(_mm512_cmpge_epu8_mask(lowest, thr) & valid);
                nodata += (uint64_t)__builtin_popcountll(_mm512_testn_epi8_mask(any, any) & valid);
            }

            /* B. each channel's LUT over its plane */
            for (int64_t c = 0; c < cx->n_channels; c++) {
                const unsigned char *lut = cx->lut[c];
                const __m512i t0 = _mm512_loadu_si512((const void *)lut);
                const __m512i t1 = _mm512_loadu_si512((const void *)(lut + 64));
                const __m512i t2 = _mm512_loadu_si512((const void *)(lut + 128));
                const __m512i t3 = _mm512_loadu_si512((const void *)(lut + 192));
                const unsigned char *in = plane[cx->channel_plane[c]];
                unsigned char *o = outp[c] + i * out_row_step + k0;
                for (int v = 0; v < nv; v++) {
                    const __m512i y = vbmi_lut(t0, t1, t2, t3,
                                               _mm512_load_si512((const void *)(in + v * 64)));
                    const int64_t left = m - (int64_t)v * 64;
                    if (left >= 64)
                        _mm512_storeu_si512((void *)(o + v * 64), y);
                    else
                        _mm512_mask_storeu_epi8(o + v * 64, low_lanes(left), y);
                }
            }
        }
    }

    uint64_t total[EDGE_PP_MAX_CHANNELS];
    for (int p = 0; p < P; p++)
        total[p] = (uint64_t)_mm512_reduce_add_epi64(plane_sum[p]);
    for (int64_t c = 0; c < cx->n_channels; c++)
        acc->sum[c] += total[cx->channel_plane[c]];
    if (bright_possible)
        acc->bright += bright;
    acc->nodata += nodata;
}

/* One output vector to o: plain (masked to `bytes` when fewer than 64), or non-temporal. A run of
 * non-temporal vectors that does not start on a cache line (numpy aligns to 16 bytes) is written a
 * line at a time: each line joins the `skew` bytes held back from the previous vector with the
 * head of the next (VPERMT2D when skew is a multiple of 4: one uop; else VPERMT2B). The run's first
 * line (`first`) and its last (vbmi_flush) take ordinary masked stores: they hold bytes not ours. */
typedef struct {
    int skew, dword;
    __m512i index, held;
} vbmi_stream;

VBMI_INLINE void vbmi_stream_start(vbmi_stream *st, const unsigned char *o)
{
    st->skew = (int)((uintptr_t)o & (CACHE_LINE - 1));
    st->dword = st->skew % 4 == 0;
    st->index = st->dword
        ? _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32(16 - st->skew / 4))
        : _mm512_add_epi8(_mm512_load_si512((const void *)byte_iota),
                          _mm512_set1_epi8((char)(64 - st->skew)));
    st->held = _mm512_setzero_si512();
}

VBMI_INLINE void vbmi_put(unsigned char *o, __m512i y, int64_t bytes, int stream, int first,
                          vbmi_stream *st)
{
    if (stream && st->skew == 0) {
        _mm512_stream_si512((void *)o, y);
    } else if (stream) {
        const __m512i line = st->dword ? _mm512_permutex2var_epi32(st->held, st->index, y)
                                       : _mm512_permutex2var_epi8(st->held, st->index, y);
        if (first)
            _mm512_mask_storeu_epi8(o - st->skew, ~low_lanes(st->skew), line);
        else
            _mm512_stream_si512((void *)(o - st->skew), line);
        st->held = y;
    } else if (bytes >= 64) {
        _mm512_storeu_si512((void *)o, y);
    } else if (bytes > 0) {
        _mm512_mask_storeu_epi8(o, low_lanes(bytes), y);
    }
}

VBMI_INLINE void vbmi_flush(unsigned char *end, const vbmi_stream *st) /* end: past the run */
{
    if (st->skew != 0)
        _mm512_mask_storeu_epi8(end - 64, ~low_lanes(64 - st->skew), st->held);
}

/* Few channels (C_CONST <= 4, known at compile time): no planar scratch. Each channel's bytes are
 * gathered straight into a register, its 4 table vectors stay in registers for the whole tile and
 * its sum accumulates in a register (channels that share a band just gather it twice). NHWC output
 * interleaves the channel vectors of 64 pixels into C output vectors. */
VBMI_INLINE void vbmi_rows_few(const pp_ctx *cx, const int mode, const ptrdiff_t sx,
                               const int n_windows, const int C_CONST, const int NHWC,
                               const unsigned char *src, ptrdiff_t stride_y, int64_t rows,
                               int64_t count, const read_span *span, unsigned char *const *outp,
                               ptrdiff_t out_row_step, tile_acc *acc)
{
    __m512i t[4][4], sums[4], rgb_index[4], y[4];
    __mmask64 from_r1[4], from_r2[4];
    ptrdiff_t off[4];
    const int bright_possible = cx->threshold <= U8_MAX_RAW;
    const __m512i thr = _mm512_set1_epi8((char)(bright_possible ? cx->threshold : U8_MAX_RAW));
    const __m512i zero = _mm512_setzero_si512(), ones = _mm512_set1_epi8(-1);
    const ptrdiff_t readable_rgb = (ptrdiff_t)(count - 1) * 3 + cx->max_offset + 1;
    const ptrdiff_t need = (ptrdiff_t)(count - 1) * sx + 1; /* bytes a channel reads per row */
    uint64_t bright = 0, nodata = 0;
    for (int c = 0; c < C_CONST; c++) {
        for (int q = 0; q < 4; q++)
            t[c][q] = _mm512_loadu_si512((const void *)(cx->lut[c] + 64 * q));
        sums[c] = zero;
        off[c] = cx->band_offset[c];
        if (mode == VBMI_RGB) {
            rgb_index[c] = _mm512_load_si512((const void *)cx->rgb_index[off[c]]);
            from_r1[c] = cx->rgb_from_r1[off[c]];
            from_r2[c] = cx->rgb_from_r2[off[c]];
        }
    }
    const int nv = (int)((count + 63) / 64);
    const int interleave = NHWC && C_CONST > 1;

    /* Non-temporal stores when each run (a channel plane; NHWC: the whole tile) is one contiguous
     * stretch of whole vectors: a tile inside the frame whose width is a multiple of 64. */
    const int stream = cx->stream && count % 64 == 0
                    && out_row_step == count * (interleave ? C_CONST : 1);
    vbmi_stream st[4];
    for (int c = 0; c < (interleave ? 1 : C_CONST); c++)
        vbmi_stream_start(&st[c], outp[c]);

    for (int64_t i = 0; i < rows; i++) {
        const unsigned char *row = src + i * stride_y;
        if (i + span->rows_ahead < rows)
            prefetch_span(row + span->rows_ahead * stride_y, span);
        for (int v = 0; v < nv; v++) {
            const int64_t left = count - (int64_t)v * 64;
            const int first = i == 0 && v == 0;
            __m512i lowest = ones, any = zero; /* per pixel: min and OR over the channels */
            __m512i r0 = zero, r1 = zero, r2 = zero;
            if (mode == VBMI_RGB) {
                const unsigned char *q = row + (ptrdiff_t)v * 192;
                const ptrdiff_t avail = readable_rgb - (ptrdiff_t)v * 192;
                if (avail >= 192) {
                    r0 = _mm512_loadu_si512((const void *)q);
                    r1 = _mm512_loadu_si512((const void *)(q + 64));
                    r2 = _mm512_loadu_si512((const void *)(q + 128));
                } else {
                    r0 = vbmi_load(q, avail);
                    r1 = vbmi_load(q + 64, avail - 64);
                    r2 = vbmi_load(q + 128, avail - 128);
                }
            }
            for (int c = 0; c < C_CONST; c++) {
                __m512i x;
                if (mode == VBMI_RGB) {
                    __m512i b = _mm512_mask_blend_epi8(from_r1[c], r0, r1);
                    b = _mm512_mask_blend_epi8(from_r2[c], b, r2);
                    x = _mm512_permutexvar_epi8(rgb_index[c], b);
                } else if (mode == VBMI_PLANAR) {
                    const unsigned char *q = row + off[c] + (ptrdiff_t)v * 64;
                    x = left >= 64 ? _mm512_loadu_si512((const void *)q)
                                   : _mm512_maskz_loadu_epi8(low_lanes(left), q);
                } else {
                    const ptrdiff_t at = (ptrdiff_t)v * 64 * sx;
                    x = vbmi_gather(cx, n_windows, row + off[c] + at, need - at);
                }
                y[c] = vbmi_lut(t[c][0], t[c][1], t[c][2], t[c][3], x);
                if (!interleave)
                    vbmi_put(outp[c] + i * out_row_step + (ptrdiff_t)v * 64, y[c], left, stream,
                             first, &st[c]);
                sums[c] = _mm512_add_epi64(sums[c], _mm512_sad_epu8(x, zero));
                lowest = _mm512_min_epu8(lowest, x);
                any = _mm512_or_si512(any, x);
            }
            if (interleave) {
                /* output vector j holds bytes [64j, 64j + 64) of the 64 pixels x C channels */
                __m512i ov[4];
                if (C_CONST == 2) {
                    for (int j = 0; j < 2; j++)
                        ov[j] = _mm512_permutex2var_epi8(
                            y[0], _mm512_load_si512((const void *)cx->nhwc2_index[j]), y[1]);
                } else if (C_CONST == 3) {
                    __m512i a[3];
                    for (int c = 0; c < 3; c++)
                        a[c] = _mm512_permutexvar_epi8(
                            _mm512_load_si512((const void *)cx->nhwc3_index[c]), y[c]);
                    for (int j = 0; j < 3; j++)
                        ov[j] = _mm512_mask_blend_epi8(cx->nhwc3_from[2][j],
                                    _mm512_mask_blend_epi8(cx->nhwc3_from[1][j], a[0], a[1]), a[2]);
                } else {
                    for (int j = 0; j < 4; j++) {
                        const __m512i idx = _mm512_load_si512((const void *)cx->nhwc4_index[j]);
                        ov[j] = _mm512_mask_blend_epi8(cx->nhwc4_upper,
                                                       _mm512_permutex2var_epi8(y[0], idx, y[1]),
                                                       _mm512_permutex2var_epi8(y[2], idx, y[3]));
                    }
                }
                unsigned char *o = outp[0] + i * out_row_step + (ptrdiff_t)v * 64 * C_CONST;
                for (int j = 0; j < C_CONST; j++)
                    vbmi_put(o + 64 * j, ov[j], left * C_CONST - 64 * j, stream, first && j == 0,
                             &st[0]);
            }
            const uint64_t valid = low_lanes(left); /* lanes past count read as 0 */
            bright += (uint64_t)__builtin_popcountll(_mm512_cmpge_epu8_mask(lowest, thr) & valid);
            nodata += (uint64_t)__builtin_popcountll(_mm512_testn_epi8_mask(any, any) & valid);
        }
    }
    for (int c = 0; c < C_CONST; c++)
        acc->sum[c] += (uint64_t)_mm512_reduce_add_epi64(sums[c]);
    if (stream && rows > 0) {
        if (interleave)
            vbmi_flush(outp[0] + rows * count * C_CONST, &st[0]);
        else
            for (int c = 0; c < C_CONST; c++)
                vbmi_flush(outp[c] + rows * count, &st[c]);
    }
    if (bright_possible)
        acc->bright += bright;
    acc->nodata += nodata;
}

#define DEFINE_ROWS_VBMI_FEW(NAME, MODE, SX, WINDOWS, C, NHWC)                                     \
    VBMI_TARGET static void NAME(const pp_ctx *cx, const unsigned char *src, ptrdiff_t stride_y,   \
                                 int64_t rows, int64_t count, const read_span *span,               \
                                 unsigned char *const *outp, ptrdiff_t out_row_step, tile_acc *acc)\
    {                                                                                              \
        vbmi_rows_few(cx, MODE, SX, WINDOWS, C, NHWC, src, stride_y, rows, count, span, outp,      \
                      out_row_step, acc);                                                          \
    }
/* [nhwc][C - 1]; one channel is the same bytes in both layouts */
#define DEFINE_ROWS_VBMI_FEW_ALL(PREFIX, MODE, SX, WINDOWS)                                        \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_1, MODE, SX, WINDOWS, 1, 0)                                      \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_2, MODE, SX, WINDOWS, 2, 0)                                      \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_3, MODE, SX, WINDOWS, 3, 0)                                      \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_4, MODE, SX, WINDOWS, 4, 0)                                      \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_nhwc_2, MODE, SX, WINDOWS, 2, 1)                                 \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_nhwc_3, MODE, SX, WINDOWS, 3, 1)                                 \
    DEFINE_ROWS_VBMI_FEW(PREFIX##_nhwc_4, MODE, SX, WINDOWS, 4, 1)                                 \
    static const rows_fn PREFIX[2][4] = {                                                          \
        {PREFIX##_1, PREFIX##_2, PREFIX##_3, PREFIX##_4},                                          \
        {PREFIX##_1, PREFIX##_nhwc_2, PREFIX##_nhwc_3, PREFIX##_nhwc_4}};

DEFINE_ROWS_VBMI_FEW_ALL(rows_few_planar, VBMI_PLANAR, 1, 0)
DEFINE_ROWS_VBMI_FEW_ALL(rows_few_rgb, VBMI_RGB, 3, 0)
DEFINE_ROWS_VBMI_FEW_ALL(rows_few_windows, VBMI_WINDOWS, cx->stride_x, cx->n_windows)

#define DEFINE_ROWS_VBMI(NAME, MODE, SX, WINDOWS)                                                 \
    VBMI_TARGET static void NAME(const pp_ctx *cx, const unsigned char *src, ptrdiff_t stride_y,   \
                                 int64_t rows, int64_t count, const read_span *span,               \
                                 unsigned char *const *outp, ptrdiff_t out_row_step, tile_acc *acc)\
    {                                                                                              \
        vbmi_rows(cx, MODE, SX, WINDOWS, src, stride_y, rows, count, span, outp, out_row_step,     \
                  acc);                                                                            \
    }

DEFINE_ROWS_VBMI(rows_vbmi_planar, VBMI_PLANAR, 1, 0)
DEFINE_ROWS_VBMI(rows_vbmi_rgb, VBMI_RGB, 3, 0)
DEFINE_ROWS_VBMI(rows_vbmi_any, VBMI_WINDOWS, cx->stride_x, cx->n_windows)

static int have_vbmi(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("popcnt");
}

static rows_fn vbmi_setup(pp_ctx *cx, int nhwc)
{
    const ptrdiff_t sx = cx->stride_x;
    cx->n_windows = (int)(63 * sx / 128) + 1;
    memset(cx->window_lanes, 0, sizeof cx->window_lanes);
    for (int k = 0; k < 64; k++) {
        const ptrdiff_t byte = k * sx;
        const int w = (int)(byte / 128);
        cx->window_index[w][k] = (unsigned char)(byte - 128 * w);
        cx->window_lanes[w] |= (uint64_t)1 << k;
    }
    for (int o = 0; o < 3; o++) {
        cx->rgb_from_r1[o] = cx->rgb_from_r2[o] = 0;
        for (int p = 0; p < 64; p++) {
            const int j = ((o - p) % 3 + 3) % 3; /* the vector holding band o at lane p */
            if (j == 1)
                cx->rgb_from_r1[o] |= (uint64_t)1 << p;
            if (j == 2)
                cx->rgb_from_r2[o] |= (uint64_t)1 << p;
        }
        for (int k = 0; k < 64; k++)
            cx->rgb_index[o][k] = (unsigned char)((3 * k + o) % 64);
    }
    /* NHWC: output byte q = 64j + p of a 64-pixel group is pixel q / C, channel q % C */
    for (int j = 0; j < 2; j++)
        for (int p = 0; p < 64; p++)
            cx->nhwc2_index[j][p] = (unsigned char)((p % 2) * 64 + 32 * j + p / 2);
    for (int c = 0; c < 3; c++) {
        for (int j = 0; j < 3; j++)
            cx->nhwc3_from[c][j] = 0;
        for (int p = 0; p < 64; p++) {
            const int j = ((c - p) % 3 + 3) % 3; /* output vector whose lane p is channel c */
            cx->nhwc3_index[c][p] = (unsigned char)((64 * j + p - c) / 3);
            cx->nhwc3_from[c][j] |= (uint64_t)1 << p;
        }
    }
    cx->nhwc4_upper = 0;
    for (int j = 0; j < 4; j++)
        for (int p = 0; p < 64; p++)
            cx->nhwc4_index[j][p] = (unsigned char)(((p % 4) & 1) * 64 + 16 * j + p / 4);
    for (int p = 0; p < 64; p++)
        if (p % 4 >= 2)
            cx->nhwc4_upper |= (uint64_t)1 << p;

    int offsets_inside = 1;
    for (int p = 0; p < cx->n_planes; p++)
        offsets_inside = offsets_inside && cx->plane_offset[p] >= 0 && cx->plane_offset[p] < sx;
    const int64_t C = cx->n_channels;
    if (C <= 4) {
        if (sx == 1)
            return rows_few_planar[nhwc][C - 1];
        if (sx == 3 && offsets_inside)
            return rows_few_rgb[nhwc][C - 1];
        return rows_few_windows[nhwc][C - 1];
    }
    if (nhwc)
        return NULL; /* more than 4 channels interleaved: the scalar path */
    if (sx == 1)
        return rows_vbmi_planar;
    if (sx == 3 && offsets_inside)
        return rows_vbmi_rgb;
    return rows_vbmi_any;
}
#endif /* EDGE_PP_X86 */

/* ---- aarch64: NEON ----------------------------------------------------------------------------- */

#ifdef EDGE_PP_NEON
/* Pixels per chunk: the planar scratch is EDGE_PP_MAX_CHANNELS x NEON_CHUNK bytes on the stack. */
#define NEON_CHUNK 128
#define NEON_GROUPS (NEON_CHUNK / 16)

enum {
    NEON_DIRECT = 0,      /* stride_x == 1: channel rows are read in place */
    NEON_DEINTERLEAVE = 1,/* stride_x 2..4, every band offset inside the pixel: LD2/LD3/LD4 */
    NEON_COPY = 2         /* anything else: a scalar strided copy into the scratch */
};

static inline uint8x16_t neon_lut(const uint8x16x4_t t[4], uint8x16_t x)
{
    /* TBL gives 0 and TBX keeps the lane for indices >= 64, so each quarter fills only its own
     * lanes once x is moved into 0..63 for that quarter (XOR flips the two high bits). */
    uint8x16_t y = vqtbl4q_u8(t[0], x);
    y = vqtbx4q_u8(y, t[1], veorq_u8(x, vdupq_n_u8(0x40)));
    y = vqtbx4q_u8(y, t[2], veorq_u8(x, vdupq_n_u8(0x80)));
    return vqtbx4q_u8(y, t[3], veorq_u8(x, vdupq_n_u8(0xC0)));
}

static void row_neon(const pp_ctx *cx, const unsigned char *src, int64_t count,
                     unsigned char *const *outp, tile_acc *acc)
{
    uint8_t scratch[EDGE_PP_MAX_CHANNELS][NEON_CHUNK] __attribute__((aligned(16)));
    uint8_t mapped[4][NEON_CHUNK] __attribute__((aligned(16))); /* NHWC: LUT outputs to interleave */
    uint8x16_t all_bright[NEON_GROUPS], any_set[NEON_GROUPS];
    const int64_t C = cx->n_channels;
    const int interleave = cx->out_step > 1; /* NHWC with 2..4 channels: ST2/ST3/ST4 */
    const ptrdiff_t sx = cx->stride_x;
    const int bright_possible = cx->threshold <= U8_MAX_RAW;
    const uint8x16_t thr = vdupq_n_u8((uint8_t)(bright_possible ? cx->threshold : U8_MAX_RAW));
    /* last byte of the segment known to be readable (for LD2/3/4, which read whole pixels) */
    const unsigned char *readable_end = src + (count - 1) * sx + cx->max_offset;

    for (int64_t k0 = 0; k0 < count; k0 += NEON_CHUNK) {
        const int64_t m = count - k0 < NEON_CHUNK ? count - k0 : NEON_CHUNK;
        const int full = (int)(m / 16), ng = (int)((m + 15) / 16);
        const unsigned char *px = src + k0 * sx;

        /* 1. planar bytes of each channel: in place (DIRECT) or in scratch[c][0 .. ng*16) */
        if (cx->neon_mode == NEON_DEINTERLEAVE) {
            int g = 0;
            for (; g < full && px + (g + 1) * 16 * sx - 1 <= readable_end; g++) {
                uint8x16_t plane[4];
                const unsigned char *q = px + g * 16 * sx;
                if (sx == 2) {
                    const uint8x16x2_t v = vld2q_u8(q);
                    plane[0] = v.val[0]; plane[1] = v.val[1];
                } else if (sx == 3) {
                    const uint8x16x3_t v = vld3q_u8(q);
                    plane[0] = v.val[0]; plane[1] = v.val[1]; plane[2] = v.val[2];
                } else {
                    const uint8x16x4_t v = vld4q_u8(q);
                    plane[0] = v.val[0]; plane[1] = v.val[1]; plane[2] = v.val[2];
                    plane[3] = v.val[3];
                }
                for (int64_t c = 0; c < C; c++)
                    vst1q_u8(scratch[c] + g * 16, plane[cx->band_offset[c]]);
            }
            for (int64_t c = 0; c < C; c++) {
                const unsigned char *s = px + cx->band_offset[c];
                for (int64_t k = (int64_t)g * 16; k < m; k++)
                    scratch[c][k] = s[k * sx];
                memset(scratch[c] + m, 0, (size_t)(ng * 16 - m));
            }
        } else if (cx->neon_mode == NEON_COPY) {
            for (int64_t c = 0; c < C; c++) {
                const unsigned char *s = px + cx->band_offset[c];
                for (int64_t k = 0; k < m; k++)
                    scratch[c][k] = s[k * sx];
                memset(scratch[c] + m, 0, (size_t)(ng * 16 - m));
            }
        } else if (full < ng) { /* DIRECT: only the partial last group goes through scratch */
            for (int64_t c = 0; c < C; c++) {
                memcpy(scratch[c], px + cx->band_offset[c] + full * 16, (size_t)(m - full * 16));
                memset(scratch[c] + (m - full * 16), 0, (size_t)(16 - (m - full * 16)));
            }
        }

        /* 2. LUT, store, sums and the cross-channel facts, channel by channel */
        for (int g = 0; g < ng; g++) {
            all_bright[g] = vdupq_n_u8(0xFF);
            any_set[g] = vdupq_n_u8(0);
        }
        for (int64_t c = 0; c < C; c++) {
            const unsigned char *lut = cx->lut[c];
            const uint8x16x4_t t[4] = {vld1q_u8_x4(lut), vld1q_u8_x4(lut + 64),
                                       vld1q_u8_x4(lut + 128), vld1q_u8_x4(lut + 192)};
            unsigned char *o = interleave ? mapped[c] : outp[c] + k0;
            uint16x8_t sums = vdupq_n_u16(0); /* <= NEON_GROUPS * 2 * 255 per lane: no overflow */
            for (int g = 0; g < ng; g++) {
                uint8x16_t x;
                if (cx->neon_mode != NEON_DIRECT)
                    x = vld1q_u8(scratch[c] + g * 16);
                else if (g < full)
                    x = vld1q_u8(px + cx->band_offset[c] + g * 16);
                else
                    x = vld1q_u8(scratch[c]);
                const uint8x16_t y = neon_lut(t, x);
                if (g < full || interleave) {
                    vst1q_u8(o + g * 16, y);
                } else {
                    uint8_t tail[16];
                    vst1q_u8(tail, y);
                    memcpy(o + g * 16, tail, (size_t)(m - g * 16));
                }
                sums = vpadalq_u8(sums, x);
                all_bright[g] = vandq_u8(all_bright[g], vcgeq_u8(x, thr));
                any_set[g] = vorrq_u8(any_set[g], x);
            }
            acc->sum[c] += vaddlvq_u16(sums);
        }
        if (interleave) { /* 3. NHWC: pixel k's C bytes at outp[0] + (k0 + k) * C */
            unsigned char *o = outp[0] + k0 * C;
            for (int g = 0; g < full; g++) {
                const int at = g * 16;
                if (C == 2) {
                    const uint8x16x2_t v = {{vld1q_u8(mapped[0] + at), vld1q_u8(mapped[1] + at)}};
                    vst2q_u8(o + at * 2, v);
                } else if (C == 3) {
                    const uint8x16x3_t v = {{vld1q_u8(mapped[0] + at), vld1q_u8(mapped[1] + at),
                                             vld1q_u8(mapped[2] + at)}};
                    vst3q_u8(o + at * 3, v);
                } else {
                    const uint8x16x4_t v = {{vld1q_u8(mapped[0] + at), vld1q_u8(mapped[1] + at),
                                             vld1q_u8(mapped[2] + at), vld1q_u8(mapped[3] + at)}};
                    vst4q_u8(o + at * 4, v);
                }
            }
            for (int64_t k = (int64_t)full * 16; k < m; k++)
                for (int64_t c = 0; c < C; c++)
                    o[k * C + c] = mapped[c][k];
        }
        uint64_t bright = 0, nodata = 0;
        for (int g = 0; g < ng; g++) {
            bright += vaddvq_u8(vshrq_n_u8(all_bright[g], 7));
            nodata += vaddvq_u8(vshrq_n_u8(vceqq_u8(any_set[g], vdupq_n_u8(0)), 7));
        }
        /* the zero-filled lanes past m counted as no-data (and as bright when threshold is 0) */
        const uint64_t filler = (uint64_t)(ng * 16 - m);
        nodata -= filler;
        if (cx->threshold == 0)
            bright -= filler;
        if (bright_possible)
            acc->bright += bright;
        acc->nodata += nodata;
    }
}
#endif /* EDGE_PP_NEON */

/* ---- dispatch ---------------------------------------------------------------------------------- */

static int simd_ready = 0;
static int simd_available = 0;

void edge_preprocess_init(void)
{
    if (simd_ready)
        return;
#if defined(EDGE_PP_X86)
    simd_available = have_vbmi();
#elif defined(EDGE_PP_NEON)
    simd_available = 1;
#endif
    simd_ready = 1;
}

const char *edge_preprocess_path(void)
{
    edge_preprocess_init();
#if defined(EDGE_PP_X86)
    return simd_available ? "avx512vbmi" : "scalar";
#elif defined(EDGE_PP_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

static rows_fn pick_rows(pp_ctx *cx, const edge_pp_args *a, int portable)
{
    const int u8 = a->raw_size == 1;
#if defined(EDGE_PP_X86)
    if (!portable && simd_available && u8 && a->out_size == 1 && cx->stride_x >= 1
        && cx->stride_x <= VBMI_MAX_STRIDE) {
        const rows_fn rows = vbmi_setup(cx, a->out_nhwc);
        if (rows != NULL)
            return rows;
    }
#endif
    if (!portable && simd_available && u8 && a->out_size == 1
        && (!a->out_nhwc || cx->n_channels <= 4)) {
#if defined(EDGE_PP_NEON)
        int inside = cx->stride_x >= 2 && cx->stride_x <= 4;
        for (int p = 0; p < cx->n_planes; p++)
            inside = inside && cx->plane_offset[p] >= 0 && cx->plane_offset[p] < cx->stride_x;
        cx->neon_mode = cx->stride_x == 1 ? NEON_DIRECT : inside ? NEON_DEINTERLEAVE : NEON_COPY;
        cx->row = row_neon;
        return rows_by_row;
#endif
    }
    const int64_t C = cx->n_channels;
    if (C <= 4) {
        const row_fn *few = u8 ? (a->out_size == 1 ? row_few_u8_o1 : row_few_u8_o4)
                               : (a->out_size == 1 ? row_few_u16_o1 : row_few_u16_o4);
        cx->row = few[C - 1];
    } else if (u8) {
        cx->row = a->out_size == 1 ? row_scalar_u8_o1 : row_scalar_u8_o4;
    } else {
        cx->row = a->out_size == 1 ? row_scalar_u16_o1 : row_scalar_u16_o4;
    }
    return rows_by_row;
}

static inline void store_double(char *p, double v) { memcpy(p, &v, sizeof v); }

int edge_preprocess_tiles(const edge_pp_args *a, int portable)
{
    edge_preprocess_init();
    const int64_t C = a->n_channels, th = a->tile_h, tw = a->tile_w;
    if (C < 1 || C > EDGE_PP_MAX_CHANNELS || th < 1 || tw < 1 || a->n_tiles < 0
        || (a->raw_size != 1 && a->raw_size != 2) || (a->out_size != 1 && a->out_size != 4)
        || a->height < 1 || a->width < 1 || a->n_bands < 1 || a->bright_threshold < 0)
        return EDGE_PP_EARGS;
    for (int64_t c = 0; c < C; c++)
        if (a->bands[c] < 0 || a->bands[c] >= a->n_bands)
            return EDGE_PP_EBAND;
    for (int64_t n = 0; n < a->n_tiles; n++) {
        const int64_t y = a->origins[2 * n], x = a->origins[2 * n + 1];
        if (y < 0 || y >= a->height || x < 0 || x >= a->width)
            return EDGE_PP_EORIGIN;
    }

    pp_ctx cx;
    cx.n_channels = C;
    cx.stride_x = (ptrdiff_t)a->stride_x;
    cx.out_size = a->out_size;
    cx.out_step = a->out_nhwc ? (ptrdiff_t)(C * a->out_size) : (ptrdiff_t)a->out_size;
    cx.threshold = a->bright_threshold > EDGE_PP_THRESHOLD_NONE ? EDGE_PP_THRESHOLD_NONE
                                                                : (uint32_t)a->bright_threshold;
    const size_t lut_entries = (size_t)1 << (8 * a->raw_size);
    cx.n_planes = 0;
    cx.max_offset = 0;
    for (int64_t c = 0; c < C; c++) {
        const ptrdiff_t off = (ptrdiff_t)(a->bands[c] * a->stride_b);
        cx.band_offset[c] = off;
        cx.lut[c] = (const unsigned char *)a->lut + (size_t)c * lut_entries * (size_t)a->out_size;
        int p = 0;
        while (p < cx.n_planes && cx.plane_offset[p] != off)
            p++;
        if (p == cx.n_planes)
            cx.plane_offset[cx.n_planes++] = off;
        cx.channel_plane[c] = p;
        cx.max_offset = off > cx.max_offset ? off : cx.max_offset;
    }
    const rows_fn rows = pick_rows(&cx, a, portable);
    const uint64_t out_bytes = (uint64_t)a->n_tiles * (uint64_t)(C * th * tw) * (uint64_t)a->out_size;
    cx.stream = a->stream > 0 || (a->stream < 0 && out_bytes >= STREAM_MIN_BYTES);

    unsigned char *const out = (unsigned char *)a->out;
    const ptrdiff_t out_row_step = (ptrdiff_t)(tw * cx.out_step);  /* [.., i, ..] -> [.., i+1, ..] */
    const double npix = (double)(th * tw);
    unsigned char *outp[EDGE_PP_MAX_CHANNELS], *o[EDGE_PP_MAX_CHANNELS];
    for (int64_t n = 0; n < a->n_tiles; n++) {
        const int64_t y0 = a->origins[2 * n], x0 = a->origins[2 * n + 1];
        const int64_t valid_h = a->height - y0 < th ? a->height - y0 : th;
        const int64_t valid_w = a->width - x0 < tw ? a->width - x0 : tw;
        for (int64_t c = 0; c < C; c++) {
            const int64_t first = a->out_nhwc ? (n * th * tw) * C + c  /* out[n, 0, 0, c] */
                                              : (n * C + c) * th * tw; /* out[n, c, 0, 0] */
            outp[c] = out + first * a->out_size;
        }
        tile_acc acc;
        memset(&acc, 0, sizeof acc);
        read_span span;
        plan_prefetch(&cx, valid_w, &span);
        const unsigned char *src = a->frame + y0 * a->stride_y + x0 * a->stride_x;
        for (int64_t i = 0; i < valid_h && i < span.rows_ahead; i++)
            prefetch_span(src + i * a->stride_y, &span);

        rows(&cx, src, (ptrdiff_t)a->stride_y, valid_h, valid_w, &span, outp, out_row_step, &acc);

        /* padding: the columns past the frame's right edge, then the rows past its bottom */
        for (int64_t i = 0; i < th; i++) {
            const int64_t from = i < valid_h ? valid_w : 0;
            if (from == tw)
                continue;
            for (int64_t c = 0; c < C; c++)
                o[c] = outp[c] + i * out_row_step + from * cx.out_step;
            pad_fill(&cx, tw - from, o, &acc);
        }

        /* exact integer sums and counts, then one division each (as the reference does) */
        for (int64_t c = 0; c < C; c++)
            store_double((char *)a->band_mean + n * a->band_mean_stride_n
                             + c * a->band_mean_stride_c, (double)acc.sum[c] / npix);
        store_double((char *)a->bright_fraction + n * a->bright_stride, (double)acc.bright / npix);
        store_double((char *)a->nodata_fraction + n * a->nodata_stride, (double)acc.nodata / npix);
    }
#ifdef EDGE_PP_X86
    if (cx.stream)
        _mm_sfence(); /* non-temporal stores are weakly ordered: complete them before returning */
#endif
    return 0;
}

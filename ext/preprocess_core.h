/* Tile preprocessing, compiled twin of edge/kernels/preprocess.py:preprocess_reference.
 *
 * One pass over the frame: for every tile, every output channel c and every pixel,
 *     out[c, pixel] = lut[c][raw value of band bands[c] at that pixel]      (raw 0 outside the frame)
 * written in NCHW or NHWC order, and the per-tile statistics (band means, bright and no-data
 * fractions) gathered on the way. The frame is read in place through byte strides of any sign.
 */
#ifndef EDGE_PREPROCESS_CORE_H
#define EDGE_PREPROCESS_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Output channels per call: bounds the per-call state kept on the stack. */
#define EDGE_PP_MAX_CHANNELS 64
/* Thresholds above the largest uint16 raw value all mean "no pixel is bright". */
#define EDGE_PP_THRESHOLD_NONE 65536

typedef struct {
    /* frame, read as (height, width, n_bands) through byte strides (any sign, any value) */
    const unsigned char *frame;           /* address of pixel (0, 0), band 0 */
    int64_t height, width, n_bands;
    int64_t stride_y, stride_x, stride_b; /* bytes */
    int raw_size;                         /* 1: uint8 raw values, 2: uint16 (native byte order) */

    const int64_t *origins;               /* (n_tiles, 2) y, x of each tile's top-left */
    int64_t n_tiles, tile_h, tile_w;

    const int64_t *bands;                 /* (n_channels,) source band of each output channel */
    int64_t n_channels;

    /* lut: (n_channels, 256 or 65536) entries of out_size bytes, C order; the entry type is that
     * of out: 1 byte (int8 / uint8) or 4 bytes (float32). */
    const void *lut;
    void *out;                            /* C-contiguous (N, C, th, tw) or (N, th, tw, C) */
    int out_size;                         /* 1 or 4 */
    int out_nhwc;                         /* 0: NCHW, 1: NHWC */

    int64_t bright_threshold;             /* >= 0; larger than any raw value: nothing is bright */
    int stream;                           /* non-temporal stores: < 0 when out is large (auto),
                                           * 0 never, > 0 wherever the SIMD path can (tests) */

    /* statistics, written per tile; byte strides */
    double *band_mean;                    /* (n_tiles, n_channels) */
    ptrdiff_t band_mean_stride_n, band_mean_stride_c;
    double *bright_fraction;              /* (n_tiles,) */
    ptrdiff_t bright_stride;
    double *nodata_fraction;              /* (n_tiles,) */
    ptrdiff_t nodata_stride;
} edge_pp_args;

/* Picks the SIMD path this CPU supports. Call once before the others (the Python module does at
 * import); calling it again is harmless. */
void edge_preprocess_init(void);

/* Runs the kernel. portable != 0 forces the scalar path (tests compare it too). Returns 0, or a
 * negative EDGE_PP_E* code when the arguments are inconsistent (nothing written then). */
int edge_preprocess_tiles(const edge_pp_args *args, int portable);

#define EDGE_PP_EARGS (-1)    /* sizes, element sizes, channel count out of range */
#define EDGE_PP_EBAND (-2)    /* a band index outside 0..n_bands-1 */
#define EDGE_PP_EORIGIN (-3)  /* a tile origin outside the frame */

/* Name of the fast path in use for uint8 frames into 1-byte outputs: "avx512vbmi", "neon" or
 * "scalar" (uint16 frames and float32 outputs always take the scalar gather). */
const char *edge_preprocess_path(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_PREPROCESS_CORE_H */

/* CRC-32C (Castagnoli), compiled twin of edge/kernels/crc32c.py.
 *
 * The `crc` argument and the result use the zlib / `crc32c` package convention: pass 0 to start,
 * pass a previous result to continue, so crc(b, crc(a)) == crc(a + b). The pre- and post-inversion
 * happens inside.
 */
#ifndef EDGE_CRC32C_H
#define EDGE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Builds the tables and picks the fastest path this CPU supports. Call once before the others
 * (the Python module does at import); calling it again is harmless. */
void edge_crc32c_init(void);

/* CRC-32C of len bytes at data, continuing from crc, on the fastest path available. */
uint32_t edge_crc32c(uint32_t crc, const void *data, size_t len);

/* The same result on the portable slicing-by-8 table path, whatever the CPU. */
uint32_t edge_crc32c_table(uint32_t crc, const void *data, size_t len);

/* Name of the path edge_crc32c() uses: "sse4.2", "armv8-crc" or "table". */
const char *edge_crc32c_path(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_CRC32C_H */

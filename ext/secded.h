/* SECDED (72,64) Hsiao code over 64-bit words, compiled twin of edge/kernels/secded.py.
 *
 * One check byte per data word; check bit r = parity(word & EDGE_SECDED_ROW_MASK[r]). The H matrix,
 * the syndrome decode and the event codes are documented in edge/kernels/secded.py.
 */
#ifndef EDGE_SECDED_H
#define EDGE_SECDED_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Event code of a word whose syndrome is not a single-bit error (double or other multi-bit). */
#define EDGE_SECDED_UNCORRECTABLE (-1)

/* Builds the byte tables and picks the fastest path this CPU supports; call once first (the Python
 * module does at import); calling it again is harmless. */
void edge_secded_init(void);

/* parity[i] = check byte of words[i], i < n. */
void edge_secded_encode(const uint64_t *words, uint8_t *parity, size_t n);

/* Scan words[start..n) against their check bytes. Every word with a nonzero syndrome is an event:
 * its index goes to ev_word, its code to ev_code (0..63 data bit, 64..71 check bit 0..7, or
 * EDGE_SECDED_UNCORRECTABLE). At most `cap` events are recorded (cap >= 1); the return value is the
 * index to resume from (n when the scan is complete) and *n_events the number recorded. */
size_t edge_secded_check(const uint64_t *words, const uint8_t *parity, size_t n, size_t start,
                         int64_t *ev_word, int64_t *ev_code, size_t cap, size_t *n_events);

/* As edge_secded_check, and flips every single-bit error back in place (in words for a data bit,
 * in parity for a check bit). Uncorrectable words are left unchanged. */
size_t edge_secded_correct(uint64_t *words, uint8_t *parity, size_t n, size_t start,
                           int64_t *ev_word, int64_t *ev_code, size_t cap, size_t *n_events);

/* Name of the syndrome path in use: "avx512-gfni", "neon" or "table". */
const char *edge_secded_path(void);

/* Test and benchmark hook: switch every later call to the named path ("table" always works).
 * Returns 0, or -1 when this CPU (or build) lacks that path. Not thread-safe. */
int edge_secded_set_path(const char *name);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_SECDED_H */

/* hash.h - XXH64, the 64-bit hash that guards checkpoint data (docs/checkpoint.md).
 *
 * XXH64 as specified by xxHash (github.com/Cyan4973/xxHash, doc/xxhash_spec.md): the same
 * values as XXH64() of libxxhash and Python's xxhash.xxh64_intdigest. Not cryptographic: it
 * catches corruption (every single-bit and burst error in practice), not tampering.
 */
#ifndef NNPREC_HASH_H
#define NNPREC_HASH_H
#include <stddef.h>
#include <stdint.h>

/* XXH64 of the n bytes at p with the given seed (p may be NULL when n == 0). */
uint64_t nnp_xxh64(const void *p, size_t n, uint64_t seed);

#endif

#ifndef TG_SIPHASH_H
#define TG_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/* SipHash-2-4: a keyed 64-bit hash, used where a value must be unforgeable without the key. */
uint64_t tg_siphash(const uint8_t key[16], const void *data, size_t len);

#endif

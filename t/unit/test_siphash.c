/* SipHash-2-4 against the reference vectors of the paper's appendix. */
#include <stdint.h>

#include "lib/siphash.h"
#include "t/unit/tap.h"

int main(void)
{
	uint8_t key[16], msg[64];

	for (int i = 0; i < 16; i++)
		key[i] = (uint8_t)i;
	for (int i = 0; i < 64; i++)
		msg[i] = (uint8_t)i;
	ok(tg_siphash(key, msg, 0) == 0x726fdb47dd0e0e31ULL, "empty message");
	ok(tg_siphash(key, msg, 15) == 0xa129ca6149be45e5ULL, "15-byte message (paper appendix A)");
	ok(tg_siphash(key, msg, 8) == 0x93f5f5799a932462ULL, "8-byte message, one whole block");
	key[0] ^= 1;
	ok(tg_siphash(key, msg, 15) != 0xa129ca6149be45e5ULL, "another key gives another value");
	return done_testing();
}

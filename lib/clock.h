#ifndef TG_CLOCK_H
#define TG_CLOCK_H

#include <stdint.h>

uint64_t tg_now_ms(void);  /* CLOCK_MONOTONIC, milliseconds */
uint64_t tg_now_ns(void);  /* CLOCK_MONOTONIC, nanoseconds */
uint64_t tg_wall_ms(void); /* CLOCK_REALTIME, milliseconds since the epoch */

#endif

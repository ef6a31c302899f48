#ifndef TG_MASTER_H
#define TG_MASTER_H

#include <stdatomic.h>
#include <stdint.h>

#include "master/config.h"
#include "shm/shm.h"

struct event_base;

/* Counters only the master writes; /metrics reads them in the same process. */
typedef struct master_stats {
	uint64_t child_restarts;
	uint64_t reloads_ok;
	uint64_t reloads_failed;
	int workers_alive;
	int loader_alive;
} master_stats_t;

/* Runs the master until SIGTERM/SIGINT. Returns the process exit code. */
int master_main(tg_config_t *cfg);

/* The /metrics endpoint. Returns 0, or -1 when it cannot bind (logged). */
int metrics_start(struct event_base *base, const tg_config_t *cfg, shm_t *shm, const master_stats_t *st);
void metrics_stop(void);
/* In a child right after fork: close the inherited socket, touch nothing else. */
void metrics_close_inherited(void);

#endif

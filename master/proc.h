/*
 * What every child process is handed by the master, and the helpers each
 * child role uses to live under supervision.
 */
#ifndef TG_PROC_H
#define TG_PROC_H

#include <stdint.h>

#include "master/config.h"
#include "shm/shm.h"

struct event_base;

typedef struct tg_child {
	shm_t *shm;
	int index;              /* worker number 0..N-1; 0 for the loader */
	int parent_fd;          /* read end of the pipe to the master: EOF = master gone */
	int fds[TG_MAX_LISTEN]; /* worker only: its UDP socket for each listen address */
	tg_config_t cfg;        /* the running configuration */
	uint64_t cfg_gen;       /* its generation in shm */
	shm_proc_sh_t *slot;    /* this child's slot */
} tg_child_t;

int loader_main(tg_child_t *c);
int worker_main(tg_child_t *c);

/*
 * Exit when the master's end of the pipe closes (the master died), so no
 * child outlives it. Registers a persistent read event on c->parent_fd.
 */
void proc_watch_parent(struct event_base *base, tg_child_t *c);
/*
 * SIGUSR1 in a child: reopen the log file, then acknowledge in the slot so
 * the master can say `log_reopened` only once every process writes to the
 * new file (logrotate may compress the old one right after).
 */
void proc_log_reopen(tg_child_t *c);
/* Once the child's signal handlers are installed: let SIGHUP and SIGUSR1 in (pending ones arrive now). */
void proc_signals_ready(void);
/* Name shown by ps: "tollgate: worker 3". proc_title_init() once, from main. */
void proc_title_init(int argc, char **argv);
void proc_set_title(const char *title);

#endif

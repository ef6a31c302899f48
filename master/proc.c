/*
 * What every child shares: the watch on the master's pipe and the process
 * title. A child never outlives the master: the master holds the only
 * write end of a pipe whose read end every child watches, so when the
 * master dies, however it dies, the kernel closes that end and every child
 * sees EOF and exits.
 */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "lib/log.h"
#include "master/proc.h"

static char *title_base; /* argv[0] of the process; the strings after it are ours to overwrite */
static size_t title_len;

static void parent_gone(evutil_socket_t fd, short what, void *arg)
{
	char buf[64];
	ssize_t n = read(fd, buf, sizeof(buf));

	(void)what;
	(void)arg;
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		log_warnx("master_gone", "action=%s", "exit");
		_exit(1);
	}
}

void proc_log_reopen(tg_child_t *c)
{
	uint64_t gen = atomic_load(&c->shm->conf->log_gen);

	if (tg_log_reopen() < 0)
		log_error("log_reopen_failed", "call=%s", "open()");
	atomic_store(&c->slot->log_gen, gen);
}

void proc_signals_ready(void)
{
	sigset_t s;

	sigemptyset(&s);
	sigaddset(&s, SIGHUP);
	sigaddset(&s, SIGUSR1);
	sigprocmask(SIG_UNBLOCK, &s, NULL);
}

void proc_watch_parent(struct event_base *base, tg_child_t *c)
{
	struct event *ev = event_new(base, c->parent_fd, EV_READ | EV_PERSIST, parent_gone, NULL);

	if (ev == NULL || event_add(ev, NULL) < 0)
		fatalx("event_failed", "call=%s", "event_add(parent pipe)");
}

/*
 * Called once from main: argv strings are contiguous in memory, followed
 * by the environment. Moving the environment to the heap lets a title
 * longer than the original command line fit, as nginx does.
 */
void proc_title_init(int argc, char **argv)
{
	extern char **environ;
	char *end = argv[0] + strlen(argv[0]);
	int n = 0;

	for (int i = 1; i < argc; i++)
		if (argv[i] == end + 1)
			end = argv[i] + strlen(argv[i]);
	for (n = 0; environ[n] != NULL; n++)
		if (environ[n] == end + 1)
			end = environ[n] + strlen(environ[n]);
	char **env = calloc((size_t)n + 1, sizeof(char *));
	if (env == NULL)
		return;
	for (int i = 0; i < n; i++)
		env[i] = strdup(environ[i]);
	environ = env;
	title_base = argv[0];
	title_len = (size_t)(end - argv[0]);
	for (int i = 1; i < argc; i++)
		argv[i] = NULL;
}

void proc_set_title(const char *title)
{
	char comm[16];

	if (title_base != NULL && title_len > 0) {
		memset(title_base, 0, title_len + 1);
		snprintf(title_base, title_len + 1, "%s", title);
	}
	/* comm is 15 characters: "tollgate: worker 12" would be cut, so use a short form there */
	snprintf(comm, sizeof(comm), "tg %s", strncmp(title, "tollgate: ", 10) == 0 ? title + 10 : title);
	prctl(PR_SET_NAME, comm, 0, 0, 0);
}

/*
 * The master: maps shared memory, makes the sockets, forks the loader and
 * the workers, and keeps them alive; owns SIGHUP reload, SIGTERM stop,
 * SIGUSR1 log reopen and the /metrics endpoint.
 *
 * It never talks to PostgreSQL and never reads SIP, so nothing a peer
 * sends can block or crash it. Children are described by a table (procs[])
 * that drives spawning, reaping and titles. A child that exits 2 hit a
 * fatal error that a restart would repeat, and is not respawned; any other
 * death is respawned with back-off. After a worker dies the master clears
 * its snapshot epoch slot, so a crash mid-read never pins an arena.
 */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "master/master.h"
#include "master/proc.h"
#include "shm/dialog.h"
#include "shm/limits.h"
#include "shm/shm.h"
#include "worker/calls.h"

#define RESPAWN_MIN_MS    100
#define RESPAWN_MAX_MS    30000
#define STABLE_AFTER_MS   10000 /* a child that lived this long restarts at the minimum back-off */
#define STOP_GRACE_MS     4000
#define RELOAD_TIMEOUT_MS 30000

typedef struct proc_role {
	const char *name;
	int (*entry)(tg_child_t *c);
	int respawn;
} proc_role_t;

enum { ROLE_LOADER, ROLE_WORKER };

static const proc_role_t procs[] = {
        [ROLE_LOADER] = {"loader", loader_main, 1},
        [ROLE_WORKER] = {"worker", worker_main, 1},
};

typedef struct child {
	int role;
	int index;
	pid_t pid;
	uint64_t started_ms;
	uint32_t backoff_ms;
	int given_up; /* exited 2: not respawned */
	struct event *respawn_ev;
} child_t;

static struct {
	tg_config_t *cfg;
	shm_t shm;
	struct event_base *base;
	int pipe_r, pipe_w; /* children watch pipe_r for EOF */
	int *fds;           /* [nlisten * workers], listen-major */
	child_t *children;  /* [1 + workers] */
	int nchildren;
	int stopping;
	int ready_logged;
	uint64_t reload_gen; /* config generation whose reload is pending, 0 = none */
	uint64_t reload_started_ms;
	uint64_t reopen_gen; /* SIGUSR1 whose acknowledgements are awaited, 0 = none */
	uint64_t reopen_started_ms;
	uint64_t sweep_next_ms; /* when the dialog table is swept next */
	master_stats_t stats;
	struct event *tick_ev;
	uint64_t stop_deadline_ms;
} m;

static int make_socket(const tg_listen_t *l)
{
	char a[TG_SOCKADDR_STRLEN];
	int one = 1, rcvbuf = 4 << 20;
	int fd = socket(l->addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	tg_sockaddr_format((const struct sockaddr *)&l->addr, a, sizeof(a));
	if (fd < 0) {
		log_error("listen_failed", "call=%s listen=%s", "socket()", a);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		log_warn("listen_option_failed", "call=%s listen=%s", "setsockopt(SO_REUSEPORT)", a);
	if (l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	/* best effort: a bigger queue rides out bursts while a worker is busy */
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) < 0) {
		log_error("listen_failed", "call=%s listen=%s", "bind()", a);
		close(fd);
		return -1;
	}
	return fd;
}

/* One socket per worker per listen address, all made before any fork (a respawned worker reuses its fds). */
static int make_sockets(void)
{
	int n = m.cfg->nlisten * m.cfg->workers;

	m.fds = calloc((size_t)n, sizeof(int));
	if (m.fds == NULL)
		return -1;
	for (int i = 0; i < n; i++) {
		m.fds[i] = make_socket(&m.cfg->listen[i / m.cfg->workers]);
		if (m.fds[i] < 0)
			return -1;
	}
	return 0;
}

static shm_proc_sh_t *child_slot(const child_t *ch)
{
	return &m.shm.procs[ch->role == ROLE_LOADER ? SHM_PROC_LOADER : SHM_PROC_WORKER(ch->index)];
}

static void child_title(const child_t *ch, char *buf, size_t len)
{
	if (ch->role == ROLE_LOADER)
		snprintf(buf, len, "tollgate: loader");
	else
		snprintf(buf, len, "tollgate: worker %d", ch->index);
}

/* In the new child: keep only what this role needs, then run it. */
static void child_run(child_t *ch)
{
	tg_child_t c;
	char title[64];
	int nfd = m.cfg->nlisten * m.cfg->workers;
	int rc;

	memset(&c, 0, sizeof(c));
	close(m.pipe_w);
	prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	if (getppid() == 1)
		_exit(1); /* the master died between fork and prctl */
	for (int i = 0; i < TG_MAX_LISTEN; i++)
		c.fds[i] = -1;
	for (int i = 0; i < nfd; i++) {
		if (ch->role == ROLE_WORKER && i % m.cfg->workers == ch->index)
			c.fds[i / m.cfg->workers] = m.fds[i];
		else
			close(m.fds[i]);
	}
	child_title(ch, title, sizeof(title));
	proc_set_title(title);
	tg_log_set_proc(title + strlen("tollgate: "));
	/*
	 * The master's event loop is left alone, not freed: its epoll instance
	 * is shared with the master across fork, and freeing would unregister
	 * the master's own events. Only the metrics socket is closed.
	 */
	metrics_close_inherited();
	c.shm = &m.shm;
	c.index = ch->index;
	c.parent_fd = m.pipe_r;
	c.slot = child_slot(ch);
	shm_config_read(&m.shm, &c.cfg_gen, &c.cfg);
	atomic_store(&c.slot->config_gen, c.cfg_gen);
	/*
	 * The child builds its own event loop; SIGHUP and SIGUSR1 are blocked
	 * until its handlers exist (see child_spawn). SIGINT from a terminal goes
	 * to the whole group, and the master turns it into an orderly SIGTERM, so
	 * children ignore it.
	 */
	signal(SIGCHLD, SIG_DFL);
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_DFL);
	rc = procs[ch->role].entry(&c);
	_exit(rc);
}

static int child_spawn(child_t *ch)
{
	sigset_t hold, old;
	pid_t pid;

	/*
	 * SIGHUP and SIGUSR1 stay blocked in the child until its own handlers
	 * are in place (proc_signals_ready): a reload or reopen sent meanwhile
	 * waits instead of being lost or running the master's inherited handler.
	 */
	sigemptyset(&hold);
	sigaddset(&hold, SIGHUP);
	sigaddset(&hold, SIGUSR1);
	sigprocmask(SIG_BLOCK, &hold, &old);
	pid = fork();
	if (pid != 0)
		sigprocmask(SIG_SETMASK, &old, NULL);

	if (pid < 0) {
		log_error("fork_failed", "call=%s role=%s index=%d", "fork()", procs[ch->role].name,
		          ch->index);
		return -1;
	}
	if (pid == 0)
		child_run(ch);
	ch->pid = pid;
	ch->started_ms = tg_now_ms();
	atomic_store(&child_slot(ch)->pid, pid);
	atomic_store(&child_slot(ch)->started_ms, ch->started_ms);
	log_info("child_started", "role=%s index=%d pid=%d", procs[ch->role].name, ch->index, (int)pid);
	return 0;
}

static void respawn_cb(evutil_socket_t fd, short what, void *arg)
{
	child_t *ch = arg;

	(void)fd;
	(void)what;
	if (m.stopping || ch->pid != 0)
		return;
	m.stats.child_restarts++;
	if (child_spawn(ch) < 0) {
		struct timeval tv = {1, 0};
		evtimer_add(ch->respawn_ev, &tv);
	}
}

static void child_reaped(child_t *ch, int status)
{
	shm_proc_sh_t *slot = child_slot(ch);
	int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	uint64_t lived = tg_now_ms() - ch->started_ms;

	/* the dead process can no longer read: release whatever snapshot it held */
	atomic_store(&slot->epoch, 0);
	atomic_store(&slot->serving, 0);
	atomic_store(&slot->pid, 0);
	tg_log(m.stopping || (code == 0 && sig == 0) ? TG_LOG_INFO : TG_LOG_WARN, 0, "child_exited",
	       "role=%s index=%d pid=%d status=%d signal=%d core=%d", procs[ch->role].name, ch->index,
	       (int)ch->pid, code, sig, WIFSIGNALED(status) && WCOREDUMP(status) ? 1 : 0);
	ch->pid = 0;
	if (m.stopping)
		return;
	if (code == 2 || !procs[ch->role].respawn) {
		ch->given_up = 1;
		log_errorx("child_not_respawned", "role=%s index=%d reason=%s", procs[ch->role].name,
		           ch->index, "fatal error (exit 2), see its last log lines");
		return;
	}
	ch->backoff_ms = lived >= STABLE_AFTER_MS ? RESPAWN_MIN_MS
	                 : ch->backoff_ms == 0    ? RESPAWN_MIN_MS
	                                          : (ch->backoff_ms * 2 > RESPAWN_MAX_MS ? RESPAWN_MAX_MS
	                                                                                 : ch->backoff_ms * 2);
	struct timeval tv = {ch->backoff_ms / 1000, (ch->backoff_ms % 1000) * 1000};
	log_info("child_respawn_scheduled", "role=%s index=%d delay_ms=%u", procs[ch->role].name, ch->index,
	         ch->backoff_ms);
	evtimer_add(ch->respawn_ev, &tv);
}

static void on_sigchld(evutil_socket_t fd, short what, void *arg)
{
	int status;
	pid_t pid;

	(void)fd;
	(void)what;
	(void)arg;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < m.nchildren; i++) {
			if (m.children[i].pid == pid) {
				child_reaped(&m.children[i], status);
				break;
			}
		}
	}
}

static int children_running(void)
{
	int n = 0;

	for (int i = 0; i < m.nchildren; i++)
		n += m.children[i].pid != 0;
	return n;
}

static void signal_children(int sig)
{
	for (int i = 0; i < m.nchildren; i++)
		if (m.children[i].pid != 0)
			kill(m.children[i].pid, sig);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (m.stopping)
		return;
	m.stopping = 1;
	m.stop_deadline_ms = tg_now_ms() + STOP_GRACE_MS;
	log_notice("stopping", "signal=%d", (int)sig);
	signal_children(SIGTERM);
}

static void reload_refuse_restart_only(tg_config_t *next)
{
	char keys[128];

	tg_config_restart_only_diff(m.cfg, next, keys, sizeof(keys));
	if (keys[0] == '\0')
		return;
	log_warnx("reload_restart_only_ignored", "keys=%s reason=%s", keys, "these keys need a restart");
	memcpy(next->listen, m.cfg->listen, sizeof(next->listen));
	next->nlisten = m.cfg->nlisten;
	next->workers = m.cfg->workers;
	next->cap_accounts = m.cfg->cap_accounts;
	next->cap_ip_rules = m.cfg->cap_ip_rules;
	/* shared memory was sized for these: a bigger value would overrun it */
	next->cap_sip_users = m.cfg->cap_sip_users;
	next->cap_nonces = m.cfg->cap_nonces;
	next->cap_failures = m.cfg->cap_failures;
	next->cap_dialogs = m.cfg->cap_dialogs;
	next->cap_limit_keys = m.cfg->cap_limit_keys;
	next->nonce_ttl_s = m.cfg->nonce_ttl_s;
	next->metrics = m.cfg->metrics;
	next->metrics_len = m.cfg->metrics_len;
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	tg_config_t *next = malloc(sizeof(*next));
	char err[512];

	(void)sig;
	(void)what;
	(void)arg;
	if (m.stopping || next == NULL) {
		free(next);
		return;
	}
	log_notice("reload_started", "file=%s", m.cfg->path);
	if (tg_config_load(m.cfg->path, next, err, sizeof(err)) < 0) {
		m.stats.reloads_failed++;
		log_errorx("reload_failed", "file=%s reason=%s", m.cfg->path, err);
		free(next);
		return;
	}
	reload_refuse_restart_only(next);
	if (strcmp(next->log_file, m.cfg->log_file) != 0 && tg_log_open(next->log_file) < 0) {
		log_error("reload_failed", "file=%s reason=%s log_file=%s", m.cfg->path,
		          "cannot open log file", next->log_file);
		free(next);
		m.stats.reloads_failed++;
		return;
	}
	tg_log_set_level(next->log_level);
	memcpy(m.cfg, next, sizeof(*next));
	free(next);
	shm_config_publish(&m.shm, m.cfg);
	m.reload_gen = atomic_load(&m.shm.conf->generation);
	m.reload_started_ms = tg_now_ms();
	signal_children(SIGHUP);
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	if (tg_log_reopen() < 0)
		log_error("log_reopen_failed", "file=%s", m.cfg->log_file);
	m.reopen_gen = atomic_fetch_add(&m.shm.conf->log_gen, 1) + 1;
	m.reopen_started_ms = tg_now_ms();
	signal_children(SIGUSR1);
}

/* Every alive child has applied the pending configuration, and the loader has resynced with it. */
static int reload_complete(void)
{
	for (int i = 0; i < m.nchildren; i++) {
		child_t *ch = &m.children[i];
		shm_proc_sh_t *slot = child_slot(ch);

		if (ch->pid == 0)
			continue;
		if (atomic_load(&slot->config_gen) < m.reload_gen)
			return 0;
		if (ch->role == ROLE_LOADER && atomic_load(&slot->resync_done) < m.reload_gen)
			return 0;
	}
	return 1;
}

static void tick_alive(void)
{
	int serving = 0;

	for (int i = 0; i < m.nchildren; i++) {
		child_t *ch = &m.children[i];
		if (ch->role != ROLE_WORKER || ch->pid == 0)
			continue;
		serving += atomic_load(&child_slot(ch)->serving) != 0;
	}
	m.stats.workers_alive = serving;
	m.stats.loader_alive = m.children[0].pid != 0;
	if (!m.ready_logged && serving == m.cfg->workers) {
		m.ready_logged = 1;
		log_notice("ready", "workers=%d listen=%s", serving, m.cfg->listen[0].advertise);
	}
}

static void tick_reload(void)
{
	if (m.reload_gen == 0)
		return;
	if (reload_complete()) {
		m.stats.reloads_ok++;
		log_notice("reload_done", "generation=%llu ms=%llu", (unsigned long long)m.reload_gen,
		           (unsigned long long)(tg_now_ms() - m.reload_started_ms));
		m.reload_gen = 0;
	} else if (tg_now_ms() - m.reload_started_ms > RELOAD_TIMEOUT_MS) {
		log_warnx("reload_incomplete", "generation=%llu reason=%s", (unsigned long long)m.reload_gen,
		          "a child did not acknowledge within 30 s");
		m.reload_gen = 0;
	}
}

/* `log_reopened` once every alive child writes to the new file, so logrotate can act on the old one. */
static void tick_reopen(void)
{
	int pending = 0;

	if (m.reopen_gen == 0)
		return;
	for (int i = 0; i < m.nchildren; i++)
		if (m.children[i].pid != 0 &&
		    atomic_load(&child_slot(&m.children[i])->log_gen) < m.reopen_gen)
			pending++;
	if (pending == 0 || tg_now_ms() - m.reopen_started_ms > RELOAD_TIMEOUT_MS) {
		tg_log(pending ? TG_LOG_WARN : TG_LOG_NOTICE, 0, "log_reopened",
		       "file=%s children_pending=%d", m.cfg->log_file, pending);
		m.reopen_gen = 0;
	}
}

/* A dialog the sweep ended (timed out): its channels are back already. */
static void on_swept(void *arg, shm_dialog_ref_t ref, const shm_dialog_info_t *info, int reason)
{
	shm_limit_stat_t st;

	(void)arg;
	(void)ref;
	if (!shm_limits_lookup(m.shm.limits, SHM_LIMIT_ACCOUNT, info->account, &st))
		st.name[0] = '\0';
	log_info("dialog_ended", "account=%s reason=%s", st.name, calls_end_reason_name(reason));
}

/*
 * Once a second: calls that got no final answer within early_timeout_s,
 * or were answered more than max_duration_s ago, end here and give their
 * channels back; ended and refused ones are forgotten after linger_s. The
 * master does it because it is never on the SIP path and always there.
 */
static void tick_sweep(void)
{
	uint64_t now = tg_now_ms();
	shm_dialog_timeouts_t t = {m.cfg->early_timeout_s, m.cfg->max_duration_s, m.cfg->linger_s, 5};

	if (now < m.sweep_next_ms)
		return;
	m.sweep_next_ms = now + 1000;
	shm_dialog_sweep(m.shm.dialogs, m.shm.limits, now / 1000, &t, on_swept, NULL);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (m.stopping) {
		if (children_running() == 0) {
			event_base_loopexit(m.base, NULL);
		} else if (tg_now_ms() >= m.stop_deadline_ms) {
			log_warnx("stop_forced", "children=%d", children_running());
			signal_children(SIGKILL);
			m.stop_deadline_ms = UINT64_MAX;
		}
		return;
	}
	tick_alive();
	tick_reload();
	tick_reopen();
	tick_sweep();
}

static int add_signal(int sig, event_callback_fn cb)
{
	struct event *ev = evsignal_new(m.base, sig, cb, NULL);

	return ev == NULL || event_add(ev, NULL) < 0 ? -1 : 0;
}

static int setup_events(void)
{
	struct timeval tick = {0, 20000};

	if (add_signal(SIGCHLD, on_sigchld) < 0 || add_signal(SIGTERM, on_stop) < 0 ||
	    add_signal(SIGINT, on_stop) < 0 || add_signal(SIGHUP, on_reload) < 0 ||
	    add_signal(SIGUSR1, on_reopen) < 0)
		return -1;
	signal(SIGPIPE, SIG_IGN);
	m.tick_ev = event_new(m.base, -1, EV_PERSIST, on_tick, NULL);
	return m.tick_ev == NULL || event_add(m.tick_ev, &tick) < 0 ? -1 : 0;
}

static int setup_children(void)
{
	m.nchildren = 1 + m.cfg->workers;
	m.children = calloc((size_t)m.nchildren, sizeof(child_t));
	if (m.children == NULL)
		return -1;
	for (int i = 0; i < m.nchildren; i++) {
		child_t *ch = &m.children[i];
		ch->role = i == 0 ? ROLE_LOADER : ROLE_WORKER;
		ch->index = i == 0 ? 0 : i - 1;
		ch->respawn_ev = evtimer_new(m.base, respawn_cb, ch);
		if (ch->respawn_ev == NULL)
			return -1;
	}
	for (int i = 0; i < m.nchildren; i++)
		if (child_spawn(&m.children[i]) < 0)
			return -1;
	return 0;
}

int master_main(tg_config_t *cfg)
{
	int pfd[2];

	m.cfg = cfg;
	proc_set_title("tollgate: master");
	tg_log_set_proc("master");
	log_notice("starting", "version=%s config=%s workers=%d", TG_VERSION, cfg->path, cfg->workers);
	if (shm_create(&m.shm, cfg) < 0)
		goto fail_shm;
	shm_config_publish(&m.shm, cfg);
	if (make_sockets() < 0)
		goto fail_sockets;
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		log_error("start_failed", "call=%s", "pipe2()");
		goto fail_sockets;
	}
	m.pipe_r = pfd[0];
	m.pipe_w = pfd[1];
	m.base = event_base_new();
	if (m.base == NULL || setup_events() < 0) {
		log_errorx("start_failed", "call=%s", "event_base_new()");
		goto fail_events;
	}
	if (cfg->metrics_len > 0 && metrics_start(m.base, cfg, &m.shm, &m.stats) < 0)
		goto fail_events;
	if (setup_children() < 0)
		goto fail_children;
	event_base_dispatch(m.base);
	metrics_stop();
	log_notice("stopped", "restarts=%llu", (unsigned long long)m.stats.child_restarts);
	return 0;

fail_children:
	m.stopping = 1;
	signal_children(SIGKILL);
	metrics_stop();
fail_events:
	close(m.pipe_r);
	close(m.pipe_w);
fail_sockets:
	shm_destroy(&m.shm);
fail_shm:
	return 2;
}

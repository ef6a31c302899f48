/*
 * A worker process: one libevent loop reading its own UDP sockets (one per
 * listen address, bound with SO_REUSEPORT by the master), in batches.
 *
 * Owns nothing shared but its counters and its epoch slot: it reads
 * provisioning only from the published snapshot, which it holds for one
 * batch at a time and never across a wait. It never talks to PostgreSQL.
 */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "worker/worker.h"

#define BATCH 16

static struct {
	worker_t w;
	struct event_base *base;
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_storage from[BATCH];
	char *bufs[BATCH];
} wk;

int worker_pick_listener(const worker_t *w, int arrival, int family)
{
	const tg_config_t *cfg = &w->c->cfg;

	if (arrival >= 0 && arrival < cfg->nlisten && cfg->listen[arrival].addr.ss_family == family)
		return arrival;
	for (int i = 0; i < cfg->nlisten; i++)
		if (cfg->listen[i].addr.ss_family == family)
			return i;
	return -1;
}

int worker_send(worker_t *w, int lidx, const struct sockaddr *dst, socklen_t dstlen, const char *buf,
                size_t len)
{
	ssize_t n;

	do
		n = sendto(w->c->fds[lidx], buf, len, 0, dst, dstlen);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		char d[TG_SOCKADDR_STRLEN];
		log_warn("send_failed", "call=%s dst=%s", "sendto()", tg_sockaddr_format(dst, d, sizeof(d)));
		worker_refusal(w, SHM_R_SEND_FAILED);
		return -1;
	}
	return 0;
}

static void batch_handle(int lidx, int n)
{
	for (int i = 0; i < n; i++) {
		pkt_t p;

		memset(&p, 0, sizeof(p));
		p.lidx = lidx;
		p.buf = wk.bufs[i];
		p.len = wk.msgs[i].msg_len;
		p.buf[p.len] = '\0';
		memcpy(&p.src, &wk.from[i], sizeof(p.src));
		p.srclen = wk.msgs[i].msg_hdr.msg_namelen;
		if (tg_ip_from_sockaddr((struct sockaddr *)&p.src, &p.src_ip, &p.src_port) < 0)
			continue;
		tg_sockaddr_format((struct sockaddr *)&p.src, p.srcstr, sizeof(p.srcstr));
		sip_handle(&wk.w, &p);
	}
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	int lidx = (int)(intptr_t)arg;
	int n;

	(void)what;
	for (int i = 0; i < BATCH; i++) {
		wk.iov[i].iov_base = wk.bufs[i];
		wk.iov[i].iov_len = WORKER_MAX_DGRAM;
		memset(&wk.msgs[i].msg_hdr, 0, sizeof(wk.msgs[i].msg_hdr));
		wk.msgs[i].msg_hdr.msg_iov = &wk.iov[i];
		wk.msgs[i].msg_hdr.msg_iovlen = 1;
		wk.msgs[i].msg_hdr.msg_name = &wk.from[i];
		wk.msgs[i].msg_hdr.msg_namelen = sizeof(wk.from[i]);
	}
	n = recvmmsg(fd, wk.msgs, BATCH, MSG_DONTWAIT, NULL);
	if (n <= 0) {
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			log_warn("recv_failed", "call=%s", "recvmmsg()");
		return;
	}
	/* the snapshot is held for this batch only: the loader may need its arenas right after */
	snap_acquire(wk.w.c->shm, wk.w.c->slot, &wk.w.snap);
	batch_handle(lidx, n);
	snap_release(wk.w.c->slot, &wk.w.snap);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopexit(wk.base, NULL);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	tg_child_t *c = wk.w.c;
	char old_log[PATH_MAX];

	(void)sig;
	(void)what;
	(void)arg;
	snprintf(old_log, sizeof(old_log), "%s", c->cfg.log_file);
	if (shm_config_read(c->shm, &c->cfg_gen, &c->cfg)) {
		tg_log_set_level(c->cfg.log_level);
		if (strcmp(old_log, c->cfg.log_file) != 0 && tg_log_open(c->cfg.log_file) < 0)
			log_error("log_open_failed", "file=%s", c->cfg.log_file);
		sip_refresh_config(&wk.w);
	}
	atomic_store(&c->slot->config_gen, c->cfg_gen);
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	proc_log_reopen(wk.w.c);
}

static int add_signal(int sig, event_callback_fn cb)
{
	struct event *ev = evsignal_new(wk.base, sig, cb, NULL);

	return ev == NULL || event_add(ev, NULL) < 0 ? -1 : 0;
}

static int setup(tg_child_t *c)
{
	wk.w.c = c;
	wk.w.stats = &c->shm->stats[c->index];
	for (int i = 0; i < BATCH; i++) {
		wk.bufs[i] = malloc(WORKER_MAX_DGRAM + 1);
		if (wk.bufs[i] == NULL)
			return -1;
	}
	wk.base = event_base_new();
	if (wk.base == NULL)
		return -1;
	proc_watch_parent(wk.base, c);
	if (add_signal(SIGTERM, on_stop) < 0 || add_signal(SIGHUP, on_reload) < 0 ||
	    add_signal(SIGUSR1, on_reopen) < 0)
		return -1;
	for (int i = 0; i < c->cfg.nlisten; i++) {
		struct event *ev =
		        event_new(wk.base, c->fds[i], EV_READ | EV_PERSIST, on_readable, (void *)(intptr_t)i);
		if (ev == NULL || event_add(ev, NULL) < 0)
			return -1;
	}
	sip_refresh_config(&wk.w);
	return 0;
}

int worker_main(tg_child_t *c)
{
	if (setup(c) < 0)
		fatalx("worker_failed", "call=%s", "setup");
	log_info("worker_started", "index=%d pid=%d listeners=%d", c->index, (int)getpid(), c->cfg.nlisten);
	proc_signals_ready();
	atomic_store(&c->slot->serving, 1);
	event_base_dispatch(wk.base);
	atomic_store(&c->slot->serving, 0);
	log_info("worker_stopped", "index=%d", c->index);
	return 0;
}

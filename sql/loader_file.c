/*
 * The loader's model to the snapshot file and back. The model holds no
 * host names (workers match addresses only), so host-name rules take
 * theirs from the resolver on the way out and give them back to it on the
 * way in, with the addresses they last resolved to: a gateway started
 * from the file while DNS is down still matches them.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "sql/loader_file.h"

typedef struct save_ctx {
	snapfile_writer_t *w;
	const resolve_t *r;
} save_ctx_t;

static int save_account(void *arg, const snap_account_info_t *a)
{
	save_ctx_t *s = arg;
	snapfile_account_t fa = {a->id,
	                         a->name,
	                         a->active,
	                         a->max_channels,
	                         a->max_cps,
	                         a->cps_burst,
	                         a->allowed_prefixes,
	                         a->nallowed,
	                         a->denied_prefixes,
	                         a->ndenied,
	                         a->restricted_codecs,
	                         a->ncodecs};

	return snapfile_put_account(s->w, &fa) < 0 ? errno : 0;
}

static int save_rule(void *arg, const snap_rule_info_t *ri)
{
	save_ctx_t *s = arg;
	const resolve_rule_t *host = s->r != NULL ? resolve_get(s->r, ri->id) : NULL;
	snapfile_rule_t fr = {ri->id,
	                      ri->account_id,
	                      ri->ranges,
	                      ri->nranges,
	                      ri->port,
	                      ri->tech_prefix,
	                      host != NULL ? host->host : "",
	                      ri->active,
	                      ri->direction,
	                      ri->max_channels,
	                      ri->max_cps,
	                      ri->cps_burst};

	/* No addresses and no name to look up: nothing a reader could match, so nothing to keep. */
	if (ri->nranges == 0 && host == NULL)
		return 0;
	return snapfile_put_rule(s->w, &fr) < 0 ? errno : 0;
}

static int save_user(void *arg, const snap_user_info_t *u)
{
	save_ctx_t *s = arg;
	snapfile_user_t fu = {
	        u->id,           u->account_id,       u->username, u->domain != NULL ? u->domain : "",
	        u->active,       u->restrict_sources, u->ha1_md5,  u->ha1_sha256,
	        u->ha1_md5_full, u->ha1_sha256_full,  u->ranges,   u->nranges};

	return snapfile_put_user(s->w, &fu) < 0 ? errno : 0;
}

int loader_file_save(const char *path, const snap_model_t *m, const resolve_t *r, uint64_t built_ms,
                     snapfile_info_t *info)
{
	save_ctx_t s = {snapfile_open(path, built_ms), r};
	int err;

	if (s.w == NULL)
		return -1;
	err = snap_model_foreach_account(m, save_account, &s);
	if (err == 0)
		err = snap_model_foreach_rule(m, save_rule, &s);
	if (err == 0)
		err = snap_model_foreach_user(m, save_user, &s);
	if (err != 0) {
		snapfile_abort(s.w);
		errno = err;
		return -1;
	}
	return snapfile_commit(s.w, info);
}

typedef struct load_ctx {
	snap_model_t *m;
	resolve_t *r;
} load_ctx_t;

static const char *load_account(void *arg, const snapfile_account_t *a)
{
	load_ctx_t *c = arg;
	const char *err = "refused";
	snap_account_info_t ai = {a->id,        a->name,
	                          a->active,    a->max_channels,
	                          a->max_cps,   0,
	                          a->cps_burst, a->allowed_prefixes,
	                          a->nallowed,  a->denied_prefixes,
	                          a->ndenied,   a->restricted_codecs,
	                          a->ncodecs};

	if (snap_model_account_put2(c->m, &ai, &err) < 0)
		return err;
	return NULL;
}

static const char *load_rule(void *arg, const snapfile_rule_t *fr)
{
	load_ctx_t *c = arg;
	snap_rule_info_t ri = {fr->id,           fr->account_id,  fr->ranges,   fr->nranges,
	                       fr->port,         fr->tech_prefix, fr->active,   fr->direction,
	                       fr->max_channels, fr->max_cps,     fr->cps_burst};
	const char *err = "refused";

	if (fr->host[0] != '\0') {
		resolve_rule_t rr;
		const resolve_rule_t *got;

		memset(&rr, 0, sizeof(rr));
		rr.id = fr->id;
		rr.account_id = fr->account_id;
		rr.port = fr->port;
		snprintf(rr.tech_prefix, sizeof(rr.tech_prefix), "%s", fr->tech_prefix);
		rr.active = fr->active;
		rr.direction = fr->direction;
		snprintf(rr.host, sizeof(rr.host), "%s", fr->host);
		if ((got = resolve_put(c->r, &rr, fr->ranges, fr->nranges)) == NULL)
			return "out of memory";
		ri.ranges = got->ranges;
		ri.nranges = got->nranges;
	}
	if (snap_model_rule_put2(c->m, &ri, &err) < 0)
		return err;
	return NULL;
}

static const char *load_user(void *arg, const snapfile_user_t *fu)
{
	load_ctx_t *c = arg;
	snap_user_info_t u = {fu->id,           fu->account_id,       fu->username, fu->domain,
	                      fu->active,       fu->restrict_sources, fu->ha1_md5,  fu->ha1_sha256,
	                      fu->ha1_md5_full, fu->ha1_sha256_full,  fu->ranges,   fu->nranges};
	const char *err = "refused";

	if (snap_model_user_put(c->m, &u, &err) < 0)
		return err;
	return NULL;
}

int loader_file_load(const char *path, snap_model_t *m, resolve_t *r, uint32_t cap_accounts,
                     uint32_t cap_rules, uint32_t cap_users, snapfile_info_t *info, char *reason,
                     size_t reasonlen)
{
	load_ctx_t c = {m, r};
	snapfile_sink_t sink = {load_account, load_rule, load_user, &c};

	return snapfile_read(path, cap_accounts, cap_rules, cap_users, &sink, info, reason, reasonlen);
}

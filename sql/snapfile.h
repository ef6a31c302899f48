/*
 * The snapshot file: the loader's copy of the last published provisioning
 * data on disk, so tollgate started while PostgreSQL is unreachable can
 * serve it. See docs/loader.md for the format.
 *
 * A file is trusted only whole: magic, format version, the binary's shm
 * layout version, a size that matches the header, a 64-bit checksum over
 * everything, counts within capacity, and every record well formed.
 * Anything else is refused with a reason, never half applied.
 */
#ifndef TG_SNAPFILE_H
#define TG_SNAPFILE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/addr.h"

#define SNAPFILE_MAGIC       "tgsnapf\n" /* 8 bytes, no NUL */
#define SNAPFILE_VERSION     3           /* 2: SIP users; 3: call limits and policies */
#define SNAPFILE_HEADER      64          /* bytes */
#define SNAPFILE_TRAILER     8           /* bytes: the checksum */
#define SNAPFILE_MAX_RANGES  16          /* addresses one host-name rule may resolve to */
#define SNAPFILE_NAME_MAX    63          /* bytes of an account name, as in the schema */
#define SNAPFILE_PREFIX_MAX  31          /* bytes of a tech prefix */
#define SNAPFILE_HOST_MAX    253         /* bytes of a DNS name */
#define SNAPFILE_USER_MAX    64          /* bytes of a SIP username */
#define SNAPFILE_DOMAIN_MAX  253         /* bytes of a SIP user's domain */
#define SNAPFILE_USER_RANGES 32          /* allowed sources of one SIP user */
#define SNAPFILE_PREFIXES    64          /* destination prefixes in one list of one account */
#define SNAPFILE_PREFIX_LEN  32          /* bytes of a destination prefix */
#define SNAPFILE_CODECS      32          /* restricted codecs of one account */
#define SNAPFILE_CODEC_LEN   32          /* bytes of a codec name */

/* The lists: arrays of 1..SNAPFILE_PREFIX_LEN (CODEC_LEN) byte strings; NULL and 0 when empty. */
typedef struct snapfile_account {
	int64_t id;
	const char *name; /* NUL-terminated */
	int active;
	uint32_t max_channels, max_cps;
	uint32_t cps_burst;
	const char *const *allowed_prefixes;
	unsigned nallowed; /* 0..SNAPFILE_PREFIXES */
	const char *const *denied_prefixes;
	unsigned ndenied; /* 0..SNAPFILE_PREFIXES */
	const char *const *restricted_codecs;
	unsigned ncodecs; /* 0..SNAPFILE_CODECS */
} snapfile_account_t;

typedef struct snapfile_rule {
	int64_t id, account_id;
	const tg_range_t *ranges;
	unsigned nranges;        /* 0: a host name not resolved yet */
	uint16_t port;           /* 0 = any */
	const char *tech_prefix; /* "" = none */
	const char *host;        /* "" = a numeric address rule */
	int active;
	unsigned direction; /* enum snap_dir */
	uint32_t max_channels, max_cps, cps_burst;
} snapfile_rule_t;

/* HA1 values are hex (either case) on the way in, lower case on the way out. */
typedef struct snapfile_user {
	int64_t id, account_id;
	const char *username; /* 1..SNAPFILE_USER_MAX bytes */
	const char *domain;   /* "" = any domain */
	int active, restrict_sources;
	const char *ha1_md5, *ha1_sha256;           /* 32 / 64 hex digits; NULL or "" = not set */
	const char *ha1_md5_full, *ha1_sha256_full; /* the same over username@domain */
	const tg_range_t *ranges;
	unsigned nranges; /* 0..SNAPFILE_USER_RANGES */
} snapfile_user_t;

typedef struct snapfile_info {
	uint64_t saved_ms; /* wall clock when written */
	uint64_t built_ms; /* wall clock of the snapshot it holds */
	uint64_t naccounts, nrules, nusers;
	uint64_t bytes; /* file size */
} snapfile_info_t;

/* ---- writing: snapfile_open, records (accounts, rules, users), snapfile_commit ---- */

typedef struct snapfile_writer snapfile_writer_t;

/*
 * Creates PATH.tmp.PID. Returns NULL with errno. Nothing appears under
 * PATH until snapfile_commit() has written, synced and renamed it.
 */
snapfile_writer_t *snapfile_open(const char *path, uint64_t built_ms);
/* 0, or -1 with errno (EINVAL: a field the format cannot hold). */
int snapfile_put_account(snapfile_writer_t *w, const snapfile_account_t *a);
int snapfile_put_rule(snapfile_writer_t *w, const snapfile_rule_t *r);
int snapfile_put_user(snapfile_writer_t *w, const snapfile_user_t *u);
/* Finish, fsync, rename over PATH, fsync the directory; frees w. 0 or -1 with errno. */
int snapfile_commit(snapfile_writer_t *w, snapfile_info_t *info);
/* Give up: the temporary file is removed; frees w. */
void snapfile_abort(snapfile_writer_t *w);

/* ---- reading ---- */

/* Each returns NULL, or why the record cannot be taken (the load then fails). */
typedef struct snapfile_sink {
	const char *(*account)(void *arg, const snapfile_account_t *a);
	const char *(*rule)(void *arg, const snapfile_rule_t *r);
	const char *(*user)(void *arg, const snapfile_user_t *u);
	void *arg;
} snapfile_sink_t;

/*
 * Checks the whole file, then hands every record to sink. Returns 0, or -1
 * with the reason in reason[] (errno ENOENT when there is no file at all;
 * a sink refusal after some records were taken also returns -1, and the
 * caller must discard what it took). Files with more records than
 * max_accounts / max_rules / max_users are refused.
 */
int snapfile_read(const char *path, uint64_t max_accounts, uint64_t max_rules, uint64_t max_users,
                  const snapfile_sink_t *sink, snapfile_info_t *info, char *reason, size_t reasonlen);

/* Removes PATH.tmp.* left by writers that died mid-write. */
void snapfile_clean_tmp(const char *path);

#endif

/*
 * The snapshot file: writing the loader's model to disk and reading it
 * back, with every check that decides whether a file may be trusted.
 *
 * This file owns the format alone. It never logs, never touches shared
 * memory or the database: the loader feeds it records and hands records
 * from it to the model, and reports what it returns.
 *
 * Layout, every integer little-endian:
 *
 *   header, 64 bytes
 *     0  magic "tgsnapf\n"
 *     8  u32 format version (SNAPFILE_VERSION)
 *    12  u32 shm layout version of the binary that wrote it
 *    16  u64 saved_ms, u64 built_ms (wall clock)
 *    32  u64 accounts, u64 rules
 *    48  u64 bytes of records
 *    56  u64 users
 *   records: the accounts, then the rules, then the users
 *     account: i64 id, u32 max_channels, u32 max_cps, u32 cps_burst,
 *              u8 active, u8 name_len, u8 nallowed, u8 ndenied, u8 ncodecs,
 *              name, then the allowed prefixes, the denied prefixes and the
 *              restricted codecs, each a u8 length and its bytes
 *     rule:    i64 id, i64 account_id, u32 max_channels, u32 max_cps,
 *              u32 cps_burst, u16 port, u8 active, u8 direction,
 *              u8 nranges, u8 prefix_len, u8 host_len, prefix, host, ranges
 *     user:    i64 id, i64 account_id, u8 active, u8 restrict_sources,
 *              u8 nranges, u8 ha1_set, u8 username_len, u8 domain_len,
 *              username, domain, the HA1 values ha1_set names (bit 0 md5,
 *              1 sha256, 2 md5 full, 3 sha256 full; 16 or 32 bytes each,
 *              binary, in bit order), ranges
 *     range:   u8 4, u32 first, u32 last   or   u8 6, 2 x (u64 hi, u64 lo)
 *   trailer: u64 checksum = H(header || H(records))
 *
 * The records' hash is computed while they stream out, and the header is
 * written last (its counts and size are known only then), which is why the
 * checksum nests: H over the header followed by the records' hash.
 *
 * H reads 8-byte words. Each step is a bijection of the state for a fixed
 * word and injective in the word for a fixed state, so any change confined
 * to one word always changes the result; other damage escapes it with odds
 * of about 2^-64.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/clock.h"
#include "shm/shm.h"
#include "sql/snapfile.h"

#define FH_K1 0x9e3779b97f4a7c15ULL
#define FH_K2 0xc2b2ae3d27d4eb4fULL
#define FH_K3 0x165667b19e3779f9ULL

#define WRITE_BUF (64 * 1024) /* a multiple of 8: full buffers hash as whole words */

#define ACCOUNT_MIN 25 /* bytes of an account record with an empty name and no lists */
#define RULE_MIN    35 /* bytes of a rule record with no prefix, host or range */
#define USER_MIN    22 /* bytes of a user record with no name, domain, HA1 or range */
#define RANGE_MAX   33 /* bytes of an IPv6 range */
#define RECORD_MAX  (RULE_MIN + SNAPFILE_PREFIX_MAX + SNAPFILE_HOST_MAX + SNAPFILE_MAX_RANGES * RANGE_MAX)
#define USER_HA1S   4 /* md5, sha256, md5 full, sha256 full */
#define ACCOUNT_RECORD_MAX                                                                                   \
	(ACCOUNT_MIN + SNAPFILE_NAME_MAX + 2 * SNAPFILE_PREFIXES * (1 + SNAPFILE_PREFIX_LEN) +               \
	 SNAPFILE_CODECS * (1 + SNAPFILE_CODEC_LEN))
#define USER_RECORD_MAX                                                                                      \
	(USER_MIN + SNAPFILE_USER_MAX + SNAPFILE_DOMAIN_MAX + 2 * (16 + 32) +                                \
	 SNAPFILE_USER_RANGES * RANGE_MAX)

/* Bytes of each HA1 of a user, in ha1_set bit order. */
static const unsigned ha1_bytes[USER_HA1S] = {16, 32, 16, 32};

#define V4_MAPPED 0x0000ffff00000000ULL

/* ------------------------------------------------------------------ */
/* the checksum                                                       */

typedef struct fhash {
	uint64_t h;
	uint64_t len; /* bytes hashed */
} fhash_t;

static uint64_t le64_get(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void fh_init(fhash_t *s)
{
	s->h = FH_K3;
	s->len = 0;
}

static void fh_word(fhash_t *s, uint64_t w)
{
	uint64_t h = s->h ^ (w * FH_K1);

	s->h = ((h << 27) | (h >> 37)) * FH_K2 + FH_K3;
}

/* n must be a multiple of 8 except in the last call before fh_final(). */
static void fh_update(fhash_t *s, const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i + 8 <= n; i += 8)
		fh_word(s, le64_get(p + i));
	if (i < n) {
		uint8_t tail[8] = {0};

		memcpy(tail, p + i, n - i);
		fh_word(s, le64_get(tail));
	}
	s->len += n;
}

static uint64_t fh_final(fhash_t *s)
{
	uint64_t h = s->h ^ s->len;

	/* A final avalanche, so neighbouring inputs give unrelated sums. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	return h ^ (h >> 33);
}

static void le_put(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The trailer's value, from the final header and the records' hash. */
static uint64_t file_checksum(const uint8_t *header, uint64_t records_hash)
{
	uint8_t word[8];
	fhash_t s;

	fh_init(&s);
	fh_update(&s, header, SNAPFILE_HEADER);
	le_put(word, records_hash, 8);
	fh_update(&s, word, 8);
	return fh_final(&s);
}

/* ------------------------------------------------------------------ */
/* writing                                                            */

struct snapfile_writer {
	int fd;
	uint64_t built_ms;
	uint64_t naccounts, nrules, nusers;
	uint64_t records; /* bytes written or buffered after the header */
	fhash_t hash;     /* of the records flushed so far */
	size_t used;      /* bytes in buf */
	char path[PATH_MAX];
	char tmp[PATH_MAX];
	uint8_t buf[WRITE_BUF];
};

static int write_all(int fd, const uint8_t *p, size_t n, off_t at)
{
	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, at);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
		at += w;
	}
	return 0;
}

/* Hashes and writes the buffer; only the last flush may leave a partial word. */
static int flush(snapfile_writer_t *w)
{
	off_t at = (off_t)(SNAPFILE_HEADER + w->records - w->used);

	fh_update(&w->hash, w->buf, w->used);
	if (write_all(w->fd, w->buf, w->used, at) < 0)
		return -1;
	w->used = 0;
	return 0;
}

static int put(snapfile_writer_t *w, const uint8_t *p, size_t n)
{
	while (n > 0) {
		size_t room = WRITE_BUF - w->used, take = n < room ? n : room;

		memcpy(w->buf + w->used, p, take);
		w->used += take;
		w->records += take;
		p += take;
		n -= take;
		if (w->used == WRITE_BUF && flush(w) < 0)
			return -1;
	}
	return 0;
}

snapfile_writer_t *snapfile_open(const char *path, uint64_t built_ms)
{
	snapfile_writer_t *w = calloc(1, sizeof(*w));
	int n;

	if (w == NULL)
		return NULL;
	n = snprintf(w->tmp, sizeof(w->tmp), "%s.tmp.%d", path, (int)getpid());
	if (n < 0 || (size_t)n >= sizeof(w->tmp)) {
		free(w);
		errno = ENAMETOOLONG;
		return NULL;
	}
	snprintf(w->path, sizeof(w->path), "%s", path);
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (w->fd < 0) {
		free(w);
		return NULL;
	}
	w->built_ms = built_ms;
	fh_init(&w->hash);
	return w;
}

/* Bytes of a string the format can hold, or -1. */
static int text_len(const char *s, size_t max, int may_be_empty)
{
	size_t n = s != NULL ? strlen(s) : 0;

	if (n > max || (n == 0 && !may_be_empty))
		return -1;
	return (int)n;
}

/* Appends n strings of 1..max bytes at rec + *at, each a u8 length and its bytes. 0, or -1. */
static int list_encode(uint8_t *rec, size_t *at, const char *const *list, unsigned n, unsigned max_n,
                       size_t max)
{
	if (n > max_n || (n > 0 && list == NULL))
		return -1;
	for (unsigned i = 0; i < n; i++) {
		int len = text_len(list[i], max, 0);

		if (len < 0)
			return -1;
		rec[(*at)++] = (uint8_t)len;
		memcpy(rec + *at, list[i], (size_t)len);
		*at += (size_t)len;
	}
	return 0;
}

int snapfile_put_account(snapfile_writer_t *w, const snapfile_account_t *a)
{
	uint8_t rec[ACCOUNT_RECORD_MAX];
	int len = text_len(a->name, SNAPFILE_NAME_MAX, 0);
	size_t n;

	/* Accounts first: a reader puts rules and users only into accounts it already has. */
	if (len < 0 || w->nrules > 0 || w->nusers > 0) {
		errno = EINVAL;
		return -1;
	}
	le_put(rec, (uint64_t)a->id, 8);
	le_put(rec + 8, a->max_channels, 4);
	le_put(rec + 12, a->max_cps, 4);
	le_put(rec + 16, a->cps_burst, 4);
	rec[20] = a->active ? 1 : 0;
	rec[21] = (uint8_t)len;
	rec[22] = (uint8_t)a->nallowed;
	rec[23] = (uint8_t)a->ndenied;
	rec[24] = (uint8_t)a->ncodecs;
	memcpy(rec + ACCOUNT_MIN, a->name, (size_t)len);
	n = ACCOUNT_MIN + (size_t)len;
	if (list_encode(rec, &n, a->allowed_prefixes, a->nallowed, SNAPFILE_PREFIXES, SNAPFILE_PREFIX_LEN) <
	            0 ||
	    list_encode(rec, &n, a->denied_prefixes, a->ndenied, SNAPFILE_PREFIXES, SNAPFILE_PREFIX_LEN) <
	            0 ||
	    list_encode(rec, &n, a->restricted_codecs, a->ncodecs, SNAPFILE_CODECS, SNAPFILE_CODEC_LEN) < 0) {
		errno = EINVAL;
		return -1;
	}
	w->naccounts++;
	return put(w, rec, n);
}

/* Appends one range at p; returns its bytes, or 0 when it is not a valid range. */
static size_t range_encode(uint8_t *p, const tg_range_t *r)
{
	if (tg_ip_cmp(&r->first, &r->last) > 0)
		return 0;
	if (r->family == AF_INET) {
		if (!tg_ip_is_v4(&r->first) || !tg_ip_is_v4(&r->last))
			return 0;
		p[0] = 4;
		le_put(p + 1, r->first.lo & 0xffffffffULL, 4);
		le_put(p + 5, r->last.lo & 0xffffffffULL, 4);
		return 9;
	}
	if (r->family != AF_INET6)
		return 0;
	p[0] = 6;
	le_put(p + 1, r->first.hi, 8);
	le_put(p + 9, r->first.lo, 8);
	le_put(p + 17, r->last.hi, 8);
	le_put(p + 25, r->last.lo, 8);
	return RANGE_MAX;
}

int snapfile_put_rule(snapfile_writer_t *w, const snapfile_rule_t *r)
{
	uint8_t rec[RECORD_MAX];
	int plen = text_len(r->tech_prefix, SNAPFILE_PREFIX_MAX, 1);
	int hlen = text_len(r->host, SNAPFILE_HOST_MAX, 1);
	size_t n = RULE_MIN;

	if (plen < 0 || hlen < 0 || r->nranges > SNAPFILE_MAX_RANGES || (r->nranges == 0 && hlen == 0) ||
	    r->direction < 1 || r->direction > 3 || w->nusers > 0) {
		errno = EINVAL;
		return -1;
	}
	le_put(rec, (uint64_t)r->id, 8);
	le_put(rec + 8, (uint64_t)r->account_id, 8);
	le_put(rec + 16, r->max_channels, 4);
	le_put(rec + 20, r->max_cps, 4);
	le_put(rec + 24, r->cps_burst, 4);
	le_put(rec + 28, r->port, 2);
	rec[30] = r->active ? 1 : 0;
	rec[31] = (uint8_t)r->direction;
	rec[32] = (uint8_t)r->nranges;
	rec[33] = (uint8_t)plen;
	rec[34] = (uint8_t)hlen;
	memcpy(rec + n, r->tech_prefix, (size_t)plen);
	n += (size_t)plen;
	memcpy(rec + n, r->host, (size_t)hlen);
	n += (size_t)hlen;
	for (unsigned i = 0; i < r->nranges; i++) {
		size_t len = range_encode(rec + n, &r->ranges[i]);

		if (len == 0) {
			errno = EINVAL;
			return -1;
		}
		n += len;
	}
	w->nrules++;
	return put(w, rec, n);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* hex of exactly 2 * n digits into n bytes at p; 0, or -1 when it is not that. */
static int hex_decode(uint8_t *p, const char *hex, unsigned n)
{
	if (strlen(hex) != 2 * (size_t)n)
		return -1;
	for (unsigned i = 0; i < n; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		p[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int snapfile_put_user(snapfile_writer_t *w, const snapfile_user_t *u)
{
	const char *ha1[USER_HA1S] = {u->ha1_md5, u->ha1_sha256, u->ha1_md5_full, u->ha1_sha256_full};
	uint8_t rec[USER_RECORD_MAX], set = 0;
	int ulen = text_len(u->username, SNAPFILE_USER_MAX, 0);
	int dlen = text_len(u->domain, SNAPFILE_DOMAIN_MAX, 1);
	size_t n = USER_MIN;

	if (ulen < 0 || dlen < 0 || u->nranges > SNAPFILE_USER_RANGES) {
		errno = EINVAL;
		return -1;
	}
	memcpy(rec + n, u->username, (size_t)ulen);
	n += (size_t)ulen;
	memcpy(rec + n, u->domain, (size_t)dlen);
	n += (size_t)dlen;
	for (int i = 0; i < USER_HA1S; i++) {
		if (ha1[i] == NULL || ha1[i][0] == '\0')
			continue;
		if (hex_decode(rec + n, ha1[i], ha1_bytes[i]) < 0) {
			errno = EINVAL;
			return -1;
		}
		set |= (uint8_t)(1u << i);
		n += ha1_bytes[i];
	}
	for (unsigned i = 0; i < u->nranges; i++) {
		size_t len = range_encode(rec + n, &u->ranges[i]);

		if (len == 0) {
			errno = EINVAL;
			return -1;
		}
		n += len;
	}
	le_put(rec, (uint64_t)u->id, 8);
	le_put(rec + 8, (uint64_t)u->account_id, 8);
	rec[16] = u->active ? 1 : 0;
	rec[17] = u->restrict_sources ? 1 : 0;
	rec[18] = (uint8_t)u->nranges;
	rec[19] = set;
	rec[20] = (uint8_t)ulen;
	rec[21] = (uint8_t)dlen;
	w->nusers++;
	return put(w, rec, n);
}

static void header_encode(uint8_t *h, const snapfile_writer_t *w, uint64_t saved_ms)
{
	memset(h, 0, SNAPFILE_HEADER);
	memcpy(h, SNAPFILE_MAGIC, 8);
	le_put(h + 8, SNAPFILE_VERSION, 4);
	le_put(h + 12, SHM_LAYOUT_VERSION, 4);
	le_put(h + 16, saved_ms, 8);
	le_put(h + 24, w->built_ms, 8);
	le_put(h + 32, w->naccounts, 8);
	le_put(h + 40, w->nrules, 8);
	le_put(h + 48, w->records, 8);
	le_put(h + 56, w->nusers, 8);
}

/*
 * The rename is what makes the new file visible; a crash before it leaves
 * the old file whole. The directory is synced so the rename itself
 * survives a power cut; a filesystem that cannot sync directories still
 * has a complete file under one name or the other.
 */
static int file_publish(snapfile_writer_t *w)
{
	char dir[PATH_MAX], *slash;
	int dfd;

	if (fsync(w->fd) < 0 || close(w->fd) < 0) {
		w->fd = -1;
		return -1;
	}
	w->fd = -1;
	if (rename(w->tmp, w->path) < 0)
		return -1;
	snprintf(dir, sizeof(dir), "%s", w->path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else
		slash[slash == dir ? 1 : 0] = '\0';
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

int snapfile_commit(snapfile_writer_t *w, snapfile_info_t *info)
{
	uint8_t header[SNAPFILE_HEADER + SNAPFILE_TRAILER];
	uint64_t saved_ms = tg_wall_ms();
	int saved;

	if (flush(w) < 0)
		goto fail;
	header_encode(header, w, saved_ms);
	le_put(header + SNAPFILE_HEADER, file_checksum(header, fh_final(&w->hash)), 8);
	if (write_all(w->fd, header + SNAPFILE_HEADER, SNAPFILE_TRAILER,
	              (off_t)(SNAPFILE_HEADER + w->records)) < 0 ||
	    write_all(w->fd, header, SNAPFILE_HEADER, 0) < 0 || file_publish(w) < 0)
		goto fail;
	if (info != NULL) {
		info->saved_ms = saved_ms;
		info->built_ms = w->built_ms;
		info->naccounts = w->naccounts;
		info->nrules = w->nrules;
		info->nusers = w->nusers;
		info->bytes = SNAPFILE_HEADER + w->records + SNAPFILE_TRAILER;
	}
	free(w);
	return 0;
fail:
	saved = errno;
	snapfile_abort(w);
	errno = saved;
	return -1;
}

void snapfile_abort(snapfile_writer_t *w)
{
	int saved = errno;

	if (w == NULL)
		return;
	if (w->fd >= 0)
		close(w->fd);
	unlink(w->tmp);
	free(w);
	errno = saved;
}

void snapfile_clean_tmp(const char *path)
{
	char dir[PATH_MAX], prefix[NAME_MAX + 8];
	const char *base = strrchr(path, '/');
	struct dirent *e;
	size_t plen;
	DIR *d;

	snprintf(dir, sizeof(dir), "%.*s", base != NULL ? (int)(base - path) + 1 : 1,
	         base != NULL ? path : ".");
	snprintf(prefix, sizeof(prefix), "%s.tmp.", base != NULL ? base + 1 : path);
	plen = strlen(prefix);
	if ((d = opendir(dir)) == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		const char *pid = e->d_name + plen;

		/* Only our own leftovers: PREFIX followed by a pid. */
		if (strncmp(e->d_name, prefix, plen) == 0 && *pid != '\0' &&
		    strspn(pid, "0123456789") == strlen(pid))
			unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
}

/* ------------------------------------------------------------------ */
/* reading                                                            */

typedef struct cursor {
	const uint8_t *p, *end;
	int short_read; /* a field ran past the end */
} cursor_t;

static uint64_t take(cursor_t *c, int bytes)
{
	uint64_t v = 0;

	if (c->end - c->p < bytes) {
		c->short_read = 1;
		c->p = c->end;
		return 0;
	}
	for (int i = bytes - 1; i >= 0; i--)
		v = v << 8 | c->p[i];
	c->p += bytes;
	return v;
}

/* Copies n bytes as a NUL-terminated string; refuses embedded NULs. */
static int take_text(cursor_t *c, char *out, size_t n)
{
	if ((size_t)(c->end - c->p) < n) {
		c->short_read = 1;
		return -1;
	}
	memcpy(out, c->p, n);
	out[n] = '\0';
	c->p += n;
	return strlen(out) == n ? 0 : -1;
}

static const char *take_range(cursor_t *c, tg_range_t *r)
{
	unsigned family = (unsigned)take(c, 1);

	if (family == 4) {
		r->family = AF_INET;
		r->first.hi = r->last.hi = 0;
		r->first.lo = V4_MAPPED | take(c, 4);
		r->last.lo = V4_MAPPED | take(c, 4);
	} else if (family == 6) {
		r->family = AF_INET6;
		r->first.hi = take(c, 8);
		r->first.lo = take(c, 8);
		r->last.hi = take(c, 8);
		r->last.lo = take(c, 8);
	} else {
		return "range of unknown family";
	}
	if (tg_ip_cmp(&r->first, &r->last) > 0)
		return "range ends before it starts";
	return NULL;
}

/*
 * n strings of 1..max bytes, each a u8 length and its bytes, into text
 * (n * (max + 1) bytes), list[] pointing at them. Returns 0, or -1.
 */
static int take_list(cursor_t *c, unsigned n, size_t max, char *text, const char **list)
{
	for (unsigned i = 0; i < n; i++) {
		size_t len = (size_t)take(c, 1);

		if (len == 0 || len > max || take_text(c, text, len) < 0)
			return -1;
		list[i] = text;
		text += len + 1;
	}
	return 0;
}

static const char *take_account(cursor_t *c, const snapfile_sink_t *sink)
{
	char name[SNAPFILE_NAME_MAX + 1];
	char allowed[SNAPFILE_PREFIXES * (SNAPFILE_PREFIX_LEN + 1)];
	char denied[SNAPFILE_PREFIXES * (SNAPFILE_PREFIX_LEN + 1)];
	char codecs[SNAPFILE_CODECS * (SNAPFILE_CODEC_LEN + 1)];
	const char *allowed_list[SNAPFILE_PREFIXES], *denied_list[SNAPFILE_PREFIXES];
	const char *codec_list[SNAPFILE_CODECS];
	snapfile_account_t a;
	unsigned active, len;

	a.id = (int64_t)take(c, 8);
	a.max_channels = (uint32_t)take(c, 4);
	a.max_cps = (uint32_t)take(c, 4);
	a.cps_burst = (uint32_t)take(c, 4);
	active = (unsigned)take(c, 1);
	len = (unsigned)take(c, 1);
	a.nallowed = (unsigned)take(c, 1);
	a.ndenied = (unsigned)take(c, 1);
	a.ncodecs = (unsigned)take(c, 1);
	if (active > 1 || len == 0 || len > SNAPFILE_NAME_MAX || a.nallowed > SNAPFILE_PREFIXES ||
	    a.ndenied > SNAPFILE_PREFIXES || a.ncodecs > SNAPFILE_CODECS)
		return "bad field";
	if (take_text(c, name, len) < 0)
		return "bad name";
	if (take_list(c, a.nallowed, SNAPFILE_PREFIX_LEN, allowed, allowed_list) < 0 ||
	    take_list(c, a.ndenied, SNAPFILE_PREFIX_LEN, denied, denied_list) < 0)
		return "bad destination prefix";
	if (take_list(c, a.ncodecs, SNAPFILE_CODEC_LEN, codecs, codec_list) < 0)
		return "bad codec";
	a.active = (int)active;
	a.name = name;
	a.allowed_prefixes = allowed_list;
	a.denied_prefixes = denied_list;
	a.restricted_codecs = codec_list;
	return sink != NULL ? sink->account(sink->arg, &a) : NULL;
}

static const char *take_rule(cursor_t *c, const snapfile_sink_t *sink)
{
	char prefix[SNAPFILE_PREFIX_MAX + 1], host[SNAPFILE_HOST_MAX + 1];
	tg_range_t ranges[SNAPFILE_MAX_RANGES];
	snapfile_rule_t r;
	unsigned active, plen, hlen;
	const char *why;

	r.id = (int64_t)take(c, 8);
	r.account_id = (int64_t)take(c, 8);
	r.max_channels = (uint32_t)take(c, 4);
	r.max_cps = (uint32_t)take(c, 4);
	r.cps_burst = (uint32_t)take(c, 4);
	r.port = (uint16_t)take(c, 2);
	active = (unsigned)take(c, 1);
	r.direction = (unsigned)take(c, 1);
	r.nranges = (unsigned)take(c, 1);
	plen = (unsigned)take(c, 1);
	hlen = (unsigned)take(c, 1);
	if (active > 1 || r.direction < 1 || r.direction > 3 || r.nranges > SNAPFILE_MAX_RANGES ||
	    plen > SNAPFILE_PREFIX_MAX || hlen > SNAPFILE_HOST_MAX || (r.nranges == 0 && hlen == 0))
		return "bad field";
	if (take_text(c, prefix, plen) < 0 || take_text(c, host, hlen) < 0)
		return "bad text";
	for (unsigned i = 0; i < r.nranges; i++)
		if ((why = take_range(c, &ranges[i])) != NULL)
			return why;
	r.active = (int)active;
	r.tech_prefix = prefix;
	r.host = host;
	r.ranges = ranges;
	return sink != NULL ? sink->rule(sink->arg, &r) : NULL;
}

static const char *take_user(cursor_t *c, const snapfile_sink_t *sink)
{
	static const char digits[] = "0123456789abcdef";
	char username[SNAPFILE_USER_MAX + 1], domain[SNAPFILE_DOMAIN_MAX + 1];
	char ha1[USER_HA1S][65];
	tg_range_t ranges[SNAPFILE_USER_RANGES];
	snapfile_user_t u;
	unsigned active, restrict_sources, set, ulen, dlen;
	const char *why;

	u.id = (int64_t)take(c, 8);
	u.account_id = (int64_t)take(c, 8);
	active = (unsigned)take(c, 1);
	restrict_sources = (unsigned)take(c, 1);
	u.nranges = (unsigned)take(c, 1);
	set = (unsigned)take(c, 1);
	ulen = (unsigned)take(c, 1);
	dlen = (unsigned)take(c, 1);
	if (active > 1 || restrict_sources > 1 || u.nranges > SNAPFILE_USER_RANGES ||
	    set >= 1u << USER_HA1S || ulen == 0 || ulen > SNAPFILE_USER_MAX || dlen > SNAPFILE_DOMAIN_MAX)
		return "bad field";
	if (take_text(c, username, ulen) < 0 || take_text(c, domain, dlen) < 0)
		return "bad text";
	for (int i = 0; i < USER_HA1S; i++) {
		ha1[i][0] = '\0';
		for (unsigned k = 0; (set & (1u << i)) && k < ha1_bytes[i]; k++) {
			unsigned b = (unsigned)take(c, 1);

			ha1[i][2 * k] = digits[b >> 4];
			ha1[i][2 * k + 1] = digits[b & 15];
			ha1[i][2 * k + 2] = '\0';
		}
	}
	for (unsigned i = 0; i < u.nranges; i++)
		if ((why = take_range(c, &ranges[i])) != NULL)
			return why;
	u.active = (int)active;
	u.restrict_sources = (int)restrict_sources;
	u.username = username;
	u.domain = domain;
	u.ha1_md5 = ha1[0];
	u.ha1_sha256 = ha1[1];
	u.ha1_md5_full = ha1[2];
	u.ha1_sha256_full = ha1[3];
	u.ranges = ranges;
	return sink != NULL ? sink->user(sink->arg, &u) : NULL;
}

typedef struct file_view {
	const uint8_t *data;
	size_t size;
	snapfile_info_t info;
	uint64_t records;
} file_view_t;

static int refuse(char *reason, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int refuse(char *reason, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, len, fmt, ap);
	va_end(ap);
	return -1;
}

/* Everything but the records' contents. */
static int check_header(file_view_t *v, uint64_t max_accounts, uint64_t max_rules, uint64_t max_users,
                        char *reason, size_t len)
{
	const uint8_t *h = v->data;
	uint32_t version, layout;
	fhash_t s;

	if (v->size < SNAPFILE_HEADER + SNAPFILE_TRAILER)
		return refuse(reason, len, "truncated: %zu bytes", v->size);
	if (memcmp(h, SNAPFILE_MAGIC, 8) != 0)
		return refuse(reason, len, "not a tollgate snapshot file (bad magic)");
	/* two u32 side by side: version, then layout */
	version = (uint32_t)le64_get(h + 8);
	layout = (uint32_t)(le64_get(h + 8) >> 32);
	if (version != SNAPFILE_VERSION)
		return refuse(reason, len, "format version %u, this binary reads %u", version,
		              SNAPFILE_VERSION);
	if (layout != SHM_LAYOUT_VERSION)
		return refuse(reason, len, "written for layout version %u, this binary has %u", layout,
		              SHM_LAYOUT_VERSION);
	v->info.saved_ms = le64_get(h + 16);
	v->info.built_ms = le64_get(h + 24);
	v->info.naccounts = le64_get(h + 32);
	v->info.nrules = le64_get(h + 40);
	v->records = le64_get(h + 48);
	v->info.nusers = le64_get(h + 56);
	v->info.bytes = v->size;
	if (v->records > v->size || v->records + SNAPFILE_HEADER + SNAPFILE_TRAILER != v->size)
		return refuse(reason, len, "truncated or padded: %zu bytes, the header says %llu", v->size,
		              (unsigned long long)(v->records + SNAPFILE_HEADER + SNAPFILE_TRAILER));
	/* Counts the size cannot hold are refused before hashing a byte of them. */
	if (v->info.naccounts > v->records / ACCOUNT_MIN || v->info.nrules > v->records / RULE_MIN ||
	    v->info.nusers > v->records / USER_MIN)
		return refuse(reason, len,
		              "absurd header: %llu accounts, %llu rules, %llu users in %llu bytes",
		              (unsigned long long)v->info.naccounts, (unsigned long long)v->info.nrules,
		              (unsigned long long)v->info.nusers, (unsigned long long)v->records);
	fh_init(&s);
	fh_update(&s, h + SNAPFILE_HEADER, v->records);
	if (file_checksum(h, fh_final(&s)) != le64_get(h + SNAPFILE_HEADER + v->records))
		return refuse(reason, len, "checksum mismatch");
	if (v->info.naccounts > max_accounts || v->info.nrules > max_rules || v->info.nusers > max_users)
		return refuse(
		        reason, len,
		        "holds %llu accounts, %llu rules and %llu users, capacity is %llu, %llu and %llu",
		        (unsigned long long)v->info.naccounts, (unsigned long long)v->info.nrules,
		        (unsigned long long)v->info.nusers, (unsigned long long)max_accounts,
		        (unsigned long long)max_rules, (unsigned long long)max_users);
	return 0;
}

/* One pass over the records; with sink NULL it only checks them. */
static int walk(const file_view_t *v, const snapfile_sink_t *sink, char *reason, size_t len)
{
	cursor_t c = {v->data + SNAPFILE_HEADER, v->data + SNAPFILE_HEADER + v->records, 0};
	const char *why = NULL;
	uint64_t i;

	for (i = 0; i < v->info.naccounts && why == NULL; i++)
		why = take_account(&c, sink);
	if (why != NULL || c.short_read)
		return refuse(reason, len, "account record %llu: %s", (unsigned long long)i,
		              why != NULL ? why : "truncated");
	for (i = 0; i < v->info.nrules && why == NULL; i++)
		why = take_rule(&c, sink);
	if (why != NULL || c.short_read)
		return refuse(reason, len, "rule record %llu: %s", (unsigned long long)i,
		              why != NULL ? why : "truncated");
	for (i = 0; i < v->info.nusers && why == NULL; i++)
		why = take_user(&c, sink);
	if (why != NULL || c.short_read)
		return refuse(reason, len, "user record %llu: %s", (unsigned long long)i,
		              why != NULL ? why : "truncated");
	if (c.p != c.end)
		return refuse(reason, len, "%zu bytes after the last record", (size_t)(c.end - c.p));
	return 0;
}

int snapfile_read(const char *path, uint64_t max_accounts, uint64_t max_rules, uint64_t max_users,
                  const snapfile_sink_t *sink, snapfile_info_t *info, char *reason, size_t reasonlen)
{
	file_view_t v = {0};
	struct stat st;
	void *map;
	int fd, rc, saved;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) < 0) {
		saved = errno;
		if (fd >= 0)
			close(fd);
		errno = saved;
		return refuse(reason, reasonlen, "%s", strerror(saved));
	}
	if (!S_ISREG(st.st_mode) || st.st_size < SNAPFILE_HEADER + SNAPFILE_TRAILER) {
		close(fd);
		errno = EINVAL;
		return refuse(reason, reasonlen, S_ISREG(st.st_mode) ? "truncated: %lld bytes" : "not a file",
		              (long long)st.st_size);
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	saved = errno;
	close(fd);
	if (map == MAP_FAILED) {
		errno = saved;
		return refuse(reason, reasonlen, "mmap(): %s", strerror(saved));
	}
	v.data = map;
	v.size = (size_t)st.st_size;
	rc = check_header(&v, max_accounts, max_rules, max_users, reason, reasonlen);
	/* Check every record before the sink sees the first: a bad file changes nothing. */
	if (rc == 0)
		rc = walk(&v, NULL, reason, reasonlen);
	if (rc == 0)
		rc = walk(&v, sink, reason, reasonlen);
	munmap(map, v.size);
	if (info != NULL)
		*info = v.info;
	errno = rc == 0 ? 0 : EINVAL;
	return rc;
}

/*
 * sql/snapfile.c: what the loader writes comes back the same, and a file
 * that is damaged or foreign is refused whole (naming why) rather than
 * served: a flipped byte anywhere, a cut, the wrong magic, version (files
 * from before SIP users or before call policies included) or layout,
 * counts the file cannot hold, more rows than the capacity. And
 * sql/loader_file.c: a model saved and loaded again is the same model,
 * call limits and policies included.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/addr.h"
#include "shm/shm.h"
#include "shm/snapshot.h"
#include "sql/loader_file.h"
#include "sql/snapfile.h"
#include "t/unit/tap.h"

static char dir[] = "/tmp/tollgate-test-snapfile.XXXXXX";
static char path[200], bad[256];
static char reason[256];

/* What a read collected, flattened to text so comparing is one strcmp. */
static char seen[8192];
static int naccounts, nrules, nusers;
static int refuse_rule_id = -1;

static void seen_add(const char *fmt, const char *a, const char *b)
{
	size_t n = strlen(seen);

	snprintf(seen + n, sizeof(seen) - n, fmt, a, b);
}

static void seen_list(const char *tag, const char *const *list, unsigned n)
{
	seen_add(" %s%s", tag, "[");
	for (unsigned i = 0; i < n; i++)
		seen_add("%s%s", i ? "," : "", list[i]);
	seen_add("%s%s", "]", "");
}

static const char *on_account(void *arg, const snapfile_account_t *a)
{
	char buf[160];

	(void)arg;
	naccounts++;
	snprintf(buf, sizeof(buf), "A%lld %s %d %u %u b%u", (long long)a->id, a->name, a->active,
	         a->max_channels, a->max_cps, a->cps_burst);
	seen_add("%s%s", buf, "");
	seen_list("+", a->allowed_prefixes, a->nallowed);
	seen_list("-", a->denied_prefixes, a->ndenied);
	seen_list("c", a->restricted_codecs, a->ncodecs);
	seen_add("%s%s", ";", "");
	return NULL;
}

static const char *on_rule(void *arg, const snapfile_rule_t *r)
{
	char buf[400], ip1[64], ip2[64];

	(void)arg;
	nrules++;
	if (r->id == refuse_rule_id)
		return "refused by the test";
	snprintf(buf, sizeof(buf), "R%lld a%lld p%u %s %s %d %u l%u/%u/%u n%u", (long long)r->id,
	         (long long)r->account_id, r->port, r->tech_prefix, r->host, r->active, r->direction,
	         r->max_channels, r->max_cps, r->cps_burst, r->nranges);
	seen_add("%s%s", buf, "");
	for (unsigned i = 0; i < r->nranges; i++) {
		tg_ip_format(&r->ranges[i].first, ip1, sizeof(ip1));
		tg_ip_format(&r->ranges[i].last, ip2, sizeof(ip2));
		seen_add(" %s-%s", ip1, ip2);
	}
	seen_add("%s%s", ";", "");
	return NULL;
}

static const char *on_user(void *arg, const snapfile_user_t *u)
{
	char buf[600], ip1[64], ip2[64];

	(void)arg;
	nusers++;
	snprintf(buf, sizeof(buf), "U%lld a%lld %s@%s %d %d [%s] [%s] [%s] [%s] n%u", (long long)u->id,
	         (long long)u->account_id, u->username, u->domain, u->active, u->restrict_sources, u->ha1_md5,
	         u->ha1_sha256, u->ha1_md5_full, u->ha1_sha256_full, u->nranges);
	seen_add("%s%s", buf, "");
	for (unsigned i = 0; i < u->nranges; i++) {
		tg_ip_format(&u->ranges[i].first, ip1, sizeof(ip1));
		tg_ip_format(&u->ranges[i].last, ip2, sizeof(ip2));
		seen_add(" %s-%s", ip1, ip2);
	}
	seen_add("%s%s", ";", "");
	return NULL;
}

static const snapfile_sink_t sink = {on_account, on_rule, on_user, NULL};

static tg_range_t range_of(const char *s)
{
	tg_range_t r;
	const char *err = NULL;

	memset(&r, 0, sizeof(r));
	if (tg_range_parse(s, &r, &err) < 0)
		printf("# test bug: range %s: %s\n", s, err);
	return r;
}

static int read_file_users(const char *p, uint64_t max_a, uint64_t max_r, uint64_t max_u)
{
	seen[0] = '\0';
	naccounts = nrules = nusers = 0;
	reason[0] = '\0';
	return snapfile_read(p, max_a, max_r, max_u, &sink, NULL, reason, sizeof(reason));
}

static int read_file(const char *p, uint64_t max_a, uint64_t max_r)
{
	return read_file_users(p, max_a, max_r, 100);
}

#define MD5_A  "0123456789abcdef0123456789abcdef"
#define SHA_A  "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define MD5_AF "fedcba9876543210fedcba9876543210"
#define SHA_AF "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

/*
 * Two accounts, one with a burst and all three lists, one with none; a
 * rule of each kind: v4 CIDR, v6 range (with limits of its own), a
 * resolved and an unresolved host; a user with a domain, every HA1 and
 * two allowed sources, and one with no domain, one HA1 (in upper case)
 * and none.
 */
static const char *const sample_allowed[] = {"44", "+3312"}, *const sample_denied[] = {"4490"};
static const char *const sample_codecs[] = {"G729", "PCMA", "TELEPHONE-EVENT"};

static int write_sample(const char *p, snapfile_info_t *info)
{
	tg_range_t v4 = range_of("192.0.2.0/24"), v6 = range_of("2001:db8::1-2001:db8::ff");
	tg_range_t host[2] = {range_of("198.51.100.7"), range_of("2001:db8::7")};
	tg_range_t allowed[2] = {range_of("203.0.113.10"), range_of("2001:db8:1::/64")};
	snapfile_account_t a1 = {1, "acme",        1, 30, 5, 10, sample_allowed, 2, sample_denied,
	                         1, sample_codecs, 3};
	snapfile_account_t a2 = {7, "globex", 0, 0, 0, 0, NULL, 0, NULL, 0, NULL, 0};
	snapfile_rule_t r1 = {10, 1, &v4, 1, 0, "", "", 1, 1, 0, 0, 0};
	snapfile_rule_t r2 = {11, 7, &v6, 1, 5070, "4455#", "", 0, 3, 4, 2, 6};
	snapfile_rule_t r3 = {12, 1, host, 2, 0, "9", "pbx.example.net", 1, 2, 0, 0, 0};
	snapfile_rule_t r4 = {13, 7, NULL, 0, 0, "", "new.example.net", 1, 1, 0, 0, 0};
	snapfile_user_t u1 = {20, 1, "alice", "example.com", 1, 1, MD5_A, SHA_A, MD5_AF, SHA_AF, allowed, 2};
	snapfile_user_t u2 = {21,   7,  "bob", "",   0, 0, "0123456789ABCDEF0123456789ABCDEF",
	                      NULL, "", NULL,  NULL, 0};
	snapfile_writer_t *w = snapfile_open(p, 1234567);

	if (w == NULL)
		return -1;
	if (snapfile_put_account(w, &a1) < 0 || snapfile_put_account(w, &a2) < 0 ||
	    snapfile_put_rule(w, &r1) < 0 || snapfile_put_rule(w, &r2) < 0 || snapfile_put_rule(w, &r3) < 0 ||
	    snapfile_put_rule(w, &r4) < 0 || snapfile_put_user(w, &u1) < 0 || snapfile_put_user(w, &u2) < 0) {
		snapfile_abort(w);
		return -1;
	}
	return snapfile_commit(w, info);
}

static const char *const sample_text =
        "A1 acme 1 30 5 b10 +[44,+3312] -[4490] c[G729,PCMA,TELEPHONE-EVENT];"
        "A7 globex 0 0 0 b0 +[] -[] c[];"
        "R10 a1 p0   1 1 l0/0/0 n1 192.0.2.0-192.0.2.255;"
        "R11 a7 p5070 4455#  0 3 l4/2/6 n1 2001:db8::1-2001:db8::ff;"
        "R12 a1 p0 9 pbx.example.net 1 2 l0/0/0 n2 198.51.100.7-198.51.100.7 2001:db8::7-2001:db8::7;"
        "R13 a7 p0  new.example.net 1 1 l0/0/0 n0;"
        "U20 a1 alice@example.com 1 1 [" MD5_A "] [" SHA_A "] [" MD5_AF "] [" SHA_AF "] n2 "
        "203.0.113.10-203.0.113.10 2001:db8:1::-2001:db8:1:0:ffff:ffff:ffff:ffff;"
        "U21 a7 bob@ 0 0 [0123456789abcdef0123456789abcdef] [] [] [] n0;";

static void test_round_trip(void)
{
	snapfile_info_t wi, ri;
	struct stat st;
	int rc;

	rc = write_sample(path, &wi);
	is_int(rc, 0, "a snapshot file is written");
	ok(stat(path, &st) == 0 && (uint64_t)st.st_size == wi.bytes,
	   "its size is what commit reported (%llu)", (unsigned long long)wi.bytes);
	is_int(wi.naccounts, 2, "commit counts the accounts");
	is_int(wi.nrules, 4, "commit counts the rules");
	is_int(wi.nusers, 2, "commit counts the users");
	seen[0] = '\0';
	rc = snapfile_read(path, 100, 100, 100, &sink, &ri, reason, sizeof(reason));
	is_int(rc, 0, "it reads back");
	if (rc)
		printf("#   %s\n", reason);
	is_str(seen, sample_text, "every field of every record comes back");
	is_int(ri.built_ms, 1234567, "built_ms comes back");
	ok(ri.saved_ms == wi.saved_ms && ri.saved_ms > 0, "saved_ms comes back");
	ok(ri.naccounts == 2 && ri.nrules == 4 && ri.nusers == 2 && ri.bytes == wi.bytes,
	   "counts and size come back");

	/* Written again: the rename replaces the old file whole. */
	rc = write_sample(path, NULL);
	is_int(rc, 0, "written again over the old file");
	is_int(read_file(path, 100, 100), 0, "... and reads");
}

static int copy_file(const char *from, const char *to, long cut, long flip_at, uint8_t flip)
{
	static uint8_t buf[1 << 16];
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	size_t n = 0;

	if (in != NULL)
		n = fread(buf, 1, sizeof(buf), in);
	if (cut >= 0 && (size_t)cut < n)
		n = (size_t)cut;
	if (flip_at >= 0 && (size_t)flip_at < n)
		buf[flip_at] ^= flip;
	if (out != NULL)
		fwrite(buf, 1, n, out);
	if (in != NULL)
		fclose(in);
	return out != NULL && fclose(out) == 0 ? (int)n : -1;
}

/* A copy of the sample changed as told is refused, with reason beginning want. */
static void refused(long cut, long flip_at, uint8_t flip, const char *want, const char *name)
{
	int rc;

	copy_file(path, bad, cut, flip_at, flip);
	rc = read_file(bad, 100, 100);
	ok(rc == -1 && strncmp(reason, want, strlen(want)) == 0, "refused: %s", name);
	if (rc != -1 || strncmp(reason, want, strlen(want)) != 0)
		printf("#   rc %d, reason \"%s\", want \"%s\"\n", rc, reason, want);
	ok(naccounts == 0 && nrules == 0 && nusers == 0, "... and not a record was handed over");
}

static void put_le(long at, uint64_t v, int bytes)
{
	int fd = open(bad, O_WRONLY);
	uint8_t b[8];

	for (int i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	if (fd < 0 || pwrite(fd, b, (size_t)bytes, at) != bytes)
		printf("# test bug: pwrite %s\n", bad);
	if (fd >= 0)
		close(fd);
}

/* The checksum of the records and header of bad, as snapfile.c computes it (its hash, restated). */
static uint64_t fh_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t fh(const uint8_t *p, size_t n, uint64_t h)
{
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		uint64_t x = h ^ (fh_le64(p + i) * 0x9e3779b97f4a7c15ULL);

		h = ((x << 27) | (x >> 37)) * 0xc2b2ae3d27d4eb4fULL + 0x165667b19e3779f9ULL;
	}
	if (i < n) {
		uint8_t tail[8] = {0};

		memcpy(tail, p + i, n - i);
		h = fh(tail, 8, h);
	}
	return h;
}

static uint64_t fh_final(uint64_t h, uint64_t len)
{
	h ^= len;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	return h ^ (h >> 33);
}

/* Sets byte at of bad to v and writes the checksum that makes the file whole again. */
static void fix_checksum_after(long at, uint8_t v)
{
	static uint8_t buf[1 << 16];
	FILE *f = fopen(bad, "r+b");
	size_t n = f != NULL ? fread(buf, 1, sizeof(buf), f) : 0;
	uint64_t records =
	        n > SNAPFILE_HEADER + SNAPFILE_TRAILER ? n - SNAPFILE_HEADER - SNAPFILE_TRAILER : 0;
	uint8_t word[8];
	uint64_t rh, sum;

	if (f == NULL || (size_t)at >= n) {
		printf("# test bug: %s\n", bad);
		if (f != NULL)
			fclose(f);
		return;
	}
	buf[at] = v;
	rh = fh_final(fh(buf + SNAPFILE_HEADER, records, 0x165667b19e3779f9ULL), records);
	for (int i = 0; i < 8; i++)
		word[i] = (uint8_t)(rh >> (8 * i));
	sum = fh_final(fh(word, 8, fh(buf, SNAPFILE_HEADER, 0x165667b19e3779f9ULL)), SNAPFILE_HEADER + 8);
	for (int i = 0; i < 8; i++)
		buf[SNAPFILE_HEADER + records + (size_t)i] = (uint8_t)(sum >> (8 * i));
	rewind(f);
	fwrite(buf, 1, n, f);
	fclose(f);
}

static void test_corruption(void)
{
	struct stat st;
	long size, rc;

	if (stat(path, &st) < 0)
		return;
	size = (long)st.st_size;
	refused(-1, 0, 0x20, "not a tollgate snapshot file", "wrong magic");
	refused(-1, 8, 0x01, "format version 2, this binary reads 3",
	        "a version 2 file, from before call policies");
	copy_file(path, bad, -1, -1, 0);
	put_le(8, 1, 4);
	rc = read_file(bad, 100, 100);
	ok(rc == -1 && strcmp(reason, "format version 1, this binary reads 3") == 0 && naccounts == 0,
	   "refused: a version 1 file, from before SIP users (%s)", reason);
	copy_file(path, bad, -1, -1, 0);
	put_le(8, 4, 4);
	rc = read_file(bad, 100, 100);
	ok(rc == -1 && strcmp(reason, "format version 4, this binary reads 3") == 0 && naccounts == 0,
	   "refused: a version 4 file, from a newer binary (%s)", reason);
	/* A list entry's length byte zeroed, the checksum made right again: the record itself is refused. */
	copy_file(path, bad, -1, -1, 0);
	fix_checksum_after(SNAPFILE_HEADER + 25 + 4, 0);
	rc = read_file(bad, 100, 100);
	ok(rc == -1 && strcmp(reason, "account record 1: bad destination prefix") == 0 && naccounts == 0,
	   "refused: an empty destination prefix in a record (%s)", reason);
	refused(-1, 12, 0x40, "written for layout version", "wrong layout version");
	refused(-1, 20, 0x01, "checksum mismatch", "a flipped bit in the header's saved_ms");
	refused(-1, SNAPFILE_HEADER + 3, 0x80, "checksum mismatch", "a flipped bit in an account id");
	refused(-1, size / 2, 0xff, "checksum mismatch", "a flipped byte mid-file");
	refused(-1, size - 20, 0x01, "checksum mismatch", "a flipped bit in the last user's HA1");
	refused(-1, size - 60, 0x01, "checksum mismatch", "a flipped bit in a user's allowed source");
	refused(-1, size - 1, 0x10, "checksum mismatch", "a flipped bit in the checksum");
	refused(size - 1, -1, 0, "truncated or padded", "the last byte cut off");
	refused(size / 2, -1, 0, "truncated or padded", "cut in half");
	refused(40, -1, 0, "truncated: 40 bytes", "cut inside the header");
	refused(0, -1, 0, "truncated: 0 bytes", "empty file");

	/* Counts the file cannot hold are refused before anything else is trusted. */
	copy_file(path, bad, -1, -1, 0);
	put_le(32, 1ULL << 40, 8);
	rc = read_file(bad, UINT64_MAX, UINT64_MAX);
	ok(rc == -1 && strncmp(reason, "absurd header", 13) == 0, "refused: 2^40 accounts (%s)", reason);
	copy_file(path, bad, -1, -1, 0);
	put_le(40, 3, 8);
	rc = read_file(bad, 100, 100);
	ok(rc == -1 && nrules == 0 && naccounts == 0, "refused: one rule fewer than written (%s)", reason);

	rc = read_file(path, 1, 100);
	ok(rc == -1 && strstr(reason, "capacity") != NULL, "refused: more accounts than capacity (%s)",
	   reason);
	rc = read_file(path, 100, 3);
	ok(rc == -1 && strstr(reason, "capacity") != NULL, "refused: more rules than capacity");
	rc = read_file_users(path, 100, 100, 1);
	ok(rc == -1 && strstr(reason, "capacity") != NULL && nusers == 0,
	   "refused: more users than capacity (%s)", reason);
	copy_file(path, bad, -1, -1, 0);
	put_le(56, 1ULL << 40, 8);
	rc = read_file_users(bad, UINT64_MAX, UINT64_MAX, UINT64_MAX);
	ok(rc == -1 && strncmp(reason, "absurd header", 13) == 0, "refused: 2^40 users (%s)", reason);

	errno = 0;
	rc = read_file("/nonexistent/snapshot.bin", 100, 100);
	ok(rc == -1 && errno == ENOENT, "a missing file says ENOENT (%s)", reason);

	refuse_rule_id = 12;
	rc = read_file(path, 100, 100);
	ok(rc == -1 && strstr(reason, "refused by the test") != NULL,
	   "a record the sink refuses fails the read");
	refuse_rule_id = -1;
}

static void test_writer_refuses(void)
{
	tg_range_t v4 = range_of("192.0.2.1"), back = v4;
	snapfile_account_t a = {1, "acme", 1, 0, 0, 0, NULL, 0, NULL, 0, NULL, 0};
	snapfile_account_t noname = a, manyprefixes = a, emptyprefix = a, longcodec = a, nolist = a;
	snapfile_rule_t r = {10, 1, &v4, 1, 0, "", "", 1, 1, 0, 0, 0};
	snapfile_rule_t unresolved = {11, 1, NULL, 0, 0, "", "", 1, 1, 0, 0, 0};
	snapfile_rule_t reversed = {12, 1, &back, 1, 0, "", "", 1, 1, 0, 0, 0};
	const char *prefixes[SNAPFILE_PREFIXES + 1], *empty[] = {""};
	const char *codec33[] = {"G729ABCDEFGHIJKLMNOPQRSTUVWXYZ012"};
	tg_range_t many[SNAPFILE_USER_RANGES + 1];
	char longname[SNAPFILE_USER_MAX + 2];
	snapfile_user_t user = {20, 1, "alice", "", 1, 0, MD5_A, NULL, NULL, NULL, NULL, 0};
	snapfile_user_t nouser = user, longuser = user, badha1 = user, shortsha = user, manyranges = user;
	snapfile_writer_t *w = snapfile_open(path, 1);
	char tmp[300];

	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	noname.name = "";
	for (int i = 0; i <= SNAPFILE_PREFIXES; i++)
		prefixes[i] = "44";
	manyprefixes.denied_prefixes = prefixes;
	manyprefixes.ndenied = SNAPFILE_PREFIXES + 1;
	emptyprefix.allowed_prefixes = empty;
	emptyprefix.nallowed = 1;
	longcodec.restricted_codecs = codec33;
	longcodec.ncodecs = 1;
	nolist.ncodecs = 1;
	for (int i = 0; i <= SNAPFILE_USER_RANGES; i++)
		many[i] = v4;
	nouser.username = "";
	longuser.username = longname;
	badha1.ha1_md5 = "0123456789abcdef0123456789abcdeg";
	shortsha.ha1_sha256 = MD5_A;
	manyranges.ranges = many;
	manyranges.nranges = SNAPFILE_USER_RANGES + 1;
	back.first.lo += 1;
	ok(w != NULL, "a writer opens");
	if (w == NULL)
		return;
	ok(snapfile_put_account(w, &noname) < 0 && errno == EINVAL, "an empty account name is refused");
	ok(snapfile_put_account(w, &manyprefixes) < 0 && errno == EINVAL,
	   "more than %d denied prefixes are refused", SNAPFILE_PREFIXES);
	ok(snapfile_put_account(w, &emptyprefix) < 0 && errno == EINVAL,
	   "an empty allowed prefix is refused");
	ok(snapfile_put_account(w, &longcodec) < 0 && errno == EINVAL, "a codec name of 33 bytes is refused");
	ok(snapfile_put_account(w, &nolist) < 0 && errno == EINVAL, "a count with no list is refused");
	ok(snapfile_put_account(w, &a) == 0 && snapfile_put_rule(w, &r) == 0, "an account, then its rule");
	ok(snapfile_put_account(w, &a) < 0, "an account after a rule is refused");
	ok(snapfile_put_rule(w, &unresolved) < 0, "a rule with neither address nor host is refused");
	ok(snapfile_put_rule(w, &reversed) < 0, "a range ending before it starts is refused");
	ok(snapfile_put_user(w, &nouser) < 0 && errno == EINVAL, "a user with an empty name is refused");
	ok(snapfile_put_user(w, &longuser) < 0, "a username over %d bytes is refused", SNAPFILE_USER_MAX);
	ok(snapfile_put_user(w, &badha1) < 0, "an HA1 that is not 32 hex digits is refused");
	ok(snapfile_put_user(w, &shortsha) < 0, "a SHA-256 HA1 of 32 digits is refused");
	ok(snapfile_put_user(w, &manyranges) < 0, "more than %d allowed sources are refused",
	   SNAPFILE_USER_RANGES);
	ok(snapfile_put_user(w, &user) == 0, "then a good user");
	ok(snapfile_put_rule(w, &r) < 0, "a rule after a user is refused");
	ok(snapfile_put_account(w, &a) < 0, "an account after a user is refused");
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	ok(access(tmp, F_OK) == 0, "the writer works in PATH.tmp.PID");
	snapfile_abort(w);
	ok(access(tmp, F_OK) < 0, "abort removes it");
	is_int(read_file(path, 100, 100), 0, "and the file that was there is untouched");

	snprintf(tmp, sizeof(tmp), "%s.tmp.4242", path);
	close(open(tmp, O_WRONLY | O_CREAT, 0600));
	snprintf(bad, sizeof(bad), "%s.tmp.keep", path);
	close(open(bad, O_WRONLY | O_CREAT, 0600));
	snapfile_clean_tmp(path);
	ok(access(tmp, F_OK) < 0, "clean_tmp removes a dead writer's PATH.tmp.PID");
	ok(access(bad, F_OK) == 0, "... and nothing that is not one");
	unlink(bad);
}

/* ------------------------------------------------------------------ */
/* the model to the file and back (sql/loader_file.c)                 */

static char dump[8192];

static int dump_account(void *arg, const snap_account_info_t *a)
{
	size_t n = strlen(dump);

	(void)arg;
	n += (size_t)snprintf(dump + n, sizeof(dump) - n, "A%lld %s %d %u/%u/%u +", (long long)a->id, a->name,
	                      a->active, a->max_channels, a->max_cps, a->cps_burst);
	for (unsigned i = 0; i < a->nallowed; i++)
		n += (size_t)snprintf(dump + n, sizeof(dump) - n, "%s,", a->allowed_prefixes[i]);
	n += (size_t)snprintf(dump + n, sizeof(dump) - n, " -");
	for (unsigned i = 0; i < a->ndenied; i++)
		n += (size_t)snprintf(dump + n, sizeof(dump) - n, "%s,", a->denied_prefixes[i]);
	n += (size_t)snprintf(dump + n, sizeof(dump) - n, " c");
	for (unsigned i = 0; i < a->ncodecs; i++)
		n += (size_t)snprintf(dump + n, sizeof(dump) - n, "%s,", a->restricted_codecs[i]);
	snprintf(dump + n, sizeof(dump) - n, ";");
	return 0;
}

static int dump_rule(void *arg, const snap_rule_info_t *r)
{
	size_t n = strlen(dump);

	(void)arg;
	snprintf(dump + n, sizeof(dump) - n, "R%lld a%lld %u/%u/%u n%u;", (long long)r->id,
	         (long long)r->account_id, r->max_channels, r->max_cps, r->cps_burst, r->nranges);
	return 0;
}

static const char *model_dump(const snap_model_t *m)
{
	dump[0] = '\0';
	snap_model_foreach_account(m, dump_account, NULL);
	snap_model_foreach_rule(m, dump_rule, NULL);
	return dump;
}

static void test_model_round_trip(void)
{
	static const char *const allowed[] = {"0044", "+44"}, *const denied[] = {"00449"};
	static const char *const codecs[] = {"g729", "Opus"};
	snap_model_t *m = snap_model_new(10, 10, 10), *back = snap_model_new(10, 10, 10);
	snap_account_info_t a = {1, "acme", 1, 30, 5, 0, 8, allowed, 2, denied, 1, codecs, 2};
	tg_range_t v4 = range_of("192.0.2.0/24");
	snap_rule_info_t r = {10, 1, &v4, 1, 0, "", 1, SNAP_DIR_BOTH, 4, 2, 3};
	snapfile_info_t info;
	char want[8192];
	const char *err = NULL;

	ok(snap_model_account_put2(m, &a, &err) == 0 &&
	           snap_model_account_put(m, 2, "plain", 1, 0, 0, &err) == 0 &&
	           snap_model_rule_put2(m, &r, &err) == 0,
	   "a model with an account's policy and a rule's limits (%s)", err ? err : "ok");
	snprintf(want, sizeof(want), "%s", model_dump(m));
	is_str(want,
	       "A1 acme 1 30/5/8 +0044,+44, -00449, cG729,OPUS,;A2 plain 1 0/0/0 + - c;R10 a1 4/2/3 n1;",
	       "... as the model walks it (codecs upper case)");
	ok(loader_file_save(path, m, NULL, 42, &info) == 0, "saved to a file");
	ok(loader_file_load(path, back, NULL, 10, 10, 10, &info, reason, sizeof(reason)) == 0,
	   "loaded into an empty model (%s)", reason);
	is_str(model_dump(back), want, "the same accounts, policies, rules and limits come back");
	snap_model_free(m);
	snap_model_free(back);
	unlink(path);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/snapshot.bin", dir);
	snprintf(bad, sizeof(bad), "%s/bad.bin", dir);
	test_round_trip();
	test_corruption();
	snprintf(bad, sizeof(bad), "%s/bad.bin", dir);
	unlink(bad);
	test_writer_refuses();
	test_model_round_trip();
	unlink(path);
	rmdir(dir);
	return done_testing();
}

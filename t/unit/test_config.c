/*
 * The YAML loader as an operator meets it: the sample file parses, left-out
 * keys take their defaults, and every refusal names the file, the line and
 * the key, so a bad SIGHUP can be fixed from the one log line it leaves.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/addr.h"
#include "lib/log.h"
#include "master/config.h"
#include "t/unit/tap.h"

#define DS "downstream: \"127.0.0.1:5080\"\n"

static char dir[] = "/tmp/tollgate-test-config.XXXXXX";
static char file[128];
static char err[1024];
static tg_config_t cfg;
static char big_buf[2048];

static void write_file(const char *text)
{
	FILE *f = fopen(file, "w");

	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		perror(file);
		exit(2);
	}
}

static int load(const char *text)
{
	write_file(text);
	return tg_config_load(file, &cfg, err, sizeof err);
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	tg_ip_t ip;
	uint16_t port = 0;

	tg_ip_from_sockaddr((const struct sockaddr *)ss, &ip, &port);
	return port;
}

static const char *fmt(const struct sockaddr_storage *ss)
{
	static char buf[TG_SOCKADDR_STRLEN];

	return tg_sockaddr_format((const struct sockaddr *)ss, buf, sizeof buf);
}

/* The file is refused and err begins "FILE:LINE: key: problem". */
static void refused(const char *text, int line, const char *key, const char *problem, const char *name)
{
	char want[512];
	int rc = load(text);
	int same;

	snprintf(want, sizeof want, "%s:%d: %s: %s", file, line, key, problem);
	same = rc == -1 && strncmp(err, want, strlen(want)) == 0;
	ok(same, "refused: %s", name);
	if (!same)
		printf("#   rc %d, got \"%s\"\n#   want prefix \"%s\"\n", rc, err, want);
}

static void test_sample(void)
{
	const char *src = getenv("TOLLGATE_SRC");
	char path[PATH_MAX];
	tg_range_t *t0;
	int rc;

	snprintf(path, sizeof path, "%s/etc/tollgate.yaml", src ? src : ".");
	rc = tg_config_load(path, &cfg, err, sizeof err);
	is_int(rc, 0, "sample etc/tollgate.yaml parses");
	if (rc)
		printf("#   %s\n", err);
	is_int(cfg.nlisten, 1, "sample: one listener");
	is_str(fmt(&cfg.listen[0].addr), "127.0.0.1:5060", "sample: listens on 127.0.0.1:5060");
	is_str(cfg.listen[0].advertise, "127.0.0.1:5060", "sample: advertises its address");
	is_int(cfg.workers, 2, "sample: 2 workers");
	is_str(fmt(&cfg.downstream), "127.0.0.1:5080", "sample: downstream");
	is_int(cfg.ntrusted, 1, "sample: only the downstream is trusted");
	t0 = &cfg.trusted[0];
	ok(t0->first.hi == t0->last.hi && t0->first.lo == t0->last.lo,
	   "sample: trusted[0] is a single address");
	is_str(cfg.database, "host=/run/postgresql dbname=tollgate", "sample: database");
	is_int(cfg.log_level, TG_LOG_INFO, "sample: log level info");
	is_str(cfg.log_file, "-", "sample: log to stdout");
	ok(cfg.metrics_len > 0, "sample: metrics on");
	is_str(fmt(&cfg.metrics), "127.0.0.1:9090", "sample: metrics address");
	is_int(cfg.reject, TG_REJECT_REPLY, "sample: reject reply");
	is_str(cfg.snapshot_file, "/var/lib/tollgate/snapshot.bin", "sample: snapshot_file");
	is_int(cfg.coalesce_ms, 5, "sample: provisioning.coalesce_ms");
	is_int(cfg.max_delay_ms, 50, "sample: provisioning.max_delay_ms");
	ok(cfg.path[0] == '/', "sample: path stored absolute (%s)", cfg.path);
}

static void test_defaults(void)
{
	tg_config_t d;
	tg_ip_t ip;
	int rc;

	tg_config_defaults(&d);
	rc = load("# only what is required\n" DS);
	is_int(rc, 0, "downstream alone is enough");
	if (rc)
		printf("#   %s\n", err);
	is_int(cfg.nlisten, 1, "default: one listener");
	is_str(fmt(&cfg.listen[0].addr), "127.0.0.1:5060", "default listen 127.0.0.1:5060");
	is_str(cfg.listen[0].advertise, "127.0.0.1:5060", "default advertise");
	is_int(cfg.workers, 2, "default workers 2");
	is_str(cfg.database, "dbname=tollgate", "default database");
	is_int(cfg.log_level, TG_LOG_INFO, "default log level info");
	is_str(cfg.log_file, "-", "default log file -");
	is_int(cfg.metrics_len, 0, "default metrics off");
	is_int(cfg.reject, TG_REJECT_REPLY, "default reject reply");
	is_str(cfg.account_header, "X-Tollgate-Account", "default account header");
	is_str(cfg.server_name, "tollgate", "default server name");
	is_int(cfg.cap_accounts, 10000, "default capacity.accounts");
	is_int(cfg.cap_ip_rules, 100000, "default capacity.ip_rules");
	is_int(cfg.db_retry_min_ms, 250, "default db_retry.min_ms");
	is_int(cfg.db_retry_max_ms, 10000, "default db_retry.max_ms");
	is_str(cfg.snapshot_file, "", "default snapshot_file: none");
	is_int(cfg.coalesce_ms, 5, "default provisioning.coalesce_ms");
	is_int(cfg.max_delay_ms, 50, "default provisioning.max_delay_ms");
	is_int(cfg.save_interval_ms, 2000, "default provisioning.save_interval_ms");
	is_int(cfg.dns_refresh_s, 300, "default provisioning.dns_refresh_s");
	is_str(cfg.hosts_file, "/etc/hosts", "default provisioning.hosts_file");
	is_int(cfg.ntrusted, 1, "downstream is trusted[0]");
	tg_ip_parse("127.0.0.1", &ip);
	ok(tg_range_contains(&cfg.trusted[0], &ip), "trusted[0] holds the downstream's address");
	is_int(tg_range_prefix_bits(&cfg.trusted[0]), 128, "trusted[0] is that single address");
	is_int(port_of(&cfg.downstream), 5080, "downstream port");
	is_int(d.workers, 2, "tg_config_defaults: workers");
	is_int(d.downstream_len, 0, "tg_config_defaults: no downstream");

	rc = load("downstream: 192.0.2.7\n");
	is_int(port_of(&cfg.downstream), 5060, "downstream port defaults to 5060");
	rc = load("");
	ok(rc == -1, "an empty file is refused (downstream is required)");
}

static void test_values(void)
{
	tg_ip_t ip;
	int rc;

	rc = load(DS "listen:\n"
	             "  - \"[::1]:5070\"\n"
	             "  - \"[2001:db8::1]\"\n"
	             "  - 192.0.2.1\n");
	is_int(rc, 0, "IPv6 listen parses");
	is_int(cfg.nlisten, 3, "three listeners");
	is_int(cfg.listen[0].addr.ss_family, AF_INET6, "listen[0] is IPv6");
	is_int(port_of(&cfg.listen[0].addr), 5070, "listen[0] port 5070");
	is_str(cfg.listen[0].advertise, "[::1]:5070", "IPv6 advertise is bracketed");
	is_int(port_of(&cfg.listen[1].addr), 5060, "IPv6 listen without port takes 5060");
	is_str(cfg.listen[2].advertise, "192.0.2.1:5060", "IPv4 listen without port takes 5060");

	rc = load(DS "listen:\n"
	             "  - { address: \"0.0.0.0:5060\", advertise: sip.example.net }\n"
	             "  - address: \"[::]:5062\"\n"
	             "    advertise: \"[2001:db8::5]:5999\"\n"
	             "  - address: 127.0.0.1:5063\n");
	is_int(rc, 0, "map-form listen parses");
	if (rc)
		printf("#   %s\n", err);
	is_int(cfg.nlisten, 3, "three map-form listeners");
	is_str(cfg.listen[0].advertise, "sip.example.net:5060",
	       "advertise without port takes the listener's");
	is_str(cfg.listen[1].advertise, "[2001:db8::5]:5999", "advertise with its own port kept");
	is_str(cfg.listen[2].advertise, "127.0.0.1:5063",
	       "map form without advertise defaults to the address");

	rc = load(DS "listen: \"10.0.0.1:5090\"\n");
	ok(rc == 0 && cfg.nlisten == 1 && port_of(&cfg.listen[0].addr) == 5090, "listen as a single string");

	rc = load(DS "trusted:\n  - 10.0.0.0/8\n  - 192.0.2.1-192.0.2.9\n");
	is_int(rc, 0, "trusted parses");
	is_int(cfg.ntrusted, 3, "trusted: downstream plus two");
	tg_ip_parse("10.1.2.3", &ip);
	ok(tg_range_contains(&cfg.trusted[1], &ip), "trusted[1] is 10.0.0.0/8");
	tg_ip_parse("127.0.0.1", &ip);
	ok(tg_range_contains(&cfg.trusted[0], &ip), "trusted[0] is still the downstream");

	rc = load(DS "metrics: \"off\"\n");
	ok(rc == 0 && cfg.metrics_len == 0, "metrics: off disables");
	rc = load(DS "metrics: \"\"\n");
	ok(rc == 0 && cfg.metrics_len == 0, "metrics: \"\" disables");
	rc = load(DS "metrics: \"[::1]:9100\"\n");
	ok(rc == 0 && port_of(&cfg.metrics) == 9100, "metrics on IPv6");

	rc = load("listen: [\"127.0.0.2:5070\"]\n"
	          "workers: 8\n"
	          "downstream: \"[2001:db8::9]:5080\"\n"
	          "trusted: []\n"
	          "database: 'host=db port=5433 dbname=x'\n"
	          "log: { level: debug, file: /var/log/tollgate.log }\n"
	          "reject: drop\n"
	          "account_header: X-Acct_1.v2\n"
	          "server_name: \"tollgate edge 1\"\n"
	          "capacity: { accounts: 10000000, ip_rules: 1 }\n"
	          "db_retry: { min_ms: 10, max_ms: 600000 }\n"
	          "snapshot_file: /var/lib/tg/snap.bin\n"
	          "provisioning: { coalesce_ms: 0, max_delay_ms: 60000, save_interval_ms: 100,\n"
	          "  dns_refresh_s: 86400, hosts_file: \"\" }\n");
	is_int(rc, 0, "every key set");
	if (rc)
		printf("#   %s\n", err);
	is_int(cfg.workers, 8, "workers 8");
	is_int(cfg.downstream.ss_family, AF_INET6, "IPv6 downstream");
	is_int(cfg.ntrusted, 1, "empty trusted leaves the downstream");
	is_str(cfg.database, "host=db port=5433 dbname=x", "database");
	is_int(cfg.log_level, TG_LOG_DEBUG, "log level debug");
	is_str(cfg.log_file, "/var/log/tollgate.log", "log file");
	is_int(cfg.reject, TG_REJECT_DROP, "reject drop");
	is_str(cfg.account_header, "X-Acct_1.v2", "account header");
	is_str(cfg.server_name, "tollgate edge 1", "server name");
	is_int(cfg.cap_accounts, 10000000, "capacity.accounts at its maximum");
	is_int(cfg.cap_ip_rules, 1, "capacity.ip_rules at its minimum");
	is_int(cfg.db_retry_min_ms, 10, "db_retry.min_ms");
	is_int(cfg.db_retry_max_ms, 600000, "db_retry.max_ms");
	is_str(cfg.snapshot_file, "/var/lib/tg/snap.bin", "snapshot_file");
	is_int(cfg.coalesce_ms, 0, "provisioning.coalesce_ms at its minimum");
	is_int(cfg.max_delay_ms, 60000, "provisioning.max_delay_ms at its maximum");
	is_int(cfg.save_interval_ms, 100, "provisioning.save_interval_ms at its minimum");
	is_int(cfg.dns_refresh_s, 86400, "provisioning.dns_refresh_s at its maximum");
	is_str(cfg.hosts_file, "", "provisioning.hosts_file \"\" turns it off");
}

/* digest: off unless a realm is given; the secret file is read at load */
static void test_digest(void)
{
	char path[300];
	FILE *f;
	uint8_t zero[32] = {0};
	int rc;

	rc = load(DS "workers: 2\n");
	is_int(rc, 0, "no digest section");
	is_str(cfg.digest_realm, "", "digest off by default");
	is_int(cfg.nonce_ttl_s, 300, "default digest.nonce_ttl_s");
	is_str(cfg.user_header, "X-Tollgate-User", "default digest.user_header");
	is_int(cfg.cap_sip_users, 10000, "default capacity.sip_users");
	is_int(cfg.cap_nonces, 65536, "default capacity.nonces");
	is_int(cfg.cap_failures, 65536, "default capacity.failure_sources");

	snprintf(path, sizeof path, "%s/secret", dir);
	f = fopen(path, "w");
	fputs("0123456789abcdef0123456789abcdef-shared-by-every-node\n", f);
	fclose(f);
	snprintf(big_buf, sizeof big_buf,
	         DS "digest: { realm: sip.example.net, nonce_ttl_s: 30, user_header: X-User, secret_file: "
	            "\"%s\" }\n"
	            "capacity: { sip_users: 5, nonces: 1024, failure_sources: 16 }\n",
	         path);
	rc = load(big_buf);
	is_int(rc, 0, "every digest key set");
	if (rc)
		printf("#   %s\n", err);
	is_str(cfg.digest_realm, "sip.example.net", "digest.realm");
	is_int(cfg.nonce_ttl_s, 30, "digest.nonce_ttl_s");
	is_str(cfg.user_header, "X-User", "digest.user_header");
	ok(cfg.digest_secret_set && memcmp(cfg.digest_secret, zero, sizeof zero) != 0,
	   "digest.secret_file read");
	is_int(cfg.cap_sip_users, 5, "capacity.sip_users");
	is_int(cfg.cap_nonces, 1024, "capacity.nonces");
	is_int(cfg.cap_failures, 16, "capacity.failure_sources");

	is_int(cfg.ndigest_algs, 2, "default digest.algorithms: two");
	ok(cfg.digest_algs[0] == 2 && cfg.digest_algs[1] == 1, "... SHA-256 then MD5");
	rc = load(DS "digest: { realm: r, algorithms: [MD5, sha-256] }\n");
	ok(rc == 0 && cfg.ndigest_algs == 2 && cfg.digest_algs[0] == 1 && cfg.digest_algs[1] == 2,
	   "digest.algorithms [MD5, sha-256]: MD5 first (names case-insensitive)");
	rc = load(DS "digest: { realm: r, algorithms: [MD5] }\n");
	ok(rc == 0 && cfg.ndigest_algs == 1 && cfg.digest_algs[0] == 1, "digest.algorithms [MD5]: MD5 only");
	refused(DS "digest: { realm: r, algorithms: [MD5, MD5] }\n", 2, "digest.algorithms[1]",
	        "bad value: MD5 given twice", "an algorithm twice");
	refused(DS "digest: { realm: r, algorithms: [SHA-512-256] }\n", 2, "digest.algorithms[0]",
	        "bad value: \"SHA-512-256\" is not MD5 or SHA-256", "an algorithm tollgate does not do");
	refused(DS "digest: { realm: r, algorithms: [] }\n", 2, "digest.algorithms", "bad value: empty",
	        "no algorithm");
	refused(DS "digest: { nonce_ttl_s: 30 }\n", 2, "digest", "realm: required", "digest without a realm");
	refused(DS "digest: { realm: \"\" }\n", 2, "digest.realm", "bad value: empty", "empty realm");
	refused(DS "digest: { realm: 'a\"b' }\n", 2, "digest.realm", "bad value: only printable ASCII",
	        "a quote in the realm");
	refused(DS "digest: { realm: r, user_header: Via }\n", 2, "digest.user_header",
	        "bad value: Via is a header the SIP path needs", "user_header Via");
	refused(DS "digest: { realm: r, secret_file: /nonexistent/secret }\n", 2, "digest.secret_file",
	        "cannot read /nonexistent/secret", "missing secret file");
	f = fopen(path, "w");
	fputs("short\n", f);
	fclose(f);
	snprintf(big_buf, sizeof big_buf, DS "digest: { realm: r, secret_file: \"%s\" }\n", path);
	refused(big_buf, 2, "digest.secret_file", "bad value: ", "a short secret file");
	ok(strstr(err, "holds 6 bytes, at least 32 are needed") != NULL, "... saying how short");
	refused(DS "capacity:\n  nonces: 1000\n", 3, "capacity.nonces",
	        "bad value: 1000 is not a power of two", "capacity.nonces not a power of two");
	refused(DS "capacity:\n  failure_sources: 8\n", 3, "capacity.failure_sources",
	        "bad value: 8 is out of range 16..", "capacity.failure_sources below a probe window");
	unlink(path);
}

/* calls and refusals: the dialog table's clocks and the answers to policy refusals */
static void test_calls(void)
{
	int rc;

	rc = load(DS "workers: 2\n");
	is_int(rc, 0, "no calls section");
	is_int(cfg.cap_dialogs, 65536, "default capacity.dialogs");
	is_int(cfg.cap_limit_keys, 65536, "default capacity.limit_keys");
	is_int(cfg.early_timeout_s, 180, "default calls.early_timeout_s (Timer C, restarted by each 1xx)");
	is_int(cfg.max_duration_s, 14400, "default calls.max_duration_s");
	is_int(cfg.linger_s, 32, "default calls.linger_s");
	is_int(cfg.retry_after_s, 5, "default calls.retry_after_s");
	ok(cfg.refuse_channels.code == 503 && !strcmp(cfg.refuse_channels.reason, "Service Unavailable"),
	   "default refusals.channels: 503 Service Unavailable");
	ok(cfg.refuse_destination.code == 403, "default refusals.destination: 403");

	rc = load(DS "capacity: { dialogs: 1024, limit_keys: 16 }\n"
	             "calls: { early_timeout_s: 2, max_duration_s: 60, linger_s: 1, retry_after_s: 0 }\n"
	             "refusals:\n"
	             "  channels: { code: 486, reason: \"Busy Here\" }\n"
	             "  cps: { code: 480 }\n"
	             "  destination: { reason: \"Not Allowed\" }\n"
	             "  dialog_table_full: { code: 500, reason: \"Server Internal Error\" }\n");
	is_int(rc, 0, "every calls and refusals key set");
	if (rc)
		printf("#   %s\n", err);
	ok(cfg.cap_dialogs == 1024 && cfg.cap_limit_keys == 16, "capacity.dialogs, capacity.limit_keys");
	ok(cfg.early_timeout_s == 2 && cfg.max_duration_s == 60 && cfg.linger_s == 1 &&
	           cfg.retry_after_s == 0,
	   "calls.*");
	ok(cfg.refuse_channels.code == 486 && !strcmp(cfg.refuse_channels.reason, "Busy Here"),
	   "refusals.channels");
	ok(cfg.refuse_cps.code == 480 && !strcmp(cfg.refuse_cps.reason, "Service Unavailable"),
	   "refusals.cps: the code alone, the default reason kept");
	ok(cfg.refuse_destination.code == 403 && !strcmp(cfg.refuse_destination.reason, "Not Allowed"),
	   "refusals.destination: the reason alone");
	is_int(cfg.refuse_dialogs_full.code, 500, "refusals.dialog_table_full");

	refused(DS "refusals:\n  channels: { code: 200 }\n", 3, "refusals.channels.code",
	        "bad value: 200 is out of range 400..699", "a 2xx refusal");
	refused(DS "refusals:\n  cps: { reason: \"a\\tb\" }\n", 3, "refusals.cps.reason",
	        "bad value: only printable ASCII", "a control character in a reason");
	refused(DS "refusals:\n  bans: { code: 403 }\n", 3, "refusals.bans", "unknown key",
	        "an unknown refusal kind");
	refused(DS "calls:\n  early_timeout_s: 0\n", 3, "calls.early_timeout_s",
	        "bad value: 0 is out of range", "calls.early_timeout_s 0");
	refused(DS "capacity:\n  dialogs: 100\n", 3, "capacity.dialogs",
	        "bad value: 100 is not a power of two", "capacity.dialogs not a power of two");
}

static void test_refusals(void)
{
	char big[1200 + 64], path[256];
	int rc;

	refused(DS "workers: 2\ncolour: blue\n", 3, "colour", "unknown key", "unknown key, line 3");
	refused(DS "log:\n  level: info\n  colour: blue\n", 4, "log.colour", "unknown key",
	        "unknown nested key");
	refused(DS "listen:\n  - { address: 127.0.0.1, port: 5 }\n", 3, "listen[0].port", "unknown key",
	        "unknown key in a listen item");
	refused(DS "workers: 2\nreject: drop\nworkers: 3\n", 4, "workers", "duplicate key (first at line 2)",
	        "duplicate key");
	refused(DS "capacity:\n  accounts: 5\n  accounts: 6\n", 4, "capacity.accounts", "duplicate key",
	        "duplicate nested key");
	refused("- a\n- b\n", 1, "(top level)", "wrong type: expected a mapping, got a sequence",
	        "top level must be a mapping");
	refused(DS "? [a, b]\n: c\n", 2, "(top level)", "wrong type: a key must be a string",
	        "non-scalar key");

	/* wrong types */
	refused(DS "workers: [1, 2]\n", 2, "workers", "wrong type: expected an integer, got a sequence",
	        "sequence for an integer");
	refused(DS "workers:\n", 2, "workers", "wrong type: expected an integer, got null",
	        "empty value is null");
	refused(DS "workers: ~\n", 2, "workers", "wrong type: expected an integer, got null", "~ is null");
	refused(DS "workers: \"2\"\n", 2, "workers", "wrong type: expected an integer, got a quoted string",
	        "quoted integer");
	refused(DS "database: { a: b }\n", 2, "database", "wrong type: expected a string, got a mapping",
	        "mapping for a string");
	refused(DS "log: info\n", 2, "log", "wrong type: expected a mapping, got a scalar",
	        "scalar for a mapping");
	refused(DS "log:\n  level: [info]\n", 3, "log.level", "wrong type: expected a string, got a sequence",
	        "sequence for log.level");
	refused(DS "listen: { address: 127.0.0.1 }\n", 2, "listen", "wrong type", "mapping for listen");
	refused(DS "listen:\n  - [127.0.0.1]\n", 3, "listen[0]", "wrong type", "nested sequence in listen");
	refused(DS "trusted: 10.0.0.1\n", 2, "trusted", "wrong type: expected a sequence",
	        "scalar for trusted");
	refused("downstream: null\n", 1, "downstream", "wrong type: expected a string, got null",
	        "null downstream");

	/* bad integers */
	refused(DS "workers: 12abc\n", 2, "workers", "bad value: \"12abc\" is not a decimal integer",
	        "12abc");
	refused(DS "workers: 1.5\n", 2, "workers", "bad value: \"1.5\" is not a decimal integer", "float");
	refused(DS "workers: true\n", 2, "workers", "bad value: \"true\" is not a decimal integer",
	        "boolean");
	refused(DS "workers: 0x10\n", 2, "workers", "bad value: \"0x10\" is not a decimal integer", "hex");
	refused(DS "workers: 010\n", 2, "workers", "bad value: \"010\" is not a decimal integer",
	        "leading zero");
	refused(DS "workers: 0\n", 2, "workers", "bad value: 0 is out of range 1..64", "workers 0");
	refused(DS "workers: 65\n", 2, "workers", "bad value: 65 is out of range 1..64", "workers 65");
	refused(DS "workers: -1\n", 2, "workers", "bad value: -1 is out of range", "negative workers");
	refused(DS "workers: 99999999999999999999999\n", 2, "workers",
	        "bad value: 99999999999999999999999 is out", "huge integer does not wrap");
	refused(DS "capacity:\n  accounts: 10000001\n", 3, "capacity.accounts",
	        "bad value: 10000001 is out of range", "capacity.accounts too big");
	refused(DS "capacity:\n  ip_rules: 0\n", 3, "capacity.ip_rules", "bad value: 0 is out of range",
	        "capacity.ip_rules 0");
	refused(DS "db_retry:\n  min_ms: 5\n", 3, "db_retry.min_ms", "bad value: 5 is out of range 10..60000",
	        "db_retry.min_ms too small");
	refused(DS "db_retry:\n  min_ms: 500\n  max_ms: 400\n", 4, "db_retry.max_ms",
	        "bad value: max_ms (400) is below min_ms (500)", "db_retry.max_ms below min_ms");
	refused(DS "db_retry: { min_ms: 20000 }\n", 2, "db_retry.min_ms",
	        "bad value: max_ms (10000) is below", "db_retry.min_ms above the default max");

	refused(DS "provisioning:\n  coalesce_ms: 10001\n", 3, "provisioning.coalesce_ms",
	        "bad value: 10001 is out of range 0..10000", "provisioning.coalesce_ms too big");
	refused(DS "provisioning:\n  max_delay_ms: 0\n", 3, "provisioning.max_delay_ms",
	        "bad value: 0 is out of range 1..60000", "provisioning.max_delay_ms 0");
	refused(DS "provisioning:\n  coalesce_ms: 40\n  max_delay_ms: 30\n", 4, "provisioning.max_delay_ms",
	        "bad value: max_delay_ms (30) is below coalesce_ms (40)", "max_delay_ms below coalesce_ms");
	refused(DS "provisioning: { coalesce_ms: 80 }\n", 2, "provisioning.coalesce_ms",
	        "bad value: max_delay_ms (50) is below", "coalesce_ms above the default max_delay_ms");
	refused(DS "provisioning:\n  save_interval_ms: 99\n", 3, "provisioning.save_interval_ms",
	        "bad value: 99 is out of range 100..86400000", "provisioning.save_interval_ms too small");
	refused(DS "provisioning:\n  dns_refresh_s: 0\n", 3, "provisioning.dns_refresh_s",
	        "bad value: 0 is out of range 1..86400", "provisioning.dns_refresh_s 0");
	refused(DS "provisioning:\n  hosts_file: [a]\n", 3, "provisioning.hosts_file",
	        "wrong type: expected a string, got a sequence", "provisioning.hosts_file sequence");
	refused(DS "provisioning:\n  dns_refresh: 5\n", 3, "provisioning.dns_refresh", "unknown key",
	        "unknown provisioning key");
	refused(DS "snapshot_file: /var/lib/tollgate/\n", 2, "snapshot_file", "bad value: names a directory",
	        "snapshot_file naming a directory");
	refused(DS "snapshot_file: ~\n", 2, "snapshot_file", "wrong type: expected a string, got null",
	        "null snapshot_file");

	/* bad strings and addresses */
	refused(DS "reject: maybe\n", 2, "reject", "bad value: \"maybe\" is not one of reply, drop",
	        "reject");
	refused(DS "log:\n  level: loud\n", 3, "log.level", "bad value: \"loud\" is not one of", "log level");
	refused(DS "log:\n  level: alert\n", 3, "log.level", "bad value", "alert is not a threshold");
	refused(DS "log:\n  file: \"\"\n", 3, "log.file", "bad value: empty", "empty log file");
	refused(DS "account_header: Via\n", 2, "account_header",
	        "bad value: Via is a header the SIP path needs", "account_header Via");
	refused(DS "account_header: call-id\n", 2, "account_header", "bad value", "account_header call-id");
	refused(DS "account_header: t\n", 2, "account_header", "bad value", "compact form t (To)");
	refused(DS "account_header: \"X Acct\"\n", 2, "account_header",
	        "bad value: \"X Acct\" is not a SIP header name", "space in a header name");
	refused(DS "account_header: \"X-Acct:\"\n", 2, "account_header", "bad value",
	        "colon in a header name");
	refused(DS "account_header: X-Aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
	        2, "account_header", "bad value: longer than 63 bytes", "account_header too long");
	refused(DS "server_name: \"a\\r\\nX-Evil: 1\"\n", 2, "server_name", "bad value: only printable ASCII",
	        "CRLF in server_name");
	refused(DS "server_name: \"caf\xc3\xa9\"\n", 2, "server_name", "bad value: only printable ASCII",
	        "non-ASCII server_name");
	refused(DS "database: \"a\\0b\"\n", 2, "database", "bad value: contains a NUL byte",
	        "NUL in a string");
	memcpy(big, DS "database: ", strlen(DS "database: "));
	memset(big + strlen(DS "database: "), 'x', 1100);
	strcpy(big + strlen(DS "database: ") + 1100, "\n");
	refused(big, 2, "database", "bad value: longer than 1023 bytes", "database too long");

	refused("workers: 2\n", 1, "downstream", "required", "missing downstream");
	refused("", 1, "downstream", "required", "empty file");
	refused("# nothing but a comment\n", 1, "downstream", "required", "comments only");
	refused("downstream: 0.0.0.0:5080\n", 1, "downstream", "bad value", "unspecified downstream");
	refused("downstream: not-an-address\n", 1, "downstream", "bad value: \"not-an-address\"",
	        "downstream text");
	refused("downstream: \"127.0.0.1:0\"\n", 1, "downstream", "bad value", "downstream port 0");
	refused(DS "metrics: 127.0.0.1\n", 2, "metrics", "bad value: \"127.0.0.1\": needs a port",
	        "metrics without a port");
	refused(DS "trusted:\n  - 10.0.0.0/8\n  - 999.1.1.1\n", 4, "trusted[1]", "bad value: \"999.1.1.1\"",
	        "bad trusted entry");
	refused(DS "trusted: [1.1.1.1, 1.1.1.2, 1.1.1.3, 1.1.1.4, 1.1.1.5, 1.1.1.6, 1.1.1.7, 1.1.1.8,\n"
	           "  1.1.1.9, 1.1.1.10, 1.1.1.11, 1.1.1.12, 1.1.1.13, 1.1.1.14, 1.1.1.15, 1.1.1.16]\n",
	        3, "trusted[15]", "bad value: at most 15 entries", "too many trusted entries");

	/* listen */
	refused(DS "listen:\n  - 127.0.0.1:5060\n  - 127.0.0.1\n", 4, "listen[1]",
	        "bad value: 127.0.0.1:5060 is already listen[0]", "duplicate listener");
	refused(DS "listen:\n  - \"0.0.0.0:5060\"\n", 3, "listen[0]",
	        "bad value: 0.0.0.0:5060 listens on every", "unspecified listen without advertise");
	refused(DS "listen:\n  - address: \"[::]:5060\"\n", 3, "listen[0].address", "bad value",
	        "unspecified IPv6 listen without advertise");
	refused(DS "listen:\n  - advertise: example.net\n", 3, "listen[0].address", "required",
	        "listen item without address");
	refused(DS "listen:\n  - address: 0.0.0.0\n    advertise: \"::1\"\n", 4, "listen[0].advertise",
	        "bad value: \"::1\": an IPv6 address needs brackets", "unbracketed IPv6 advertise");
	refused(DS "listen:\n  - address: 0.0.0.0\n    advertise: 0.0.0.0\n", 4, "listen[0].advertise",
	        "bad value", "unspecified advertise");
	refused(DS "listen:\n  - address: 0.0.0.0\n    advertise: \"host:99999\"\n", 4, "listen[0].advertise",
	        "bad value", "advertise port out of range");
	refused(DS "listen:\n  - address: 0.0.0.0\n    advertise: \"bad host\"\n", 4, "listen[0].advertise",
	        "bad value", "advertise with a space");
	refused(DS "listen: []\n", 2, "listen", "bad value: at least one listener", "empty listen");
	refused(DS "listen: [127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3, 127.0.0.1:4,\n"
	           "  127.0.0.1:5, 127.0.0.1:6, 127.0.0.1:7, 127.0.0.1:8, 127.0.0.1:9]\n",
	        3, "listen[8]", "bad value: at most 8 listeners", "too many listeners");
	refused(DS "listen: [\"1.2.3\"]\n", 2, "listen[0]", "bad value: \"1.2.3\"", "bad listen address");

	/* YAML itself */
	refused(DS "log:\n  level: info\n   file: x\n", 4, "syntax error", "", "bad indentation");
	refused(DS "workers: [1, 2\n", 3, "syntax error", "", "unclosed flow sequence");
	refused(DS "workers: *nowhere\n", 2, "syntax error", "", "undefined alias");
	refused(DS "reject: reply\nbad: \xff\n", 3, "syntax error", "", "invalid UTF-8");
	refused(DS "---\nworkers: 2\n", 2, "(top level)", "a second YAML document is not allowed",
	        "two documents");

	rc = load(DS "---\n");
	ok(rc == 0, "an empty trailing document is harmless");

	snprintf(path, sizeof path, "%s/missing.yaml", dir);
	rc = tg_config_load(path, &cfg, err, sizeof err);
	snprintf(big, sizeof big, "%s: No such file or directory", path);
	ok(rc == -1 && strcmp(err, big) == 0, "missing file: strerror");
	if (rc != -1 || strcmp(err, big) != 0)
		printf("#   got \"%s\"\n", err);
}

static void test_failure_keeps_config(void)
{
	tg_config_t keep;
	int rc;

	rc = load(DS "workers: 7\n");
	keep = cfg;
	rc = load(DS "workers: 5\nreject: bogus\n");
	ok(rc == -1 && memcmp(&keep, &cfg, sizeof cfg) == 0, "a refused file leaves the config untouched");
}

static void test_restart_diff(void)
{
	tg_config_t a, b;
	char out[128], tiny[8];

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\nlog: { level: info }\n");
	a = cfg;
	tg_config_restart_only_diff(&a, &a, out, sizeof out);
	is_str(out, "", "same config: no restart-only change");

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\nlog: { level: debug }\nreject: drop\n"
	        "db_retry: { min_ms: 100 }\nsnapshot_file: /tmp/s.bin\n"
	        "provisioning: { coalesce_ms: 1, dns_refresh_s: 5 }\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "", "SIGHUP keys alone: no restart-only change");

	load(DS "workers: 4\nmetrics: \"off\"\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "workers,metrics", "workers and metrics named");

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\ncapacity: { ip_rules: 5 }\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "capacity", "capacity named");

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\ncapacity: { sip_users: 5 }\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "capacity", "capacity.sip_users named");

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\ndigest: { realm: r, nonce_ttl_s: 600 }\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "digest.nonce_ttl_s",
	       "digest.nonce_ttl_s named (a longer ttl would outlive replay entries)");

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\ndigest: { realm: r, algorithms: [MD5] }\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "", "turning digest on and choosing algorithms: SIGHUP");

	load(DS "workers: 2\nmetrics: 127.0.0.1:9090\n"
	        "listen: [{ address: 127.0.0.1:5060, advertise: edge.example.net }]\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "listen", "a new advertise is a listen change");

	load(DS "workers: 3\nmetrics: 127.0.0.1:9091\nlisten: 127.0.0.1:5061\ncapacity: { accounts: 7 }\n");
	b = cfg;
	tg_config_restart_only_diff(&a, &b, out, sizeof out);
	is_str(out, "listen,workers,capacity,metrics", "all four named, in order");
	tg_config_restart_only_diff(&a, &b, tiny, sizeof tiny);
	ok(strlen(tiny) < sizeof tiny, "a short buffer is truncated, not overrun");
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(file, sizeof file, "%s/c.yaml", dir);
	test_sample();
	test_defaults();
	test_values();
	test_refusals();
	test_digest();
	test_calls();
	test_failure_keeps_config();
	test_restart_diff();
	unlink(file);
	rmdir(dir);
	return done_testing();
}

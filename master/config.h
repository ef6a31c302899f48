/*
 * The configuration, parsed from YAML by the master.
 *
 * tg_config_t is plain data with no pointers: the master copies it into
 * shared memory on start and on every SIGHUP, and every child reads its
 * copy from there (see shm_config_read()). Nothing in it may point into a
 * process's own heap.
 */
#ifndef TG_CONFIG_H
#define TG_CONFIG_H

#include <limits.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/addr.h"

#define TG_MAX_LISTEN       8
#define TG_MAX_TRUSTED      16
#define TG_MAX_WORKERS      64
#define TG_CONNINFO_MAX     1024
#define TG_HEADER_NAME_MAX  64
#define TG_DIGEST_REALM_MAX 128

enum tg_reject_mode {
	TG_REJECT_REPLY, /* 403 Forbidden */
	TG_REJECT_DROP,  /* silence */
};

typedef struct tg_listen {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	/* What goes into our Via and Record-Route for this listener. */
	char advertise[TG_SOCKADDR_STRLEN]; /* "host:port" or "[v6]:port" */
} tg_listen_t;

/* A status code and reason phrase tollgate answers a refusal with. */
typedef struct tg_refusal {
	int code; /* 400..699 */
	char reason[TG_HEADER_NAME_MAX];
} tg_refusal_t;

typedef struct tg_config {
	char path[PATH_MAX]; /* the file it was read from */

	tg_listen_t listen[TG_MAX_LISTEN];
	int nlisten;
	int workers;

	struct sockaddr_storage downstream;
	socklen_t downstream_len;
	/* Sources trusted as the softswitch: the downstream's address plus `trusted:`. */
	tg_range_t trusted[TG_MAX_TRUSTED];
	int ntrusted;

	char database[TG_CONNINFO_MAX];

	int log_level;
	char log_file[PATH_MAX];

	struct sockaddr_storage metrics;
	socklen_t metrics_len; /* 0: no metrics endpoint */

	int reject; /* enum tg_reject_mode */
	char account_header[TG_HEADER_NAME_MAX];
	char server_name[TG_HEADER_NAME_MAX]; /* Server / User-Agent on our replies */

	/* capacity: sizes of shared memory, restart-only */
	uint32_t cap_accounts;
	uint32_t cap_ip_rules;
	uint32_t cap_sip_users;
	uint32_t cap_nonces;     /* nonce-count replay table slots, a power of two */
	uint32_t cap_failures;   /* failure-count table slots (source addresses), a power of two */
	uint32_t cap_dialogs;    /* dialog table slots, a power of two */
	uint32_t cap_limit_keys; /* channel/CPS counter slots (accounts and rules with use), a power of two */

	/* database reconnect back-off, milliseconds */
	uint32_t db_retry_min_ms;
	uint32_t db_retry_max_ms;

	/* where the loader keeps the last published snapshot; "" = nowhere */
	char snapshot_file[PATH_MAX];

	/* provisioning: live changes from PostgreSQL (the loader) */
	uint32_t coalesce_ms;      /* quiet time that ends a burst of changes */
	uint32_t max_delay_ms;     /* longest a change waits for its burst to end */
	uint32_t save_interval_ms; /* least time between two writes of snapshot_file */
	uint32_t dns_refresh_s;    /* host names in ip_rules are resolved again this often */
	char hosts_file[PATH_MAX]; /* read before DNS; "" = none */

	/* digest: SIP digest authentication; on when digest_realm is not "" */
	char digest_realm[TG_DIGEST_REALM_MAX + 1];
	uint32_t nonce_ttl_s;                 /* a nonce is fresh this long */
	char user_header[TG_HEADER_NAME_MAX]; /* names the digest user towards the softswitch */
	uint8_t digest_secret[32];            /* from digest.secret_file; all zero = random per start */
	int digest_secret_set;                /* 0/1 */
	char digest_secret_file[PATH_MAX];
	/* offered in this order (1 = MD5, 2 = SHA-256, worker/digest.h digest_alg_t); answers in another are
	 * challenged again */
	uint8_t digest_algs[2];
	int ndigest_algs;

	/* calls: the dialog table's clocks */
	uint32_t early_timeout_s; /* a call with no final response this long is released */
	uint32_t max_duration_s;  /* a confirmed call older than this is released */
	uint32_t linger_s;        /* an ended call stays matched this long (retransmissions, ACK) */
	uint32_t retry_after_s;   /* Retry-After on refusals that allow it; 0 = none */

	/* refusals: what a caller is answered for each kind of policy refusal */
	tg_refusal_t refuse_channels, refuse_cps, refuse_destination, refuse_dialogs_full;
} tg_config_t;

/*
 * Parse a YAML file into cfg (defaults first). On error returns -1 and
 * writes "FILE:LINE: key: problem" into err.
 */
int tg_config_load(const char *path, tg_config_t *cfg, char *err, size_t errlen);
void tg_config_defaults(tg_config_t *cfg);
/*
 * Names the restart-only keys that differ between a and b ("listen,
 * workers"), or writes "" when none does.
 */
void tg_config_restart_only_diff(const tg_config_t *a, const tg_config_t *b, char *out, size_t outlen);

#endif

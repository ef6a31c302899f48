/*
 * The provisioning snapshot: accounts and IP rules in shared memory, in
 * two levels, offsets only, immutable once published.
 *
 *   BASE  one of two base arenas: every indexed rule entry as of the last
 *         compaction, and their interval index. Big (about 150 bytes a
 *         rule), written only by a compaction, which costs about a second
 *         at a million rules.
 *   HEAD  one of two head arenas: its generation, which base it reads,
 *         every account by slot, an OVERLAY index of the rules added or
 *         changed since that base, and the sorted ids of the TOMBSTONED
 *         rules (deleted or changed since the base) whose base entries a
 *         lookup must ignore. Small; every publish writes a new one, so a
 *         one-rule change costs a head, not a base.
 *
 * A rule entry is one (rule, address range) pair: a rule whose hostname
 * resolved to several addresses has several entries, all with its id.
 * Entries name their account by slot (the loader's snap_model_t assigns
 * slots, stable while the account lives), and accounts live in the head
 * only, so deactivating or renaming an account is a head-only publish.
 * So do the accounts' call policies (destination prefixes allowed and
 * denied, codecs refused): one pool of short strings in the head, which
 * each account names by offset (see "Call policy" below). A rule entry
 * carries its own call limits, so a rule whose limits change is a changed
 * rule like any other (overlay and tombstone).
 *
 * Publication. The writer is the loader alone (snap_model_publish()).
 *   Head generation g lives in head arena g & 1. Publishing g+1 writes
 *   head arena (g+1) & 1, which last held g-1: allowed only when no epoch
 *   slot holds g-1.
 *   A compaction writes the base arena b that the current head does not
 *   read. snapctl.base_last_head[b] is the last head generation that read
 *   b; every later head reads the other base, so b may be rewritten only
 *   when no epoch slot (the loader's included) holds a generation e with
 *   0 < e <= base_last_head[b]. (With two head arenas the head rule
 *   already implies this for every reader past its re-check, as those
 *   hold the current generation or the one before; the base check keeps
 *   bases safe on its own, should the head scheme ever change.)
 *   Stores, in order: the arena contents; base_last_head[base of g+1] =
 *   g+1; generation = g+1, which publishes. base_last_head is stored first
 *   so a loader that dies between the two leaves it too high (a needless
 *   wait later), never too low (a base rewritten under a reader).
 *   A busy arena is never waited on: the publish returns "busy" and the
 *   loader retries from a timer.
 *
 * Readers (workers):
 *   snap_acquire(): g = load(generation); store(slot.epoch, g); if
 *   load(generation) != g, retry. The re-check closes the window where a
 *   reader announces a generation the writer has already moved past:
 *   every load and store is seq_cst, so either the writer's scan (which
 *   follows its own store of a newer generation) sees our epoch, or our
 *   re-check sees that store. The view is then {head g, the base head g
 *   names}: head g's arena is not rewritten before g+2 is published, which
 *   needs g out of every slot, and head g's base is not rewritten while
 *   any slot holds a generation up to the last head that read it.
 *   snap_release(): store(slot.epoch, 0). Hold a view for one batch of
 *   packets, never across a wait. The master stores 0 in a dead process's
 *   slot, so a crash mid-read pins nothing for longer than the crash.
 *
 * Lookup index (base and overlay alike): the entries' ranges cut the
 * 128-bit address space into elementary intervals; each interval lists
 * the entries covering it, most specific first: port-bound before
 * portless, longer tech prefix before shorter, narrower range before
 * wider, then lower rule id (then lower first address, so two entries of
 * one rule never tie). A lookup takes the best fitting entry of the
 * overlay and the best fitting entry of the base that is not tombstoned,
 * and returns the more specific of the two by that same order: exactly
 * what one index over all current rules would answer.
 */
#ifndef TG_SNAPSHOT_H
#define TG_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/addr.h"
#include "shm/shm.h"

#define SNAP_HEAD_MAGIC      0x74675f6865616431ULL /* "tg_head1" */
#define SNAP_BASE_MAGIC      0x74675f6261736531ULL /* "tg_base1" */
#define SNAP_NAME_MAX        64
#define SNAP_PREFIX_MAX      32
#define SNAP_MAX_RANGES      16   /* addresses one rule may carry (a hostname's) */
#define SNAP_OVERLAY_MIN     4096 /* overlay entries and tombstones a head holds at least */
#define SNAP_BUCKET_BITS_MAX 16   /* an index's IPv4 bucket table: at most 65537 entries */

enum snap_dir {
	SNAP_DIR_INGRESS = 1, /* customer to us */
	SNAP_DIR_EGRESS = 2,  /* downstream to customer */
	SNAP_DIR_BOTH = 3,
};

/*
 * An interval index; offsets count from the start of the base or head
 * holding it. Buckets: for an IPv4 address a (as ::ffff:a), bucket
 * b = a >> (32 - bucket_bits); buckets[b] is the interval holding the
 * bucket's first address, buckets[1 << bucket_bits] the one holding
 * 255.255.255.255, so a's interval lies in [buckets[b], buckets[b + 1]].
 */
typedef struct snap_index_sh {
	uint32_t nentries, nivals, ncands;
	uint32_t truncated;   /* 1: lists stop after a catch-all entry (overlay only, see snapshot.c) */
	uint32_t bucket_bits; /* 0..SNAP_BUCKET_BITS_MAX */
	uint32_t pad;
	uint64_t off_entries, off_ivals, off_cands, off_buckets;
} snap_index_sh_t;

typedef struct snap_base_sh {
	uint64_t magic;      /* SNAP_BASE_MAGIC */
	uint64_t checksum;   /* snap_region_hash() of bytes [16, size), computed once when built */
	uint64_t size;       /* bytes used, header included */
	uint64_t generation; /* the head generation that first published it */
	uint64_t built_ms;   /* wall clock */
	uint32_t nrules;     /* distinct rules with entries */
	uint32_t pad;
	snap_index_sh_t index;
} snap_base_sh_t;

/*
 * SIP digest users (tollgate.sip_users) live in the head, like accounts:
 * every publish writes them all, so a user change is a head-only publish
 * and a head costs about sizeof(snap_user_sh_t) more per live user (see
 * docs/design.md for what that costs at 100,000 users). A chained hash
 * table over (username, domain) finds one; allowed source ranges live in
 * one array all users share.
 */
#define SNAP_USER_MAX    64  /* bytes of a username (the schema allows 1..64) */
#define SNAP_DOMAIN_MAX  253 /* bytes of a domain (a DNS name) */
#define SNAP_USER_RANGES 32  /* allowed source ranges one user may carry */
/*
 * Allowed source ranges all users carry together, for a capacity of
 * users: a head is sized for this many, not SNAP_USER_RANGES a user
 * (1,280 bytes a user, nearly all of them never used), and a put that
 * would take the model's total past it is refused ("too many allowed
 * source ranges in total"). Ranges of users that do not restrict sources
 * count too: they are kept as given.
 */
#define SNAP_USER_RANGES_TOTAL(users) (4 * (uint64_t)(users) + 1024)

/*
 * Call policy. An account's three lists (allowed destination prefixes,
 * denied destination prefixes, restricted codecs) sit back to back in the
 * head's policy pool from the account's policy_off, each entry one length
 * byte and its bytes (no NUL): allowed_len bytes of allowed prefixes,
 * then denied_len of denied ones, then codecs_len of codecs, stored upper
 * case. Readers walk them in place, allocating nothing.
 */
#define SNAP_DEST_PREFIXES   64 /* prefixes in one list (allowed or denied) of one account */
#define SNAP_DEST_PREFIX_MAX 32 /* bytes of a destination prefix */
#define SNAP_CODECS          32 /* restricted codecs of one account */
#define SNAP_CODEC_MAX       32 /* bytes of a codec name */
/*
 * Bytes of policy pool all accounts have together, for a capacity of
 * accounts: a head is sized for this, not for every account holding full
 * lists (5,280 bytes an account), and a put that would take the model's
 * total past it is refused ("too many destination prefixes and codecs in
 * total"). Each prefix or codec counts its length plus one.
 */
#define SNAP_POLICY_TOTAL(accounts) (256 * (uint64_t)(accounts) + 65536)

typedef struct snap_head_sh {
	uint64_t magic;           /* SNAP_HEAD_MAGIC */
	uint64_t checksum;        /* snap_region_hash() of bytes [16, size) */
	uint64_t size;            /* bytes used, header included */
	uint64_t generation;      /* as published */
	uint64_t base_generation; /* the base it reads; equals that base's generation */
	uint64_t built_ms;        /* wall clock */
	uint32_t base_arena;      /* 0 or 1 */
	uint32_t naccounts;       /* account slots written, deleted and free ones included */
	uint32_t live_accounts;   /* of which live */
	uint32_t nrules;          /* rules in the loader's model, entries or not */
	uint32_t ntombs;          /* tombstoned rule ids */
	uint32_t overlay_rules;   /* distinct rules in the overlay */
	uint64_t off_accounts, off_tombs;
	snap_index_sh_t overlay;
	uint32_t nusers;           /* users written, all live */
	uint32_t user_bucket_bits; /* buckets = 1 << user_bucket_bits */
	uint32_t nuser_ranges;     /* allowed source ranges, all users' */
	uint32_t pad2;
	uint64_t off_users, off_user_buckets, off_user_ranges;
	uint32_t policy_bytes; /* bytes of the policy pool, all accounts' */
	uint32_t pad3;
	uint64_t off_policy;
} snap_head_sh_t;

enum snap_account_state {
	SNAP_ACCOUNT_FREE,    /* never used, or reclaimed by a compaction */
	SNAP_ACCOUNT_LIVE,    /* rules may name it */
	SNAP_ACCOUNT_DELETED, /* gone; only tombstoned base entries still name it */
};

typedef struct snap_account_sh {
	int64_t id;            /* tollgate.accounts.id */
	uint32_t active;       /* 0/1 */
	uint32_t max_channels; /* 0 = unlimited */
	uint32_t max_cps;      /* 0 = unlimited */
	uint32_t state;        /* enum snap_account_state */
	uint32_t cps_burst;    /* new calls a burst may take at once; 0 = max_cps */
	uint32_t policy_off;   /* its lists in the head's policy pool; 0 when it has none */
	uint16_t allowed_len;  /* bytes of allowed prefixes there, from policy_off */
	uint16_t denied_len;   /* bytes of denied prefixes, after them */
	uint16_t codecs_len;   /* bytes of restricted codecs, after those */
	uint8_t nallowed;      /* allowed prefixes, 0..SNAP_DEST_PREFIXES; 0 = every destination */
	uint8_t ndenied;       /* denied prefixes, 0..SNAP_DEST_PREFIXES */
	uint8_t ncodecs;       /* restricted codecs, 0..SNAP_CODECS */
	uint8_t pad[7];
	char name[SNAP_NAME_MAX]; /* NUL-terminated */
} snap_account_sh_t;

/* A rule entry: one rule with one of its ranges. */
typedef struct snap_rule_sh {
	int64_t id; /* tollgate.ip_rules.id */
	tg_range_t range;
	uint32_t account;                  /* account slot in the head */
	uint32_t max_channels;             /* the rule's own limits: 0 = unlimited */
	uint32_t max_cps;                  /* 0 = unlimited */
	uint32_t cps_burst;                /* 0 = max_cps */
	uint16_t port;                     /* 0 = any source port */
	uint8_t active;                    /* 0/1; only active rules have entries */
	uint8_t direction;                 /* enum snap_dir */
	uint8_t prefix_len;                /* strlen(tech_prefix) */
	char tech_prefix[SNAP_PREFIX_MAX]; /* NUL-terminated, "" = none */
} snap_rule_sh_t;

/* A SIP user. HA1 values are lowercase hex, "" when not set. */
typedef struct snap_user_sh {
	int64_t id;               /* tollgate.sip_users.id */
	uint32_t account;         /* account slot in the head */
	uint32_t next;            /* next user in the same hash bucket, UINT32_MAX = none */
	uint8_t active;           /* 0/1: the user's own status (its account's is in the account) */
	uint8_t restrict_sources; /* 0/1: only ranges[range_off, +nranges) may use it (none when 0 ranges) */
	uint16_t nranges;
	uint32_t range_off; /* first range in the head's user range array */
	char username[SNAP_USER_MAX + 1];
	char domain[SNAP_DOMAIN_MAX + 1]; /* lower case; "" = any domain */
	char ha1_md5[33];                 /* H(username:realm:password) */
	char ha1_sha256[65];
	char ha1_md5_full[33];    /* H(username@domain:realm:password), for clients that send the */
	char ha1_sha256_full[65]; /* full-URI form as their username; "" when the domain is "" */
} snap_user_sh_t;

typedef struct snap_ival_sh {
	tg_ip_t start;     /* covers [start, next interval's start - 1] */
	uint32_t cand_off; /* first entry in the candidates array */
	uint32_t cand_n;   /* 0: no entry covers this interval */
} snap_ival_sh_t;

/* What a reader holds: both NULL when nothing is published. */
typedef struct snap_view {
	const snap_head_sh_t *head;
	const snap_base_sh_t *base;
} snap_view_t;

enum snap_result {
	SNAP_MATCH,            /* m->rule and m->account set */
	SNAP_NO_ADDRESS,       /* no usable rule covers the address */
	SNAP_NO_FIT,           /* rules cover the address, none fits port/prefix */
	SNAP_ACCOUNT_INACTIVE, /* the best rule's account is inactive; m set */
};

typedef struct snap_match {
	const snap_rule_sh_t *rule; /* in the base or the head of the view */
	const snap_account_sh_t *account;
} snap_match_t;

/*
 * Find the rule for a source. user/user_len: the Request-URI user part, for
 * tech prefixes; user == NULL ignores tech prefixes (in-dialog requests).
 * dir: SNAP_DIR_INGRESS or SNAP_DIR_EGRESS. Inactive rules and rules whose
 * direction excludes dir are skipped as if absent. v must hold a head.
 */
int snap_lookup(const snap_view_t *v, const tg_ip_t *ip, uint16_t port, const char *user, size_t user_len,
                unsigned dir, snap_match_t *m);
const snap_account_sh_t *snap_accounts(const snap_head_sh_t *h); /* [h->naccounts], by slot */

/*
 * A SIP user by name: the user with this username and domain when there
 * is one, else the one with this username and no domain (any domain);
 * NULL when neither exists. username is compared exactly; domain
 * case-insensitively (domain may be NULL or "" when the client named
 * none: only an any-domain user matches then). Inactive users are found
 * too (the caller refuses them, with the reason).
 */
const snap_user_sh_t *snap_user_find(const snap_view_t *v, const char *username, size_t ulen,
                                     const char *domain, size_t dlen);
/* 1 when ip may use u: u does not restrict sources, or one of its ranges covers ip. */
int snap_user_source_allowed(const snap_view_t *v, const snap_user_sh_t *u, const tg_ip_t *ip);
/* The account of u (a live slot of the same head). */
const snap_account_sh_t *snap_user_account(const snap_view_t *v, const snap_user_sh_t *u);

/*
 * Call policy (an account of v's head, as a match or a user names it).
 * 1 when account a may call user (len bytes, the Request-URI user after
 * the tech prefix is stripped): no denied prefix starts it (deny wins),
 * and the allowed list is empty or one of its prefixes starts it.
 * Prefixes compare byte for byte, case-sensitively, as tech prefixes do.
 */
int snap_account_destination_allowed(const snap_view_t *v, const snap_account_sh_t *a, const char *user,
                                     size_t len);
/* 1 when codec (an SDP rtpmap encoding name, any case, len bytes) is restricted for a. */
int snap_account_codec_restricted(const snap_view_t *v, const snap_account_sh_t *a, const char *codec,
                                  size_t len);
/* Number of restricted codecs (0: the SDP need not be looked at). */
uint32_t snap_account_ncodecs(const snap_view_t *v, const snap_account_sh_t *a);
const int64_t *snap_tombstones(const snap_head_sh_t *h); /* [h->ntombs], ascending */
const snap_rule_sh_t *snap_index_entries(const void *region, const snap_index_sh_t *ix);
/* Recompute a region's checksum; compare with its checksum field. */
uint64_t snap_head_checksum(const snap_head_sh_t *h);
uint64_t snap_base_checksum(const snap_base_sh_t *b);

/* Readers: 1 and *v set, or 0 and v empty when nothing is published yet. */
int snap_acquire(shm_t *shm, shm_proc_sh_t *slot, snap_view_t *v);
void snap_release(shm_proc_sh_t *slot, snap_view_t *v);

/* Sizing, for shm.c: bytes one arena needs for this capacity. */
size_t snap_base_size_bound(uint32_t rules);
size_t snap_head_size_bound(uint32_t accounts, uint32_t rules, uint32_t users);
/* Overlay entries (and tombstones) a head holds: max(SNAP_OVERLAY_MIN, rules / 64). */
uint32_t snap_overlay_cap(uint32_t rules);
/* Account slots a head holds: twice the accounts, so deletes can wait for a compaction. */
uint32_t snap_account_slots(uint32_t accounts);

/*
 * The loader's model: every account and rule, in its own heap, changed
 * row by row, and published as a delta (a new head) or a compaction (a
 * new base and head) as snap_model_publish() decides. Not thread-safe;
 * one model publishes at a time (another model's publish makes the next
 * one compact, as its base is no longer the current one).
 */
typedef struct snap_model snap_model_t;

/*
 * An account as put (snap_model_account_put2()) and as walked
 * (snap_model_foreach_account()). The lists are arrays of NUL-terminated
 * strings; NULL with a count of 0 is an empty list. slot is the model's
 * answer, ignored on a put.
 */
typedef struct snap_account_info {
	int64_t id;
	const char *name;
	int active;
	uint32_t max_channels, max_cps; /* 0 = unlimited */
	uint32_t slot;
	uint32_t cps_burst;                   /* 0 = max_cps */
	const char *const *allowed_prefixes;  /* [nallowed]: 1..SNAP_DEST_PREFIX_MAX bytes each */
	unsigned nallowed;                    /* 0..SNAP_DEST_PREFIXES; 0 = every destination */
	const char *const *denied_prefixes;   /* [ndenied] */
	unsigned ndenied;                     /* 0..SNAP_DEST_PREFIXES */
	const char *const *restricted_codecs; /* [ncodecs]: 1..SNAP_CODEC_MAX of [A-Za-z0-9._-], any case */
	unsigned ncodecs;                     /* 0..SNAP_CODECS */
} snap_account_info_t;

/* A rule as put (snap_model_rule_put2()) and as walked (snap_model_foreach_rule()). */
typedef struct snap_rule_info {
	int64_t id, account_id;
	const tg_range_t *ranges;
	unsigned nranges; /* 0: a hostname not resolved yet, matches nothing */
	uint16_t port;
	const char *tech_prefix; /* NULL or "" = none */
	int active;
	unsigned direction;
	uint32_t max_channels, max_cps; /* the rule's own limits: 0 = unlimited */
	uint32_t cps_burst;             /* 0 = max_cps */
} snap_rule_info_t;

enum snap_publish_kind {
	SNAP_PUBLISH_DELTA,      /* a new head over the current base */
	SNAP_PUBLISH_COMPACTION, /* a new base, and a head with an empty overlay */
};

typedef struct snap_publish_stats {
	int kind;                 /* enum snap_publish_kind */
	const char *reason;       /* why a compaction ("overlay full", ...); NULL for a delta */
	uint64_t generation;      /* the head published */
	uint64_t base_generation; /* the base it reads */
	size_t head_bytes;        /* the head written */
	size_t base_bytes;        /* the base it reads, written now or earlier */
	uint64_t build_us;        /* building the head, and the base for a compaction */
	uint32_t accounts, rules; /* live, in the model */
	uint32_t overlay_rules, overlay_entries, tombstones;
} snap_publish_stats_t;

/*
 * cap_*: the capacity shm was sized for (tg_config_t cap_accounts,
 * cap_ip_rules, cap_sip_users). NULL: out of memory.
 */
snap_model_t *snap_model_new(uint32_t cap_accounts, uint32_t cap_rules, uint32_t cap_users);
void snap_model_free(snap_model_t *m);
uint32_t snap_model_naccounts(const snap_model_t *m);
uint32_t snap_model_nrules(const snap_model_t *m);

/*
 * Insert or update an account with no call policy: no burst of its own,
 * every destination, no codec restricted. Returns 0, or -1 with a static
 * reason in *err (err may be NULL): name too long, no free account slot,
 * out of memory. The same as snap_model_account_put2() with those fields
 * zero.
 */
int snap_model_account_put(snap_model_t *m, int64_t id, const char *name, int active, uint32_t max_channels,
                           uint32_t max_cps, const char **err);
/*
 * Insert or update an account with everything it carries (a->slot is
 * ignored). Codecs are stored upper case. Returns 0, or -1 with a static
 * reason in *err (err may be NULL): those of snap_model_account_put(),
 * and too many allowed prefixes, too many denied prefixes, too many
 * restricted codecs, no list given (a count with a NULL array), bad
 * destination prefix (empty, longer than SNAP_DEST_PREFIX_MAX, or a byte
 * outside letters, digits and -_.!~*'()%&=+$,?/#), bad codec name (empty,
 * longer than SNAP_CODEC_MAX, or outside [A-Za-z0-9._-]), too many
 * destination prefixes and codecs in total (the
 * model's pool would pass SNAP_POLICY_TOTAL(cap_accounts); during a full
 * load only the accounts put since mark_begin count, as the sweep drops
 * the others). A refused put leaves the account as it was.
 */
int snap_model_account_put2(snap_model_t *m, const snap_account_info_t *a, const char **err);
/* Delete an account and its rules. Returns 0, or -1 with errno ENOENT. */
int snap_model_account_del(snap_model_t *m, int64_t id);
/*
 * Insert or replace a rule with no limits of its own. nranges
 * 0..SNAP_MAX_RANGES. Returns 0, or -1 with a static reason in *err:
 * unknown account, bad range family, range end before start, too many
 * ranges, no ranges given, tech prefix too long, bad direction, out of
 * memory. A put identical to the rule held changes nothing (a full load
 * over an unchanged table dirties nothing). The same as
 * snap_model_rule_put2() with the limits zero.
 */
int snap_model_rule_put(snap_model_t *m, int64_t id, int64_t account_id, const tg_range_t *ranges,
                        unsigned nranges, uint16_t port, const char *tech_prefix, int active,
                        unsigned direction, const char **err);
/*
 * Insert or replace a rule with its limits. As snap_model_rule_put(); a
 * rule whose limits change is a changed rule (its entries go into the
 * overlay and its base entries are tombstoned), one put the same as the
 * rule held changes nothing.
 */
int snap_model_rule_put2(snap_model_t *m, const snap_rule_info_t *r, const char **err);
/*
 * The rule held under id, into *out, whose pointers point into the model
 * until its next change. Returns 0, or -1 with errno ENOENT.
 */
int snap_model_rule_get(const snap_model_t *m, int64_t id, snap_rule_info_t *out);
/* Returns 0, or -1 with errno ENOENT. */
int snap_model_rule_del(snap_model_t *m, int64_t id);

/*
 * A full load: mark_begin, put every row, sweep. The sweep deletes the
 * accounts, rules and users not put since mark_begin (returns how many
 * rows, those deleted with their account included) and makes the next
 * publish a compaction.
 */
void snap_model_mark_begin(snap_model_t *m);
uint32_t snap_model_sweep(snap_model_t *m);

/*
 * SIP users. Insert or replace; domain NULL or "" = any domain (stored
 * lower case). ha1_md5 / ha1_sha256: lowercase or uppercase hex of 32 /
 * 64 digits, or NULL / "" when not set. ranges: the allowed sources,
 * 0..SNAP_USER_RANGES. Returns 0, or -1 with a static reason in *err:
 * unknown account, username empty or too long, domain too long, bad HA1,
 * too many ranges, bad range, another user already has this username and
 * domain, no room (more users than the capacity), too many allowed
 * source ranges in total (see SNAP_USER_RANGES_TOTAL), out of memory.
 * One exception to "another user already has": during a full load (from
 * mark_begin to the sweep) a holder not put since mark_begin is stale,
 * as the table allows one row a name, and is deleted in favour of the
 * new one, so a user deleted and created again between loads survives
 * the load. A put identical to the user held changes nothing.
 * The info handed to snap_model_foreach_user() points into the model and
 * is valid during the call only; "" (never NULL) for unset strings.
 */
typedef struct snap_user_info {
	int64_t id, account_id;
	const char *username, *domain;
	int active, restrict_sources;
	const char *ha1_md5, *ha1_sha256;
	const char *ha1_md5_full, *ha1_sha256_full; /* over "username@domain"; NULL / "" when not set */
	const tg_range_t *ranges;
	unsigned nranges;
} snap_user_info_t;
int snap_model_user_put(snap_model_t *m, const snap_user_info_t *u, const char **err);
/* Returns 0, or -1 with errno ENOENT. Deleting an account deletes its users. */
int snap_model_user_del(snap_model_t *m, int64_t id);
uint32_t snap_model_nusers(const snap_model_t *m);
typedef int (*snap_user_fn)(void *arg, const snap_user_info_t *u);
int snap_model_foreach_user(const snap_model_t *m, snap_user_fn fn, void *arg);

/*
 * fn for every live account (by slot) or rule; a nonzero return stops the
 * walk and is returned. The info points into the model (the lists into
 * the walk's own buffers) and is valid during the call only.
 */
typedef int (*snap_account_fn)(void *arg, const snap_account_info_t *a);
typedef int (*snap_rule_fn)(void *arg, const snap_rule_info_t *r);
int snap_model_foreach_account(const snap_model_t *m, snap_account_fn fn, void *arg);
int snap_model_foreach_rule(const snap_model_t *m, snap_rule_fn fn, void *arg);

/*
 * Publish the model. A compaction when the model has no current base, a
 * sweep happened, the overlay or the tombstones would exceed
 * snap_overlay_cap(), the overlay does not fit the head arena, or too
 * many account slots wait to be reclaimed; a delta otherwise. Returns 0
 * (published, *st filled; st may be NULL), 1 (busy: a reader still holds
 * an arena needed; nothing written; retry later), or -1 with errno
 * (ENOSPC: more accounts or rules than the capacity, more policy than
 * SNAP_POLICY_TOTAL (only mid-load), or the base does not fit its arena;
 * ENOMEM). The model is unchanged unless it returns 0.
 */
int snap_model_publish(snap_model_t *m, shm_t *shm, uint64_t built_ms, snap_publish_stats_t *st);
/* The same, always a compaction: for a full load. */
int snap_model_publish_base(snap_model_t *m, shm_t *shm, uint64_t built_ms, snap_publish_stats_t *st);

#endif

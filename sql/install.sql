-- tollgate provisioning schema: install, or upgrade from any earlier version.
--
--   psql -v ON_ERROR_STOP=1 -d DBNAME -f sql/install.sql
--
-- Runs in one transaction, so a failure leaves the database as it was.
-- Running it again is a no-op: each migration step is guarded by the
-- version stored in tollgate.schema_version and runs only once.
--
-- Adding a migration: append a step N block at the end (same shape as
-- step 1), then set latest_version below to N. Never edit a step that
-- has shipped; databases that already ran it will not run it again.
-- The loader refuses a schema whose version it does not know, so bump
-- LOADER_SCHEMA_VERSION in sql/loader.c together with latest_version.

\set ON_ERROR_STOP 1
\set QUIET on
\set latest_version 4

BEGIN;

-- "schema already exists, skipping" on every rerun is noise.
SET LOCAL client_min_messages = warning;

-- Two installs at once would both see the old version; the second waits
-- here and then finds the work done.
SELECT pg_advisory_xact_lock(hashtext('tollgate install.sql')) AS tg_locked \gset

CREATE SCHEMA IF NOT EXISTS tollgate;

CREATE TABLE IF NOT EXISTS tollgate.schema_version (
	version integer NOT NULL CHECK (version >= 0),
	updated_at timestamptz NOT NULL DEFAULT now()
);
-- One row only: a unique index on a constant.
CREATE UNIQUE INDEX IF NOT EXISTS schema_version_one_row ON tollgate.schema_version ((true));
INSERT INTO tollgate.schema_version (version)
SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM tollgate.schema_version);

-- A database upgraded by a newer release must not be "upgraded" by an
-- older file: its steps would be skipped and the result would lie.
SELECT set_config('tollgate.install_latest', :'latest_version', true) AS tg_latest \gset
DO $check$
DECLARE
	found integer := (SELECT version FROM tollgate.schema_version);
	latest integer := current_setting('tollgate.install_latest')::integer;
BEGIN
	IF found > latest THEN
		RAISE EXCEPTION 'tollgate schema is at version %, newer than this install.sql knows (version %)',
			found, latest
			USING ERRCODE = 'feature_not_supported',
			HINT = 'Use sql/install.sql from the tollgate release that upgraded this database.';
	END IF;
END
$check$;

--
-- Step 1: accounts, IP rules, address parsing.
--
SELECT version < 1 AS run_step FROM tollgate.schema_version \gset
\if :run_step

CREATE TABLE tollgate.accounts (
	id bigserial PRIMARY KEY,
	-- Bytes, not characters, for the upper bound: the gateway keeps 63
	-- bytes plus a NUL. Control characters would let a name break out of
	-- the SIP header that carries it downstream.
	name text NOT NULL UNIQUE
		CONSTRAINT accounts_name_check
		CHECK (char_length(name) >= 1 AND octet_length(name) <= 63 AND name !~ '[[:cntrl:]]'),
	status text NOT NULL DEFAULT 'active'
		CONSTRAINT accounts_status_check CHECK (status IN ('active', 'inactive')),
	max_channels integer NOT NULL DEFAULT 0
		CONSTRAINT accounts_max_channels_check CHECK (max_channels >= 0),
	max_cps integer NOT NULL DEFAULT 0
		CONSTRAINT accounts_max_cps_check CHECK (max_cps >= 0),
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tollgate.accounts IS 'Customers of the gateway; the name goes downstream in the account header.';
COMMENT ON COLUMN tollgate.accounts.max_channels IS 'Concurrent calls allowed; 0 = unlimited.';
COMMENT ON COLUMN tollgate.accounts.max_cps IS 'New calls per second allowed; 0 = unlimited.';

CREATE TABLE tollgate.ip_rules (
	id bigserial PRIMARY KEY,
	account_id bigint NOT NULL REFERENCES tollgate.accounts (id) ON DELETE CASCADE,
	address text NOT NULL,
	port integer
		CONSTRAINT ip_rules_port_check CHECK (port BETWEEN 1 AND 65535),
	-- 31 characters: the gateway keeps 31 plus a NUL.
	tech_prefix text
		CONSTRAINT ip_rules_tech_prefix_check CHECK (tech_prefix ~ '^[0-9A-Za-z#*+]{1,31}$'),
	status text NOT NULL DEFAULT 'active'
		CONSTRAINT ip_rules_status_check CHECK (status IN ('active', 'inactive')),
	direction text NOT NULL DEFAULT 'ingress'
		CONSTRAINT ip_rules_direction_check CHECK (direction IN ('ingress', 'egress', 'both')),
	description text,
	-- Derived from address by the ip_rules_fill trigger; never written by hand.
	addr_first inet NOT NULL,
	addr_last inet NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT ip_rules_range_check
		CHECK (family(addr_first) = family(addr_last) AND addr_first <= addr_last)
);

CREATE INDEX ip_rules_account_id_idx ON tollgate.ip_rules (account_id);

COMMENT ON TABLE tollgate.ip_rules IS 'Source addresses that identify an account without digest authentication.';
COMMENT ON COLUMN tollgate.ip_rules.address IS
	'As typed: 1.2.3.4, 1.2.3.0/24, 1.2.3.0/255.255.255.0, 1.2.3.1-1.2.3.100, or the IPv6 equivalents.';
COMMENT ON COLUMN tollgate.ip_rules.port IS 'Source port the rule requires; NULL = any.';
COMMENT ON COLUMN tollgate.ip_rules.tech_prefix IS 'Request-URI user prefix the rule requires, stripped downstream; NULL = none.';
COMMENT ON COLUMN tollgate.ip_rules.addr_first IS 'First address of the range, set by trigger from address.';
COMMENT ON COLUMN tollgate.ip_rules.addr_last IS 'Last address of the range, set by trigger from address.';

-- Every refusal of parse_address() goes through here, so they all read
-- alike: invalid address "<as typed>": <problem>.
CREATE FUNCTION tollgate.address_invalid(address text, problem text)
	RETURNS void
	LANGUAGE plpgsql IMMUTABLE
AS $fn$
BEGIN
	RAISE EXCEPTION 'invalid address "%": %', address, problem
		USING ERRCODE = 'invalid_text_representation',
		HINT = 'Accepted: 1.2.3.4, 1.2.3.0/24, 1.2.3.0/255.255.255.0, 1.2.3.1-1.2.3.100 '
			'and the IPv6 equivalents (2001:db8::1, 2001:db8::/32, 2001:db8::1-2001:db8::ff).';
END
$fn$;

-- One numeric address, or NULL. PostgreSQL's inet input is more lenient
-- than the gateway's parser (it takes 01.2.3.4, for one), so IPv4 is
-- matched strictly here; IPv6 text is left to inet, which agrees with
-- inet_pton().
CREATE FUNCTION tollgate.address_ip(part text)
	RETURNS inet
	LANGUAGE plpgsql IMMUTABLE STRICT
AS $fn$
BEGIN
	IF part ~ '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$' THEN
		RETURN part::inet;
	END IF;
	-- An embedded IPv4 tail (::ffff:1.2.3.4) must be as strict as above.
	IF part ~ '^[0-9A-Fa-f:]*:[0-9A-Fa-f]*$'
		OR part ~ '^[0-9A-Fa-f:]*:(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$' THEN
		BEGIN
			RETURN part::inet;
		EXCEPTION WHEN invalid_text_representation THEN
			RETURN NULL;
		END;
	END IF;
	RETURN NULL;
END
$fn$;

-- Operator notation -> inclusive range. Raises on anything else, so a bad
-- INSERT or UPDATE of ip_rules stores nothing.
CREATE FUNCTION tollgate.parse_address(address text, OUT first inet, OUT last inet)
	LANGUAGE plpgsql IMMUTABLE STRICT
AS $fn$
DECLARE
	-- Blanks (space, tab) around the whole and around "-" and "/" are
	-- ignored, as the gateway's parser does.
	s text := btrim(address, E' \t');
	lo text;
	hi text;
	ip inet;
	mask inet;
	maxbits integer;
	bits integer;
	hostmask bigint;
BEGIN
	IF s = '' THEN
		PERFORM tollgate.address_invalid(address, 'empty');
	END IF;
	-- The longest IPv6 range is 81 characters; the gateway reads at most 127.
	IF octet_length(address) > 100 THEN
		PERFORM tollgate.address_invalid(left(address, 40) || '...', 'longer than 100 characters');
	END IF;

	IF strpos(s, '/') > 0 AND strpos(s, '-') > 0 THEN
		IF s ~ '/[ \t]*-[0-9]+$' THEN
			PERFORM tollgate.address_invalid(address, 'prefix length out of range');
		END IF;
		PERFORM tollgate.address_invalid(address, 'a range cannot have a prefix length or netmask');
	END IF;

	IF strpos(s, '-') > 0 THEN
		IF s LIKE '%-%-%' THEN
			PERFORM tollgate.address_invalid(address, 'more than one "-"');
		END IF;
		lo := btrim(split_part(s, '-', 1), E' \t');
		hi := btrim(split_part(s, '-', 2), E' \t');
		first := tollgate.address_ip(lo);
		last := tollgate.address_ip(hi);
		IF first IS NULL THEN
			PERFORM tollgate.address_invalid(address, format('range start "%s" is not an IP address', lo));
		ELSIF last IS NULL THEN
			PERFORM tollgate.address_invalid(address, format('range end "%s" is not an IP address', hi));
		ELSIF family(first) <> family(last) THEN
			PERFORM tollgate.address_invalid(address, 'range mixes IPv4 and IPv6');
		ELSIF first > last THEN
			PERFORM tollgate.address_invalid(address, 'range end before start');
		END IF;
		RETURN;
	END IF;

	IF strpos(s, '/') = 0 THEN
		first := tollgate.address_ip(s);
		IF first IS NULL THEN
			PERFORM tollgate.address_invalid(address, 'not an IP address');
		END IF;
		last := first;
		RETURN;
	END IF;

	IF s LIKE '%/%/%' THEN
		PERFORM tollgate.address_invalid(address, 'more than one "/"');
	END IF;
	lo := btrim(split_part(s, '/', 1), E' \t');
	hi := btrim(split_part(s, '/', 2), E' \t');
	ip := tollgate.address_ip(lo);
	IF ip IS NULL THEN
		PERFORM tollgate.address_invalid(address, format('"%s" is not an IP address', lo));
	END IF;
	maxbits := CASE family(ip) WHEN 4 THEN 32 ELSE 128 END;
	mask := tollgate.address_ip(hi);

	IF hi ~ '^[0-9]{1,3}$' THEN
		bits := hi::integer;
		IF bits > maxbits THEN
			PERFORM tollgate.address_invalid(address, 'prefix length out of range');
		END IF;
	ELSIF hi ~ '^[0-9]+$' THEN
		PERFORM tollgate.address_invalid(address, 'prefix length out of range');
	ELSIF mask IS NOT NULL AND family(ip) = 4 AND family(mask) = 4 THEN
		-- Contiguous means the host part is 2^k - 1.
		hostmask := 4294967295 - (mask - '0.0.0.0'::inet);
		IF (hostmask & (hostmask + 1)) <> 0 THEN
			PERFORM tollgate.address_invalid(address, 'netmask is not contiguous');
		END IF;
		bits := 32 - length(replace(hostmask::bit(32)::text, '0', ''));
	ELSIF mask IS NOT NULL THEN
		PERFORM tollgate.address_invalid(address, 'netmask notation is for IPv4 only');
	ELSE
		PERFORM tollgate.address_invalid(address, 'prefix length or netmask expected after "/"');
	END IF;

	-- Host bits are allowed and masked off: 1.2.3.4/24 is 1.2.3.0-1.2.3.255.
	first := set_masklen(network(set_masklen(ip, bits))::inet, maxbits);
	last := set_masklen(broadcast(set_masklen(ip, bits)), maxbits);
END
$fn$;

COMMENT ON FUNCTION tollgate.parse_address(text) IS
	'Operator address notation -> (first, last) inclusive range; raises 22P02 on anything else.';

CREATE FUNCTION tollgate.touch_updated_at()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
BEGIN
	NEW.updated_at := now();
	RETURN NEW;
END
$fn$;

-- Recomputed on every write, so addr_first/addr_last always follow address
-- even if someone sets them by hand.
CREATE FUNCTION tollgate.ip_rules_fill()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
BEGIN
	SELECT p.first, p.last INTO NEW.addr_first, NEW.addr_last
	FROM tollgate.parse_address(NEW.address) AS p;
	RETURN NEW;
END
$fn$;

CREATE TRIGGER accounts_touch BEFORE UPDATE ON tollgate.accounts
	FOR EACH ROW EXECUTE FUNCTION tollgate.touch_updated_at();
CREATE TRIGGER ip_rules_fill BEFORE INSERT OR UPDATE ON tollgate.ip_rules
	FOR EACH ROW EXECUTE FUNCTION tollgate.ip_rules_fill();
CREATE TRIGGER ip_rules_touch BEFORE UPDATE ON tollgate.ip_rules
	FOR EACH ROW EXECUTE FUNCTION tollgate.touch_updated_at();

UPDATE tollgate.schema_version SET version = 1, updated_at = now();

\endif

--
-- Step 2: live provisioning. Every change to a provisioning table is
-- announced on NOTIFY channel tollgate_changes and written to
-- tollgate.audit_log; a rule that would make the match ambiguous between
-- two accounts is refused; tollgate.rule_overlaps lists overlapping rules
-- of different accounts for review; ip_rules.address may be a host name.
--
SELECT version < 2 AS run_step FROM tollgate.schema_version \gset
\if :run_step

-- Host names ---------------------------------------------------------------

CREATE OR REPLACE FUNCTION tollgate.address_invalid(address text, problem text)
	RETURNS void
	LANGUAGE plpgsql IMMUTABLE
AS $fn$
BEGIN
	RAISE EXCEPTION 'invalid address "%": %', address, problem
		USING ERRCODE = 'invalid_text_representation',
		HINT = 'Accepted: 1.2.3.4, 1.2.3.0/24, 1.2.3.0/255.255.255.0, 1.2.3.1-1.2.3.100, '
			'the IPv6 equivalents (2001:db8::1, 2001:db8::/32, 2001:db8::1-2001:db8::ff) '
			'and host names (sbc1.example.com).';
END
$fn$;

-- parse_address() gains a third result column, and a function's result
-- type cannot be changed in place.
DROP FUNCTION tollgate.parse_address(text);

-- Operator notation -> inclusive range, or a host name for the loader to
-- resolve. Raises on anything else, so a bad INSERT or UPDATE of ip_rules
-- stores nothing.
CREATE FUNCTION tollgate.parse_address(address text, OUT first inet, OUT last inet, OUT host_name text)
	LANGUAGE plpgsql IMMUTABLE STRICT
AS $fn$
DECLARE
	-- Blanks (space, tab) around the whole and around "-" and "/" are
	-- ignored, as the gateway's parser does.
	s text := btrim(address, E' \t');
	lo text;
	hi text;
	ip inet;
	mask inet;
	maxbits integer;
	bits integer;
	hostmask bigint;
	tld text;
BEGIN
	IF s = '' THEN
		PERFORM tollgate.address_invalid(address, 'empty');
	END IF;

	-- A host name (RFC 1123): dot-separated labels of letters, digits and
	-- hyphens. A letter somewhere tells it from an IPv4 address, right or
	-- wrong; and the last label must begin with a letter (top-level labels
	-- are alphabetic, RFC 1123 2.1), so that a mistyped address such as
	-- 192.0.2.1o is refused instead of taken for a name. Stored in
	-- host_name lower case, without the optional trailing dot.
	IF s ~ '^[A-Za-z0-9.-]+$' AND s ~ '[A-Za-z]' THEN
		host_name := lower(s);
		IF right(host_name, 1) = '.' THEN
			host_name := left(host_name, -1);
		END IF;
		IF octet_length(host_name) > 253 THEN
			PERFORM tollgate.address_invalid(left(address, 40) || '...', 'host name longer than 253 characters');
		END IF;
		IF host_name LIKE '.%' OR host_name LIKE '%.' OR strpos(host_name, '..') > 0 THEN
			PERFORM tollgate.address_invalid(address, 'empty label in host name');
		END IF;
		IF host_name ~ '[^.]{64}' THEN
			PERFORM tollgate.address_invalid(address, 'host name label longer than 63 characters');
		END IF;
		IF host_name ~ '(^|\.)-|-($|\.)' THEN
			PERFORM tollgate.address_invalid(address, 'host name label begins or ends with "-"');
		END IF;
		tld := substring(host_name from '[^.]*$');
		IF tld !~ '^[a-z]' THEN
			PERFORM tollgate.address_invalid(address,
				format('not an address, range or host name (a host name cannot end in "%s": its last label begins with a letter)', tld));
		END IF;
		RETURN;
	END IF;

	-- The longest IPv6 range is 81 characters; the gateway reads at most 127.
	IF octet_length(address) > 100 THEN
		PERFORM tollgate.address_invalid(left(address, 40) || '...', 'longer than 100 characters');
	END IF;

	IF strpos(s, '/') > 0 AND strpos(s, '-') > 0 THEN
		IF s ~ '/[ \t]*-[0-9]+$' THEN
			PERFORM tollgate.address_invalid(address, 'prefix length out of range');
		END IF;
		PERFORM tollgate.address_invalid(address, 'a range cannot have a prefix length or netmask');
	END IF;

	IF strpos(s, '-') > 0 THEN
		IF s LIKE '%-%-%' THEN
			PERFORM tollgate.address_invalid(address, 'more than one "-"');
		END IF;
		lo := btrim(split_part(s, '-', 1), E' \t');
		hi := btrim(split_part(s, '-', 2), E' \t');
		first := tollgate.address_ip(lo);
		last := tollgate.address_ip(hi);
		IF first IS NULL AND last IS NULL THEN
			PERFORM tollgate.address_invalid(address, 'not an address, range or host name');
		ELSIF first IS NULL THEN
			PERFORM tollgate.address_invalid(address, format('range start "%s" is not an IP address', lo));
		ELSIF last IS NULL THEN
			PERFORM tollgate.address_invalid(address, format('range end "%s" is not an IP address', hi));
		ELSIF family(first) <> family(last) THEN
			PERFORM tollgate.address_invalid(address, 'range mixes IPv4 and IPv6');
		ELSIF first > last THEN
			PERFORM tollgate.address_invalid(address, 'range end before start');
		END IF;
		RETURN;
	END IF;

	IF strpos(s, '/') = 0 THEN
		first := tollgate.address_ip(s);
		IF first IS NULL THEN
			PERFORM tollgate.address_invalid(address, 'not an address, range or host name');
		END IF;
		last := first;
		RETURN;
	END IF;

	IF s LIKE '%/%/%' THEN
		PERFORM tollgate.address_invalid(address, 'more than one "/"');
	END IF;
	lo := btrim(split_part(s, '/', 1), E' \t');
	hi := btrim(split_part(s, '/', 2), E' \t');
	ip := tollgate.address_ip(lo);
	IF ip IS NULL THEN
		PERFORM tollgate.address_invalid(address, format('"%s" is not an IP address', lo));
	END IF;
	maxbits := CASE family(ip) WHEN 4 THEN 32 ELSE 128 END;
	mask := tollgate.address_ip(hi);

	IF hi ~ '^[0-9]{1,3}$' THEN
		bits := hi::integer;
		IF bits > maxbits THEN
			PERFORM tollgate.address_invalid(address, 'prefix length out of range');
		END IF;
	ELSIF hi ~ '^[0-9]+$' THEN
		PERFORM tollgate.address_invalid(address, 'prefix length out of range');
	ELSIF mask IS NOT NULL AND family(ip) = 4 AND family(mask) = 4 THEN
		-- Contiguous means the host part is 2^k - 1.
		hostmask := 4294967295 - (mask - '0.0.0.0'::inet);
		IF (hostmask & (hostmask + 1)) <> 0 THEN
			PERFORM tollgate.address_invalid(address, 'netmask is not contiguous');
		END IF;
		bits := 32 - length(replace(hostmask::bit(32)::text, '0', ''));
	ELSIF mask IS NOT NULL THEN
		PERFORM tollgate.address_invalid(address, 'netmask notation is for IPv4 only');
	ELSE
		PERFORM tollgate.address_invalid(address, 'prefix length or netmask expected after "/"');
	END IF;

	-- Host bits are allowed and masked off: 1.2.3.4/24 is 1.2.3.0-1.2.3.255.
	first := set_masklen(network(set_masklen(ip, bits))::inet, maxbits);
	last := set_masklen(broadcast(set_masklen(ip, bits)), maxbits);
END
$fn$;

COMMENT ON FUNCTION tollgate.parse_address(text) IS
	'Operator address notation -> (first, last) inclusive range, or host_name for a host name; raises 22P02 on anything else.';

-- An address as the unsigned number it is (IPv6: 128 bits), for addr_span6.
CREATE FUNCTION tollgate.inet_number(a inet)
	RETURNS numeric
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
SELECT CASE family(a)
	WHEN 4 THEN (a - '0.0.0.0'::inet)::numeric
	ELSE ((((('x' || encode(substring(inet_send(a) FROM 5 FOR 4), 'hex'))::bit(32)::bigint)::numeric
		* 4294967296 + ('x' || encode(substring(inet_send(a) FROM 9 FOR 4), 'hex'))::bit(32)::bigint)
		* 4294967296 + ('x' || encode(substring(inet_send(a) FROM 13 FOR 4), 'hex'))::bit(32)::bigint)
		* 4294967296 + ('x' || encode(substring(inet_send(a) FROM 17 FOR 4), 'hex'))::bit(32)::bigint)
	END
$fn$;

COMMENT ON FUNCTION tollgate.inet_number(inet) IS 'An address as an unsigned integer: 32 bits for IPv4, 128 for IPv6.';

-- A host name rule has host_name and no addr_first/addr_last; any other
-- rule has the range and no host_name.
--
-- addr_span4/addr_span6 hold the range as integers for the GiST indexes
-- behind rule_overlaps: NULL for the other family and for host names
-- (numrange(NULL, NULL) would be unbounded, hence the CASE). Two built-in
-- range types rather than one range over inet: GiST needs a range's
-- subtype_diff to build a usable index, and inet has none. Measured with
-- 1,000,000 rules: a range over inet without subtype_diff read 140 to 720
-- index pages per lookup (these read 3 to 5); with a subtype_diff written
-- in SQL, indexing 100,000 rules took over ten minutes; one numrange for
-- both families made a bulk load of 1,000,000 rules take 76 s instead of
-- 32 s, and a full rule_overlaps 54 s instead of 15 s.
ALTER TABLE tollgate.ip_rules
	ALTER COLUMN addr_first DROP NOT NULL,
	ALTER COLUMN addr_last DROP NOT NULL,
	ADD COLUMN host_name text,
	ADD COLUMN addr_span4 int8range GENERATED ALWAYS AS (
		CASE WHEN family(addr_first) = 4 AND family(addr_last) = 4
			THEN int8range(addr_first - '0.0.0.0'::inet, addr_last - '0.0.0.0'::inet, '[]')
		END) STORED,
	ADD COLUMN addr_span6 numrange GENERATED ALWAYS AS (
		CASE WHEN family(addr_first) = 6 AND family(addr_last) = 6
			THEN numrange(tollgate.inet_number(addr_first), tollgate.inet_number(addr_last), '[]')
		END) STORED,
	ADD CONSTRAINT ip_rules_address_kind_check CHECK (
		CASE WHEN host_name IS NULL THEN addr_first IS NOT NULL AND addr_last IS NOT NULL
			ELSE addr_first IS NULL AND addr_last IS NULL
		END);

COMMENT ON COLUMN tollgate.ip_rules.address IS
	'As typed: 1.2.3.4, 1.2.3.0/24, 1.2.3.0/255.255.255.0, 1.2.3.1-1.2.3.100, the IPv6 equivalents, or a host name.';
COMMENT ON COLUMN tollgate.ip_rules.addr_first IS 'First address of the range, set by trigger from address; NULL for a host name.';
COMMENT ON COLUMN tollgate.ip_rules.addr_last IS 'Last address of the range, set by trigger from address; NULL for a host name.';
COMMENT ON COLUMN tollgate.ip_rules.host_name IS
	'The host name the loader resolves, set by trigger from address: lower case, no trailing dot; NULL for addresses.';
COMMENT ON COLUMN tollgate.ip_rules.addr_span4 IS
	'IPv4 rules: addr_first..addr_last as 32-bit numbers, GiST-indexed for rule_overlaps; else NULL.';
COMMENT ON COLUMN tollgate.ip_rules.addr_span6 IS
	'IPv6 rules: addr_first..addr_last as 128-bit numbers, GiST-indexed for rule_overlaps; else NULL.';

-- Recomputed on every write, so addr_first/addr_last/host_name always
-- follow address even if someone sets them by hand.
CREATE OR REPLACE FUNCTION tollgate.ip_rules_fill()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
BEGIN
	SELECT p.first, p.last, p.host_name INTO NEW.addr_first, NEW.addr_last, NEW.host_name
	FROM tollgate.parse_address(NEW.address) AS p;
	RETURN NEW;
END
$fn$;

-- The clash check looks up equal ranges and equal names; the overlap view
-- looks up overlapping spans.
CREATE INDEX ip_rules_addr_idx ON tollgate.ip_rules (addr_first, addr_last);
CREATE INDEX ip_rules_host_name_idx ON tollgate.ip_rules (host_name) WHERE host_name IS NOT NULL;
CREATE INDEX ip_rules_addr_span4_idx ON tollgate.ip_rules USING gist (addr_span4) WHERE addr_span4 IS NOT NULL;
CREATE INDEX ip_rules_addr_span6_idx ON tollgate.ip_rules USING gist (addr_span6) WHERE addr_span6 IS NOT NULL;

-- Audit log ----------------------------------------------------------------

CREATE TABLE tollgate.audit_log (
	id bigserial PRIMARY KEY,
	-- Transaction start: all rows of one transaction share it.
	at timestamptz NOT NULL DEFAULT now(),
	db_user text NOT NULL DEFAULT current_user,
	application_name text DEFAULT current_setting('application_name'),
	table_name text NOT NULL,
	operation text NOT NULL
		CONSTRAINT audit_log_operation_check CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
	row_id bigint,
	old_row jsonb,
	new_row jsonb
);

CREATE INDEX audit_log_row_idx ON tollgate.audit_log (table_name, row_id);
CREATE INDEX audit_log_at_idx ON tollgate.audit_log (at);

COMMENT ON TABLE tollgate.audit_log IS
	'One row per row changed in a provisioning table (TRUNCATE: one row for the table), written by tollgate.feed(). Prune by at.';
COMMENT ON COLUMN tollgate.audit_log.old_row IS 'The row before: UPDATE and DELETE.';
COMMENT ON COLUMN tollgate.audit_log.new_row IS 'The row after: INSERT and UPDATE.';

-- Change feed --------------------------------------------------------------

-- Statement-level AFTER trigger for INSERT, UPDATE, DELETE and TRUNCATE of
-- a provisioning table with a bigint "id" (attach with tollgate.feed_attach).
-- It writes one audit_log row per changed row and notifies tollgate_changes
-- with "table,operation,id" per row; a statement above the row limit (and
-- whatever follows in a transaction that has already announced that many
-- rows of the table) gets one "table,BULK," instead. TRUNCATE is
-- "table,TRUNCATE,". Notifications go out at commit, deduplicated within
-- the transaction.
CREATE FUNCTION tollgate.feed()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
DECLARE
	-- SET tollgate.feed_row_limit = N changes the limit, e.g. to test BULK.
	row_limit text := current_setting('tollgate.feed_row_limit', true);
	-- Rows of this table announced one by one so far in this transaction.
	counter text := 'tollgate.feed_sent_' || TG_RELID::bigint;
	sent bigint := coalesce(nullif(current_setting(counter, true), '')::bigint, 0);
	max_rows bigint := CASE WHEN row_limit ~ '^[0-9]{1,9}$' THEN row_limit::bigint ELSE 1000 END;
	changed bigint;
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		INSERT INTO tollgate.audit_log (table_name, operation) VALUES (TG_TABLE_NAME, TG_OP);
		PERFORM pg_notify('tollgate_changes', TG_TABLE_NAME || ',TRUNCATE,');
		RETURN NULL;
	ELSIF TG_OP = 'INSERT' THEN
		INSERT INTO tollgate.audit_log (table_name, operation, row_id, new_row)
		SELECT TG_TABLE_NAME, TG_OP, n.id, to_jsonb(n) FROM new_rows AS n;
	ELSIF TG_OP = 'UPDATE' THEN
		-- id cannot change (trigger id_immutable), so id pairs the images.
		INSERT INTO tollgate.audit_log (table_name, operation, row_id, old_row, new_row)
		SELECT TG_TABLE_NAME, TG_OP, n.id, to_jsonb(o), to_jsonb(n)
		FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id;
	ELSE
		INSERT INTO tollgate.audit_log (table_name, operation, row_id, old_row)
		SELECT TG_TABLE_NAME, TG_OP, o.id, to_jsonb(o) FROM old_rows AS o;
	END IF;
	GET DIAGNOSTICS changed = ROW_COUNT;
	IF changed = 0 THEN
		RETURN NULL;
	END IF;

	IF sent + changed > max_rows THEN
		PERFORM pg_notify('tollgate_changes', TG_TABLE_NAME || ',BULK,');
	ELSIF TG_OP = 'DELETE' THEN
		PERFORM pg_notify('tollgate_changes', TG_TABLE_NAME || ',DELETE,' || r.id)
		FROM (SELECT id FROM old_rows ORDER BY id) AS r;
	ELSE
		PERFORM pg_notify('tollgate_changes', TG_TABLE_NAME || ',' || TG_OP || ',' || r.id)
		FROM (SELECT id FROM new_rows ORDER BY id) AS r;
	END IF;
	PERFORM set_config(counter, (sent + changed)::text, true);
	RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION tollgate.feed() IS
	'Change feed: audit_log rows and NOTIFY tollgate_changes "table,op,id" (or "table,BULK," / "table,TRUNCATE,").';

CREATE FUNCTION tollgate.refuse_id_change()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
BEGIN
	RAISE EXCEPTION '%.id cannot change (% to %)', TG_TABLE_NAME, OLD.id, NEW.id
		USING ERRCODE = 'integrity_constraint_violation',
		HINT = 'The change feed and the gateway know rows by id: delete the row and insert a new one.';
END
$fn$;

-- Attaches the change feed to a table: the four statement triggers (a
-- trigger with transition tables can have one event only) and the row
-- trigger that keeps id fixed. A new provisioning table needs just
--   CALL tollgate.feed_attach('tollgate.sip_users');
-- Running it again recreates the same triggers.
CREATE PROCEDURE tollgate.feed_attach(tbl regclass)
	LANGUAGE plpgsql
AS $fn$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_attribute
		WHERE attrelid = tbl AND attname = 'id' AND atttypid IN ('bigint'::regtype, 'integer'::regtype)
			AND NOT attisdropped) THEN
		RAISE EXCEPTION 'tollgate.feed_attach: table % has no integer column "id"', tbl;
	END IF;
	EXECUTE format('CREATE OR REPLACE TRIGGER feed_insert AFTER INSERT ON %s '
		'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tollgate.feed()', tbl);
	EXECUTE format('CREATE OR REPLACE TRIGGER feed_update AFTER UPDATE ON %s '
		'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tollgate.feed()', tbl);
	EXECUTE format('CREATE OR REPLACE TRIGGER feed_delete AFTER DELETE ON %s '
		'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tollgate.feed()', tbl);
	EXECUTE format('CREATE OR REPLACE TRIGGER feed_truncate AFTER TRUNCATE ON %s '
		'FOR EACH STATEMENT EXECUTE FUNCTION tollgate.feed()', tbl);
	EXECUTE format('CREATE OR REPLACE TRIGGER id_immutable BEFORE UPDATE ON %s '
		'FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION tollgate.refuse_id_change()', tbl);
END
$fn$;

CALL tollgate.feed_attach('tollgate.accounts');
CALL tollgate.feed_attach('tollgate.ip_rules');

-- Ambiguity refusal --------------------------------------------------------

-- Refuses a rule whose range (or host name), port and tech prefix equal
-- those of a rule of another account: a source matching both could not be
-- told apart. Rules of any status count: reactivating one would otherwise
-- make the match ambiguous without a word. Statement-level, so a bulk load
-- costs one join, not a lookup per row.
--
-- Concurrency: before looking, the statement takes transaction-scoped
-- advisory locks (pg_advisory_xact_lock(1952926034, bucket)) on the
-- buckets (of 1024) its rows' ranges hash to, in bucket order. Two
-- transactions adding the same range thus run the check one after the
-- other, and under READ COMMITTED the second one's check sees the first
-- one's committed rule. Buckets, not one lock per range, so that a
-- transaction holds at most 1024 locks however many rules it loads.
-- REPEATABLE READ and SERIALIZABLE are refused: their snapshot predates
-- the lock, so the check could miss a rule committed meanwhile.
CREATE FUNCTION tollgate.ip_rules_refuse_clash()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
DECLARE
	-- The rows whose match key is new: all inserted rows; updated rows
	-- whose account, address, port or prefix changed, so that suspending
	-- or describing a rule that clashed before version 2 still works.
	changed text := CASE TG_OP
		WHEN 'INSERT' THEN 'SELECT n.* FROM new_rows AS n'
		ELSE 'SELECT n.* FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id '
			'WHERE (n.account_id, n.addr_first, n.addr_last, n.host_name, n.port, n.tech_prefix) '
			'IS DISTINCT FROM (o.account_id, o.addr_first, o.addr_last, o.host_name, o.port, o.tech_prefix)'
		END;
	any_changed boolean;
	new_address text;
	new_port integer;
	new_prefix text;
	new_account_id bigint;
	other_id bigint;
	other_address text;
	other_account_id bigint;
	same_statement boolean;
	by_name boolean;
BEGIN
	-- EXECUTE: planned for this statement's row count each time, where a
	-- cached plan would keep the join chosen for the first statement seen.
	EXECUTE format('SELECT EXISTS (%s)', changed) INTO any_changed;
	IF NOT any_changed THEN
		RETURN NULL;
	END IF;
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'ip rules can be added or changed at READ COMMITTED isolation only, not %',
			upper(current_setting('transaction_isolation'))
			USING ERRCODE = 'feature_not_supported',
			DETAIL = 'The check that refuses ambiguous rules must see the rules other transactions commit while this one runs.',
			HINT = 'Run SET TRANSACTION ISOLATION LEVEL READ COMMITTED first in the transaction.';
	END IF;

	EXECUTE format($q$
		SELECT pg_advisory_xact_lock(1952926034, b)
		FROM (SELECT DISTINCT (CASE WHEN c.host_name IS NULL
					THEN hashinetextended(c.addr_first, hashinetextended(c.addr_last, 0))
					ELSE hashtextextended(c.host_name, 0) END & 1023)::integer AS b
			FROM (%s) AS c
			ORDER BY 1) AS s
		$q$, changed);

	EXECUTE format($q$
		WITH c AS (%s),
		clash AS (
			SELECT c.address, c.port, c.tech_prefix, c.account_id,
				r.id, r.address AS other_address, r.account_id AS other_account_id, false AS by_name
			FROM c JOIN tollgate.ip_rules AS r ON r.addr_first = c.addr_first AND r.addr_last = c.addr_last
			WHERE r.account_id <> c.account_id
				AND r.port IS NOT DISTINCT FROM c.port AND r.tech_prefix IS NOT DISTINCT FROM c.tech_prefix
			UNION ALL
			SELECT c.address, c.port, c.tech_prefix, c.account_id,
				r.id, r.address, r.account_id, true
			FROM c JOIN tollgate.ip_rules AS r ON r.host_name = c.host_name
			WHERE r.account_id <> c.account_id
				AND r.port IS NOT DISTINCT FROM c.port AND r.tech_prefix IS NOT DISTINCT FROM c.tech_prefix)
		SELECT address, port, tech_prefix, account_id, id, other_address, other_account_id, by_name,
			id IN (SELECT id FROM new_rows) AS same_statement
		FROM clash
		ORDER BY same_statement, id
		LIMIT 1
		$q$, changed)
		INTO new_address, new_port, new_prefix, new_account_id,
			other_id, other_address, other_account_id, by_name, same_statement;
	IF other_id IS NULL THEN
		RETURN NULL;
	END IF;

	RAISE EXCEPTION 'ip rule for "%" port % prefix % clashes with rule % of account "%": the match would be ambiguous',
		new_address, coalesce(new_port::text, 'any'), coalesce('"' || new_prefix || '"', 'none'),
		other_id, (SELECT name FROM tollgate.accounts WHERE id = other_account_id)
		USING ERRCODE = 'exclusion_violation',
		SCHEMA = 'tollgate', TABLE = 'ip_rules', CONSTRAINT = 'ip_rules_unambiguous',
		DETAIL = format('Rule %s ("%s"%s) covers the same %s with the same port and tech prefix; this rule is for account "%s".',
			other_id, other_address, CASE WHEN same_statement THEN ', in this same statement' ELSE '' END,
			CASE WHEN by_name THEN 'host name' ELSE 'addresses' END,
			(SELECT name FROM tollgate.accounts WHERE id = new_account_id)),
		HINT = 'Rules of different accounts for the same addresses need a port or tech prefix that tells them apart. '
			'Inactive rules count too.';
END
$fn$;

-- Named to fire before the feed_* triggers (AFTER triggers fire in name
-- order), so a refused statement does not write its audit rows first.
CREATE TRIGGER clash_insert AFTER INSERT ON tollgate.ip_rules
	REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION tollgate.ip_rules_refuse_clash();
CREATE TRIGGER clash_update AFTER UPDATE ON tollgate.ip_rules
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION tollgate.ip_rules_refuse_clash();

-- Overlap review -----------------------------------------------------------

-- Pairs of rules of different accounts whose address ranges overlap.
-- Overlaps are often meant (the most specific rule wins), so this is for
-- review, not a refusal. Each pair appears twice, once from each side, so
-- that "what do this rule's / this account's rules overlap?" is a filter
-- on rule_id or account that the planner drives through the indexes; add
-- WHERE rule_id < other_rule_id to see each pair once. overlap is from the
-- rule's side: equal, contains, within or partial. Host name rules are
-- not listed: their addresses are known only to the loader. Each rule
-- probes the addr_span4/addr_span6 GiST indexes (a BitmapOr of both).
CREATE VIEW tollgate.rule_overlaps AS
SELECT a.id AS rule_id, a.account_id, aa.name AS account,
	a.address, a.port, a.tech_prefix, a.status,
	b.id AS other_rule_id, b.account_id AS other_account_id, ba.name AS other_account,
	b.address AS other_address, b.port AS other_port, b.tech_prefix AS other_tech_prefix, b.status AS other_status,
	CASE WHEN a.addr_first = b.addr_first AND a.addr_last = b.addr_last THEN 'equal'
		WHEN a.addr_first <= b.addr_first AND b.addr_last <= a.addr_last THEN 'contains'
		WHEN b.addr_first <= a.addr_first AND a.addr_last <= b.addr_last THEN 'within'
		ELSE 'partial'
	END AS overlap,
	(a.port IS NOT DISTINCT FROM b.port AND a.tech_prefix IS NOT DISTINCT FROM b.tech_prefix) AS same_port_and_prefix
FROM tollgate.ip_rules AS a
JOIN tollgate.ip_rules AS b
	ON (b.addr_span4 && a.addr_span4 OR b.addr_span6 && a.addr_span6)
	AND b.account_id <> a.account_id
JOIN tollgate.accounts AS aa ON aa.id = a.account_id
JOIN tollgate.accounts AS ba ON ba.id = b.account_id;

COMMENT ON VIEW tollgate.rule_overlaps IS
	'Rules of different accounts whose address ranges overlap, each pair from both sides; for review.';

-- Rules stored before version 2 may already clash; they are kept (the
-- gateway has been running with them), and said so.
DO $warn$
DECLARE
	n bigint := (
		SELECT count(*)
		FROM tollgate.ip_rules AS a
		JOIN tollgate.ip_rules AS b
			ON b.addr_first = a.addr_first AND b.addr_last = a.addr_last AND b.id > a.id
		WHERE b.account_id <> a.account_id
			AND b.port IS NOT DISTINCT FROM a.port AND b.tech_prefix IS NOT DISTINCT FROM a.tech_prefix);
BEGIN
	IF n > 0 THEN
		RAISE WARNING 'pairs of ip rules of different accounts with the same range, port and tech prefix (the match is ambiguous): %', n
			USING HINT = 'They were kept. List them with: SELECT * FROM tollgate.rule_overlaps '
				'WHERE overlap = ''equal'' AND same_port_and_prefix AND rule_id < other_rule_id;';
	END IF;
END
$warn$;

UPDATE tollgate.schema_version SET version = 2, updated_at = now();

\endif

--
-- Step 3: SIP digest users. tollgate.settings holds digest_realm;
-- tollgate.sip_users holds users that authenticate by digest, with HA1
-- hashes set by tollgate.set_password() and never a password; the users
-- are on the change feed and in the audit log like the other tables.
--
SELECT version < 3 AS run_step FROM tollgate.schema_version \gset
\if :run_step

-- Settings -----------------------------------------------------------------

CREATE TABLE tollgate.settings (
	key text PRIMARY KEY,
	value text NOT NULL,
	-- The gateway writes the realm inside a quoted string of its
	-- challenges, and its config takes printable ASCII only.
	CONSTRAINT settings_digest_realm_check
		CHECK (key <> 'digest_realm' OR (value ~ '^[ -~]+$' AND value !~ '["\\]'))
);

COMMENT ON TABLE tollgate.settings IS 'Database-side settings, one row per key.';

-- HA1 = H(username:realm:password): a stored HA1 holds for one realm only.
-- It must equal digest.realm in the gateway's config (the loader logs
-- digest_realm_mismatch at every full load while they differ); changing
-- it clears every stored HA1 (see settings_realm_changed below).
INSERT INTO tollgate.settings (key, value) VALUES ('digest_realm', 'tollgate')
ON CONFLICT (key) DO NOTHING;

-- SIP users ----------------------------------------------------------------

CREATE TABLE tollgate.sip_users (
	id bigserial PRIMARY KEY,
	account_id bigint NOT NULL REFERENCES tollgate.accounts (id) ON DELETE CASCADE,
	-- The user part only: "alice", never "alice@example.com". No ":"
	-- either, since it is hashed as username:realm:password.
	username text NOT NULL
		CONSTRAINT sip_users_username_check
		CHECK (char_length(username) BETWEEN 1 AND 64 AND username !~ '[@:[:cntrl:]]'),
	-- NULL = any domain. Lower case (the fill trigger folds it), host name
	-- syntax (RFC 1123 labels; a dotted IPv4 address also fits).
	domain text
		CONSTRAINT sip_users_domain_check
		CHECK (domain = lower(domain) AND octet_length(domain) <= 253
			AND domain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'),
	status text NOT NULL DEFAULT 'active'
		CONSTRAINT sip_users_status_check CHECK (status IN ('active', 'inactive')),
	ha1_md5 text
		CONSTRAINT sip_users_ha1_md5_check CHECK (ha1_md5 ~ '^[0-9a-f]{32}$'),
	ha1_sha256 text
		CONSTRAINT sip_users_ha1_sha256_check CHECK (ha1_sha256 ~ '^[0-9a-f]{64}$'),
	-- The same over "username@domain", for phones configured with the
	-- full-URI form as their digest username. A user without a domain
	-- has none: which domain a client would append is unknown.
	ha1_md5_full text
		CONSTRAINT sip_users_ha1_md5_full_check CHECK (ha1_md5_full ~ '^[0-9a-f]{32}$'),
	ha1_sha256_full text
		CONSTRAINT sip_users_ha1_sha256_full_check CHECK (ha1_sha256_full ~ '^[0-9a-f]{64}$'),
	restrict_sources boolean NOT NULL DEFAULT false,
	-- Addresses in ip_rules notation (no host names), checked by the
	-- sip_users_fill trigger. At most 32: what the gateway keeps per user.
	allowed_sources text[] NOT NULL DEFAULT '{}'
		CONSTRAINT sip_users_allowed_sources_check
		CHECK (cardinality(allowed_sources) <= 32 AND coalesce(array_ndims(allowed_sources), 1) = 1),
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT sip_users_ha1_full_domain_check
		CHECK (domain IS NOT NULL OR (ha1_md5_full IS NULL AND ha1_sha256_full IS NULL))
);

CREATE UNIQUE INDEX sip_users_username_domain_key ON tollgate.sip_users (username, coalesce(domain, ''));
CREATE INDEX sip_users_account_id_idx ON tollgate.sip_users (account_id);

COMMENT ON TABLE tollgate.sip_users IS 'Users that authenticate by SIP digest; the password is kept only as HA1 hashes.';
COMMENT ON COLUMN tollgate.sip_users.domain IS 'Domain the user belongs to, lower case; NULL = any.';
COMMENT ON COLUMN tollgate.sip_users.ha1_md5 IS 'md5(username:realm:password), hex; set by tollgate.set_password().';
COMMENT ON COLUMN tollgate.sip_users.ha1_sha256 IS 'sha256(username:realm:password), hex; set by tollgate.set_password().';
COMMENT ON COLUMN tollgate.sip_users.ha1_md5_full IS
	'md5(username@domain:realm:password), hex, for clients that send the full-URI username; NULL without a domain.';
COMMENT ON COLUMN tollgate.sip_users.ha1_sha256_full IS
	'sha256(username@domain:realm:password), hex, for clients that send the full-URI username; NULL without a domain.';
COMMENT ON COLUMN tollgate.sip_users.restrict_sources IS
	'true: only sources in allowed_sources may use this user (none when it is empty).';
COMMENT ON COLUMN tollgate.sip_users.allowed_sources IS
	'Up to 32 source addresses in ip_rules notation (1.2.3.4, 1.2.3.0/24, ranges, IPv6); host names are refused.';

-- Folds the domain to lower case (without a trailing dot) and checks each
-- allowed_sources element with parse_address(); a host name is refused:
-- the loader resolves ip_rules names only. An UPDATE that renames the
-- user, or changes its domain, clears the HA1 values that were computed
-- over the old name and that it does not set itself: they could never
-- verify again.
CREATE FUNCTION tollgate.sip_users_fill()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
DECLARE
	src text;
	name text;
BEGIN
	IF NEW.domain IS NOT NULL THEN
		NEW.domain := lower(NEW.domain);
		IF right(NEW.domain, 1) = '.' THEN
			NEW.domain := left(NEW.domain, -1);
		END IF;
	END IF;
	FOREACH src IN ARRAY NEW.allowed_sources LOOP
		IF src IS NULL THEN
			PERFORM tollgate.address_invalid('NULL', 'allowed_sources cannot hold NULL');
		END IF;
		SELECT p.host_name INTO name FROM tollgate.parse_address(src) AS p;
		IF name IS NOT NULL THEN
			PERFORM tollgate.address_invalid(src, 'host names are not accepted in sip_users.allowed_sources');
		END IF;
	END LOOP;
	IF TG_OP = 'UPDATE' AND NEW.username IS DISTINCT FROM OLD.username THEN
		IF NEW.ha1_md5 IS NOT DISTINCT FROM OLD.ha1_md5 THEN
			NEW.ha1_md5 := NULL;
		END IF;
		IF NEW.ha1_sha256 IS NOT DISTINCT FROM OLD.ha1_sha256 THEN
			NEW.ha1_sha256 := NULL;
		END IF;
	END IF;
	IF TG_OP = 'UPDATE' AND (NEW.username, NEW.domain) IS DISTINCT FROM (OLD.username, OLD.domain) THEN
		IF NEW.ha1_md5_full IS NOT DISTINCT FROM OLD.ha1_md5_full THEN
			NEW.ha1_md5_full := NULL;
		END IF;
		IF NEW.ha1_sha256_full IS NOT DISTINCT FROM OLD.ha1_sha256_full THEN
			NEW.ha1_sha256_full := NULL;
		END IF;
	END IF;
	RETURN NEW;
END
$fn$;

CREATE TRIGGER sip_users_fill BEFORE INSERT OR UPDATE ON tollgate.sip_users
	FOR EACH ROW EXECUTE FUNCTION tollgate.sip_users_fill();
CREATE TRIGGER sip_users_touch BEFORE UPDATE ON tollgate.sip_users
	FOR EACH ROW EXECUTE FUNCTION tollgate.touch_updated_at();

CALL tollgate.feed_attach('tollgate.sip_users');

-- A new realm clears every HA1 -----------------------------------------------

-- An HA1 computed for one realm never verifies in another, so a new
-- digest_realm would otherwise leave every user failing with no word.
-- Instead it clears them all (a warning says how many): passwords must be
-- set again. Their UPDATE goes out on the change feed as usual, and a
-- "settings,UPDATE,digest_realm" notification makes the loader load in
-- full, which compares the new realm with its config. Inserting the row
-- (after a DELETE) counts as a change too: the old value is unknown.
CREATE FUNCTION tollgate.settings_realm_changed()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
DECLARE
	n bigint;
BEGIN
	UPDATE tollgate.sip_users
	SET ha1_md5 = NULL, ha1_sha256 = NULL, ha1_md5_full = NULL, ha1_sha256_full = NULL
	WHERE ha1_md5 IS NOT NULL OR ha1_sha256 IS NOT NULL OR ha1_md5_full IS NOT NULL OR ha1_sha256_full IS NOT NULL;
	GET DIAGNOSTICS n = ROW_COUNT;
	PERFORM pg_notify('tollgate_changes', 'settings,' || TG_OP || ',digest_realm');
	IF n > 0 THEN
		RAISE WARNING 'digest_realm is now "%": the HA1 of % SIP users were cleared', NEW.value, n
			USING DETAIL = 'HA1 = H(username:realm:password) holds for one realm only; those users cannot authenticate until their password is set again.',
			HINT = 'Set each password again with tollgate.set_password(username, password, domain), '
				'and make digest.realm in the gateway''s config the same.';
	END IF;
	RETURN NULL;
END
$fn$;

CREATE TRIGGER settings_realm_insert AFTER INSERT ON tollgate.settings
	FOR EACH ROW WHEN (NEW.key = 'digest_realm')
	EXECUTE FUNCTION tollgate.settings_realm_changed();
CREATE TRIGGER settings_realm_update AFTER UPDATE ON tollgate.settings
	FOR EACH ROW WHEN (NEW.key = 'digest_realm' AND (OLD.key, OLD.value) IS DISTINCT FROM (NEW.key, NEW.value))
	EXECUTE FUNCTION tollgate.settings_realm_changed();

-- set_password ---------------------------------------------------------------

-- Stores the HA1 hashes of one user, computed with the realm in
-- tollgate.settings; the password itself is not stored anywhere. Without
-- a domain it names the user with no domain when there is one, else the
-- only user of that name.
CREATE FUNCTION tollgate.set_password(username text, password text, domain text DEFAULT NULL)
	RETURNS void
	LANGUAGE plpgsql
	SECURITY INVOKER
AS $fn$
DECLARE
	realm text := (SELECT s.value FROM tollgate.settings AS s WHERE s.key = 'digest_realm');
	dom text := lower(rtrim(set_password.domain, '.'));
	n bigint;
	user_id bigint;
	user_domain text;
	secret bytea;
	secret_full bytea;
BEGIN
	IF set_password.username IS NULL OR set_password.password IS NULL OR set_password.password = '' THEN
		RAISE EXCEPTION 'tollgate.set_password: username and a non-empty password are required'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF realm IS NULL THEN
		RAISE EXCEPTION 'tollgate.settings has no digest_realm'
			USING ERRCODE = 'no_data_found',
			HINT = 'INSERT INTO tollgate.settings VALUES (''digest_realm'', ''<the realm in the config>'');';
	END IF;

	IF dom IS NULL THEN
		SELECT u.id INTO user_id
		FROM tollgate.sip_users AS u
		WHERE u.username = set_password.username AND u.domain IS NULL;
	END IF;
	IF user_id IS NULL THEN
		SELECT count(*), min(u.id) INTO n, user_id
		FROM tollgate.sip_users AS u
		WHERE u.username = set_password.username
			AND (dom IS NULL OR u.domain = dom);
		IF n = 0 THEN
			IF dom IS NULL THEN
				RAISE EXCEPTION 'no SIP user named "%"', set_password.username
					USING ERRCODE = 'no_data_found';
			END IF;
			RAISE EXCEPTION 'no SIP user named "%" in domain "%"', set_password.username, dom
				USING ERRCODE = 'no_data_found';
		ELSIF n > 1 THEN
			RAISE EXCEPTION 'several users named "%": give the domain', set_password.username
				USING ERRCODE = 'cardinality_violation',
				HINT = format('SELECT tollgate.set_password(%L, ''...'', ''<domain>'');', set_password.username);
		END IF;
	END IF;

	SELECT u.domain INTO user_domain FROM tollgate.sip_users AS u WHERE u.id = user_id;
	secret := convert_to(set_password.username || ':' || realm || ':' || set_password.password, 'UTF8');
	-- NULL without a domain, and so are the hashes over it.
	secret_full := convert_to(set_password.username || '@' || user_domain || ':' || realm || ':'
		|| set_password.password, 'UTF8');
	UPDATE tollgate.sip_users AS u
	SET ha1_md5 = md5(secret), ha1_sha256 = encode(sha256(secret), 'hex'),
		ha1_md5_full = md5(secret_full), ha1_sha256_full = encode(sha256(secret_full), 'hex')
	WHERE u.id = user_id;
END
$fn$;

COMMENT ON FUNCTION tollgate.set_password(text, text, text) IS
	'Sets the HA1 hashes of one SIP user (over username, and over username@domain when it has a domain) '
	'from a password and the digest_realm setting; stores no password.';

UPDATE tollgate.schema_version SET version = 3, updated_at = now();

\endif

--
-- Step 4: call limits and policy. Accounts get a burst for their call
-- rate and three lists: destination prefixes allowed and denied, and
-- codecs refused; IP rules get limits of their own. Columns with their
-- checks and a trigger that folds codec names are added, and nothing is
-- rewritten: the feed's payloads, the audit log and every other trigger
-- stay as they were (the audit rows simply carry the new columns).
--
SELECT version < 4 AS run_step FROM tollgate.schema_version \gset
\if :run_step

-- Each refuses the first bad element of its list with a message that
-- names it, so CHECK constraints can give errors an operator can act on:
-- a constraint's own message would only name the constraint. They return
-- true or raise; IMMUTABLE, as a CHECK needs. The limits are what the
-- gateway keeps per account (shm/snapshot.h).
CREATE FUNCTION tollgate.destination_prefixes_check(prefixes text[], list text)
	RETURNS boolean
	LANGUAGE plpgsql IMMUTABLE
AS $fn$
DECLARE
	p text;
BEGIN
	IF coalesce(array_ndims(prefixes), 1) <> 1 THEN
		RAISE EXCEPTION '% must be a one-dimensional array', list
			USING ERRCODE = 'check_violation';
	END IF;
	IF cardinality(prefixes) > 64 THEN
		RAISE EXCEPTION '% holds % prefixes, at most 64 are allowed', list, cardinality(prefixes)
			USING ERRCODE = 'check_violation';
	END IF;
	FOREACH p IN ARRAY prefixes LOOP
		IF p IS NULL THEN
			RAISE EXCEPTION '% cannot hold NULL', list
				USING ERRCODE = 'check_violation';
		ELSIF p = '' THEN
			RAISE EXCEPTION 'invalid destination prefix "" in %: empty', list
				USING ERRCODE = 'check_violation';
		ELSIF octet_length(p) > 32 THEN
			RAISE EXCEPTION 'invalid destination prefix "%" in %: longer than 32 bytes', p, list
				USING ERRCODE = 'check_violation';
		ELSIF p !~ '^[0-9A-Za-z_.!~*''()%&=+$,?/#-]+$' THEN
			RAISE EXCEPTION 'invalid destination prefix "%" in %: a character a SIP user part cannot carry', p, list
				USING ERRCODE = 'check_violation',
				HINT = 'Allowed: letters, digits and - _ . ! ~ * '' ( ) % & = + $ , ? / #; '
					'no ";", "@", ":", blanks or control characters.';
		END IF;
	END LOOP;
	RETURN true;
END
$fn$;

COMMENT ON FUNCTION tollgate.destination_prefixes_check(text[], text) IS
	'CHECK helper: true for a list of destination prefixes the gateway takes, else raises naming the bad one.';

CREATE FUNCTION tollgate.codecs_check(codecs text[])
	RETURNS boolean
	LANGUAGE plpgsql IMMUTABLE
AS $fn$
DECLARE
	c text;
BEGIN
	IF coalesce(array_ndims(codecs), 1) <> 1 THEN
		RAISE EXCEPTION 'restricted_codecs must be a one-dimensional array'
			USING ERRCODE = 'check_violation';
	END IF;
	IF cardinality(codecs) > 32 THEN
		RAISE EXCEPTION 'restricted_codecs holds % codecs, at most 32 are allowed', cardinality(codecs)
			USING ERRCODE = 'check_violation';
	END IF;
	FOREACH c IN ARRAY codecs LOOP
		IF c IS NULL THEN
			RAISE EXCEPTION 'restricted_codecs cannot hold NULL'
				USING ERRCODE = 'check_violation';
		ELSIF c !~ '^[0-9A-Za-z._-]{1,32}$' THEN
			RAISE EXCEPTION 'invalid codec "%" in restricted_codecs: 1 to 32 letters, digits, ".", "_" or "-"', c
				USING ERRCODE = 'check_violation',
				HINT = 'Give the encoding name of an SDP rtpmap line: G729, PCMA, opus, telephone-event.';
		ELSIF c ~ '[a-z]' THEN
			-- accounts_fill upper-cases them; only a write that bypassed it gets here.
			RAISE EXCEPTION 'invalid codec "%" in restricted_codecs: not upper case', c
				USING ERRCODE = 'check_violation';
		END IF;
	END LOOP;
	RETURN true;
END
$fn$;

COMMENT ON FUNCTION tollgate.codecs_check(text[]) IS
	'CHECK helper: true for a list of codec names the gateway takes, else raises naming the bad one.';

ALTER TABLE tollgate.accounts
	ADD COLUMN cps_burst integer
		CONSTRAINT accounts_cps_burst_check CHECK (cps_burst >= 0),
	ADD COLUMN allowed_prefixes text[] NOT NULL DEFAULT '{}'
		CONSTRAINT accounts_allowed_prefixes_check
		CHECK (tollgate.destination_prefixes_check(allowed_prefixes, 'allowed_prefixes')),
	ADD COLUMN denied_prefixes text[] NOT NULL DEFAULT '{}'
		CONSTRAINT accounts_denied_prefixes_check
		CHECK (tollgate.destination_prefixes_check(denied_prefixes, 'denied_prefixes')),
	ADD COLUMN restricted_codecs text[] NOT NULL DEFAULT '{}'
		CONSTRAINT accounts_restricted_codecs_check CHECK (tollgate.codecs_check(restricted_codecs));

COMMENT ON COLUMN tollgate.accounts.cps_burst IS
	'New calls a burst may take at once, above max_cps for an instant; NULL or 0 = max_cps.';
COMMENT ON COLUMN tollgate.accounts.allowed_prefixes IS
	'Destinations (Request-URI user after the tech prefix) the account may call, by prefix; empty = all. At most 64 of 1..32 bytes.';
COMMENT ON COLUMN tollgate.accounts.denied_prefixes IS
	'Destinations the account may not call, by prefix; wins over allowed_prefixes. At most 64 of 1..32 bytes.';
COMMENT ON COLUMN tollgate.accounts.restricted_codecs IS
	'SDP encoding names (G729, PCMA...) the account may not offer; stored upper case. At most 32.';

-- Codec names compare case-insensitively, so they are stored one way:
-- ASCII upper case, as the gateway folds them (upper() follows the
-- database's locale, and turns a Turkish i into a letter no codec has).
CREATE FUNCTION tollgate.accounts_fill()
	RETURNS trigger
	LANGUAGE plpgsql
AS $fn$
BEGIN
	IF NEW.restricted_codecs IS NOT NULL AND coalesce(array_ndims(NEW.restricted_codecs), 1) = 1 THEN
		NEW.restricted_codecs := ARRAY(
			SELECT translate(c, 'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')
			FROM unnest(NEW.restricted_codecs) WITH ORDINALITY AS u(c, n)
			ORDER BY n);
	END IF;
	RETURN NEW;
END
$fn$;

CREATE TRIGGER accounts_fill BEFORE INSERT OR UPDATE ON tollgate.accounts
	FOR EACH ROW EXECUTE FUNCTION tollgate.accounts_fill();

-- NULL or 0 = no limit of the rule's own (the account's still apply).
-- Adding the columns rewrites nothing; their checks read the table once.
ALTER TABLE tollgate.ip_rules
	ADD COLUMN max_channels integer
		CONSTRAINT ip_rules_max_channels_check CHECK (max_channels >= 0),
	ADD COLUMN max_cps integer
		CONSTRAINT ip_rules_max_cps_check CHECK (max_cps >= 0),
	ADD COLUMN cps_burst integer
		CONSTRAINT ip_rules_cps_burst_check CHECK (cps_burst >= 0);

COMMENT ON COLUMN tollgate.ip_rules.max_channels IS
	'Concurrent calls through this rule; NULL or 0 = no limit of its own (the account''s still applies).';
COMMENT ON COLUMN tollgate.ip_rules.max_cps IS
	'New calls per second through this rule; NULL or 0 = no limit of its own.';
COMMENT ON COLUMN tollgate.ip_rules.cps_burst IS
	'New calls a burst may take at once through this rule; NULL or 0 = max_cps.';

UPDATE tollgate.schema_version SET version = 4, updated_at = now();

\endif

-- A step that forgot to record its version, or a latest_version that
-- forgot a step, fails here instead of leaving a half-known schema.
DO $check$
DECLARE
	found integer := (SELECT version FROM tollgate.schema_version);
	latest integer := current_setting('tollgate.install_latest')::integer;
BEGIN
	IF found <> latest THEN
		RAISE EXCEPTION 'install.sql ended at schema version %, expected %', found, latest;
	END IF;
END
$check$;

COMMIT;

SELECT format('tollgate schema at version %s', version) AS tg_done FROM tollgate.schema_version \gset
\echo :tg_done

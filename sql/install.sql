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
\set latest_version 1

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
-- Step 2 goes here:
--   SELECT version < 2 AS run_step FROM tollgate.schema_version \gset
--   \if :run_step
--   ...
--   UPDATE tollgate.schema_version SET version = 2, updated_at = now();
--   \endif
--

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

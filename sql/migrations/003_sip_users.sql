-- tollgate schema step 3: SIP digest users (issue 5). NOT YET PART OF
-- install.sql: the loader does not read sip_users yet and accepts schema
-- version 2 only (LOADER_SCHEMA_VERSION in sql/loader.c). When it learns
-- sip_users, this block moves into install.sql as step 3 and
-- latest_version becomes 3. Until then, apply by hand after install.sql:
--
--   psql -v ON_ERROR_STOP=1 -d DBNAME -f sql/install.sql
--   psql -v ON_ERROR_STOP=1 -d DBNAME -f sql/migrations/003_sip_users.sql
--
-- Same shape as the steps of install.sql: one transaction, guarded by
-- tollgate.schema_version, so running it again is a no-op. A database at
-- version 3 then makes install.sql (which knows version 2) refuse to run.

\set ON_ERROR_STOP 1
\set QUIET on

BEGIN;

SET LOCAL client_min_messages = warning;

-- The same lock as install.sql: this file and install.sql never interleave.
SELECT pg_advisory_xact_lock(hashtext('tollgate install.sql')) AS tg_locked \gset

DO $check$
DECLARE
	found integer;
BEGIN
	IF to_regclass('tollgate.schema_version') IS NULL THEN
		RAISE EXCEPTION 'tollgate schema not installed: run sql/install.sql first'
			USING ERRCODE = 'undefined_table';
	END IF;
	found := (SELECT version FROM tollgate.schema_version);
	IF found < 2 THEN
		RAISE EXCEPTION 'tollgate schema is at version %, step 3 needs version 2: run sql/install.sql first', found
			USING ERRCODE = 'feature_not_supported';
	ELSIF found > 3 THEN
		RAISE EXCEPTION 'tollgate schema is at version %, newer than 003_sip_users.sql knows (version 3)', found
			USING ERRCODE = 'feature_not_supported';
	END IF;
END
$check$;

--
-- Step 3: SIP digest users and their HA1 hashes.
--
SELECT version < 3 AS run_step FROM tollgate.schema_version \gset
\if :run_step

-- Settings -------------------------------------------------------------------

CREATE TABLE tollgate.settings (
	key text PRIMARY KEY,
	value text NOT NULL
);

COMMENT ON TABLE tollgate.settings IS 'Database-side settings, one row per key.';

-- HA1 = H(username:realm:password): changing the realm makes every stored
-- HA1 useless until each password is set again.
INSERT INTO tollgate.settings (key, value) VALUES ('digest_realm', 'tollgate')
ON CONFLICT (key) DO NOTHING;

-- SIP users --------------------------------------------------------------------

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
	restrict_sources boolean NOT NULL DEFAULT false,
	-- Addresses in ip_rules notation (no host names), checked by the
	-- sip_users_fill trigger.
	allowed_sources text[] NOT NULL DEFAULT '{}',
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX sip_users_username_domain_key ON tollgate.sip_users (username, coalesce(domain, ''));
CREATE INDEX sip_users_account_id_idx ON tollgate.sip_users (account_id);

COMMENT ON TABLE tollgate.sip_users IS 'Users that authenticate by SIP digest; the password is kept only as HA1 hashes.';
COMMENT ON COLUMN tollgate.sip_users.domain IS 'Domain the user belongs to, lower case; NULL = any.';
COMMENT ON COLUMN tollgate.sip_users.ha1_md5 IS 'md5(username:realm:password), hex; set by tollgate.set_password().';
COMMENT ON COLUMN tollgate.sip_users.ha1_sha256 IS 'sha256(username:realm:password), hex; set by tollgate.set_password().';
COMMENT ON COLUMN tollgate.sip_users.restrict_sources IS
	'true: only sources in allowed_sources may use this user (none when it is empty).';
COMMENT ON COLUMN tollgate.sip_users.allowed_sources IS
	'Source addresses in ip_rules notation (1.2.3.4, 1.2.3.0/24, ranges, IPv6); host names are refused.';

-- Folds the domain to lower case (without a trailing dot) and checks each
-- allowed_sources element with parse_address(); a host name is refused:
-- the loader resolves ip_rules names only.
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
	RETURN NEW;
END
$fn$;

CREATE TRIGGER sip_users_fill BEFORE INSERT OR UPDATE ON tollgate.sip_users
	FOR EACH ROW EXECUTE FUNCTION tollgate.sip_users_fill();
CREATE TRIGGER sip_users_touch BEFORE UPDATE ON tollgate.sip_users
	FOR EACH ROW EXECUTE FUNCTION tollgate.touch_updated_at();

CALL tollgate.feed_attach('tollgate.sip_users');

-- set_password -------------------------------------------------------------------

-- Stores both HA1 hashes of one user, computed with the realm in
-- tollgate.settings; the password itself is not stored anywhere.
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
	secret bytea;
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

	secret := convert_to(set_password.username || ':' || realm || ':' || set_password.password, 'UTF8');
	UPDATE tollgate.sip_users AS u
	SET ha1_md5 = md5(secret), ha1_sha256 = encode(sha256(secret), 'hex')
	WHERE u.id = user_id;
END
$fn$;

COMMENT ON FUNCTION tollgate.set_password(text, text, text) IS
	'Sets ha1_md5 and ha1_sha256 of one SIP user from a password and the digest_realm setting; stores no password.';

UPDATE tollgate.schema_version SET version = 3, updated_at = now();

\endif

DO $check$
BEGIN
	IF (SELECT version FROM tollgate.schema_version) <> 3 THEN
		RAISE EXCEPTION '003_sip_users.sql ended at schema version %, expected 3',
			(SELECT version FROM tollgate.schema_version);
	END IF;
END
$check$;

COMMIT;

SELECT format('tollgate schema at version %s', version) AS tg_done FROM tollgate.schema_version \gset
\echo :tg_done

-- Demo provisioning for `make run`, after sql/install.sql.
--
--   psql -v ON_ERROR_STOP=1 -d DBNAME -f sql/demo.sql
--
-- Safe to run again: existing accounts are kept as they are, a rule is
-- added only when its account has no rule with that address yet, and the
-- SIP user's password is set only while it has none.
--
--   demo       127.0.0.20      max 10 channels
--   acme       127.0.0.30/32   any port, no tech prefix
--   suspended  127.0.0.40      inactive account: its calls are refused
--   alice      SIP user of demo, password alice-secret, any domain and
--              source (digest authentication is on when the config has a
--              digest section; its realm must be "tollgate", the
--              digest_realm in tollgate.settings)

\set ON_ERROR_STOP 1
\set QUIET on

BEGIN;

-- Shows as the author of these rows in tollgate.audit_log.
SET LOCAL application_name = 'tollgate demo.sql';

INSERT INTO tollgate.accounts (name, status, max_channels)
VALUES ('demo', 'active', 10),
	('acme', 'active', 0),
	('suspended', 'inactive', 0)
ON CONFLICT (name) DO NOTHING;

INSERT INTO tollgate.ip_rules (account_id, address, port, tech_prefix, description)
SELECT a.id, r.address, NULL, NULL, 'demo data'
FROM (VALUES ('demo', '127.0.0.20'),
		('acme', '127.0.0.30/32'),
		('suspended', '127.0.0.40')) AS r (account, address)
JOIN tollgate.accounts AS a ON a.name = r.account
WHERE NOT EXISTS (
	SELECT 1 FROM tollgate.ip_rules AS x
	WHERE x.account_id = a.id AND x.address = r.address);

INSERT INTO tollgate.sip_users (account_id, username)
SELECT a.id, 'alice'
FROM tollgate.accounts AS a
WHERE a.name = 'demo'
	AND NOT EXISTS (SELECT 1 FROM tollgate.sip_users AS u WHERE u.username = 'alice' AND u.domain IS NULL);

DO $demo$
BEGIN
	IF EXISTS (SELECT 1 FROM tollgate.sip_users AS u
		WHERE u.username = 'alice' AND u.domain IS NULL AND u.ha1_md5 IS NULL) THEN
		PERFORM tollgate.set_password('alice', 'alice-secret');
	END IF;
END
$demo$;

COMMIT;

\echo tollgate demo data: accounts demo, acme, suspended; SIP user alice (password alice-secret)

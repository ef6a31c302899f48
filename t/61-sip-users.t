#!/usr/bin/perl
# sql/migrations/003_sip_users.sql: SIP digest users (issue 5), applied by
# hand after install.sql until the loader knows schema version 3.
# set_password() stores both HA1 hashes and no password; users are found
# by name (and domain when the name is not unique); allowed_sources are
# checked; the users follow their account; the change feed covers them;
# applying the file twice is a no-op.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Digest::MD5 qw(md5_hex);
use Digest::SHA qw(sha256_hex);
use Tollgate;
use Tollgate::PG;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);	# runs sql/install.sql once
my $step3 = Tollgate::repo_dir() . '/sql/migrations/003_sip_users.sql';
my $q = \&Tollgate::PG::quote;

my ($rc, $out, $err) = $pg->psql_try(undef, file => $step3);
is($rc, 0, '003_sip_users.sql applies after install.sql') or diag $err;
is($pg->psql('select version from tollgate.schema_version'), 3, 'schema at version 3');
is($pg->psql("select value from tollgate.settings where key = 'digest_realm'"), 'tollgate',
    'digest_realm defaults to tollgate');

# --- set_password -------------------------------------------------------------

my $acct = $pg->add_account('sipcust');
my $alice = $pg->psql("insert into tollgate.sip_users (account_id, username) values ($acct, 'alice') returning id");
is($pg->psql("select ha1_md5 is null and ha1_sha256 is null from tollgate.sip_users where id = $alice"), 't',
    'a new user has no HA1');
is($pg->psql("select restrict_sources from tollgate.sip_users where id = $alice"), 'f',
    'restrict_sources defaults to false');
is($pg->psql("select status from tollgate.sip_users where id = $alice"), 'active', 'status defaults to active');

my $pw = "s3cr\x{e9}t";	# non-ASCII: hashed as UTF-8
my $pw_utf8 = "s3cr\xc3\xa9t";
$pg->psql("select tollgate.set_password('alice', " . $q->($pw_utf8) . ")");
my ($md5, $sha) = split /\|/, $pg->psql("select ha1_md5, ha1_sha256 from tollgate.sip_users where id = $alice");
is($md5, md5_hex("alice:tollgate:$pw_utf8"), 'ha1_md5 = md5(username:realm:password)');
is($sha, sha256_hex("alice:tollgate:$pw_utf8"), 'ha1_sha256 = sha256(username:realm:password)');
is($pg->psql("select count(*) from tollgate.sip_users where id = $alice and "
    . "(to_jsonb(sip_users)::text like '%s3cr%')"), 0, 'the password is stored nowhere in the row');

# RFC 7616 3.9.1 vector: Mufasa / http-auth@example.org / Circle of Life
$pg->psql("update tollgate.settings set value = 'http-auth\@example.org' where key = 'digest_realm'");
my $mufasa = $pg->psql("insert into tollgate.sip_users (account_id, username) values ($acct, 'Mufasa') returning id");
$pg->psql("select tollgate.set_password('Mufasa', 'Circle of Life')");
is($pg->psql("select ha1_md5 from tollgate.sip_users where id = $mufasa"),
    md5_hex('Mufasa:http-auth@example.org:Circle of Life'), 'realm read from tollgate.settings');
$pg->psql("update tollgate.settings set value = 'tollgate' where key = 'digest_realm'");

($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('nobody', 'x')");
isnt($rc, 0, 'set_password for an unknown user refused');
like($err, qr/no SIP user named "nobody"/, '... saying so');

# --- two users named alice --------------------------------------------------

$pg->psql("delete from tollgate.sip_users where id = $alice");
my $a1 = $pg->psql("insert into tollgate.sip_users (account_id, username, domain) values ($acct, 'alice', 'one.example.com') returning id");
my $a2 = $pg->psql("insert into tollgate.sip_users (account_id, username, domain) values ($acct, 'alice', 'Two.Example.COM') returning id");
is($pg->psql("select domain from tollgate.sip_users where id = $a2"), 'two.example.com', 'domain stored lower case');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', 'pw')");
isnt($rc, 0, 'two users named alice, no domain: refused');
like($err, qr/several users named "alice": give the domain/, '... with the message');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', 'pw', 'two.example.com')");
is($rc, 0, 'with the domain: accepted') or diag $err;
is($pg->psql("select id from tollgate.sip_users where ha1_md5 = " . $q->(md5_hex('alice:tollgate:pw'))), $a2,
    '... and only that user changed');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', 'pw', 'three.example.com')");
isnt($rc, 0, 'a domain with no such user: refused');
like($err, qr/no SIP user named "alice" in domain "three.example.com"/, '... saying so');

($rc, $out, $err) = $pg->psql_try("insert into tollgate.sip_users (account_id, username, domain) values ($acct, 'alice', 'one.example.com')");
isnt($rc, 0, 'same username and domain twice refused');
$pg->psql("insert into tollgate.sip_users (account_id, username) values ($acct, 'bob')");
($rc, $out, $err) = $pg->psql_try("insert into tollgate.sip_users (account_id, username) values ($acct, 'bob')");
isnt($rc, 0, 'same username twice with no domain refused');

# --- columns ------------------------------------------------------------------

my $carol = $pg->psql("insert into tollgate.sip_users (account_id, username, status) values ($acct, 'carol', 'inactive') returning id");
is($pg->psql("select status from tollgate.sip_users where id = $carol"), 'inactive', 'inactive status stored');
for my $bad ([ status => "'paused'" ], [ username => "''" ], [ username => "'alice\@example.com'" ],
    [ username => "'a:b'" ], [ username => "E'a\\nb'" ], [ username => "'" . ('x' x 65) . "'" ],
    [ domain => "'bad_domain.com'" ], [ domain => "'-x.example.com'" ], [ ha1_md5 => "'abc'" ],
    [ ha1_sha256 => "'" . ('A' x 64) . "'" ]) {
	my ($col, $val) = @$bad;
	my $sql = $col eq 'username'
	    ? "insert into tollgate.sip_users (account_id, username) values ($acct, $val)"
	    : "insert into tollgate.sip_users (account_id, username, $col) values ($acct, 'dave', $val)";
	($rc, $out, $err) = $pg->psql_try($sql);
	isnt($rc, 0, "$col = $val refused");
}

my $good = $pg->psql("insert into tollgate.sip_users (account_id, username, restrict_sources, allowed_sources) "
    . "values ($acct, 'erin', true, '{192.0.2.1, 198.51.100.0/24, 2001:db8::/32, 203.0.113.1-203.0.113.9}') returning id");
ok($good, 'allowed_sources in ip_rules notation accepted');
for my $bad ('300.1.1.1', '1.2.3.4/33', 'pbx.example.com') {
	($rc, $out, $err) = $pg->psql_try("update tollgate.sip_users set allowed_sources = "
	    . "array['192.0.2.1', " . $q->($bad) . "] where id = $good");
	isnt($rc, 0, "allowed_sources element '$bad' refused");
	like($err, qr/invalid address "\Q$bad\E"/, '... naming it');
}
is($pg->psql("select array_length(allowed_sources, 1) from tollgate.sip_users where id = $good"), 4,
    'refused updates changed nothing');
$pg->psql("insert into tollgate.sip_users (account_id, username, restrict_sources) values ($acct, 'frank', true)");
is($pg->psql("select allowed_sources from tollgate.sip_users where username = 'frank'"), '{}',
    'restrict_sources with an empty list is stored (no address may use the user)');

# --- change feed ------------------------------------------------------------------

($rc, $out, $err) = $pg->psql_try("LISTEN tollgate_changes;\n"
    . "insert into tollgate.sip_users (account_id, username) values ($acct, 'gina') returning id;\n"
    . "select 1;\n");
is($rc, 0, 'insert while listening') or diag $err;
my ($gina) = $out =~ /^(\d+)$/m;
like($out, qr/payload "sip_users,INSERT,$gina"/, "LISTEN tollgate_changes sees sip_users,INSERT,$gina")
    or diag $out;
is($pg->psql("select count(*) from tollgate.audit_log where table_name = 'sip_users' and row_id = $gina"), 1,
    'the insert is in audit_log');

# --- deleting the account removes its users -----------------------------------

my $other = $pg->add_account('othercust');
$pg->psql("insert into tollgate.sip_users (account_id, username) values ($other, 'henry')");
cmp_ok($pg->psql("select count(*) from tollgate.sip_users where account_id = $acct"), '>', 0, 'account has users');
$pg->psql("delete from tollgate.accounts where id = $acct");
is($pg->psql("select count(*) from tollgate.sip_users where account_id = $acct"), 0,
    'deleting the account deleted its users');
is($pg->psql("select count(*) from tollgate.sip_users where account_id = $other"), 1, "other accounts' users untouched");

# --- 003 twice is a no-op -------------------------------------------------------

my $pg_dump = Tollgate::PG::bindir() . '/pg_dump';
sub schema_dump {
	my ($rc, $out, $err) = Tollgate::run_cmd([ $pg_dump, '-s', '-n', 'tollgate',
	    '-h', $pg->socket_dir, '-p', $pg->port, '-U', 'postgres', 'tollgate' ]);
	die "pg_dump: $err" if $rc;
	$out =~ s/^\\(?:un)?restrict .*$//mg;
	return $out;
}
$pg->psql("update tollgate.settings set value = 'sip.example.com' where key = 'digest_realm'");
my $before = schema_dump();
my $rows = $pg->psql('select * from tollgate.sip_users order by id');
($rc, $out, $err) = $pg->psql_try(undef, file => $step3);
is($rc, 0, 'second run of 003_sip_users.sql succeeds') or diag $err;
unlike($err, qr/ERROR/, '... prints no error');
is(schema_dump(), $before, '... leaves the schema as it was');
is($pg->psql('select * from tollgate.sip_users order by id'), $rows, '... keeps the users');
is($pg->psql("select value from tollgate.settings where key = 'digest_realm'"), 'sip.example.com',
    '... keeps the realm');
is($pg->psql('select version from tollgate.schema_version'), 3, '... version still 3');

($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql');
isnt($rc, 0, 'install.sql (version 2) refuses a version 3 database until step 3 moves into it');
like($err, qr/newer than this install.sql knows/, '... saying why');

$t->finish;
done_testing;

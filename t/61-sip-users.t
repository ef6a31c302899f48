#!/usr/bin/perl
# SIP digest users (schema step 3). set_password() stores the HA1 hashes
# over the username, and over username@domain for a user with a domain,
# never the password; a rename, a new domain or a new digest_realm clears
# the hashes that no longer hold; users are found by name (and domain when
# the name is not unique); allowed_sources are checked; the users follow
# their account and are on the change feed. The loader loads them in
# full and as deltas, within the capacity, says when the database's realm
# is not the configured one, and keeps them in the snapshot file.

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
my $q = \&Tollgate::PG::quote;
my ($rc, $out, $err);

is($pg->psql('select version from tollgate.schema_version'), 4, 'install.sql installs the latest version (4)');
is($pg->psql("select value from tollgate.settings where key = 'digest_realm'"), 'tollgate',
    'digest_realm defaults to tollgate');

sub user_row {
	my ($id, $cols) = @_;
	return $pg->psql("select $cols from tollgate.sip_users where id = $id");
}

# --- set_password -------------------------------------------------------------

my $acct = $pg->add_account('sipcust');
my $alice = $pg->psql("insert into tollgate.sip_users (account_id, username) values ($acct, 'alice') returning id");
is(user_row($alice, 'ha1_md5 is null and ha1_sha256 is null and ha1_md5_full is null and ha1_sha256_full is null'),
    't', 'a new user has no HA1');
is(user_row($alice, 'restrict_sources'), 'f', 'restrict_sources defaults to false');
is(user_row($alice, 'status'), 'active', 'status defaults to active');

my $pw_utf8 = "s3cr\xc3\xa9t";	# non-ASCII: hashed as UTF-8
$pg->psql("select tollgate.set_password('alice', " . $q->($pw_utf8) . ")");
my ($md5, $sha) = split /\|/, user_row($alice, 'ha1_md5, ha1_sha256');
is($md5, md5_hex("alice:tollgate:$pw_utf8"), 'ha1_md5 = md5(username:realm:password)');
is($sha, sha256_hex("alice:tollgate:$pw_utf8"), 'ha1_sha256 = sha256(username:realm:password)');
is(user_row($alice, 'ha1_md5_full is null and ha1_sha256_full is null'), 't',
    'no domain: no full-URI HA1 (which domain a phone would add is unknown)');
is($pg->psql("select count(*) from tollgate.sip_users where id = $alice and "
    . "(to_jsonb(sip_users)::text like '%s3cr%')"), 0, 'the password is stored nowhere in the row');

my $dana = $pg->add_sip_user($acct, 'dana', domain => 'Example.COM.', password => 'pw');
is(user_row($dana, 'domain'), 'example.com', 'add_sip_user: the domain stored lower case, without its dot');
my ($md5f, $shaf) = split /\|/, user_row($dana, 'ha1_md5_full, ha1_sha256_full');
is($md5f, md5_hex('dana@example.com:tollgate:pw'),
    'ha1_md5_full = md5(username@domain:realm:password), for phones that send "dana@example.com"');
is($shaf, sha256_hex('dana@example.com:tollgate:pw'), 'ha1_sha256_full = sha256(username@domain:realm:password)');
is(user_row($dana, 'ha1_md5'), md5_hex('dana:tollgate:pw'), '... next to the plain ha1_md5');

# RFC 7616 3.9.1 vector: Mufasa / http-auth@example.org / Circle of Life
$pg->psql("update tollgate.settings set value = 'http-auth\@example.org' where key = 'digest_realm'");
my $mufasa = $pg->add_sip_user($acct, 'Mufasa', password => 'Circle of Life');
is(user_row($mufasa, 'ha1_md5'), md5_hex('Mufasa:http-auth@example.org:Circle of Life'),
    'realm read from tollgate.settings');
is(user_row($mufasa, 'ha1_sha256'),
    '7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232', 'RFC 7616 SHA-256 vector');

($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('nobody', 'x')");
isnt($rc, 0, 'set_password for an unknown user refused');
like($err, qr/no SIP user named "nobody"/, '... saying so');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', '')");
isnt($rc, 0, 'an empty password refused');

# --- a new realm clears every HA1 ------------------------------------------------

$pg->psql("select tollgate.set_password('alice', 'pw')");
($rc, $out, $err) = $pg->psql_try("update tollgate.settings set value = 'sip.example.com' where key = 'digest_realm'");
is($rc, 0, 'digest_realm changed');
like($err, qr/WARNING:  digest_realm is now "sip.example.com": the HA1 of 2 SIP users were cleared/,
    '... with a warning counting the users whose hashes it cleared');
is($pg->psql('select count(*) from tollgate.sip_users where ha1_md5 is not null or ha1_sha256 is not null '
    . 'or ha1_md5_full is not null or ha1_sha256_full is not null'), 0,
    '... every HA1 is gone: none computed for the old realm can verify');
($rc, $out, $err) = $pg->psql_try("update tollgate.settings set value = 'sip.example.com' where key = 'digest_realm'");
unlike($err, qr/WARNING/, 'the same realm again: nothing cleared, no warning');
($rc, $out, $err) = $pg->psql_try("LISTEN tollgate_changes;\n"
    . "update tollgate.settings set value = 'tollgate' where key = 'digest_realm';\nselect 1;\n");
like($out, qr/payload "settings,UPDATE,digest_realm"/, '... a new one notifies settings,UPDATE,digest_realm')
    or diag $out;
for my $bad ('', 'a"b', 'a\\b', "caf\xc3\xa9") {
	($rc, $out, $err) = $pg->psql_try("update tollgate.settings set value = " . $q->($bad)
	    . " where key = 'digest_realm'");
	isnt($rc, 0, "digest_realm '$bad' refused (the gateway takes printable ASCII, no quote or backslash)");
}

# --- renames clear what they break ---------------------------------------------------

$pg->psql("select tollgate.set_password('dana', 'pw', 'example.com')");
$pg->psql("update tollgate.sip_users set domain = 'other.example.com' where id = $dana");
is(user_row($dana, 'ha1_md5 is not null and ha1_md5_full is null and ha1_sha256_full is null'), 't',
    'a new domain clears the full-URI HA1 only');
$pg->psql("select tollgate.set_password('dana', 'pw', 'other.example.com')");
$pg->psql("update tollgate.sip_users set domain = null where id = $dana");
is(user_row($dana, 'ha1_md5_full is null and ha1_sha256_full is null'), 't', '... and so does dropping the domain');
($rc, $out, $err) = $pg->psql_try("update tollgate.sip_users set ha1_md5_full = " . $q->(md5_hex('x'))
    . " where id = $dana");
isnt($rc, 0, 'a full-URI HA1 without a domain is refused');
$pg->psql("update tollgate.sip_users set username = 'dana2' where id = $dana");
is(user_row($dana, 'ha1_md5 is null and ha1_sha256 is null'), 't', 'a rename clears every HA1');
$pg->psql("update tollgate.sip_users set username = 'dana', ha1_md5 = " . $q->(md5_hex('dana:tollgate:x'))
    . " where id = $dana");
is(user_row($dana, 'ha1_md5'), md5_hex('dana:tollgate:x'), '... unless the same statement sets it');

# --- several users named alice --------------------------------------------------

$pg->psql("delete from tollgate.sip_users where id = $alice");
my $a1 = $pg->add_sip_user($acct, 'alice', domain => 'one.example.com');
my $a2 = $pg->add_sip_user($acct, 'alice', domain => 'Two.Example.COM');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', 'pw')");
isnt($rc, 0, 'two users named alice in two domains, no domain given: refused');
like($err, qr/several users named "alice": give the domain/, '... with the message');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', 'pw', 'two.example.com')");
is($rc, 0, 'with the domain: accepted') or diag $err;
is($pg->psql("select id from tollgate.sip_users where ha1_md5 = " . $q->(md5_hex('alice:tollgate:pw'))), $a2,
    '... and only that user changed');
($rc, $out, $err) = $pg->psql_try("select tollgate.set_password('alice', 'pw', 'three.example.com')");
isnt($rc, 0, 'a domain with no such user: refused');
like($err, qr/no SIP user named "alice" in domain "three.example.com"/, '... saying so');
my $a0 = $pg->add_sip_user($acct, 'alice', password => 'any');
is(user_row($a0, 'ha1_md5'), md5_hex('alice:tollgate:any'),
    'no domain given, and an alice of any domain exists: that one is meant');
is($pg->psql("select count(*) from tollgate.sip_users where username = 'alice' and ha1_md5 = "
    . $q->(md5_hex('alice:tollgate:any'))), 1, '... and only that one changed');

($rc, $out, $err) = $pg->psql_try("insert into tollgate.sip_users (account_id, username, domain) values ($acct, 'alice', 'one.example.com')");
isnt($rc, 0, 'same username and domain twice refused');
$pg->add_sip_user($acct, 'bob');
($rc, $out, $err) = $pg->psql_try("insert into tollgate.sip_users (account_id, username) values ($acct, 'bob')");
isnt($rc, 0, 'same username twice with no domain refused');

# --- columns ------------------------------------------------------------------

my $carol = $pg->add_sip_user($acct, 'carol', status => 'inactive');
is(user_row($carol, 'status'), 'inactive', 'inactive status stored');
for my $bad ([ status => "'paused'" ], [ username => "''" ], [ username => "'alice\@example.com'" ],
    [ username => "'a:b'" ], [ username => "E'a\\nb'" ], [ username => "'" . ('x' x 65) . "'" ],
    [ domain => "'bad_domain.com'" ], [ domain => "'-x.example.com'" ], [ ha1_md5 => "'abc'" ],
    [ ha1_sha256 => "'" . ('A' x 64) . "'" ], [ ha1_md5_full => "'" . ('0' x 31) . "'" ],
    [ ha1_sha256_full => "'" . ('g' x 64) . "'" ]) {
	my ($col, $val) = @$bad;
	# dave has a domain, so that only the value tried can be what is refused
	my %row = (account_id => $acct, username => "'dave'", domain => "'example.com'", $col => $val);
	my @cols = sort keys %row;
	($rc, $out, $err) = $pg->psql_try(sprintf("insert into tollgate.sip_users (%s) values (%s)",
	    join(', ', @cols), join(', ', @row{@cols})));
	isnt($rc, 0, "$col = $val refused");
}

my $good = $pg->add_sip_user($acct, 'erin', restrict_sources => 1,
    allowed_sources => [ '192.0.2.1', '198.51.100.0/24', '2001:db8::/32', '203.0.113.1 - 203.0.113.9' ]);
ok($good, 'allowed_sources in ip_rules notation accepted');
for my $bad ('300.1.1.1', '1.2.3.4/33', 'pbx.example.com') {
	($rc, $out, $err) = $pg->psql_try("update tollgate.sip_users set allowed_sources = "
	    . "array['192.0.2.1', " . $q->($bad) . "] where id = $good");
	isnt($rc, 0, "allowed_sources element '$bad' refused");
	like($err, qr/invalid address "\Q$bad\E"/, '... naming it');
}
($rc, $out, $err) = $pg->psql_try("update tollgate.sip_users set allowed_sources = "
    . "array(select '10.0.0.' || g from generate_series(1, 33) g) where id = $good");
isnt($rc, 0, 'more than 32 allowed sources refused (the gateway keeps 32 a user)');
($rc, $out, $err) = $pg->psql_try("update tollgate.sip_users set allowed_sources = "
    . "'{{192.0.2.1},{192.0.2.2}}' where id = $good");
isnt($rc, 0, 'a two-dimensional allowed_sources refused');
is(user_row($good, 'array_length(allowed_sources, 1)'), 4, 'refused updates changed nothing');
$pg->add_sip_user($acct, 'frank', restrict_sources => 1);
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
$pg->add_sip_user($other, 'henry');
cmp_ok($pg->psql("select count(*) from tollgate.sip_users where account_id = $acct"), '>', 0, 'account has users');
$pg->psql("delete from tollgate.accounts where id = $acct");
is($pg->psql("select count(*) from tollgate.sip_users where account_id = $acct"), 0,
    'deleting the account deleted its users');
is($pg->psql("select count(*) from tollgate.sip_users where account_id = $other"), 1, "other accounts' users untouched");

# --- install.sql again keeps them ------------------------------------------------

$pg->psql("update tollgate.settings set value = 'sip.example.com' where key = 'digest_realm'");
my $rows = $pg->psql('select * from tollgate.sip_users order by id');
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql');
is($rc, 0, 'install.sql again succeeds') or diag $err;
unlike($err, qr/ERROR|WARNING/, '... prints no error and clears nothing');
is($pg->psql('select * from tollgate.sip_users order by id'), $rows, '... keeps the users');
is($pg->psql("select value from tollgate.settings where key = 'digest_realm'"), 'sip.example.com',
    '... keeps the realm');

# --- the loader ---------------------------------------------------------------------

$pg->psql('truncate tollgate.accounts cascade');
$pg->psql("update tollgate.settings set value = 'tollgate' where key = 'digest_realm'");
my $acme = $pg->add_account('acme');
$pg->add_sip_user($acme, 'alice', domain => 'example.com', password => 'pw',
    restrict_sources => 1, allowed_sources => [ '127.0.0.0/24', '2001:db8::1 - 2001:db8::ff' ]);
$pg->add_sip_user($acme, 'bob', password => 'pw', status => 'inactive');
my $file = $t->testdir . '/snapshot.bin';

sub config {
	my ($realm) = @_;
	return <<"EOF";
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 1
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: info
  file: "-"
db_retry:
  min_ms: 50
  max_ms: 300
capacity:
  sip_users: 4
snapshot_file: "$file"
provisioning:
  coalesce_ms: 5
  max_delay_ms: 50
  save_interval_ms: 100
digest:
  realm: "$realm"
EOF
}

$t->write_config(config('sip.test'));
$t->run;
my $ev = $t->wait_event('snapshot_published', 5, kind => 'full');
is($ev && $ev->{sip_users}, 2, 'the first full load publishes the 2 users (snapshot_published sip_users)');
is($ev && $ev->{invalid}, 0, '... none of them refused');
$ev = $t->wait_event('digest_realm_mismatch', 1);
ok($ev, 'digest.realm sip.test, tollgate in the database: digest_realm_mismatch');
is($ev && $ev->{level}, 'error', '... an error');
is($ev && $ev->{config_realm}, 'sip.test', '... naming the config realm');
is($ev && $ev->{database_realm}, 'tollgate', '... and the database one');

my $mark = $t->log_mark;
my $carl = $pg->add_sip_user($acme, 'carl', password => 'pw');
$ev = $t->wait_event('snapshot_published', 3, from => $mark);
is($ev && $ev->{kind}, 'delta', 'a user inserted: a delta');
is($ev && $ev->{sip_users}, 3, '... with 3 users');

$mark = $t->log_mark;
my ($globex) = $pg->psql("with a as (insert into tollgate.accounts (name) values ('globex') returning id) "
    . "update tollgate.sip_users set account_id = (select id from a) where id = $carl returning account_id");
$ev = $t->wait_event('snapshot_published', 3, from => $mark);
is($ev && $ev->{kind}, 'delta', 'a user moved to an account created in the same statement: a delta');
is($ev && $ev->{sip_users}, 3, '... still 3 users');
is(scalar $t->log_events('user_invalid', from => $mark), 0, '... the new account came along');

$mark = $t->log_mark;
$pg->psql("update tollgate.settings set value = 'sip.test' where key = 'digest_realm'");
ok($t->wait_event('resync_forced', 3, from => $mark, reason => 'settings changed'),
    'the realm changed in the database: resync_forced (settings changed)');
$ev = $t->wait_event('snapshot_published', 3, from => $mark, kind => 'full');
is($ev && $ev->{sip_users}, 3, '... a full load, the users kept (their HA1 cleared)');
is(scalar $t->log_events('digest_realm_mismatch', from => $mark), 0, '... and the realms agree now');

$mark = $t->log_mark;
$pg->psql("delete from tollgate.accounts where id = $globex");
$ev = $t->wait_event('snapshot_published', 3, from => $mark);
is($ev && $ev->{sip_users}, 2, "deleting an account takes its user out of the snapshot");

# Two users swap names in one transaction, the lower id first taking the
# name the higher id still holds in the loader's model: the delta cannot
# apply that row, so a full load settles it and nobody goes missing.
{
	my $x = $pg->add_sip_user($acme, 'swapx', password => 'pw');
	my $y = $pg->add_sip_user($acme, 'swapy', password => 'pw');
	ok($x < $y, 'swap: swapx has the lower id');
	$t->wait_event('snapshot_published', 3, from => $mark, sip_users => 4);
	$mark = $t->log_mark;
	$pg->psql("begin;\n"
	    . "update tollgate.sip_users set username = 'swaptmp' where id = $y;\n"
	    . "update tollgate.sip_users set username = 'swapy' where id = $x;\n"
	    . "update tollgate.sip_users set username = 'swapx' where id = $y;\n"
	    . "commit;\n");
	ok($t->wait_event('resync_forced', 5, from => $mark), 'swapped names: the delta hands over to a full load');
	$ev = $t->wait_event('snapshot_published', 5, from => $mark, kind => 'full');
	is($ev && $ev->{sip_users}, 4, '... which publishes both users');
	$mark = $t->log_mark;
	$pg->psql("delete from tollgate.sip_users where id in ($x, $y)");
	$t->wait_event('snapshot_published', 3, from => $mark, sip_users => 2);
}

# capacity.sip_users is 4: a fifth user refuses the load and keeps the snapshot
$mark = $t->log_mark;
$pg->psql("begin;\n"
    . "insert into tollgate.sip_users (account_id, username) values ($acme, 'u1'), ($acme, 'u2'), ($acme, 'u3');\n"
    . "commit;\n");
$ev = $t->wait_event('capacity_exceeded', 5, from => $mark);
ok($ev, '5 users, capacity 4: capacity_exceeded');
is($ev && $ev->{table}, 'sip_users', '... for sip_users');
is($ev && $ev->{rows}, 5, '... counting the rows');
is(scalar $t->log_events('snapshot_published', from => $mark), 0, '... and nothing is published');
$mark = $t->log_mark;
$pg->psql("delete from tollgate.sip_users where username = 'u3'");
$ev = $t->wait_event('snapshot_published', 5, from => $mark);
is($ev && $ev->{sip_users}, 4, 'one deleted: the 4 users are published');

$mark = $t->log_mark;
$pg->psql('truncate tollgate.sip_users');
ok($t->wait_event('resync_forced', 3, from => $mark, reason => 'truncate'), 'TRUNCATE sip_users: resync_forced');
$ev = $t->wait_event('snapshot_published', 3, from => $mark, kind => 'full');
is($ev && $ev->{sip_users}, 0, '... a full load with no users');

$mark = $t->log_mark;
$pg->add_sip_user($acme, 'alice', domain => 'example.com', password => 'pw', restrict_sources => 1,
    allowed_sources => [ '127.0.0.0/24', '2001:db8::/64' ]);
$ev = $t->wait_event('snapshot_saved', 5, from => $mark, sip_users => 1);
ok($ev, 'the snapshot file is written with the user (snapshot_saved sip_users 1)');

# --- the snapshot file keeps them ----------------------------------------------------

is($t->stop, 0, 'SIGTERM: exit 0');
$pg->stop;
my $t2 = Tollgate->new;
$t2->pg($pg);
$t2->write_config(config('sip.test'));
$t2->run(wait_db => 0);
$ev = $t2->wait_event('snapshot_loaded_from_file', 10);
ok($ev, 'started with the database down: snapshot_loaded_from_file');
is($ev && $ev->{sip_users}, 1, '... with the user');
$ev = $t2->wait_event('snapshot_published', 5);
is($ev && $ev->{kind}, 'file', '... published from the file');
is($ev && $ev->{sip_users}, 1, '... user included');
$t2->finish;

$t->finish;
done_testing;

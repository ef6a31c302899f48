#!/usr/bin/perl
# sql/install.sql: the provisioning schema operators run by hand.
# Installing twice changes nothing; a database an older release installed
# (version 2) is upgraded to the very schema a fresh install makes, keeping
# its rows; a database a newer release upgraded is refused; bad addresses
# are refused with a message and store nothing; every documented notation
# is accepted; deleting an account deletes its rules.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate;
use Tollgate::PG;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);	# runs sql/install.sql once

my $version = $pg->psql('select version from tollgate.schema_version');
like($version, qr/^\d+$/, "schema_version holds one version ($version)");
is($version, 3, 'a fresh install is at version 3 (SIP users), the version the loader reads');

# --- install.sql twice is a no-op -----------------------------------------

my $acct = $pg->add_account('keepme');
$pg->add_rule($acct, '198.51.100.7');

my $pg_dump = Tollgate::PG::bindir() . '/pg_dump';
sub schema_dump {
	my ($db) = @_;
	my ($rc, $out, $err) = Tollgate::run_cmd([ $pg_dump, '-s', '-n', 'tollgate',
	    '-h', $pg->socket_dir, '-p', $pg->port, '-U', 'postgres', $db // 'tollgate' ]);
	die "pg_dump: $err" if $rc;
	# pg_dump 15.14+ wraps the dump in \restrict KEY with a random key
	$out =~ s/^\\(?:un)?restrict .*$//mg;
	return $out;
}
my $before = schema_dump();
my $data_before = $pg->psql('select a.name, r.address, r.id from tollgate.accounts a '
    . 'join tollgate.ip_rules r on r.account_id = a.id order by r.id');

my ($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql');
is($rc, 0, 'second run of install.sql succeeds') or diag $err;
unlike($err, qr/ERROR/, 'second run prints no error');
is(schema_dump(), $before, 'second run leaves the schema as it was');
is($pg->psql('select a.name, r.address, r.id from tollgate.accounts a '
    . 'join tollgate.ip_rules r on r.account_id = a.id order by r.id'), $data_before,
    'second run keeps the provisioned rows');
is($pg->psql('select version from tollgate.schema_version'), $version, 'version unchanged');
is($pg->psql('select count(*) from tollgate.schema_version'), 1, 'still one version row');

# --- upgrade from version 2 ---------------------------------------------------

$pg->psql('create database upgrade');
$pg->install_upto(2, dbname => 'upgrade');
my %up = (dbname => 'upgrade');
is($pg->psql('select version from tollgate.schema_version', %up), 2, 'a version 2 database, as the last release left it');
is($pg->psql("select to_regclass('tollgate.sip_users') is null", %up), 't', '... without sip_users');
$pg->psql("insert into tollgate.accounts (name, max_channels) values ('old', 7);\n"
    . "insert into tollgate.ip_rules (account_id, address, port) select id, '192.0.2.0/24', 5060 "
    . "from tollgate.accounts where name = 'old'", %up);
my $rows_v2 = $pg->psql('select a.id, a.name, a.max_channels, r.id, r.address, r.port, r.addr_first '
    . 'from tollgate.accounts a join tollgate.ip_rules r on r.account_id = a.id', %up);
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up);
is($rc, 0, 'install.sql upgrades it') or diag $err;
like($out, qr/tollgate schema at version 3/, '... and says the version reached');
is($pg->psql('select version from tollgate.schema_version', %up), 3, '... to version 3');
is($pg->psql('select a.id, a.name, a.max_channels, r.id, r.address, r.port, r.addr_first '
    . 'from tollgate.accounts a join tollgate.ip_rules r on r.account_id = a.id', %up), $rows_v2,
    '... keeping its accounts and rules');
is($pg->psql("select value from tollgate.settings where key = 'digest_realm'", %up), 'tollgate',
    '... with the default digest_realm');
is($pg->psql('select count(*) from tollgate.sip_users', %up), 0, '... and no SIP users yet');
is(schema_dump('upgrade'), schema_dump('tollgate'), 'the upgraded schema is the one a fresh install makes');
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up);
is($rc, 0, 'install.sql again on the upgraded database: a no-op') or diag $err;

# --- a newer database is refused ------------------------------------------------

$pg->psql('update tollgate.schema_version set version = 4', %up);
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up);
isnt($rc, 0, 'install.sql refuses a database at version 4');
like($err, qr/tollgate schema is at version 4, newer than this install.sql knows \(version 3\)/,
    '... saying why');
is($pg->psql('select version from tollgate.schema_version', %up), 4, '... and changes nothing');

# --- addresses ------------------------------------------------------------

my $cust = $pg->add_account('notations');

my @good = (
	'192.0.2.1',
	'192.0.2.0/24',
	'192.0.2.0/255.255.255.0',
	'192.0.2.1-192.0.2.100',
	'10.0.0.0/8',
	'0.0.0.0/0',
	'2001:db8::1',
	'2001:db8::/32',
	'2001:db8::1-2001:db8::ff',
	'::1',
	'sbc1.example.com',
	'pbx-2.carrier.example.',
);
for my $a (@good) {
	my ($rc, $out, $err) = $pg->psql_try(sprintf(
	    "insert into tollgate.ip_rules (account_id, address) values (%d, %s) returning id",
	    $cust, Tollgate::PG::quote($a)));
	is($rc, 0, "address '$a' accepted") or diag $err;
}
is($pg->psql("select count(*) from tollgate.ip_rules where account_id = $cust"), scalar @good,
    'every good notation stored');

my @bad = (
	'',
	'exa mple.com',
	'-bad.example.com',
	'bad_host!.example.com',
	'1.2.3',
	'256.1.1.1',
	'1.2.3.4.5',
	'01.2.3.4',
	'1.2.3.4/33',
	'1.2.3.4/-1',
	'1.2.3.0/255.0.255.0',
	'1.2.3.0/24/8',
	'1.2.3.100-1.2.3.1',
	'1.2.3.1-',
	'1.2.3.1-2001:db8::1',
	'2001:db8::/129',
	'2001:db8::1/255.255.255.0',
	'2001:db8:::1',
);
my $count = $pg->psql('select count(*) from tollgate.ip_rules');
for my $a (@bad) {
	my ($rc, $out, $err) = $pg->psql_try(sprintf(
	    "insert into tollgate.ip_rules (account_id, address) values (%d, %s)",
	    $cust, Tollgate::PG::quote($a)));
	isnt($rc, 0, "address '$a' refused");
	like($err, qr/ERROR:.*"\Q$a\E"/, "... with a message naming it") and note "'$a': " . ($err =~ /(ERROR:[^\n]*)/)[0];
}
is($pg->psql('select count(*) from tollgate.ip_rules'), $count, 'refused addresses stored nothing');
is($pg->psql("select host_name from tollgate.ip_rules where address = 'pbx-2.carrier.example.'"),
    'pbx-2.carrier.example', 'a host name is stored lower case, without its trailing dot, for the loader to resolve');
is($pg->psql("select count(*) from tollgate.ip_rules where address = 'sbc1.example.com' and addr_first is null"),
    1, '... with no address range until then');

# an UPDATE to a bad address is refused too, and the old one stays
my ($one) = $pg->psql("select id from tollgate.ip_rules where address = '192.0.2.1'");
($rc, $out, $err) = $pg->psql_try("update tollgate.ip_rules set address = '300.1.1.1' where id = $one");
isnt($rc, 0, 'update to a bad address refused');
is($pg->psql("select address from tollgate.ip_rules where id = $one"), '192.0.2.1',
    'the rule keeps its address');

# --- other columns ----------------------------------------------------------

($rc, $out, $err) = $pg->psql_try("insert into tollgate.accounts (name, status) values ('x1', 'paused')");
isnt($rc, 0, "account status other than active/inactive refused");
($rc, $out, $err) = $pg->psql_try("insert into tollgate.accounts (name) values ('keepme')");
isnt($rc, 0, 'duplicate account name refused');
for my $d (qw(ingress egress both)) {
	($rc, $out, $err) = $pg->psql_try("insert into tollgate.ip_rules (account_id, address, direction) "
	    . "values ($cust, '203.0.113.9', '$d')");
	is($rc, 0, "direction '$d' accepted") or diag $err;
}
($rc, $out, $err) = $pg->psql_try("insert into tollgate.ip_rules (account_id, address, direction) "
    . "values ($cust, '203.0.113.9', 'sideways')");
isnt($rc, 0, 'unknown direction refused');
($rc, $out, $err) = $pg->psql_try("insert into tollgate.ip_rules (account_id, address, port, tech_prefix) "
    . "values ($cust, '203.0.113.10', 5060, '0044')");
is($rc, 0, 'port and tech prefix accepted') or diag $err;
($rc, $out, $err) = $pg->psql_try("insert into tollgate.ip_rules (account_id, address) values (999999, '203.0.113.11')");
isnt($rc, 0, 'rule for a missing account refused');

# --- deleting an account removes its rules --------------------------------

my $n = $pg->psql("select count(*) from tollgate.ip_rules where account_id = $cust");
cmp_ok($n, '>', 0, "account has $n rules");
$pg->psql("delete from tollgate.accounts where id = $cust");
is($pg->psql("select count(*) from tollgate.ip_rules where account_id = $cust"), 0,
    'deleting the account deleted its rules');
is($pg->psql("select count(*) from tollgate.ip_rules where account_id = $acct"), 1,
    "other accounts' rules untouched");

$t->finish;
done_testing;

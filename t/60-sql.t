#!/usr/bin/perl
# sql/install.sql: the provisioning schema operators run by hand.
# Installing twice changes nothing; a database an older release installed
# (version 2 or 3) is upgraded to the very schema a fresh install makes,
# keeping its rows; a database a newer release upgraded is refused; bad
# addresses are refused with a message and store nothing; every documented
# notation is accepted; deleting an account deletes its rules. Call
# limits and policy (step 4): bad destination prefixes and codecs are
# refused naming the element, codecs are stored upper case, and the
# change feed's payloads stay as they were; the loader reads the new
# columns in full loads and deltas (checked in the snapshot file it
# writes, format version 3), and refuses an account whose lists would
# take the policy pool past its capacity.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until);
use Tollgate::PG;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);	# runs sql/install.sql once

my $version = $pg->psql('select version from tollgate.schema_version');
like($version, qr/^\d+$/, "schema_version holds one version ($version)");
is($version, 4, 'a fresh install is at version 4 (call limits and policy), the version the loader reads');

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
like($out, qr/tollgate schema at version 4/, '... and says the version reached');
is($pg->psql('select version from tollgate.schema_version', %up), 4, '... to version 4');
is($pg->psql('select a.id, a.name, a.max_channels, r.id, r.address, r.port, r.addr_first '
    . 'from tollgate.accounts a join tollgate.ip_rules r on r.account_id = a.id', %up), $rows_v2,
    '... keeping its accounts and rules');
is($pg->psql("select value from tollgate.settings where key = 'digest_realm'", %up), 'tollgate',
    '... with the default digest_realm');
is($pg->psql('select count(*) from tollgate.sip_users', %up), 0, '... and no SIP users yet');
is(schema_dump('upgrade'), schema_dump('tollgate'), 'the upgraded schema is the one a fresh install makes');
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up);
is($rc, 0, 'install.sql again on the upgraded database: a no-op') or diag $err;

# --- upgrade from version 3 ---------------------------------------------------

$pg->psql('create database upgrade3');
$pg->install_upto(3, dbname => 'upgrade3');
my %up3 = (dbname => 'upgrade3');
is($pg->psql('select version from tollgate.schema_version', %up3), 3, 'a version 3 database, as the last release left it');
is($pg->psql("select count(*) from information_schema.columns where table_schema = 'tollgate' "
    . "and column_name in ('cps_burst', 'allowed_prefixes', 'denied_prefixes', 'restricted_codecs')", %up3), 0,
    '... without the call policy columns');
$pg->psql("insert into tollgate.accounts (name, max_channels, max_cps) values ('old', 7, 3);\n"
    . "insert into tollgate.ip_rules (account_id, address, port, tech_prefix) select id, '192.0.2.0/24', 5060, '99' "
    . "from tollgate.accounts where name = 'old';\n"
    . "insert into tollgate.sip_users (account_id, username) select id, 'alice' from tollgate.accounts where name = 'old';\n"
    . "select tollgate.set_password('alice', 'secret');", %up3);
my $rows_sql = 'select a.id, a.name, a.status, a.max_channels, a.max_cps, r.id, r.address, r.port, r.tech_prefix, '
    . 'r.addr_first, u.username, u.ha1_md5 from tollgate.accounts a join tollgate.ip_rules r on r.account_id = a.id '
    . 'join tollgate.sip_users u on u.account_id = a.id';
my $rows_v3 = $pg->psql($rows_sql, %up3);
my $audit_v3 = $pg->psql('select count(*) from tollgate.audit_log', %up3);
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up3);
is($rc, 0, 'install.sql upgrades a version 3 database') or diag $err;
like($out, qr/tollgate schema at version 4/, '... and says the version reached');
is($pg->psql($rows_sql, %up3), $rows_v3, '... keeping its accounts, rules and users');
is($pg->psql("select cps_burst is null, allowed_prefixes, denied_prefixes, restricted_codecs from tollgate.accounts", %up3),
    't|{}|{}|{}', '... whose accounts get no burst of their own and empty lists');
is($pg->psql("select max_channels is null and max_cps is null and cps_burst is null from tollgate.ip_rules", %up3),
    't', '... and whose rules get no limits of their own');
is($pg->psql('select count(*) from tollgate.audit_log', %up3), $audit_v3, '... writing no audit rows (no row changed)');
is(schema_dump('upgrade3'), schema_dump('tollgate'), 'the upgraded schema is the one a fresh install makes');
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up3);
is($rc, 0, 'install.sql again on it: a no-op') or diag $err;
is(schema_dump('upgrade3'), schema_dump('tollgate'), '... leaving the schema as it was');

# --- a newer database is refused ------------------------------------------------

$pg->psql('update tollgate.schema_version set version = 5', %up);
($rc, $out, $err) = $pg->psql_try(undef, file => Tollgate::repo_dir() . '/sql/install.sql', %up);
isnt($rc, 0, 'install.sql refuses a database at version 5');
like($err, qr/tollgate schema is at version 5, newer than this install.sql knows \(version 4\)/,
    '... saying why');
is($pg->psql('select version from tollgate.schema_version', %up), 5, '... and changes nothing');

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

# --- call limits and policy (step 4) ------------------------------------------

my $pol = $pg->add_account('policy', max_channels => 30, max_cps => 5, cps_burst => 10,
    allowed_prefixes => [ '44', '+44', '0044' ], denied_prefixes => [ '4490', '449#*' ],
    restricted_codecs => [ 'g729', 'Opus', 'telephone-event' ]);
like($pol, qr/^\d+$/, 'an account with a burst and all three lists is accepted');
is($pg->psql("select max_channels, max_cps, cps_burst, allowed_prefixes, denied_prefixes, restricted_codecs "
    . "from tollgate.accounts where id = $pol"), '30|5|10|{44,+44,0044}|{4490,449#*}|{G729,OPUS,TELEPHONE-EVENT}',
    '... stored as given, the codecs upper case');
$pg->psql("update tollgate.accounts set restricted_codecs = '{pcmu}' where id = $pol");
is($pg->psql("select restricted_codecs from tollgate.accounts where id = $pol"), '{PCMU}',
    'an update stores codecs upper case too');
is($pg->psql("select allowed_prefixes, denied_prefixes, restricted_codecs, cps_burst is null "
    . "from tollgate.accounts where name = 'keepme'"), '{}|{}|{}|t', 'an account given none has empty lists and no burst');
my $long = 'x' x 33;
my @refused_policy = (
	[ "cps_burst = -1", qr/accounts_cps_burst_check/, 'a negative cps_burst' ],
	[ "allowed_prefixes = '{44,\"12;3\"}'",
	  qr/invalid destination prefix "12;3" in allowed_prefixes: a character a SIP user part cannot carry/,
	  'a prefix with ";"' ],
	[ "denied_prefixes = '{\"44 1\"}'", qr/invalid destination prefix "44 1" in denied_prefixes/, 'a prefix with a blank' ],
	[ "denied_prefixes = '{a\@b}'", qr/invalid destination prefix "a\@b" in denied_prefixes/, 'a prefix with "@"' ],
	[ "allowed_prefixes = '{sip:44}'", qr/invalid destination prefix "sip:44" in allowed_prefixes/, 'a prefix with ":"' ],
	[ "allowed_prefixes = E'{\"4\\t4\"}'", qr/invalid destination prefix "4\t4" in allowed_prefixes/, 'a prefix with a tab' ],
	[ "allowed_prefixes = '{\"\"}'", qr/invalid destination prefix "" in allowed_prefixes: empty/, 'an empty prefix' ],
	[ "denied_prefixes = '{$long}'", qr/invalid destination prefix "$long" in denied_prefixes: longer than 32 bytes/,
	  'a prefix of 33 bytes' ],
	[ "allowed_prefixes = array_fill('44'::text, ARRAY[65])",
	  qr/allowed_prefixes holds 65 prefixes, at most 64 are allowed/, '65 prefixes' ],
	[ "denied_prefixes = ARRAY[NULL::text]", qr/denied_prefixes cannot hold NULL/, 'a NULL prefix' ],
	[ "allowed_prefixes = '{{1,2},{3,4}}'", qr/allowed_prefixes must be a one-dimensional array/, 'a two-dimensional list' ],
	[ "restricted_codecs = '{\"G.729 A\"}'", qr/invalid codec "G.729 A" in restricted_codecs/, 'a codec with a blank' ],
	[ "restricted_codecs = '{$long}'", qr/invalid codec "\U$long\E" in restricted_codecs/, 'a codec of 33 bytes' ],
	[ "restricted_codecs = array_fill('PCMA'::text, ARRAY[33])",
	  qr/restricted_codecs holds 33 codecs, at most 32 are allowed/, '33 codecs' ],
	[ "restricted_codecs = ARRAY[NULL::text]", qr/restricted_codecs cannot hold NULL/, 'a NULL codec' ],
	[ "allowed_prefixes = NULL", qr/null value in column "allowed_prefixes"/, 'a NULL list' ],
);
my $pol_before = $pg->psql("select * from tollgate.accounts where id = $pol");
for my $c (@refused_policy) {
	my ($set, $want, $what) = @$c;
	($rc, $out, $err) = $pg->psql_try("update tollgate.accounts set $set where id = $pol");
	isnt($rc, 0, "refused: $what");
	like($err, $want, '... saying why') or diag $err;
}
is($pg->psql("select * from tollgate.accounts where id = $pol"), $pol_before, '... and the account is as it was');
ok(eval { $pg->psql("update tollgate.accounts set allowed_prefixes = array_fill('+4420'::text, ARRAY[64]), "
    . "denied_prefixes = ARRAY['" . ('9' x 32) . "', 'a-z_.!~*''()%&=+\$,?/#'], restricted_codecs = array_fill('AMR-WB'::text, ARRAY[32]) "
    . "where id = $pol"); 1 }, 'the limits themselves are accepted: 64 prefixes, 32 bytes, every allowed character, 32 codecs')
    or diag $@;

# limits of a rule
my $lim = $pg->add_rule($pol, '203.0.113.77', max_channels => 4, max_cps => 2, cps_burst => 3);
is($pg->psql("select max_channels, max_cps, cps_burst from tollgate.ip_rules where id = $lim"), '4|2|3',
    'a rule with limits of its own');
is($pg->psql("select coalesce(max_channels, -1), coalesce(max_cps, -1), coalesce(cps_burst, -1) "
    . "from tollgate.ip_rules where id = $one"), '-1|-1|-1', 'a rule given none has none (NULL)');
for my $col (qw(max_channels max_cps cps_burst)) {
	($rc, $out, $err) = $pg->psql_try("update tollgate.ip_rules set $col = -1 where id = $lim");
	isnt($rc, 0, "a negative $col on a rule is refused");
	like($err, qr/ip_rules_${col}_check/, '... by its check');
}
is($pg->psql("update tollgate.ip_rules set max_channels = 0, max_cps = 0, cps_burst = 0 where id = $lim returning max_channels"),
    '0', '0 is accepted (no limit)');

# the feed and the audit log take the new columns in their stride
($rc, $out, $err) = $pg->psql_try("listen tollgate_changes;\n"
    . "update tollgate.accounts set denied_prefixes = '{4491}' where id = $pol;\n"
    . "update tollgate.ip_rules set max_cps = 9 where id = $lim;\n"
    . "select 'done';\n");
is($rc, 0, 'policy and limit updates with a listener') or diag $err;
like($out, qr/payload "accounts,UPDATE,$pol"/, 'the feed announces the account as before: accounts,UPDATE,id');
like($out, qr/payload "ip_rules,UPDATE,$lim"/, '... and the rule: ip_rules,UPDATE,id');
is($pg->psql("select new_row->'denied_prefixes', old_row->'denied_prefixes' <> new_row->'denied_prefixes' from tollgate.audit_log "
    . "where table_name = 'accounts' and row_id = $pol order by id desc limit 1"), '["4491"]|t',
    'the audit log keeps the lists, before and after');
is($pg->psql("select new_row->'max_cps' from tollgate.audit_log where table_name = 'ip_rules' and row_id = $lim "
    . "order by id desc limit 1"), '9', '... and the rule limits');

# --- deleting an account removes its rules --------------------------------

my $n = $pg->psql("select count(*) from tollgate.ip_rules where account_id = $cust");
cmp_ok($n, '>', 0, "account has $n rules");
$pg->psql("delete from tollgate.accounts where id = $cust");
is($pg->psql("select count(*) from tollgate.ip_rules where account_id = $cust"), 0,
    'deleting the account deleted its rules');
is($pg->psql("select count(*) from tollgate.ip_rules where account_id = $acct"), 1,
    "other accounts' rules untouched");

# --- the loader reads them -----------------------------------------------------

# The snapshot file (docs/loader.md, "Format"), as far as accounts and rules go.
sub read_snapfile {
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or return undef;
	my $data = do { local $/; <$fh> };
	close $fh;
	my ($magic, $version, $layout, $saved, $built, $na, $nr, $bytes, $nu) =
	    unpack('a8 V V Q< Q< Q< Q< Q< Q<', $data);
	my %f = (version => $version, accounts => {}, rules => {});
	my $p = 64;
	my $take = sub { my ($fmt, $len) = @_; my @v = unpack($fmt, substr($data, $p, $len)); $p += $len; @v };
	for (1 .. $na) {
		my ($id, $ch, $cps, $burst, $active, $nlen, $nal, $nde, $nco) = $take->('q< V V V C C C C C', 25);
		my ($name) = $take->("a$nlen", $nlen);
		my @lists;
		for my $n ($nal, $nde, $nco) {
			my @l;
			for (1 .. $n) {
				my ($len) = $take->('C', 1);
				push @l, ($take->("a$len", $len))[0];
			}
			push @lists, join(',', @l);
		}
		$f{accounts}{$id} = join('|', $name, $active, $ch, $cps, $burst, @lists);
	}
	for (1 .. $nr) {
		my ($id, $acct, $ch, $cps, $burst, $port, $active, $dir, $nranges, $plen, $hlen) =
		    $take->('q< q< V V V v C C C C C', 35);
		$take->('a' . ($plen + $hlen), $plen + $hlen);
		for (1 .. $nranges) {
			my ($fam) = $take->('C', 1);
			$p += $fam == 4 ? 8 : 32;
		}
		$f{rules}{$id} = join('|', $acct, $ch, $cps, $burst);
	}
	return \%f;
}

$pg->psql('create database loader');
$pg->psql(undef, file => Tollgate::repo_dir() . '/sql/install.sql', dbname => 'loader');
my %ldb = (dbname => 'loader');
my $acme = $pg->psql("insert into tollgate.accounts (name, max_channels, max_cps, cps_burst, allowed_prefixes, "
    . "denied_prefixes, restricted_codecs) values ('acme', 30, 5, 10, '{44,+44}', '{4490}', '{g729,PCMA}') returning id", %ldb);
my $plain = $pg->psql("insert into tollgate.accounts (name) values ('plain') returning id", %ldb);
my $r1 = $pg->psql("insert into tollgate.ip_rules (account_id, address, max_channels, max_cps, cps_burst) "
    . "values ($acme, '127.0.0.21', 4, 2, 3) returning id", %ldb);
my $r2 = $pg->psql("insert into tollgate.ip_rules (account_id, address) values ($plain, '127.0.0.22') returning id", %ldb);
my $file = $t->testdir . '/snapshot.bin';
my $conninfo = sprintf('host=%s port=%d dbname=loader user=postgres', $pg->socket_dir, $pg->port);
$t->write_config(<<"EOF");
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 1
downstream: "127.0.0.10:%%PORT_SS%%"
database: "$conninfo"
log:
  level: info
  file: "-"
snapshot_file: "$file"
capacity:
  accounts: 20
provisioning:
  coalesce_ms: 5
  save_interval_ms: 100
EOF
$t->run;
ok($t->wait_event('snapshot_saved', 10), 'tollgate loads the database and saves its snapshot file');
my $f = read_snapfile($file);
is($f && $f->{version}, 3, '... in format version 3');
is($f && $f->{accounts}{$acme}, 'acme|1|30|5|10|44,+44|4490|G729,PCMA',
    "a full load reads an account's burst and lists (codecs upper case)");
is($f && $f->{accounts}{$plain}, 'plain|1|0|0|0|||', '... and an account without them as none');
is($f && $f->{rules}{$r1}, "$acme|4|2|3", "... and a rule's limits");
is($f && $f->{rules}{$r2}, "$plain|0|0|0", '... and NULL limits as 0');

my $mark = $t->log_mark;
$pg->psql("update tollgate.accounts set allowed_prefixes = '{1}', restricted_codecs = '{}', cps_burst = null "
    . "where id = $acme;\nupdate tollgate.ip_rules set max_cps = 7, cps_burst = null where id = $r1", %ldb);
my $ev = $t->wait_event('snapshot_published', 5, from => $mark);
is($ev && $ev->{kind}, 'delta', 'changed lists and limits are published as a delta');
ok(wait_until(sub {
	$f = read_snapfile($file);
	$f && ($f->{accounts}{$acme} // '') ne 'acme|1|30|5|10|44,+44|4490|G729,PCMA';
}, 5), '... and saved');
is($f && $f->{accounts}{$acme}, 'acme|1|30|5|0|1|4490|', "a delta reads the account's new lists and burst");
is($f && $f->{rules}{$r1}, "$acme|4|7|0", "... and the rule's new limits");

# capacity accounts: 20 gives a pool of 20 * 256 + 65536 = 70,656 bytes; an
# account with every list full of the longest entries takes 5,280: 13 fit.
my $full = "array(select lpad(g::text, 32, '0') from generate_series(1, 64) g), "
    . "array(select lpad(g::text, 32, '9') from generate_series(1, 64) g), "
    . "array(select 'C' || lpad(g::text, 31, '0') from generate_series(1, 32) g)";
$mark = $t->log_mark;
$pg->psql("insert into tollgate.accounts (name, allowed_prefixes, denied_prefixes, restricted_codecs) "
    . "select 'full' || n, $full from generate_series(1, 14) n", %ldb);
$ev = $t->wait_event('account_invalid', 5, from => $mark);
is($ev && $ev->{reason}, 'too many destination prefixes and codecs in total',
    'an account whose lists would overflow the policy pool is refused: account_invalid');
is($ev && $ev->{name}, 'full14', '... the fourteenth, the others fit');
ok($t->wait_event('snapshot_published', 5, from => $mark), '... and the others are published');
is(scalar $t->log_events('account_invalid', from => $mark), 1, '... only it');
my $full14 = $pg->psql("select id from tollgate.accounts where name = 'full14'", %ldb);
$mark = $t->log_mark;
my $r14 = $pg->psql("insert into tollgate.ip_rules (account_id, address, max_channels) values ($full14, '127.0.0.44', 2) "
    . "returning id", %ldb);
$ev = $t->wait_event('rule_invalid', 5, from => $mark);
is($ev && $ev->{reason}, 'unknown account', "its rule is skipped with it");

# Room made, the account's row touched: the delta brings the account back,
# and a full load its rule, which the delta alone would not fetch.
$mark = $t->log_mark;
$pg->psql("delete from tollgate.accounts where name = 'full1'", %ldb);
$t->wait_event('snapshot_published', 5, from => $mark);
$mark = $t->log_mark;
$pg->psql("update tollgate.accounts set cps_burst = 1 where id = $full14", %ldb);
$ev = $t->wait_event('resync_forced', 5, from => $mark);
is($ev && $ev->{reason}, 'an account skipped before is valid again',
    'an account valid again after being skipped: a full load follows the delta');
ok($t->wait_event('snapshot_published', 5, from => $mark, kind => 'full'), '... and is published');
ok(wait_until(sub { $f = read_snapfile($file); $f && defined $f->{rules}{$r14} }, 5),
    '... with the rule that was skipped with it') or diag explain $f && $f->{rules};
is($f && $f->{rules}{$r14}, "$full14|2|0|0", '... and its limits');
like($f && $f->{accounts}{$full14} // '', qr/^full14\|1\|0\|0\|1\|0{31}1,/, '... and the account with its lists');

$t->finish;
done_testing;

#!/usr/bin/perl
# Account slots: a deleted account keeps its slot until a compaction, so
# with capacity accounts: 10 (20 slots) deletes and inserts can run out of
# slots. Running out must not drop the new accounts and their rules from a
# snapshot published as a success: the delta fails, a full sync follows,
# and it reloads into a model with every slot free.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until);
use Tollgate::PG;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my @old = map { $pg->add_account("old$_") } 1 .. 10;
$pg->add_rule($old[$_], '127.0.0.' . (31 + $_)) for 0 .. 1;

$t->write_config(<<'EOF2');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 1
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: info
  file: "-"
capacity:
  accounts: 10
  ip_rules: 5000
provisioning:
  coalesce_ms: 5
  max_delay_ms: 50
EOF2
$t->run;
ok($t->wait_event('snapshot_published', 10, kind => 'full', accounts => 10), 'first load: 10 accounts');

# Each step is its own delta; none compacts (10 deleted slots < 64).
sub step {
	my ($sql, $accounts, $what) = @_;
	my $mark = $t->log_mark;
	$pg->psql($sql);
	ok($t->wait_event('snapshot_published', 5, from => $mark, accounts => $accounts), $what);
}

step('delete from tollgate.accounts where name like \'old%\'', 0, 'old accounts deleted: 10 slots wait');
step(join(';', map { "insert into tollgate.accounts (name) values ('mid$_')" } 1 .. 10), 10,
    '10 new accounts take the other 10 slots');
step('delete from tollgate.accounts where name like \'mid%\'', 0, 'and are deleted: no slot is free');

# A new account and its rule: no free slot until a compaction.
my $mark = $t->log_mark;
$pg->psql("with a as (insert into tollgate.accounts (name) values ('new1') returning id) "
    . "insert into tollgate.ip_rules (account_id, address) select id, '127.0.0.41' from a");
my $ev = $t->wait_event('snapshot_published', 10, from => $mark, accounts => 1);
ok($ev, 'the new account is published');
is($ev && $ev->{ip_rules}, 1, '... with its rule');
ok($t->log_events('load_restarted', from => $mark), 'the full sync reloaded into a fresh model');
is(scalar $t->log_events('account_invalid', from => $mark), 0, 'no account_invalid');
is(scalar $t->log_events('rule_invalid', from => $mark), 0, 'no rule_invalid');

# And it goes on working: more churn, more inserts.
$mark = $t->log_mark;
$pg->psql(join(';', map { "insert into tollgate.accounts (name) values ('late$_')" } 1 .. 9));
ok($t->wait_event('snapshot_published', 10, from => $mark, accounts => 10), 'filled up to capacity again');

# The same for a full load (SIGHUP), which runs out of slots itself:
# churn 20 accounts through, then insert 10 behind the loader's back (no
# trigger fires under session_replication_role = replica).
step('delete from tollgate.accounts', 0, 'all deleted: 10 slots wait');
step(join(';', map { "insert into tollgate.accounts (name) values ('more$_')" } 1 .. 10), 10,
    '10 more take the other 10 slots');
step('delete from tollgate.accounts', 0, 'and are deleted: no slot is free');
$pg->psql("set session_replication_role = replica; "
    . join(';', map { "insert into tollgate.accounts (name) values ('last$_')" } 1 .. 10));
$mark = $t->log_mark;
my $r = $t->reload;
is($r && $r->{event}, 'reload_done', 'SIGHUP: reload done');
$ev = $t->wait_event('snapshot_published', 10, from => $mark, kind => 'full');
is($ev && $ev->{accounts}, 10, 'the full load publishes all 10 accounts');
ok($t->log_events('load_restarted', from => $mark), '... after reloading into a fresh model');
is(scalar $t->log_events('account_invalid', from => $mark), 0, 'no account_invalid');
is(scalar $t->log_events('capacity_exceeded', from => $mark), 0, 'no capacity_exceeded');

# Idle compaction: an overlay more than half full (4096 entries a head
# holds at least) is compacted once changes are quiet, so the next change
# does not wait for a base build.
my ($last1) = $pg->psql("select id from tollgate.accounts where name = 'last1'");
$mark = $t->log_mark;
$pg->psql(join(';', map {
	my $k = $_;
	"insert into tollgate.ip_rules (account_id, address) select $last1, '10.$k.' || (i / 256) || '.' || (i % 256) "
	    . "from generate_series(0, 699) i"
} 1 .. 3));
$ev = $t->wait_event('snapshot_published', 10, from => $mark, kind => 'idle');
ok($ev, 'an overlay more than half full is compacted when idle');
is($ev && $ev->{reason}, 'idle_compaction', '... reason idle_compaction');
is($ev && $ev->{ip_rules}, 2100, '... with every rule');
is($ev && $ev->{overlay_rules}, 0, '... and an empty overlay');
$mark = $t->log_mark;
$pg->add_rule($last1, '10.9.0.1');
$ev = $t->wait_event('snapshot_published', 5, from => $mark);
is($ev && $ev->{compaction}, 0, 'the next change is a delta');
is($ev && $ev->{overlay_rules}, 1, '... over the compacted base');

$t->finish;
done_testing;

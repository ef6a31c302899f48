#!/usr/bin/perl
# Provisioning through SQL reaches the gateway on SIGHUP: a rule inserted
# with psql lets its source through after reload_done, and once deleted
# its source is refused after the next one.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate;
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $acme = $pg->add_account('acme');
$pg->add_rule($acme, '127.0.0.21');
my $newco = $pg->add_account('newco');

$t->write_config(<<'EOF');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: debug
  file: "-"
metrics: "127.0.0.1:%%PORT_METRICS%%"
reject: reply
EOF
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $old = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);
my $new = Tollgate::SIP->new(local => '127.0.0.24', peer => $tg);

my ($first) = $t->log_events('snapshot_published');
is($first && $first->{ip_rules}, 1, 'first snapshot: 1 IP rule');
is($first && $first->{accounts}, 2, 'first snapshot: 2 accounts');

my ($resp, $fwd) = $new->call_through($ss);
is($resp && $resp->status, 403, '127.0.0.24 is refused before it is provisioned');
is($fwd, undef, '... not forwarded');

# --- insert, SIGHUP ---------------------------------------------------------

my $rule = $pg->add_rule($newco, '127.0.0.24');
my $gen_before = $t->metric('tollgate_snapshot_generation');
my $mark = $t->log_mark;
my $ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP after INSERT: reload_done');
my $first_after = $t->wait_log(sub { $_[0]{event} =~ /^(snapshot_published|reload_done)$/ }, 1, from => $mark);
is($first_after && $first_after->{event}, 'snapshot_published',
    '... logged after the loader published the new snapshot');
my $snap = $t->wait_event('snapshot_published', 5, from => $mark);
is($snap && $snap->{ip_rules}, 2, '... which holds 2 IP rules');
cmp_ok($snap && $snap->{generation}, '>', $first->{generation}, '... with a higher generation');
cmp_ok($t->metric('tollgate_snapshot_generation') // 0, '>', $gen_before // 0,
    'metrics: snapshot generation went up');

($resp, $fwd) = $new->call_through($ss);
is($resp && $resp->status, 200, 'the new rule lets 127.0.0.24 through');
is($fwd && $fwd->header('X-Tollgate-Account'), 'newco', '... as account newco');

($resp, $fwd) = $old->call_through($ss);
is($resp && $resp->status, 200, 'the old rule still works');
is($fwd && $fwd->header('X-Tollgate-Account'), 'acme', '... as account acme');

# --- delete, SIGHUP ---------------------------------------------------------

$pg->psql("delete from tollgate.ip_rules where id = $rule");
$mark = $t->log_mark;
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP after DELETE: reload_done');
$snap = $t->wait_event('snapshot_published', 5, from => $mark);
is($snap && $snap->{ip_rules}, 1, '... the new snapshot holds 1 IP rule');

$mark = $t->log_mark;
my $req;
($resp, $fwd, $req) = $new->call_through($ss);
is($resp && $resp->status, 403, 'the deleted rule no longer lets 127.0.0.24 through');
is($fwd, undef, '... not forwarded');
$ev = $t->wait_event('request_refused', 3, from => $mark, src => $new->local_hostport);
is($ev && $ev->{reason}, 'unknown_source', 'log: refused as unknown_source');

($resp) = $old->call_through($ss);
is($resp && $resp->status, 200, 'acme still gets through');

# --- one unreadable row does not spoil the load ---------------------------------

# The table refuses bad addresses; an operator bypassing the trigger can
# still store one. The loader must skip it, say so, and load the rest.
$pg->psql(q{
	alter table tollgate.ip_rules disable trigger ip_rules_fill;
	insert into tollgate.ip_rules (account_id, address, addr_first, addr_last)
	    values (} . $newco . q{, 'not-an-address', '127.0.0.25', '127.0.0.25');
	alter table tollgate.ip_rules enable trigger ip_rules_fill;
});
my $rule26 = $pg->add_rule($newco, '127.0.0.26');
$mark = $t->log_mark;
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP with an invalid row in ip_rules: reload_done');
ok($t->wait_event('rule_invalid', 3, from => $mark), 'log: rule_invalid');
$snap = $t->wait_event('snapshot_published', 3, from => $mark, kind => 'full');
is($snap && $snap->{invalid}, 1, 'snapshot_published counts 1 invalid rule');
is($snap && $snap->{ip_rules}, 2, '... and loads the 2 good ones');
my $c26 = Tollgate::SIP->new(local => '127.0.0.26', peer => $tg);
($resp, $fwd) = $c26->call_through($ss);
is($resp && $resp->status, 200, 'a good rule loaded beside it works (127.0.0.26)');
my $c25 = Tollgate::SIP->new(local => '127.0.0.25', peer => $tg);
($resp, $fwd) = $c25->call_through($ss);
is($resp && $resp->status, 403, 'the invalid rule lets nobody in (127.0.0.25)');
$pg->psql("delete from tollgate.ip_rules where address = 'not-an-address'");

# --- a schema the loader does not know: keep serving what we have --------------

my $version = $pg->psql('select version from tollgate.schema_version');
$pg->psql('update tollgate.schema_version set version = 999');
$mark = $t->log_mark;
$ev = $t->reload;
ok($t->wait_event('schema_unknown', 5, from => $mark), 'schema version 999: schema_unknown logged');
($resp, $fwd) = $old->call_through($ss);
is($resp && $resp->status, 200, '... and the last good snapshot keeps serving');
is($t->metric('tollgate_provisioning_loaded'), 1, '... metrics: provisioning still loaded');
$pg->psql("update tollgate.schema_version set version = $version");
$mark = $t->log_mark;
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'schema back to normal: reload_done');
ok($t->wait_event('snapshot_published', 5, from => $mark), '... with a fresh snapshot');

# --- the account goes inactive ----------------------------------------------

$pg->psql("update tollgate.accounts set status = 'inactive' where id = $acme");
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP after deactivating acme: reload_done');
($resp, $fwd) = $old->call_through($ss);
is($resp && $resp->status, 403, 'inactive acme is refused');
is($fwd, undef, '... not forwarded');

is($t->stop(signal => 'INT'), 0, 'SIGINT: exit 0');
$t->finish;
done_testing;

#!/usr/bin/perl
# PostgreSQL outages. Started while the database is down, tollgate still
# becomes ready, refuses requests as no_provisioning and says so in
# metrics; once the database is up it connects, loads and lets calls
# through. Losing the database later keeps the last good data serving.

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
$pg->stop;

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
db_retry:
  min_ms: 50
  max_ms: 300
EOF
$t->run(wait_db => 0);
pass('ready with PostgreSQL down');
ok($t->wait_event('db_connect_failed', 5), 'log: db_connect_failed');
is(scalar $t->log_events('snapshot_published'), 0, 'no snapshot published');

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);

my $mark = $t->log_mark;
my ($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 403, 'a provisioned customer gets 403 while nothing is loaded');
is($fwd, undef, '... not forwarded');
my $ev = $t->wait_event('request_refused', 3, from => $mark, src => $cust->local_hostport);
is($ev && $ev->{reason}, 'no_provisioning', 'log: reason no_provisioning');

my $m = $t->metrics;
is($m && $m->{tollgate_database_connected}, 0, 'metrics: tollgate_database_connected 0');
is($m && $m->{tollgate_provisioning_loaded}, 0, 'metrics: tollgate_provisioning_loaded 0');
cmp_ok($m && $m->{'tollgate_refusals_total{reason="no_provisioning"}'} // 0, '>=', 1,
    'metrics: refusals{reason="no_provisioning"} >= 1');

# --- PostgreSQL comes up ----------------------------------------------------

$mark = $t->log_mark;
$pg->start;
ok($t->wait_event('db_connected', 10, from => $mark), 'log: db_connected once PostgreSQL is up');
my $snap = $t->wait_event('snapshot_published', 10, from => $mark);
ok($snap, 'log: snapshot_published');
is($snap && $snap->{ip_rules}, 1, '... with the 1 provisioned rule');

($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'the customer\'s call now passes');
is($fwd && $fwd->header('X-Tollgate-Account'), 'acme', '... as acme');

$m = $t->metrics;
is($m && $m->{tollgate_database_connected}, 1, 'metrics: tollgate_database_connected 1');
is($m && $m->{tollgate_provisioning_loaded}, 1, 'metrics: tollgate_provisioning_loaded 1');

# --- PostgreSQL goes away again: the last snapshot keeps serving -----------

$mark = $t->log_mark;
$pg->stop;
ok($t->wait_event('db_disconnected', 10, from => $mark), 'log: db_disconnected');
($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'calls still pass on the last good snapshot');
my ($ok) = $t->wait_metric('tollgate_database_connected', {}, sub { $_[0] == 0 }, 5);
ok($ok, 'metrics: tollgate_database_connected back to 0');
is($t->metric('tollgate_provisioning_loaded'), 1, 'metrics: tollgate_provisioning_loaded still 1');

# and a reload while it is down does not lose the snapshot
$ev = $t->reload(timeout => 15);
ok($ev, 'SIGHUP while PostgreSQL is down: the reload ends (' . ($ev ? $ev->{event} : 'timeout') . ')');
($resp) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'calls still pass after that reload');

$mark = $t->log_mark;
$pg->start;
ok($t->wait_event('db_connected', 10, from => $mark), 'log: db_connected again');
ok($t->wait_event('snapshot_published', 10, from => $mark), 'log: a fresh snapshot after the reconnect');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

#!/usr/bin/perl
# Outages and restarts with live provisioning. PostgreSQL going away keeps
# the last snapshot serving and, once back, changes flow again; a loader
# killed with SIGKILL is respawned, resyncs and listens again while the
# workers keep serving; tollgate started with the database down serves
# the snapshot file it wrote, and refuses a damaged one.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $acme = $pg->add_account('acme');
$pg->add_rule($acme, '127.0.0.21');
my $file = $t->testdir . '/snapshot.bin';

# Every tollgate of this test keeps its snapshot in $file.
sub config {
	return <<"EOF";
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: info
  file: "-"
metrics: "127.0.0.1:%%PORT_METRICS%%"
db_retry:
  min_ms: 50
  max_ms: 300
snapshot_file: "$file"
provisioning:
  save_interval_ms: 100
EOF
}

$t->write_config(config());
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my %cust = map { $_ => Tollgate::SIP->new(local => "127.0.0.$_", peer => $tg) } (21, 22, 23);

sub status_of { $cust{ $_[0] }->call_status($ss) }
sub poll_status { $cust{ $_[0] }->poll_status($ss, $_[1], $_[2]) }

is(status_of(21), 200, 'provisioned customer passes');
ok($t->wait_event('snapshot_saved', 5), 'log: snapshot_saved');
ok(-s $file, 'the snapshot file is there');

# --- PostgreSQL goes away and comes back ------------------------------------

my $mark = $t->log_mark;
$pg->stop;
ok($t->wait_event('db_disconnected', 10, from => $mark), 'log: db_disconnected');
is(status_of(21), 200, 'calls keep passing on the last snapshot');
$pg->start;
ok($t->wait_event('db_connected', 10, from => $mark), 'log: db_connected');
$pg->add_rule($acme, '127.0.0.22');
is(poll_status(22, 200, 5), 200, 'a change after the outage arrives');

# --- the loader killed ----------------------------------------------------------

$mark = $t->log_mark;
my $loader = $t->children->{'loader 0'};
ok($loader && kill('KILL', $loader), 'SIGKILL the loader');
is(status_of(21), 200, 'workers keep serving while the loader is gone');
my $started = $t->wait_log(sub {
	$_[0]{event} eq 'child_started' && ($_[0]{role} // '') eq 'loader' }, 10, from => $mark);
ok($started, 'a new loader is started');
my $snap = $t->wait_event('snapshot_published', 10, from => $mark);
is($snap && $snap->{kind}, 'full', '... and resyncs fully');
$pg->add_rule($acme, '127.0.0.23');
is(poll_status(23, 200, 2), 200, '... and listens again: a change arrives');
is(status_of(21), 200, 'the first customer was never refused');
ok($t->wait_event('snapshot_saved', 5, from => $mark), 'the new loader writes the file too');

# --- started with the database down ----------------------------------------------

# Another tollgate (its own ports and log) on the same snapshot file.
sub restart {
	my $n = Tollgate->new;
	$n->pg($pg);
	$n->write_config(config());
	$n->run(wait_db => 0);
	my $peer = '127.0.0.1:' . $n->port('SIP');
	$ss = Tollgate::SIP->new(local => '127.0.0.10', port => $n->port('SS'), peer => $peer);
	%cust = map { $_ => Tollgate::SIP->new(local => "127.0.0.$_", peer => $peer) } (21, 22, 23);
	return $n;
}

is($t->stop, 0, 'SIGTERM: exit 0');
$pg->stop;
my $t2 = restart();
my $ev = $t2->wait_event('snapshot_loaded_from_file', 10);
ok($ev, 'database down at start: snapshot_loaded_from_file');
is($ev && $ev->{ip_rules}, 3, '... with the 3 rules');
is($ev && $ev->{path}, $file, '... from the configured path');
ok($ev && defined $ev->{age_s}, '... saying how old it is');
$snap = $t2->wait_event('snapshot_published', 5);
is($snap && $snap->{kind}, 'file', '... and published');
is(status_of($_), 200, "calls from 127.0.0.$_ work from the file") for (21, 22, 23);
is($t2->metric('tollgate_snapshot_from_file'), 1, 'metrics: snapshot_from_file 1');
is($t2->metric('tollgate_database_connected'), 0, 'metrics: database_connected 0');

$mark = $t2->log_mark;
$pg->start;
$snap = $t2->wait_event('snapshot_published', 10, from => $mark);
is($snap && $snap->{kind}, 'full', 'the database back: a full resync');
my ($ok) = $t2->wait_metric('tollgate_snapshot_from_file', {}, sub { $_[0] == 0 }, 5);
ok($ok, 'metrics: snapshot_from_file 0');

# --- a damaged file is refused ------------------------------------------------------

is($t2->stop, 0, 'SIGTERM: exit 0');
$pg->stop;
open(my $fh, '+<', $file) or die "$file: $!";
binmode $fh;
seek($fh, 100, 0);
my $byte;
read($fh, $byte, 1);
seek($fh, 100, 0);
print $fh chr(ord($byte) ^ 0x40);
close $fh;
my $t3 = restart();
$ev = $t3->wait_event('snapshot_file_rejected', 10);
ok($ev, 'a flipped byte: snapshot_file_rejected');
like($ev && $ev->{reason}, qr/checksum/, '... reason names the checksum');
my ($resp) = $cust{21}->call_through($ss, timeout => 1);
is($resp && $resp->status, 403, 'nothing is served from it');
ok($t3->wait_event('request_refused', 3, reason => 'no_provisioning'), '... the refusal says no_provisioning');
is(scalar $t3->log_events('snapshot_published'), 0, 'no snapshot published');

$t3->finish;
$t2->finish;
$t->finish;
done_testing;

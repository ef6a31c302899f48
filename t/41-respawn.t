#!/usr/bin/perl
# Supervision: a worker killed with SIGKILL is logged and respawned, the
# gateway is back to full strength and calls keep completing; SIGTERM
# stops everything within 5 s with exit 0 and leaves no process behind.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until wait_udp_bound);
use Tollgate::PG;

Tollgate::need_pg();
Tollgate::need_sipp();

my $WORKERS = 3;
my $CALLS = 20;

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $acme = $pg->add_account('acme');
$pg->add_rule($acme, '127.0.0.21');

$t->write_config(<<"EOF");
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: $WORKERS
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: info
  file: "-"
metrics: "127.0.0.1:%%PORT_METRICS%%"
EOF
$t->run;

my @pids = $t->worker_pids;
is(scalar @pids, $WORKERS, "$WORKERS workers started");
is(scalar(grep { Tollgate::pid_alive($_) } @pids), $WORKERS, '... and alive');
is($t->metric('tollgate_workers_alive'), $WORKERS, "metrics: workers_alive $WORKERS");

# process titles
SKIP: {
	skip 'no /proc', 1 unless -r "/proc/$pids[0]/cmdline";
	my $title = Tollgate::slurp("/proc/$pids[0]/cmdline");
	$title =~ s/\0+$//;
	$title =~ s/\0/ /g;
	like($title, qr/^tollgate: worker 0\b/, "worker 0's process title is 'tollgate: worker 0'");
}

# --- SIGKILL worker 1 --------------------------------------------------------

my $mark = $t->log_mark;
my $victim = $t->kill_worker(1);
my $exited = $t->wait_event('child_exited', 5, from => $mark, pid => $victim);
ok($exited, "child_exited logged for the killed worker (pid $victim)");
is($exited && $exited->{role}, 'worker', '... role worker');
is($exited && $exited->{index}, 1, '... index 1');
is($exited && $exited->{signal}, 9, '... signal 9');
ok($exited && exists $exited->{status} && exists $exited->{core}, '... with status and core fields');

my $started = $t->wait_log(sub {
	$_[0]{event} eq 'child_started' && ($_[0]{role} // '') eq 'worker' && ($_[0]{index} // -1) == 1
	    && $_[0]{pid} != $victim }, 10, from => $mark);
ok($started, 'a new worker 1 was started');
ok($started && Tollgate::pid_alive($started->{pid}), '... and runs');
ok(!Tollgate::pid_alive($victim), 'the killed one is gone (reaped)');
is_deeply([ $t->worker_pids ], [ $pids[0], $started ? $started->{pid} : -1, @pids[2 .. $#pids] ],
    'the other workers were left alone');

my ($ok, $alive) = $t->wait_metric('tollgate_workers_alive', {}, sub { $_[0] == $WORKERS }, 10);
ok($ok, "metrics: workers_alive back to $WORKERS") or diag "workers_alive: " . ($alive // 'undef');

# --- SIGKILL the loader ----------------------------------------------------------

$mark = $t->log_mark;
my $loader = $t->children->{'loader 0'};
ok($loader && kill('KILL', $loader), "SIGKILL the loader (pid " . ($loader // '?') . ")");
$exited = $t->wait_event('child_exited', 5, from => $mark, pid => $loader // -1);
is($exited && $exited->{role}, 'loader', 'child_exited logged for the loader');
$started = $t->wait_event('child_started', 10, from => $mark, role => 'loader');
ok($started && $started->{pid} != ($loader // -1), 'a new loader was started');
ok($t->wait_event('snapshot_published', 10, from => $mark), '... and it published a snapshot');

is(scalar $t->log_events('ready'), 1, '`ready` was logged once, not again after respawns');

# --- calls still complete -----------------------------------------------------

my $uas = $t->sipp(name => 'uas', scenario => 'uas.xml',
    local => '127.0.0.10', port => $t->port('SS'),
    args => [ '-m', $CALLS, '-set', 'expected_account', 'acme' ], timeout => 60);
ok(wait_udp_bound('127.0.0.10', $t->port('SS')), 'softswitch (sipp uas) is listening');
my $uac = $t->sipp(name => 'uac', scenario => 'uac.xml',
    remote => '127.0.0.1:' . $t->port('SIP'), local => '127.0.0.21', port => $t->port('UAC'),
    args => [ '-m', $CALLS, '-r', 20, '-s', '15551234' ], timeout => 60);
is($uac->wait(70), 0, "$CALLS calls completed after the respawn (uac)") or diag $uac->report;
is($uas->wait(20), 0, '... and at the softswitch (uas)') or diag $uas->report;

# --- SIGTERM -------------------------------------------------------------------

my @all = $t->live_pids;
cmp_ok(scalar @all, '>=', $WORKERS + 2, 'master, loader and workers are running') or diag "@all";
$mark = $t->log_mark;
my $t0 = Time::HiRes::time();
my $rc = $t->stop(timeout => 5);
my $took = Time::HiRes::time() - $t0;
is($rc, 0, 'SIGTERM: master exits 0');
cmp_ok($took, '<', 5, sprintf('... within 5 s (%.2f s)', $took));
ok($t->wait_event('stopping', 1, from => $mark), 'log: stopping');
ok($t->wait_event('stopped', 1, from => $mark), 'log: stopped');
my $left = 5 - $took;
$left = 0.2 if $left < 0.2;
ok(scalar(wait_until { !grep { Tollgate::pid_alive($_) } @all } $left), 'no tollgate process left after 5 s')
    or diag 'left: ' . join ' ', grep { Tollgate::pid_alive($_) } @all;

$t->finish;
done_testing;

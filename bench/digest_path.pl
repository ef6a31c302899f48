#!/usr/bin/perl
# CPU cost of a digest-authenticated call setup in tollgate, end to end,
# against the peer in the same run: an IP-authenticated INVITE.
#
#   digest: INVITE -> 407 -> ACK -> INVITE with Proxy-Authorization ->
#           forwarded to the softswitch (what a real UA sends; the ACK of
#           the 407 is parsed and dropped, and is part of the cost)
#   peer:   INVITE from an address an IP rule covers -> forwarded
#
# A real PostgreSQL and a real tollgate (2 workers, log level notice), raw
# UDP sockets on loopback: a customer at 127.0.0.21 (IP rule), a digest
# caller at 127.0.0.32 (no rule, user alice), the softswitch at
# 127.0.0.10, which only counts what arrives. Calls go in windows of W
# outstanding; each phase runs in 3 rounds, interleaved, so drift hits
# them alike. Prints calls/s (bound by this Perl client as much as by
# tollgate) and the CPU seconds the worker processes spent per 1000
# calls, from utime + stime in /proc/PID/stat (clock ticks; hence the
# default of 20,000 calls per phase) and, when the kernel has it, from
# /proc/PID/schedstat (ns), with the ratio digest / IP.
#
#   perl bench/digest_path.pl [CALLS [WINDOW]]
#   TOLLGATE_BIN=./tollgate perl bench/digest_path.pl 20000 32
#
# Not part of `make test`: its numbers depend on the machine.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use POSIX ();
use Time::HiRes qw(time);
use Test::More;    # the harness reports through Test::More; this is not a test
use Tollgate;
use Tollgate::PG;
use Tollgate::SIP;

my $CALLS = shift // 20000;
my $WINDOW = shift // 32;
my $ROUNDS = 3;
$ENV{TOLLGATE_BIN} //= "$FindBin::Bin/../tollgate";

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $acct = $pg->add_account('benchco');
$pg->add_rule($acct, '127.0.0.21');
$pg->add_sip_user($acct, 'alice', password => 'secret');

# every accepted nonce holds a replay-table slot for its lifetime: room
# for all of them at a load under 1/4
my $nonces = 1024;
$nonces *= 2 while $nonces < 4 * 2 * ($CALLS + 1000);
$t->write_config(<<EOF);
listen: ["127.0.0.1:%%PORT_SIP%%"]
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log: { level: notice, file: "-" }
digest: { realm: "tollgate", nonce_ttl_s: 300 }
capacity: { sip_users: 1000, nonces: $nonces, failure_sources: 1024 }
EOF
$t->run;
# the workers: children of the master titled "tollgate: worker N" (at log
# level notice child_started is not logged)
my @workers;
Tollgate::wait_until(sub {
	@workers = grep {
		my $pid = $_;
		my ($stat, $cmd) = map { Tollgate::slurp("/proc/$pid/$_") } qw(stat cmdline);
		my ($ppid) = $stat =~ /\)\s+\S+\s+(\d+)/;
		defined $ppid && $ppid == $t->master_pid && $cmd =~ /^tollgate: worker \d+/;
	} map { m{/(\d+)$} } glob('/proc/[0-9]*');
	@workers == 2;
}, 10);
die "found " . scalar(@workers) . " worker processes, not 2\n" unless @workers == 2;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $uri = "sip:15551234\@$tg";
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $ipc = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);
my $dc = Tollgate::SIP->new(local => '127.0.0.32', peer => $tg);

my $TCK = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;

# (stat seconds, schedstat seconds or undef), summed over the workers
sub worker_cpu {
	my ($st, $ns, $have_ns) = (0, 0, 1);
	for my $pid (@workers) {
		open(my $fh, '<', "/proc/$pid/stat") or die "worker $pid is gone\n";
		my $line = <$fh>;
		my @f = split ' ', substr($line, rindex($line, ')') + 2);
		$st += ($f[11] + $f[12]) / $TCK;	# fields 14 and 15: utime, stime
		if (open(my $sh, '<', "/proc/$pid/schedstat")) {
			my ($run) = split ' ', <$sh> // '';
			$ns += $run // 0;
		} else {
			$have_ns = 0;
		}
	}
	return ($st, $have_ns ? $ns / 1e9 : undef);
}

# Wait for $n forwarded INVITEs of the given Call-IDs at the softswitch.
sub collect_forwarded {
	my ($want) = @_;
	my $deadline = time() + 3;
	while (%$want && time() < $deadline) {
		my $m = $ss->recv(timeout => 0.2) or next;
		next if $m->is_response;
		delete $want->{ $m->header('call-id') // '' };
	}
	return scalar keys %$want;	# lost
}

my $seq = 0;
sub cid { return sprintf('b%d-%d@bench', $$, ++$seq) }

sub ip_window {
	my ($n) = @_;
	my %want;
	for (1 .. $n) {
		my $m = $ipc->build(method => 'INVITE', uri => $uri, call_id => cid());
		$want{ $m->header('call-id') } = 1;
		$ipc->send($m);
	}
	return collect_forwarded(\%want);
}

sub digest_window {
	my ($n, $alg) = @_;
	my %req;
	for (1 .. $n) {
		my $m = $dc->build(method => 'INVITE', uri => $uri, call_id => cid(), cseq => 1);
		$req{ $m->header('call-id') } = $m;
		$dc->send($m);
	}
	my (%want, $lost);
	my $deadline = time() + 3;
	while (%req && time() < $deadline) {
		my $r = $dc->recv(timeout => 0.2) or next;
		next unless $r->is_response && $r->status == 407;
		my $cid = $r->header('call-id') // '';
		my $req = delete $req{$cid} or next;
		my ($ch) = grep { ($_->{algorithm} // '') eq $alg } $r->challenges;
		die "no $alg challenge in the 407\n" unless $ch;
		$dc->send($dc->ack_for($req, $r));
		my $m = $dc->build(method => 'INVITE', uri => $uri, call_id => $cid, cseq => 2,
		    from_tag => $req->tag_of('from'), headers => [ [ 'Proxy-Authorization' =>
		    Tollgate::SIP::digest_credentials(challenge => $ch, username => 'alice', password => 'secret',
		    method => 'INVITE', uri => $uri, nc => 1) ] ]);
		$want{$cid} = 1;
		$dc->send($m);
	}
	$lost = keys %req;
	return $lost + collect_forwarded(\%want);
}

my %phase = (
	'IP rule: INVITE' => sub { ip_window($_[0]) },
	'digest MD5: INVITE, 407, ACK, INVITE' => sub { digest_window($_[0], 'MD5') },
	'digest SHA-256: INVITE, 407, ACK, INVITE' => sub { digest_window($_[0], 'SHA-256') },
);
my @order = ('IP rule: INVITE', 'digest MD5: INVITE, 407, ACK, INVITE', 'digest SHA-256: INVITE, 407, ACK, INVITE');

# warm up each path (and check it works at all)
for my $name (@order) {
	my $lost = $phase{$name}->(50);
	die "$name: $lost of 50 calls did not get through in the warm-up (is digest in this build?)\n" if $lost;
}

my %acc = map { $_ => { calls => 0, lost => 0, wall => 0, cpu => 0, ns => 0 } } @order;
my $per_round = int($CALLS / $ROUNDS) || 1;
for my $round (1 .. $ROUNDS) {
	for my $name (@order) {
		my $a = $acc{$name};
		my ($c0, $n0) = worker_cpu();
		my $w0 = time();
		my $done = 0;
		while ($done < $per_round) {
			my $n = $per_round - $done < $WINDOW ? $per_round - $done : $WINDOW;
			$a->{lost} += $phase{$name}->($n);
			$done += $n;
		}
		$a->{wall} += time() - $w0;
		my ($c1, $n1) = worker_cpu();
		$a->{cpu} += $c1 - $c0;
		$a->{ns} = defined $n0 && defined $n1 ? $a->{ns} + $n1 - $n0 : undef;
		$a->{calls} += $done;
	}
}

my $base = $acc{ $order[0] };
my $per1k = sub { my ($a, $k) = @_; return defined $a->{$k} ? 1000 * $a->{$k} / $a->{calls} : undef };
printf "%d calls per path in %d rounds, window %d, %d workers (pids %s), CLK_TCK %d\n",
    $base->{calls}, $ROUNDS, $WINDOW, scalar @workers, join(' ', @workers), $TCK;
printf "%-42s %9s %6s %16s %7s %18s %7s\n", 'path', 'calls/s', 'lost', 'CPU s/1000 (stat)', 'ratio',
    'CPU s/1000 (sched)', 'ratio';
for my $name (@order) {
	my $a = $acc{$name};
	my ($st, $sc) = ($per1k->($a, 'cpu'), $per1k->($a, 'ns'));
	my ($bst, $bsc) = ($per1k->($base, 'cpu'), $per1k->($base, 'ns'));
	printf "%-42s %9.0f %6d %16.4f %7s %18s %7s\n", $name, $a->{calls} / ($a->{wall} || 1e-9), $a->{lost}, $st,
	    $bst ? sprintf('%.2fx', $st / $bst) : 'n/a',
	    defined $sc ? sprintf('%.4f', $sc) : 'n/a',
	    defined $sc && $bsc ? sprintf('%.2fx', $sc / $bsc) : 'n/a';
}
print "calls/s is bound by this single-threaded Perl client; the CPU columns are tollgate's workers only.\n";
print "stat counts whole clock ticks: with few calls the stat column is coarse, prefer sched.\n";

$t->finish;
done_testing;

#!/usr/bin/perl
# Commit-to-use latency of a provisioning change, with N rules loaded
# (default 1,000,000), end to end: a real PostgreSQL, a real tollgate, a
# customer polling with OPTIONS every millisecond from an address that is
# not yet provisioned, and a softswitch socket that sees the first request
# tollgate lets through. For each of R changes (default 100) the time from
# the INSERT's clock_timestamp() in PostgreSQL to the first forwarded
# request is recorded; p50/p99/max are printed.
#
# The peer in the same run: what a reload-based gateway pays, a full
# resync of the same N rules triggered by SIGHUP (reload_done's ms), once
# per run (a few times). Printed as the ratio reload / delta p99.
#
#   perl bench/propagation.pl [RULES [CHANGES]]
#   TOLLGATE_BIN=./tollgate perl bench/propagation.pl 1000000 100
#
# Not part of `make test`: it takes a minute or two and its numbers depend
# on the machine.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use POSIX qw(floor);
use Time::HiRes qw(time sleep);
use Test::More;    # the harness reports through Test::More; this is not a test
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

my $RULES = shift // 1_000_000;
my $CHANGES = shift // 100;
$ENV{TOLLGATE_BIN} //= "$FindBin::Bin/../tollgate";

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $t0 = time;
# accounts and a realistic mix of rules far from loopback: single IPv4,
# /24-/28 blocks, ranges, IPv6
$pg->psql(<<SQL, timeout => 1800);
insert into tollgate.accounts (name) select 'acct' || g from generate_series(1, 1000) g;
insert into tollgate.ip_rules (account_id, address)
select (g % 1000) + (select min(id) from tollgate.accounts),
       case g % 20
         when 0 then host('10.0.0.0'::inet + g * 16) || '/28'
         when 1 then '2001:db8:' || to_hex(g >> 16) || ':' || to_hex(g & 65535) || '::/64'
         when 2 then host('11.0.0.0'::inet + g * 4) || '-' || host('11.0.0.0'::inet + g * 4 + 2)
         else host('12.0.0.0'::inet + g)
       end
from generate_series(1, $RULES) g;
SQL
printf "loaded %d rules into PostgreSQL in %.1f s\n", $RULES, time - $t0;
my $acct = $pg->add_account('bench');

$t->write_config(<<'EOF');
listen: ["127.0.0.1:%%PORT_SIP%%"]
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log: { level: notice, file: "-" }
capacity: { accounts: 10000, ip_rules: 1200000 }
provisioning: { coalesce_ms: 5, max_delay_ms: 50 }
EOF
$t0 = time;
$t->run(timeout => 300);
printf "tollgate ready with the rules in %.1f s\n", time - $t0;

my $tg = '127.0.0.1:' . $t->port('SIP');
my @lat_ms;
for my $i (1 .. $CHANGES) {
	my $addr = sprintf('127.0.%d.%d', 1 + floor($i / 250), 1 + $i % 250);
	pipe(my $r, my $w) or die "pipe: $!";
	my $pid = fork // die "fork: $!";
	if ($pid == 0) {
		close $r;
		my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
		my $c = Tollgate::SIP->new(local => $addr, peer => $tg);
		my $deadline = time + 10;
		while (time < $deadline) {
			$c->send($c->build(method => 'OPTIONS'));
			my $m = $ss->recv(timeout => 0.001);
			if ($m && !$m->is_response) {
				printf $w "%.6f\n", time;
				close $w;
				POSIX::_exit(0);
			}
			$c->drain;
		}
		POSIX::_exit(1);
	}
	close $w;
	sleep 0.02;    # the poller is refused a few times first
	my $committed = $pg->psql(sprintf(
	    "insert into tollgate.ip_rules (account_id, address) values (%d, '%s') "
	    . "returning extract(epoch from clock_timestamp())", $acct, $addr));
	my $seen = <$r>;
	waitpid($pid, 0);
	die "change $i ($addr) never took effect\n" unless defined $seen;
	push @lat_ms, ($seen - $committed) * 1000;
}
my @s = sort { $a <=> $b } @lat_ms;
my $pct = sub { $s[ floor(($#s) * $_[0] / 100 + 0.5) ] };
printf "commit to first use, %d single-rule changes with %d rules loaded:\n", $CHANGES, $RULES;
printf "  p50 %.1f ms   p99 %.1f ms   max %.1f ms   (target: p99 < 100 ms: %s)\n",
    $pct->(50), $pct->(99), $s[-1], $pct->(99) < 100 ? 'met' : 'MISSED';

# the peer: a reload-based gateway rebuilds everything on each change
my @reload;
for (1 .. 3) {
	my $mark = $t->log_mark;
	kill 'HUP', $t->master_pid;
	my $ev = $t->wait_event('reload_done', 300, from => $mark) or die "no reload_done\n";
	push @reload, $ev->{ms};
}
my ($best) = sort { $a <=> $b } @reload;
printf "peer, full resync by SIGHUP (reload_done): best of 3 %.0f ms\n", $best;
printf "ratio full resync / delta p99: %.1fx\n", $best / ($pct->(99) || 1);
$t->finish;
done_testing;

#!/usr/bin/perl
# Call rate limits: every initial INVITE that passes takes a token from
# its account's bucket (accounts.max_cps new calls a second, cps_burst at
# once, default max_cps) and, when set, its IP rule's (ip_rules.max_cps,
# cps_burst); without one it gets 503 with Retry-After: 5, logged as
# request_refused, reason cps_exceeded. Retransmissions take no token.
#
# The test offers calls itself and measures, on its own clock, the time
# between the first and the last INVITE it sent; what passes must then be
# burst + rate x that time, within one call. That is a relation between
# counts, not a timing assertion: a slow machine changes the time
# measured, not the outcome. The calls are offered from several source
# ports (spread over the workers by SO_REUSEPORT) so that the bucket is
# shared; the softswitch answers every call it gets 486.
#
# Addresses: tollgate 127.0.0.1, softswitch 127.0.0.10, customers
# 127.0.0.70-74.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time);
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);

my %acct;
$acct{cps10} = $pg->add_account('cps10', max_cps => 10);	# burst: the default, 10
$pg->add_rule($acct{cps10}, '127.0.0.70');
$acct{bursty} = $pg->add_account('bursty', max_cps => 1, cps_burst => 5);
$pg->add_rule($acct{bursty}, '127.0.0.71');
$acct{rulecps} = $pg->add_account('rulecps');	# no limit of the account's own
$pg->add_rule($acct{rulecps}, '127.0.0.72', max_cps => 2);
$pg->add_rule($acct{rulecps}, '127.0.0.73');
$acct{retx} = $pg->add_account('retx', max_cps => 1);
$pg->add_rule($acct{retx}, '127.0.0.74');

$t->write_config(<<'EOF');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: info
  file: "-"
metrics: "127.0.0.1:%%PORT_METRICS%%"
reject: reply
EOF
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
sub sockets { my ($ip, $n) = @_; return [ map { Tollgate::SIP->new(local => $ip, peer => $tg) } 1 .. $n ] }

# --- 10 cps, 50 calls a second offered for 5 seconds -------------------------------

{
	my $mark = $t->log_mark;
	my $o = offer_calls(sockets('127.0.0.70', 4), 250, 1 / 50);
	my $expect = 10 + 10 * $o->{elapsed};
	diag(sprintf('cps10: %d of %d passed in %.3f s between the first and the last INVITE; '
	    . 'burst + rate x time = %.2f', $o->{passed}, 250, $o->{elapsed}, $expect));
	is($o->{answered}, 250, 'cps10: each of the 250 INVITEs got a final response');
	cmp_ok(abs($o->{passed} - $expect), '<=', 1,
	    'the calls that reached the softswitch: burst 10 + 10/s x the time measured, within one call');
	is($o->{status}{486} // 0, $o->{passed}, '... each answered by the softswitch (486)');
	is($o->{status}{503} // 0, 250 - $o->{passed}, '... the others refused by tollgate with 503');
	is($o->{retry_after}{503}{5} // 0, 250 - $o->{passed}, '... each with Retry-After: 5');

	my %ref;
	$ref{ $_->{call_id} // '' } = $_ for grep { ($_->{reason} // '') eq 'cps_exceeded' }
	    $t->log_events('request_refused', from => $mark);
	is(scalar keys %ref, 250 - $o->{passed}, 'log: request_refused, reason cps_exceeded, for each');
	is(scalar(grep { ($_->{account} // '') eq 'cps10' && ($_->{limit} // '') eq 'account'
	    && ($_->{code} // 0) == 503 } values %ref), 250 - $o->{passed}, '... account cps10, limit account, code 503');
	is_deeply([ sort keys %ref ], [ sort @{ $o->{refused_ids} } ], '... the calls refused');

	my $m = $t->metrics;
	is($m->{'tollgate_account_calls_total{account="cps10"}'}, $o->{passed},
	    'metrics: tollgate_account_calls_total{account="cps10"} counts the calls that passed');
	is($m->{'tollgate_account_refusals_total{account="cps10",limit="cps"}'}, 250 - $o->{passed},
	    'metrics: tollgate_account_refusals_total{account="cps10",limit="cps"} the others');
}

# --- a burst above the rate ----------------------------------------------------------

{
	my $o = offer_calls(sockets('127.0.0.71', 2), 12, 0);
	my $expect = 5 + 1 * $o->{elapsed};
	diag(sprintf('bursty: %d of 12 passed in %.3f s', $o->{passed}, $o->{elapsed}));
	is($o->{answered}, 12, 'bursty (1/s, burst 5): 12 INVITEs back to back, each answered');
	cmp_ok(abs($o->{passed} - $expect), '<=', 1, 'burst 5 + 1/s x the time measured passed, within one call');
	is($o->{status}{503} // 0, 12 - $o->{passed}, '... the others got 503');
}

# --- a rate on the rule ------------------------------------------------------------

{
	my $mark = $t->log_mark;
	my $o = offer_calls(sockets('127.0.0.72', 2), 8, 0);
	my $expect = 2 + 2 * $o->{elapsed};
	is($o->{answered}, 8, 'rulecps: 8 INVITEs back to back from 127.0.0.72 (rule max_cps 2), each answered');
	cmp_ok(abs($o->{passed} - $expect), '<=', 1, 'burst 2 + 2/s x the time measured passed, within one call');
	my ($ev) = grep { ($_->{reason} // '') eq 'cps_exceeded' } $t->log_events('request_refused', from => $mark);
	is($ev && $ev->{limit}, 'rule', 'log: refused as cps_exceeded, limit rule');
	is($ev && $ev->{account}, 'rulecps', '... account rulecps');
	$o = offer_calls(sockets('127.0.0.73', 2), 8, 0);
	is($o->{passed}, 8, 'the same from 127.0.0.73 (same account, a rule without a rate): all 8 pass');
}

# --- retransmissions take no token --------------------------------------------------------

{
	my $c = Tollgate::SIP->new(local => '127.0.0.74', peer => $tg);
	my $a = $c->dial($ss);
	ok($a->forwarded, 'retx (1/s, burst 1): a call passes');
	my $refused = 0;
	for my $n (1 .. 3) {
		my ($copy, $resp) = $a->offer(timeout => 1);
		$refused++ if $resp || !$copy;
	}
	is($refused, 0, 'its INVITE retransmitted 3 times at once: forwarded each time, never refused');
	my $m = $t->metrics;
	is($m->{'tollgate_account_calls_total{account="retx"}'}, 1, 'metrics: one call counted');
	is($m->{'tollgate_account_refusals_total{account="retx",limit="cps"}'} // 0, 0, 'metrics: no refusal');
	$a->answer(486);
}

is(wait_series(0, 'tollgate_dialogs', state => 'early'), 0, 'metrics: no early dialog left (every 486 ended its call)');
my $m = $t->metrics;
cmp_ok($m->{'tollgate_refusals_total{reason="cps_exceeded"}'} // 0, '>=', 1,
    'metrics: tollgate_refusals_total{reason="cps_exceeded"} counted');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

###########################################################################

# The harness's series()/wait_series() on the tollgate under test ($t).
sub series { $t->series(@_) }
sub wait_series { $t->wait_series(@_) }

# offer_calls(\@sockets, $n, $interval_s): $n INVITEs, one every
# $interval_s seconds (0: back to back), round robin over the sockets; the
# softswitch answers 486 to each it gets. Waits (at most 10 s after the
# last) for every call's final response. Returns { passed (calls the
# softswitch got), answered (calls with a final response), status =>
# {code => count}, retry_after => {code => {value => count}}, refused_ids
# => [call-ids answered 503], elapsed (s, last INVITE sent - first) }.
sub offer_calls {
	my ($socks, $n, $interval) = @_;
	my (%sent, %fwd, %final, %ra, $first, $last, $drain_until);
	my $t0 = time;
	my $i = 0;
	while (1) {
		if ($i < $n && time >= $t0 + $i * $interval) {
			my $s = $socks->[ $i % @$socks ];
			my $req = $s->build(method => 'INVITE', user => sprintf('4420%06d', $i));
			$s->send($req);
			$last = time;
			$first //= $last;
			$sent{ $req->header('call-id') } = 1;
			$i++;
			next if $interval == 0 && $i < $n;
		}
		while (my $m = $ss->recv(timeout => 0.001)) {
			next if $m->is_response || $m->method ne 'INVITE';
			my $cid = $m->header('call-id') // '';
			next unless $sent{$cid};
			$ss->send($ss->reply($m, 486, 'Busy Here')) unless $fwd{$cid}++;
		}
		for my $s (@$socks) {
			while (my $m = $s->recv(timeout => 0.001)) {
				next unless $m->is_response && $m->status >= 200;
				my $cid = $m->header('call-id') // '';
				next if !$sent{$cid} || $final{$cid};
				$final{$cid} = $m->status;
				$ra{ $m->status }{ $m->header('Retry-After') // 'none' }++;
			}
		}
		if ($i >= $n) {
			$drain_until //= time + 10;
			last if keys(%final) >= $n || time > $drain_until;
		}
	}
	my %status;
	$status{$_}++ for values %final;
	return {
		passed => scalar(keys %fwd),
		answered => scalar(keys %final),
		status => \%status,
		retry_after => \%ra,
		refused_ids => [ grep { $final{$_} == 503 } keys %final ],
		elapsed => $last - $first,
	};
}

#!/usr/bin/perl
# Channel limits: every initial INVITE that passes takes one channel from
# its account (accounts.max_channels) and, when set, from its IP rule
# (ip_rules.max_channels); over the limit it gets 503 Service Unavailable
# with Retry-After: 5, logged as request_refused, reason
# channels_exceeded, limit account or rule. The channel comes back
# exactly once: on a final non-2xx response, CANCEL, or BYE from either
# side. Retransmissions and spirals take nothing more, and a
# retransmission of a refused INVITE is refused again. A softswitch's
# INVITE to a customer counts against the customer's account. Workers
# SIGKILLed mid-call lose nothing: the count lives in shared memory.
#
# sipp places 10 simultaneous calls for an account with 5 channels
# (uac_limit.xml, one socket per call so that they spread over the
# workers; uas_hold.xml answers, holds and hangs up); raw Tollgate::SIP
# peers do the rest.
#
# Addresses: tollgate 127.0.0.1, softswitch 127.0.0.10, customers
# 127.0.0.60-68 (one per account or rule).

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until wait_udp_bound);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();
Tollgate::need_sipp();

my $HOLD_MS = 5000;	# how long the softswitch holds each sipp call

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);

my %acct;
$acct{five} = $pg->add_account('five', max_channels => 5);
$pg->add_rule($acct{five}, '127.0.0.61');
$acct{retx} = $pg->add_account('retx', max_channels => 1);
$pg->add_rule($acct{retx}, '127.0.0.60');
$acct{rel} = $pg->add_account('rel', max_channels => 1);
$pg->add_rule($acct{rel}, '127.0.0.62');
$acct{kill} = $pg->add_account('kill', max_channels => 3);
$pg->add_rule($acct{kill}, '127.0.0.63');
$acct{perrule} = $pg->add_account('perrule');	# no limit of the account's own
my $perrule_rule = $pg->add_rule($acct{perrule}, '127.0.0.64', max_channels => 1);
$pg->add_rule($acct{perrule}, '127.0.0.65');
$acct{egr} = $pg->add_account('egr', max_channels => 1);
$pg->add_rule($acct{egr}, '127.0.0.66', direction => 'both');
$acct{spiral} = $pg->add_account('spiral', max_channels => 1);
$pg->add_rule($acct{spiral}, '127.0.0.67', direction => 'both');
$acct{spiral_out} = $pg->add_account('spiral_out', max_channels => 1);
$pg->add_rule($acct{spiral_out}, '127.0.0.68', direction => 'egress');

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
my %expect_end;	# call_id => [account, reason, what]: checked at the end, once each

# --- 10 simultaneous calls, 5 channels (sipp) ------------------------------------

{
	my $mark = $t->log_mark;
	my $uas = $t->sipp(name => 'uas', scenario => 'uas_hold.xml',
	    local => '127.0.0.10', port => $t->port('SS'),
	    args => [ '-m', 5, '-d', $HOLD_MS, '-set', 'expected_account', 'five' ], timeout => 50);
	ok(wait_udp_bound('127.0.0.10', $t->port('SS')), 'softswitch (sipp uas_hold) is listening')
	    or diag $uas->report;
	my $uac = $t->sipp(name => 'uac', scenario => 'uac_limit.xml',
	    remote => $tg, local => '127.0.0.61', port => $t->port('UAC'),
	    args => [ '-t', 'un', '-max_socket', 100, '-m', 10, '-l', 10, '-r', 100,
	    '-s', '15551234', '-trace_logs' ], timeout => 50);

	# the softswitch holds the answered calls for $HOLD_MS: look meanwhile
	is(wait_series(5, 'tollgate_account_channels', account => 'five'), 5,
	    'metrics: tollgate_account_channels{account="five"} is 5 while the calls are held');
	is(wait_series(5, 'tollgate_dialogs', state => 'confirmed'), 5, 'metrics: 5 confirmed dialogs meanwhile');

	is($uac->wait(45), 0, 'customer (sipp): 10 calls, each answered or refused with Retry-After')
	    or diag $uac->report;
	is($uas->wait(20), 0, 'softswitch (sipp): 5 calls as account five, held and hung up')
	    or diag $uas->report;

	my @lines = Tollgate::SIP::sipp_log($uac);
	my @answered = map { (split ' ')[1] } grep { /^ANSWERED / } @lines;
	my @refused = grep { /^REFUSED / } @lines;
	is(scalar @answered, 5, 'exactly 5 of the 10 calls connected');
	is(scalar @refused, 5, 'exactly 5 were refused with 503');
	is(scalar(grep { /^REFUSED \S+ 503 5 / } @refused), 5, '... each with Retry-After: 5');

	my %ref;
	$ref{ $_->{call_id} // '' } = $_ for grep { ($_->{reason} // '') eq 'channels_exceeded' }
	    $t->log_events('request_refused', from => $mark);
	is(scalar keys %ref, 5, 'log: request_refused, reason channels_exceeded, for 5 calls');
	is(scalar(grep { ($_->{account} // '') eq 'five' && ($_->{limit} // '') eq 'account'
	    && ($_->{code} // 0) == 503 && ($_->{method} // '') eq 'INVITE' } values %ref), 5,
	    '... each with account five, limit account, code 503');
	is_deeply([ sort keys %ref ], [ sort map { (split ' ')[1] } @refused ],
	    '... the very calls the customer saw refused');

	is(wait_series(0, 'tollgate_account_channels', account => 'five'), 0,
	    'metrics: once all calls ended, tollgate_account_channels{account="five"} is 0');
	is(wait_series(0, 'tollgate_dialogs', state => 'confirmed'), 0, 'metrics: no confirmed dialog left');
	is(series('tollgate_account_calls_total', account => 'five'), 5,
	    'metrics: tollgate_account_calls_total{account="five"} 5');
	is(series('tollgate_account_refusals_total', account => 'five', limit => 'channels'), 5,
	    'metrics: tollgate_account_refusals_total{account="five",limit="channels"} 5');
	# sipp ACKed each 503: the ACK of tollgate's own refusal is no refusal of anyone's
	is(series('tollgate_refusals_total', reason => 'no_dialog') // 0, 0,
	    '... and the ACKs of the five 503s count as no no_dialog refusal');
	for my $state (qw(early confirmed ended refused)) {
		ok(defined series('tollgate_dialogs', state => $state),
		    "metrics: tollgate_dialogs{state=\"$state\"} is exported");
	}
	$expect_end{$_} = [ 'five', 'bye', "sipp call $_" ] for @answered;
}

# the softswitch from here on: a raw socket where downstream points
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);

# --- retransmissions ----------------------------------------------------------------

{
	my $c = Tollgate::SIP->new(local => '127.0.0.60', peer => $tg);
	my $a = $c->dial($ss);
	ok($a->forwarded, 'retx (1 channel): the first call reaches the softswitch');
	is(wait_series(1, 'tollgate_account_channels', account => 'retx'), 1, '... and takes the channel');
	for my $n (1 .. 2) {
		my ($copy, $resp) = $a->offer(timeout => 1);
		ok($copy, "its INVITE retransmitted ($n): forwarded again");
		ok(!$resp, '... not refused') or diag('got ' . $resp->status);
	}
	is(series('tollgate_account_channels', account => 'retx'), 1, 'retransmissions take no channel');
	is(series('tollgate_account_calls_total', account => 'retx'), 1, '... and count as no new call');

	my $b = $c->dial($ss);
	is($b->status, 503, 'a second call over max_channels 1: 503');
	like($b->response ? $b->response->reason : '', qr/^Service Unavailable$/, '... Service Unavailable');
	is($b->response && $b->response->header('Retry-After'), '5', '... with Retry-After: 5');
	ok(!$b->forwarded && !$ss->take(call_id => $b->call_id, method => 'INVITE', timeout => 0.3),
	    '... not forwarded');
	refused_ok($b, 'channels_exceeded', 'retx', 'account', 503, 'the second call');

	my $first = $b->response;
	my ($copy, $resp) = $b->offer(timeout => 1);
	is($resp && $resp->status, 503, 'the refused INVITE retransmitted: 503 again');
	my ($tag1, $tag2) = map { $_ ? $_->tag_of('to') : undef } $first, $resp;
	ok(defined $tag1 && defined $tag2 && $tag1 eq $tag2, '... the same refusal (the same To tag)');
	ok(!$copy, '... not forwarded');

	my $r = $a->answer(486);
	is($r && $r->status, 486, 'the softswitch answers the first call 486: relayed to the customer');
	is(wait_series(0, 'tollgate_account_channels', account => 'retx'), 0, '... and the channel is free');
	$expect_end{ $a->call_id } = [ 'retx', 'failed', 'retx: the call answered 486' ];

	($copy, $resp) = $b->offer(timeout => 1);
	is($resp && $resp->status, 503, 'the refused INVITE retransmitted once the channel is free: still 503');
	ok(!$copy, '... not forwarded');
	is(series('tollgate_account_channels', account => 'retx'), 0, '... and it took no channel');
}

# --- each way a channel comes back --------------------------------------------------

{
	my $c = Tollgate::SIP->new(local => '127.0.0.62', peer => $tg);
	my %end;

	# a final non-2xx response
	my $x = $c->dial($ss);
	ok($x->forwarded, 'rel (1 channel): a call reaches the softswitch');
	busy_ok($c, 'rel', 'while the first is unanswered');
	my $r = $x->answer(486);
	is($r && $r->status, 486, '486 from the softswitch reaches the customer');
	is(wait_series(0, 'tollgate_account_channels', account => 'rel'), 0, '486: the channel is free');
	$end{failed} = $x;

	# CANCEL
	$x = $c->dial($ss);
	ok($x->forwarded, 'rel: the next call reaches the softswitch');
	$x->answer(180);
	is(wait_series(1, 'tollgate_account_channels', account => 'rel'), 1, '... 180: one channel in use');
	my ($cs, $is, $got) = $x->cancel;
	ok($got, 'the customer\'s CANCEL reaches the softswitch');
	is($cs, 200, '... its 200 comes back');
	is($is, 487, '... and the INVITE\'s 487');
	is(wait_series(0, 'tollgate_account_channels', account => 'rel'), 0, 'CANCEL: the channel is free');
	$end{cancelled} = $x;

	# BYE from the customer
	$x = $c->dial($ss);
	$r = $x->answer(200);
	is($r && $r->status, 200, 'rel: a call answered 200');
	ok($x->{ack_got}, '... its ACK reaches the softswitch');
	busy_ok($c, 'rel', 'while it is up');
	my ($st, $bye) = $x->request('caller', 'BYE');
	ok($bye, 'the customer\'s BYE reaches the softswitch');
	is($st, 200, '... and the 200 comes back');
	is(wait_series(0, 'tollgate_account_channels', account => 'rel'), 0, 'BYE from the customer: the channel is free');
	$end{bye_caller} = $x;

	# BYE from the softswitch
	$x = $c->dial($ss);
	$r = $x->answer(200);
	is($r && $r->status, 200, 'rel: another call answered 200');
	($st, $bye) = $x->request('callee', 'BYE');
	ok($bye, 'the softswitch\'s BYE reaches the customer');
	is($st, 200, '... and the customer\'s 200 reaches the softswitch');
	is(wait_series(0, 'tollgate_account_channels', account => 'rel'), 0, 'BYE from the softswitch: the channel is free');
	$end{bye_callee} = $x;

	# none of those gave back more than it took: the limit still holds at 1
	my $y = $c->dial($ss);
	ok($y->forwarded, 'rel: after all that, one call passes');
	my $z = $c->dial($ss);
	is($z->status, 503, '... and a second one is still refused (nothing was released twice)');
	$z->answer(486) if $z->forwarded;
	$y->cancel;
	is(wait_series(0, 'tollgate_account_channels', account => 'rel'), 0, '... and the count ends at 0');
	$expect_end{ $end{failed}->call_id } = [ 'rel', 'failed', 'rel: 486' ];
	$expect_end{ $end{cancelled}->call_id } = [ 'rel', 'cancelled', 'rel: CANCEL' ];
	$expect_end{ $end{bye_caller}->call_id } = [ 'rel', 'bye', 'rel: BYE from the customer' ];
	$expect_end{ $end{bye_callee}->call_id } = [ 'rel', 'bye', 'rel: BYE from the softswitch' ];
	$expect_end{ $y->call_id } = [ 'rel', 'cancelled', 'rel: the last call, cancelled' ];
}

# --- a limit on the rule -----------------------------------------------------------

{
	my $ra = Tollgate::SIP->new(local => '127.0.0.64', peer => $tg);
	my $rb = Tollgate::SIP->new(local => '127.0.0.65', peer => $tg);
	my $p1 = $ra->dial($ss);
	ok($p1->forwarded, 'perrule: a call from 127.0.0.64 (rule with max_channels 1) passes');
	my $p2 = $ra->dial($ss);
	is($p2->status, 503, '... a second one from there: 503');
	refused_ok($p2, 'channels_exceeded', 'perrule', 'rule', 503, 'the call over the rule\'s limit');
	my $p3 = $rb->dial($ss);
	my $p4 = $rb->dial($ss);
	ok($p3->forwarded && $p4->forwarded,
	    'two calls from 127.0.0.65 (same account, a rule without a limit) pass meanwhile');
	is(wait_series(3, 'tollgate_account_channels', account => 'perrule'), 3, 'metrics: perrule has 3 channels in use');
	$_->answer(486) for $p1, $p3, $p4;
	is(wait_series(0, 'tollgate_account_channels', account => 'perrule'), 0, '486 to all three: 0');
	my $p5 = $ra->dial($ss);
	ok($p5->forwarded, 'the rule\'s channel is free again: a call from 127.0.0.64 passes');
	$p5->answer(486);
	# a refusal is counted where the limit is: the rule's
	is(series('tollgate_rule_refusals_total', rule => $perrule_rule, limit => 'channels'), 1,
	    "metrics: tollgate_rule_refusals_total{rule=\"$perrule_rule\",limit=\"channels\"} 1");
	$expect_end{ $_->call_id } = [ 'perrule', 'failed', 'perrule: 486' ] for $p1, $p3, $p4, $p5;
}

# --- egress calls count ---------------------------------------------------------------

{
	my $eg = Tollgate::SIP->new(local => '127.0.0.66', peer => $tg);
	my $uri = 'sip:4420123456@' . $eg->local_hostport;
	my $e1 = $ss->dial($eg, uri => $uri);
	ok($e1->forwarded, 'egress: the softswitch\'s INVITE reaches customer egr (rule both)');
	my $r = $e1->answer(200);
	is($r && $r->status, 200, '... its 200 reaches the softswitch');
	ok($e1->{ack_got}, '... and the ACK the customer');
	is(wait_series(1, 'tollgate_account_channels', account => 'egr'), 1,
	    'metrics: the egress call takes one of egr\'s channels');
	my $in = $eg->dial($ss);
	is($in->status, 503, 'egr calling in meanwhile (max_channels 1): 503');
	refused_ok($in, 'channels_exceeded', 'egr', 'account', 503, 'egr\'s call in');
	my $e2 = $ss->dial($eg, uri => $uri);
	is($e2->status, 503, 'a second egress call to egr: 503 to the softswitch');
	ok(!$e2->forwarded, '... not sent to the customer');
	refused_ok($e2, 'channels_exceeded', 'egr', 'account', 503, 'the second egress call');
	my ($st, $bye) = $e1->request('callee', 'BYE');
	ok($bye, 'the customer hangs up: its BYE reaches the softswitch');
	is($st, 200, '... and the 200 comes back');
	is(wait_series(0, 'tollgate_account_channels', account => 'egr'), 0, '... the channel is free');
	my $e3 = $ss->dial($eg, uri => $uri);
	ok($e3->forwarded, 'a new egress call to egr passes');
	$e3->answer(486);
	is(wait_series(0, 'tollgate_account_channels', account => 'egr'), 0, '... and its 486 frees it');
	$expect_end{ $e1->call_id } = [ 'egr', 'bye', 'egress call hung up by the customer' ];
	$expect_end{ $e3->call_id } = [ 'egr', 'failed', 'egress call answered 486' ];
}

# --- a spiral takes nothing more ----------------------------------------------------

{
	my $a = Tollgate::SIP->new(local => '127.0.0.67', peer => $tg);
	my $b = Tollgate::SIP->new(local => '127.0.0.68', peer => $tg);
	my $x = $a->dial($ss);
	ok($x->forwarded, 'spiral: customer spiral (1 channel) calls in');
	# the softswitch, a proxy here, sends the same INVITE (Call-ID, From and
	# its tag) back out through tollgate, to customer spiral_out
	my $inv = $x->req;
	my $out = $ss->build(method => 'INVITE', uri => 'sip:15551234@' . $b->local_hostport,
	    call_id => $x->call_id, from => Tollgate::SIP::Call::_bare($inv->header('from')),
	    from_tag => $x->from_tag, to => $inv->header('to'), cseq => 1);
	$ss->send($out);
	my $got = $b->take(call_id => $x->call_id, method => 'INVITE', timeout => 2);
	my $refused = $ss->take(call_id => $x->call_id, response => 1, final => 1, timeout => 0.3);
	ok($got, 'the spiral (same Call-ID and From tag) reaches spiral_out');
	ok(!$refused, '... and is not refused') or diag('got ' . $refused->status);
	is(series('tollgate_account_channels', account => 'spiral'), 1, 'spiral still has 1 channel in use');
	is(series('tollgate_account_channels', account => 'spiral_out') // 0, 0, 'spiral_out has none');
	is(series('tollgate_account_calls_total', account => 'spiral'), 1, 'one call counted for spiral');
	if ($got) {
		$b->send($b->reply($got, 486, 'Busy Here', to_tag => 'spiral-out'));
		$ss->take(call_id => $x->call_id, response => 1, final => 1, timeout => 1);
	}
	$x->answer(486);
	is(wait_series(0, 'tollgate_account_channels', account => 'spiral'), 0, 'the call ends: 0');
}

# --- workers SIGKILLed during calls ---------------------------------------------------

{
	my @k = map { Tollgate::SIP->new(local => '127.0.0.63', peer => $tg) } 1 .. 4;
	my @kc = map { $k[$_]->dial($ss) } 0 .. 2;
	is(scalar(grep { $_->forwarded } @kc), 3, 'kill (3 channels): 3 calls from 3 source ports pass');
	$kc[0]->answer(200);
	$kc[1]->answer(200);
	$kc[2]->answer(180);
	is(wait_series(3, 'tollgate_account_channels', account => 'kill'), 3, '2 answered, 1 ringing: 3 channels');
	for my $i (0, 1) {
		my $mark = $t->log_mark;
		my $pid = $t->kill_worker($i);
		ok($t->wait_event('child_exited', 5, from => $mark, pid => $pid), "worker $i SIGKILLed (pid $pid)");
		ok($t->wait_log(sub { $_[0]{event} eq 'child_started' && ($_[0]{role} // '') eq 'worker'
		    && ($_[0]{index} // -1) == $i && $_[0]{pid} != $pid }, 10, from => $mark), '... and respawned');
	}
	ok(wait_until(sub { ($t->metric('tollgate_workers_alive') // 0) == 2 }, 10), 'both workers serve again');
	is(series('tollgate_account_channels', account => 'kill'), 3, 'after both workers died: still 3 channels in use');
	my $k4 = $k[3]->dial($ss);
	is($k4->status, 503, '... and a fourth call is refused: nothing was lost');
	$k4->answer(486) if $k4->forwarded;
	my $r = $kc[2]->answer(200);
	is($r && $r->status, 200, 'the ringing call is answered after the respawn');
	my @st = (($kc[0]->request('caller', 'BYE'))[0], ($kc[1]->request('callee', 'BYE'))[0],
	    ($kc[2]->request('caller', 'BYE'))[0]);
	is("@st", '200 200 200', 'the three calls hang up (customer, softswitch, customer)');
	is(wait_series(0, 'tollgate_account_channels', account => 'kill'), 0, 'once they ended: 0 channels in use');
	my $k5 = $k[3]->dial($ss);
	ok($k5->forwarded, '... and a new call passes');
	$k5->answer(486);
	$expect_end{ $_->call_id } = [ 'kill', 'bye', 'kill: call ' . $_->call_id ] for @kc;
	$expect_end{ $k5->call_id } = [ 'kill', 'failed', 'kill: the last call' ];
}

# --- every channel came back exactly once --------------------------------------------

wait_until(sub {
	my %seen = map { ($_->{call_id} // '') => 1 } $t->log_events('dialog_ended');
	!grep { !$seen{$_} } keys %expect_end;
}, 5);
my %ended;
push @{ $ended{ $_->{call_id} // '' } }, $_ for $t->log_events('dialog_ended');
for my $cid (sort { $expect_end{$a}[2] cmp $expect_end{$b}[2] || $a cmp $b } keys %expect_end) {
	my ($account, $reason, $what) = @{ $expect_end{$cid} };
	my @ev = @{ $ended{$cid} // [] };
	is(scalar @ev, 1, "$what: one dialog_ended");
	is($ev[0] && $ev[0]{reason}, $reason, "... reason $reason");
	is($ev[0] && $ev[0]{account}, $account, "... account $account");
}
cmp_ok(series('tollgate_refusals_total', reason => 'channels_exceeded') // 0, '>=', 11,
    'metrics: tollgate_refusals_total{reason="channels_exceeded"} counted the refusals');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

###########################################################################

# The harness's series()/wait_series() on the tollgate under test ($t).
sub series { $t->series(@_) }
sub wait_series { $t->wait_series(@_) }

# One more call from $c while the account's only channel is in use: refused.
sub busy_ok {
	my ($c, $account, $when) = @_;
	my $x = $c->dial($ss);
	is($x->status, 503, "$account: another call $when: 503");
	$x->answer(486) if $x->forwarded;
}

# The request_refused event of a refused call.
sub refused_ok {
	my ($call, $reason, $account, $limit, $code, $what) = @_;
	my $ev = $t->wait_event('request_refused', 3, call_id => $call->call_id);
	is($ev && $ev->{reason}, $reason, "log: $what refused, reason $reason");
	is($ev && $ev->{account}, $account, "... account $account");
	is($ev && $ev->{limit}, $limit, "... limit $limit");
	is($ev && $ev->{code}, $code, "... code $code");
}

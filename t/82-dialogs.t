#!/usr/bin/perl
# The dialog table: an in-dialog request (To tag present) from a customer
# or from the softswitch must name a live dialog by its Call-ID and the
# From or To tag, else 481 Call/Transaction Does Not Exist (an ACK is
# dropped without a word), reason no_dialog. An ended dialog is still
# matched for calls.linger_s (a retransmitted BYE, the ACK of a non-2xx),
# then no more. In-dialog requests take no channel. A call that gets no
# final response within calls.early_timeout_s, or is up longer than
# calls.max_duration_s, is released by expiry (dialog_ended, reason
# expired_early / expired_duration). A full table refuses new calls with
# the dialog_table_full refusal (503) and recovers once calls end.
#
# Two tollgates on one database: the first with early_timeout_s 2 and
# linger_s 3; the second with 16 dialog slots, max_duration_s 3 and
# linger_s 1.
#
# Addresses: tollgate 127.0.0.1, softswitch 127.0.0.10, customers
# 127.0.0.75-79.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes ();
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);

my %acct;
$acct{dlg} = $pg->add_account('dlg', max_channels => 2);
$pg->add_rule($acct{dlg}, '127.0.0.75');
$acct{other} = $pg->add_account('other');
$pg->add_rule($acct{other}, '127.0.0.76');
$acct{slow} = $pg->add_account('slow', max_channels => 1);
$pg->add_rule($acct{slow}, '127.0.0.77');
$acct{long} = $pg->add_account('long', max_channels => 1);
$pg->add_rule($acct{long}, '127.0.0.78');
$acct{many} = $pg->add_account('many');
$pg->add_rule($acct{many}, '127.0.0.79');

my $base = <<'EOF';
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
$t->write_config($base . <<'EOF');
calls:
  early_timeout_s: 2
  linger_s: 3
EOF
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $cust = Tollgate::SIP->new(local => '127.0.0.75', peer => $tg);
my $no_dialog = 0;	# 481s this file causes

# --- no dialog: 481 ------------------------------------------------------------------

for my $method (qw(BYE INVITE)) {
	my $mark = $t->log_mark;
	my ($r, $req) = $cust->request(method => $method, to_tag => 'made-up', cseq => 2);
	is($r && $r->status, 481, "$method with a To tag naming no dialog: 481");
	like($r ? $r->reason : '', qr/^Call\/Transaction Does Not Exist$/i, '... Call/Transaction Does Not Exist');
	ok(!$ss->take(call_id => $req->header('call-id'), method => $method, timeout => 0.3), '... not forwarded');
	my $ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $req->header('call-id'));
	is($ev && $ev->{reason}, 'no_dialog', '... log: request_refused, reason no_dialog');
	is($ev && $ev->{code}, 481, '... code 481');
	$no_dialog++;
}
{
	my $ack = $cust->build(method => 'ACK', to_tag => 'made-up', cseq => 1);
	$cust->send($ack);
	ok(!$cust->take(call_id => $ack->header('call-id'), timeout => 0.5), 'an ACK naming no dialog: no answer');
	ok(!$ss->take(call_id => $ack->header('call-id'), method => 'ACK', timeout => 0.1), '... and not forwarded');

	# from the softswitch, towards the customer
	my $bye = $ss->build(method => 'BYE', uri => 'sip:customer@' . $cust->local_hostport,
	    to_tag => 'made-up', cseq => 7, headers => [ [ Route => "<sip:$tg;lr>" ] ]);
	$ss->send($bye);
	my $r = $ss->take(call_id => $bye->header('call-id'), response => 1, final => 1, timeout => 2);
	is($r && $r->status, 481, 'a BYE from the softswitch naming no dialog: 481');
	ok(!$cust->take(call_id => $bye->header('call-id'), method => 'BYE', timeout => 0.3), '... not sent to the customer');
	$no_dialog++;
}

# --- a live dialog ---------------------------------------------------------------------

my $x = $cust->dial($ss);
my $r = $x->answer(200);
is($r && $r->status, 200, 'dlg: a call is answered');
ok($x->{ack_got}, '... its ACK reaches the softswitch');
is(wait_series(1, 'tollgate_account_channels', account => 'dlg'), 1, '... one channel in use');

my ($st, $got) = $x->request('caller', 'INVITE');
ok($got, 're-INVITE from the customer: reaches the softswitch');
is($st, 200, '... and its 200 comes back');
$x->request('caller', 'ACK', cseq => $x->{cseq}{caller}, timeout => 0.5);
($st, $got) = $x->request('callee', 'INVITE');
ok($got, 're-INVITE from the softswitch: reaches the customer');
is($st, 200, '... and its 200 comes back');
# a re-INVITE refused (491 Request Pending) is not the end of the call
($st, $got) = $x->request('caller', 'INVITE', answer => 491);
is($st, 491, 'a re-INVITE answered 491: the 491 comes back');
$x->request('caller', 'ACK', cseq => $x->{cseq}{caller}, timeout => 0.5);
is(series('tollgate_account_channels', account => 'dlg'), 1, '... and the call keeps its channel');
($st, $got) = $x->request('callee', 'INVITE');
ok($got && $st == 200, '... and goes on: a later re-INVITE passes');

# a BYE the softswitch refuses (say 481: not its dialog) is not the end of the call
($st, $got) = $x->request('caller', 'BYE', answer => 481);
is($st, 481, 'a BYE the softswitch answers 481: the 481 comes back');
($st, $got) = $x->request('caller', 'BYE', answer => 403);
is($st, 403, '... and one it answers 403');
is(series('tollgate_account_channels', account => 'dlg'), 1, '... the call keeps its channel: a BYE ends it when answered 2xx');
($st, $got) = $x->request('caller', 'OPTIONS');
ok($got && $st == 200, 'an in-dialog OPTIONS from the customer: forwarded, answered');
is(series('tollgate_account_channels', account => 'dlg'), 1, 'still one channel: in-dialog requests take none');
is(series('tollgate_account_calls_total', account => 'dlg'), 1, '... and count as no call');

# the right Call-ID with tags of no dialog: the Call-ID alone names nothing
{
	my $stranger = Tollgate::SIP->new(local => '127.0.0.76', peer => $tg);
	for my $case ([ $cust, 'the customer' ], [ $stranger, 'another customer (127.0.0.76)' ]) {
		my ($s, $who) = @$case;
		my ($resp, $req) = $s->request(method => 'BYE', call_id => $x->call_id, from_tag => 'not-' . $x->from_tag,
		    to_tag => 'not-' . $x->to_tag, cseq => 9);
		is($resp && $resp->status, 481, "BYE from $who with the dialog's Call-ID but other tags: 481");
		ok(!$ss->take(call_id => $x->call_id, method => 'BYE', timeout => 0.3), '... not forwarded');
		$no_dialog++;
	}
	my ($resp) = $stranger->request(method => 'INVITE', call_id => $x->call_id, from_tag => 'not-' . $x->from_tag,
	    to_tag => 'made-up', cseq => 9);
	is($resp && $resp->status, 481, 're-INVITE with the dialog\'s Call-ID, another From tag and a made-up To tag: 481');
	$no_dialog++;
}

# the softswitch hangs up; the ended dialog lingers for linger_s (3 s)
my $mark = $t->log_mark;
my $bye;
($st, $got, $bye) = $x->request('callee', 'BYE');
ok($got, 'the softswitch\'s BYE reaches the customer');
is($st, 200, '... and the 200 comes back');
my $ev = $t->wait_event('dialog_ended', 3, from => $mark, call_id => $x->call_id);
is($ev && $ev->{reason}, 'bye', 'log: dialog_ended, reason bye');
is($ev && $ev->{account}, 'dlg', '... account dlg');
is(wait_series(0, 'tollgate_account_channels', account => 'dlg'), 0, '... the channel is free');
($st, $got) = $x->request('callee', 'BYE', request => $bye);
ok($got, 'the softswitch\'s BYE retransmitted (lingering dialog): reaches the customer again');
is($st, 200, '... answered');
($st, $got) = $x->request('caller', 'BYE');
ok($got, 'a BYE from the customer crossing it: forwarded too');
is(scalar(grep { ($_->{call_id} // '') eq $x->call_id } $t->log_events('dialog_ended', from => $mark)), 1,
    '... the dialog ended once');

# nothing was given back twice: max_channels 2 still holds
{
	my @c = map { $cust->dial($ss) } 1 .. 3;
	ok($c[0]->forwarded && $c[1]->forwarded, 'dlg: two new calls pass');
	is($c[2]->status, 503, '... a third is refused: the count is right');
	$_->answer(486) for grep { $_->forwarded } @c;
	is(wait_series(0, 'tollgate_account_channels', account => 'dlg'), 0, '... 486 to both: 0');

	# the ACK of a 486 matches the ended dialog
	my $y = $cust->dial($ss);
	$y->answer(486, ack => 0);
	my $ack = $y->ack(timeout => 2);
	ok($ack, 'the ACK of a 486 reaches the softswitch (the ended dialog still matches)');
	$ev = $t->wait_event('dialog_ended', 3, call_id => $y->call_id);
	is($ev && $ev->{reason}, 'failed', 'log: dialog_ended, reason failed');
}

# after linger_s, the ended dialog is gone
{
	my $last = 0;
	wait_until(sub {
		($last) = $x->request('callee', 'BYE', timeout => 1);
		Time::HiRes::sleep(0.5) if $last != 481;
		$last == 481;
	}, 15);
	is($last, 481, 'after linger_s: the softswitch\'s BYE of the ended call gets 481');
	$no_dialog++;
}

# --- a failed call's Call-ID and From tag used again by a new INVITE ----------------------

{
	my $y = $cust->dial($ss);
	$y->answer(486);
	is(wait_series(0, 'tollgate_account_channels', account => 'dlg'), 0, 'reuse: a call answered 486 frees its channel');
	my $mark = $t->log_mark;
	my ($resp, $req) = $cust->request(method => 'INVITE', call_id => $y->call_id, from_tag => $y->from_tag, cseq => 2);
	is($resp && $resp->status, 503, 'a new INVITE (CSeq 2) with its Call-ID and From tag, within linger_s: 503');
	my $ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $y->call_id);
	is($ev && $ev->{reason}, 'dialog_reused', '... reason dialog_reused: it would hold no channel');
	ok(!$ss->take(call_id => $y->call_id, method => 'INVITE', timeout => 0.3), '... not forwarded');
}

# --- a call that is never answered -------------------------------------------------------

{
	my $c = Tollgate::SIP->new(local => '127.0.0.77', peer => $tg);
	my $before = series('tollgate_dialogs_expired_total', reason => 'early') // 0;
	my $y = $c->dial($ss);
	$y->answer(180);
	is(wait_series(1, 'tollgate_account_channels', account => 'slow'), 1, 'slow: a call rings, one channel in use');
	my $ev = $t->wait_event('dialog_ended', 15, account => 'slow');	# the sweep's event: the table keeps no Call-ID
	is($ev && $ev->{reason}, 'expired_early', 'no final response within early_timeout_s 2: dialog_ended, reason expired_early');
	is($ev && $ev->{account}, 'slow', '... account slow');
	is(wait_series(0, 'tollgate_account_channels', account => 'slow'), 0, '... the channel is free');
	my $after;
	wait_until(sub { ($after = series('tollgate_dialogs_expired_total', reason => 'early') // 0) > $before }, 5);
	cmp_ok($after, '>', $before, 'metrics: tollgate_dialogs_expired_total{reason="early"} went up');
	my $z = $c->dial($ss);
	ok($z->forwarded, '... and a new call passes');

	# each provisional response starts the early timer again (Timer C): a
	# call that keeps ringing (or sits in a 183 queue) keeps its channel
	my $rang = 0;
	for my $i (1 .. 12) {
		$rang++ if $z->answer(180, timeout => 0.3);
		Time::HiRes::sleep(0.25);
	}
	cmp_ok($rang, '>=', 10, 'slow: a 180 every quarter second, past early_timeout_s');
	is(series('tollgate_account_channels', account => 'slow'), 1, '... the ringing call keeps its channel');
	$z->answer(486);
	is(wait_series(0, 'tollgate_account_channels', account => 'slow'), 0, '... until its 486');
}

my $m = $t->metrics;
cmp_ok($m->{'tollgate_refusals_total{reason="no_dialog"}'} // 0, '>=', $no_dialog,
    "metrics: tollgate_refusals_total{reason=\"no_dialog\"} >= $no_dialog");
is($t->stop, 0, 'SIGTERM: exit 0');
my $t1 = $t;

# --- the second tollgate: 16 dialogs, calls up to 3 s -------------------------------------

{
	my $t2 = Tollgate->new(keep_pg => 1);
	$t2->pg($pg);
	$t2->write_config($base . <<'EOF');
capacity:
  dialogs: 16
calls:
  max_duration_s: 3
  linger_s: 1
EOF
	$t2->run;
	$t = $t2;	# what series() reads
	my $tg2 = '127.0.0.1:' . $t2->port('SIP');
	my $ss2 = Tollgate::SIP->new(local => '127.0.0.10', port => $t2->port('SS'), peer => $tg2);

	# a call longer than max_duration_s
	my $c = Tollgate::SIP->new(local => '127.0.0.78', peer => $tg2);
	my $y = $c->dial($ss2);
	my $r = $y->answer(200);
	is($r && $r->status, 200, 'long: a call is answered');
	is(wait_series(1, 'tollgate_account_channels', account => 'long'), 1, '... one channel in use');
	my $ev = $t2->wait_event('dialog_ended', 15, account => 'long');	# the sweep's event: the table keeps no Call-ID
	is($ev && $ev->{reason}, 'expired_duration', 'up longer than max_duration_s 3: dialog_ended, reason expired_duration');
	is($ev && $ev->{account}, 'long', '... account long');
	is(wait_series(0, 'tollgate_account_channels', account => 'long'), 0, '... the channel is free');
	my $expired;
	wait_until(sub { ($expired = series('tollgate_dialogs_expired_total', reason => 'duration') // 0) >= 1 }, 5);
	cmp_ok($expired, '>=', 1, 'metrics: tollgate_dialogs_expired_total{reason="duration"} counted it');

	# fill the table with ringing calls
	my $many = Tollgate::SIP->new(local => '127.0.0.79', peer => $tg2);
	my $mark2 = $t2->log_mark;
	my (@live, $full);
	for (1 .. 17) {
		my $z = $many->dial($ss2);
		if ($z->forwarded) {
			push @live, $z;
		} else {
			$full = $z;
			last;
		}
	}
	ok($full, 'many: calls held ringing until one is refused, within 17 for 16 dialog slots')
	    or diag(scalar(@live) . ' calls passed');
	cmp_ok(scalar @live, '>=', 8, '... after at least half the table was used') or diag(scalar(@live) . ' passed');
	is($full && $full->status, 503, '... refused with 503');
	like($full && $full->response ? $full->response->reason : '', qr/^Service Unavailable$/, '... Service Unavailable');
	$ev = $full ? $t2->wait_event('request_refused', 3, from => $mark2, call_id => $full->call_id) : undef;
	is($ev && $ev->{reason}, 'dialog_table_full', 'log: request_refused, reason dialog_table_full');
	$m = $t2->metrics;
	cmp_ok($m->{tollgate_dialog_table_full_total} // 0, '>=', 1, 'metrics: tollgate_dialog_table_full_total counted it');
	cmp_ok($m->{'tollgate_refusals_total{reason="dialog_table_full"}'} // 0, '>=', 1,
	    'metrics: tollgate_refusals_total{reason="dialog_table_full"} too');
	my $cancelled = 0;
	for my $z (@live) {
		my (undef, $is) = $z->cancel;
		$cancelled++ if $is == 487;
	}
	is($cancelled, scalar @live, 'all the ringing calls cancelled');
	my $ok;
	wait_until(sub {
		my $z = $many->dial($ss2, timeout => 1);
		$z->answer(486) if $z->forwarded;
		$ok = $z->forwarded;
	}, 15);
	ok($ok, 'once they ended and lingered (linger_s 1): a new call passes again');

	is($t2->stop, 0, 'the second tollgate: SIGTERM, exit 0');
	$t2->finish;
}

$t1->finish;
done_testing;

###########################################################################

# The harness's series()/wait_series() on the tollgate under test ($t).
sub series { $t->series(@_) }
sub wait_series { $t->wait_series(@_) }

#!/usr/bin/perl
# Per-account call policy:
# - destinations: accounts.allowed_prefixes / denied_prefixes, applied to
#   the Request-URI user after the rule's tech prefix is stripped; deny
#   wins, an empty allowed list allows all; refused with 403 Forbidden,
#   reason destination_denied, taking no channel;
# - codecs: accounts.restricted_codecs (SDP encoding names, any case) are
#   taken out of the INVITE's offer (m= formats, a=rtpmap/fmtp lines)
#   before it reaches the softswitch; an audio line left with no codec
#   gets 488 Not Acceptable Here, reason no_codec, taking no channel;
# - the refusal for channels is configurable: here 486 Busy Here.
#
# Addresses: tollgate 127.0.0.1, softswitch 127.0.0.10, customers
# 127.0.0.60-65.

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

my %acct;
$acct{dest} = $pg->add_account('dest', max_channels => 1, allowed_prefixes => [ '44', '33' ],
    denied_prefixes => ['4490']);
$pg->add_rule($acct{dest}, '127.0.0.60');
$acct{denyonly} = $pg->add_account('denyonly', denied_prefixes => ['1900']);
$pg->add_rule($acct{denyonly}, '127.0.0.61');
$acct{techdest} = $pg->add_account('techdest', allowed_prefixes => ['44']);
$pg->add_rule($acct{techdest}, '127.0.0.62', tech_prefix => '777');
$acct{codec} = $pg->add_account('codec', max_channels => 1, restricted_codecs => [ 'g729', 'PCMA' ]);
$pg->add_rule($acct{codec}, '127.0.0.63');
$acct{plain} = $pg->add_account('plain');
$pg->add_rule($acct{plain}, '127.0.0.64');
$acct{busy} = $pg->add_account('busy', max_channels => 1);
$pg->add_rule($acct{busy}, '127.0.0.65');

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
refusals:
  channels: { code: 486, reason: "Busy Here" }
EOF
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my %refused;	# reason => refusals this file caused

# --- destinations ------------------------------------------------------------------

# refused ones first: had they taken dest's only channel, the others would not pass
dest_cases(Tollgate::SIP->new(local => '127.0.0.60', peer => $tg), 'dest (allowed 44 33, denied 4490)',
    [ '4490123456', 0, 'denied, though allowed by 44' ], [ '4490', 0, 'the denied prefix itself' ],
    [ '15551234', 0, 'in no allowed prefix' ], [ '3412345', 0, 'in no allowed prefix' ],
    [ '4420123456', 1, 'allowed' ], [ '3312345678', 1, 'allowed' ], [ '4491234', 1, 'allowed, not 4490' ]);
dest_cases(Tollgate::SIP->new(local => '127.0.0.61', peer => $tg), 'denyonly (denied 1900, allowed empty)',
    [ '19005551234', 0, 'denied' ], [ '15551234', 1, 'anything else' ], [ '190', 1, 'shorter than the prefix' ]);
dest_cases(Tollgate::SIP->new(local => '127.0.0.62', peer => $tg), 'techdest (tech prefix 777, allowed 44)',
    [ '77744123456', 1, 'allowed once 777 is stripped', '44123456' ],
    [ '77733123456', 0, '33 once 777 is stripped' ], [ '7774', 0, '4 once 777 is stripped' ]);
dest_cases(Tollgate::SIP->new(local => '127.0.0.64', peer => $tg), 'plain (no lists)',
    [ '19005551234', 1, 'anything' ]);
is(wait_series(0, 'tollgate_account_channels', account => 'dest'), 0, 'dest: no channel left in use');

# --- codecs ------------------------------------------------------------------------

my $cc = Tollgate::SIP->new(local => '127.0.0.63', peer => $tg);
my $ch = $cc->local_host;
my $head = "v=0\r\no=test 1 1 IN IP4 $ch\r\ns=-\r\nc=IN IP4 $ch\r\nt=0 0\r\n";

# refused ones first, as above: codec has one channel
for my $case (
    [ "m=audio 40000 RTP/AVP 18 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n"
      . "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n", 'G729 and telephone-event' ],
    [ "m=audio 40000 RTP/AVP 8\r\n", 'PCMA as static payload type 8 without rtpmap' ],
    [ "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\nm=audio 40002 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n",
      'a second audio line with G729 only' ]) {
	my ($media, $what) = @$case;
	my $x = $cc->dial($ss, body => $head . $media);
	is($x->status, 488, "codec (restricted g729, PCMA): an offer of $what: 488");
	like($x->response ? $x->response->reason : '', qr/^Not Acceptable Here$/i, '... Not Acceptable Here');
	ok(!$x->forwarded, '... not forwarded');
	refused_ok($x, 'no_codec', 'codec', 488, "the offer of $what");
	$x->answer(486) if $x->forwarded;
}

{
	my $offer = $head . "m=audio 40000 RTP/AVP 18 0 8 101\r\n"
	    . "a=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:0 PCMU/8000\r\n"
	    . "a=rtpmap:8 pcma/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n";
	my $want = $head . "m=audio 40000 RTP/AVP 0 101\r\n"
	    . "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n";
	my $x = $cc->dial($ss, body => $offer);
	my $f = $x->forwarded;
	ok($f, 'codec: an offer of G729, PCMU, pcma and telephone-event reaches the softswitch');
	is($f && $f->body, $want, '... with G729 and pcma gone from the m= line, their rtpmap and fmtp lines too');
	is($f && $f->header('content-length'), length($want), '... and a Content-Length to match');
	$x->answer(486);

	$x = $cc->dial($ss, body => '', omit => ['Content-Type']);
	ok($x->forwarded, 'codec: an INVITE without an offer (late offer) passes');
	is($x->forwarded && $x->forwarded->body, '', '... without a body');
	$x->answer(486);

	my $p = Tollgate::SIP->new(local => '127.0.0.64', peer => $tg);
	my $po = $head =~ s/\Q$ch\E/127.0.0.64/gr . "m=audio 40000 RTP/AVP 18 8 0\r\na=rtpmap:18 G729/8000\r\n";
	$x = $p->dial($ss, body => $po);
	is($x->forwarded && $x->forwarded->body, $po, 'plain (no restricted codecs): the offer arrives byte for byte');
	$x->answer(486);
}
is(wait_series(0, 'tollgate_account_channels', account => 'codec'), 0, 'codec: no channel left in use');

# --- a configured refusal: 486 Busy Here --------------------------------------------

{
	my $c = Tollgate::SIP->new(local => '127.0.0.65', peer => $tg);
	my $x = $c->dial($ss);
	ok($x->forwarded, 'busy (1 channel): a call passes');
	$x->answer(180);
	my $y = $c->dial($ss);
	is($y->status, 486, 'a second call: 486 (refusals.channels.code)');
	like($y->response ? $y->response->reason : '', qr/^Busy Here$/, '... Busy Here (refusals.channels.reason)');
	ok(!$y->forwarded, '... not forwarded');
	my $ev = $t->wait_event('request_refused', 3, call_id => $y->call_id);
	is($ev && $ev->{reason}, 'channels_exceeded', 'log: request_refused, reason channels_exceeded');
	is($ev && $ev->{code}, 486, '... code 486');
	is($ev && $ev->{limit}, 'account', '... limit account');
	$x->cancel;
	is(wait_series(0, 'tollgate_account_channels', account => 'busy'), 0, 'the first call cancelled: 0 in use');
	my $z = $c->dial($ss);
	ok($z->forwarded, '... and a new call passes');
	$z->answer(486);
	is(series('tollgate_account_refusals_total', account => 'busy', limit => 'channels'), 1,
	    'metrics: tollgate_account_refusals_total{account="busy",limit="channels"} 1');
}

my $m = $t->metrics;
for my $reason (sort keys %refused) {
	cmp_ok($m->{"tollgate_refusals_total{reason=\"$reason\"}"} // 0, '>=', $refused{$reason},
	    "metrics: tollgate_refusals_total{reason=\"$reason\"} >= $refused{$reason}");
}

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

###########################################################################

# dest_cases($socket, $what, [user, passes, why, user the softswitch sees], ...):
# one call each; those that pass are answered 486.
sub dest_cases {
	my ($c, $what, @cases) = @_;
	my ($account) = $what =~ /^(\w+)/;
	for my $case (@cases) {
		my ($user, $pass, $why, $sees) = @$case;
		my $x = $c->dial($ss, user => $user);
		if ($pass) {
			ok($x->forwarded, "$what: $user ($why) passes");
			my ($got) = $x->forwarded ? $x->forwarded->uri =~ /^sip:([^@;]*)@/ : ();
			is($got, $sees // $user, "... the softswitch is asked for " . ($sees // $user));
			$x->answer(486);
		} else {
			is($x->status, 403, "$what: $user ($why): 403");
			like($x->response ? $x->response->reason : '', qr/^Forbidden$/, '... Forbidden');
			ok(!$x->forwarded, '... not forwarded');
			refused_ok($x, 'destination_denied', $account, 403, "the call to $user");
			$x->answer(486) if $x->forwarded;
		}
	}
}

# The request_refused event of a refused call.
sub refused_ok {
	my ($call, $reason, $account, $code, $what) = @_;
	my $ev = $t->wait_event('request_refused', 3, call_id => $call->call_id);
	is($ev && $ev->{reason}, $reason, "log: $what refused, reason $reason");
	is($ev && $ev->{account}, $account, "... account $account");
	is($ev && $ev->{code}, $code, "... code $code");
	$refused{$reason}++;
}

# The harness's series()/wait_series() on the tollgate under test ($t).
sub series { $t->series(@_) }
sub wait_series { $t->wait_series(@_) }

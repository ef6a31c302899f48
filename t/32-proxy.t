#!/usr/bin/perl
# Proxy behaviour seen on the wire, with raw sockets on both sides: the
# customer at 127.0.0.21 and the softswitch at 127.0.0.10 (where
# `downstream` points). Max-Forwards 0 gets 483; malformed datagrams get
# 400 when a reply is possible, else nothing, and are counted; a good
# request is forwarded with our Via and Record-Route, Max-Forwards one
# less, and its response comes back with our Via removed; requests from
# the softswitch go to the customer by Route / Request-URI.

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
# both directions: the softswitch also opens requests towards this customer below
$pg->add_rule($acme, '127.0.0.21', direction => 'both');

$t->write_config(<<'EOF');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
trusted: ["127.0.0.11"]
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
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);
my $me = $cust->local_hostport;

sub branch_of { my ($via) = @_; return ($via // '') =~ /;\s*branch=([^;\s,]+)/i ? $1 : undef }
# A Via without the received/rport values a proxy fills in (RFC 3581).
sub via_core {
	my ($via) = @_;
	return undef unless defined $via;
	$via =~ s/;\s*(?:received|rport)(?:=[^;]*)?//gi;
	return $via;
}
sub sent_by { my ($via) = @_; return ($via // '') =~ m{^SIP/2\.0/UDP\s+([^;\s]+)}i ? $1 : undef }

# --- Max-Forwards: 0 ---------------------------------------------------------

my $mark = $t->log_mark;
$cust->send($cust->fixture('max-forwards-0'));
my $r = $cust->recv(timeout => 2);
is($r && $r->status, 483, 'Max-Forwards: 0 gets 483');
is($r && branch_of($r->header('via')), $cust->last_fixture_vars->{BRANCH}, '... for our transaction');
is(scalar $ss->drain, 0, '... and is not forwarded');
my $ev = $t->wait_event('request_refused', 3, from => $mark, src => $me);
is($ev && $ev->{reason}, 'too_many_hops', 'log: refused as too_many_hops');

# --- garbage: no reply, counted ------------------------------------------

my $malformed_before = $t->metric('tollgate_refusals_total', reason => 'malformed') // 0;
$mark = $t->log_mark;
$cust->send($cust->fixture('garbage.bin'));
is($cust->recv(timeout => 1), undef, 'garbage gets no reply within 1 s');
is(scalar $ss->drain, 0, '... and is not forwarded');
$ev = $t->wait_event('malformed', 3, from => $mark);
ok($ev, 'log: malformed event');
is($ev && $ev->{src}, $me, 'log: malformed names the sender');
ok($ev && defined $ev->{reason}, 'log: malformed has a reason');
ok($t->wait_metric('tollgate_refusals_total', { reason => 'malformed' },
    sub { $_[0] > $malformed_before }, 3), 'metrics: refusals{reason="malformed"} went up');

# --- missing Call-ID, bad CSeq: 400 ------------------------------------------

for my $case ([ 'no-call-id', 'missing Call-ID' ], [ 'bad-cseq', 'CSeq that does not match the method' ],
    [ 'bad-header-line', 'a header line without a colon' ],
    [ 'bad-header-name', 'a header name that is not a token' ]) {
	my ($fixture, $what) = @$case;
	$cust->send($cust->fixture($fixture));
	my $branch = $cust->last_fixture_vars->{BRANCH};
	$r = $cust->recv(timeout => 2);
	is($r && $r->status, 400, "$what: 400");
	is($r && branch_of($r->header('via')), $branch, "... for our transaction");
	is(scalar $ss->drain, 0, '... not forwarded');
}

# --- a body shorter than its Content-Length (RFC 3261 18.3): 400 -------------

$cust->send($cust->fixture('truncated-body'));
my $tb_branch = $cust->last_fixture_vars->{BRANCH};
$r = $cust->recv(timeout => 2);
is($r && $r->status, 400, 'INVITE whose body is shorter than its Content-Length: 400');
is($r && branch_of($r->header('via')), $tb_branch, '... for our transaction');
is($ss->recv(timeout => 0.3), undef, '... and it is not forwarded (with a shortened body)');

# --- no Via: nobody to answer to --------------------------------------------

$mark = $t->log_mark;
$cust->send($cust->fixture('no-via'));
is($ss->recv(timeout => 0.5), undef, 'INVITE without Via: not forwarded');
ok($t->wait_log(sub { $_[0]{event} =~ /^(malformed|request_refused)$/ && ($_[0]{src} // '') eq $me }, 3,
    from => $mark), '... and logged as malformed or refused');

# --- OPTIONS from a customer: forwarded, answered, Via stripped -----------

my $opt = $cust->build(method => 'OPTIONS', max_forwards => 70);
$cust->send($opt);
my $fwd = $ss->wait_request(method => 'OPTIONS', timeout => 2);
ok($fwd, 'OPTIONS from the customer reaches the softswitch');
SKIP: {
	skip 'not forwarded', 14 unless $fwd;
	is($fwd->from_addr, $tg, '... sent from tollgate\'s listen address');
	my @via = $fwd->header_values('via');
	is(scalar @via, 2, '... with two Vias');
	is(sent_by($via[0]), $tg, '... the top one ours (sent-by ' . $tg . ')');
	like(branch_of($via[0]), qr/^z9hG4bK./, '... with an RFC 3261 branch');
	isnt(branch_of($via[0]), branch_of($opt->header('via')), '... of its own');
	is(via_core($via[1]), via_core($opt->header('via')), '... the customer\'s Via below it (rport/received aside)');
	like($via[1], qr/;received=127\.0\.0\.21\b|;rport=\d+/, '... with received/rport filled in')
	    if $opt->header('via') =~ /;rport/;
	is($fwd->header('max-forwards'), 69, '... Max-Forwards decremented');
	like($fwd->header('record-route') // '', qr/^<sip:\Q$tg\E;lr(?:[;>])/, "... Record-Route: <sip:$tg;lr>");
	is($fwd->header('x-tollgate-account'), 'acme', '... X-Tollgate-Account: acme');
	is($fwd->header('call-id'), $opt->header('call-id'), '... Call-ID kept');
	is($fwd->header('cseq'), $opt->header('cseq'), '... CSeq kept');
	is($fwd->uri, $opt->uri, '... Request-URI kept');

	$ss->send($ss->reply($fwd, 200, 'OK'));
	$r = $cust->wait_response(call_id => $opt->header('call-id'), timeout => 2);
	is($r && $r->status, 200, 'the softswitch\'s 200 comes back to the customer');
	is_deeply([ map { via_core($_) } $r ? $r->header_values('via') : () ], [ via_core($opt->header('via')) ],
	    '... with tollgate\'s Via removed and ours intact');
}

# --- compact header forms are understood -----------------------------------

$cust->send($cust->fixture('compact-invite'));
my $cid = $cust->last_fixture_vars->{CALL_ID};
$fwd = $ss->wait_request(method => 'INVITE', timeout => 2);
ok($fwd, 'INVITE with compact headers (v: f: t: i: l:) is forwarded');
is($fwd && $fwd->header('call-id'), $cid, '... Call-ID read from i:');
$ss->send($ss->reply($fwd, 486, 'Busy Here')) if $fwd;
$r = $cust->wait_response(call_id => $cid, timeout => 2);
is($r && $r->status, 486, '... and a 486 comes back');

# --- a request from the softswitch goes to the customer ------------------

# The dialog of a call the customer made: the softswitch hangs up.
my ($resp, $inv) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'call established');
SKIP: {
	skip 'no call', 6 unless $resp && $inv;
	my @rr = $resp->header_values('record-route');
	ok(@rr, 'the 200 carries the Record-Route set');
	# BYE from the softswitch: Route is the route set, R-URI the customer's Contact
	my $bye = $ss->build(
		method => 'BYE',
		uri => "sip:customer\@$me",
		call_id => $inv->header('call-id'),
		from => '<sip:15551234@' . $ss->local_hostport . '>',
		from_tag => ($resp->header('to') =~ /;\s*tag=([^;\s]+)/)[0],
		to => "<sip:customer\@$me>",
		to_tag => ($inv->header('from') =~ /;\s*tag=([^;\s]+)/)[0],
		cseq => 1,
		headers => [ map { [ Route => $_ ] } @rr ],
	);
	$ss->send($bye);
	my $got = $cust->wait_request(method => 'BYE', timeout => 2);
	ok($got, 'BYE from the softswitch reaches the customer');
	is($got && $got->from_addr, $tg, '... from tollgate');
	is($got && sent_by($got->header('via')), $tg, '... with tollgate\'s Via on top');
	$cust->send($cust->reply($got, 200, 'OK')) if $got;
	$r = $ss->wait_response(call_id => $inv->header('call-id'), timeout => 2);
	is($r && $r->status, 200, 'the customer\'s 200 to BYE reaches the softswitch');
	is_deeply([ map { via_core($_) } $r ? $r->header_values('via') : () ], [ via_core($bye->header('via')) ],
	    '... with only the softswitch\'s Via');
}

# --- no open relay: a customer's request goes downstream, whatever it names ---

# A bystander at 127.0.0.99 that a customer would like tollgate to reach.
my $bystander = Tollgate::SIP->new(local => '127.0.0.99', peer => $tg);
my $by = $bystander->local_hostport;

($resp, $inv) = $cust->call_through($ss, uri => "sip:15551234\@$by",
    headers => [ [ Route => "<sip:$by;lr>" ] ]);
is($resp && $resp->status, 200, "INVITE to sip:...\@$by with Route: <sip:$by;lr> is answered by the softswitch");
is($bystander->recv(timeout => 0.3), undef, '... and nothing reached the address it named');

# in that call's dialog (tollgate knows the dialog: a BYE of no dialog gets 481)
my $bye = $cust->build(method => 'BYE', uri => "sip:victim\@$by", to_tag => 'abc123', cseq => 2,
    call_id => $inv && $inv->header('call-id'), from_tag => $inv && $inv->tag_of('from'),
    headers => [ [ Route => "<sip:$tg;lr>" ], [ Route => "<sip:$by;lr>" ] ]);
$cust->send($bye);
my $got = $ss->wait_request(method => 'BYE', timeout => 2);
ok($got, 'an in-dialog BYE from the customer routed at a bystander goes to the softswitch');
is($bystander->recv(timeout => 0.3), undef, '... and not to the bystander');
$ss->send($ss->reply($got, 200, 'OK')) if $got;
$cust->drain;

# --- trusted: another softswitch address may send towards customers ---------

my $ss2 = Tollgate::SIP->new(local => '127.0.0.11', peer => $tg);
my $opt2 = $ss2->build(method => 'OPTIONS', uri => "sip:customer\@$me",
    headers => [ [ Route => "<sip:$tg;lr>" ] ]);
$ss2->send($opt2);
$got = $cust->wait_request(method => 'OPTIONS', timeout => 2);
ok($got, 'OPTIONS from trusted 127.0.0.11 reaches the customer');
is($got && sent_by($got->header('via')), $tg, '... through tollgate');
$cust->send($cust->reply($got, 200, 'OK')) if $got;
$r = $ss2->wait_response(call_id => $opt2->header('call-id'), timeout => 2);
is($r && $r->status, 200, '... and the answer comes back to 127.0.0.11');

my $untrusted = Tollgate::SIP->new(local => '127.0.0.12', peer => $tg);
my $opt3 = $untrusted->build(method => 'OPTIONS', uri => "sip:customer\@$me",
    headers => [ [ Route => "<sip:$tg;lr>" ] ]);
$untrusted->send($opt3);
$r = $untrusted->wait_response(call_id => $opt3->header('call-id'), timeout => 2);
is($r && $r->status, 403, 'the same from untrusted, unprovisioned 127.0.0.12: 403');
is($cust->recv(timeout => 0.3), undef, '... and the customer got nothing');

# --- egress: the softswitch opens nothing towards an address no egress rule covers

my $opt4 = $ss->build(method => 'OPTIONS', uri => 'sip:nobody@127.0.0.13:' . Tollgate::free_port(),
    headers => [ [ Route => "<sip:$tg;lr>" ] ]);
$ss->send($opt4);
$r = $ss->wait_response(call_id => $opt4->header('call-id'), timeout => 2);
is($r && $r->status, 403, 'OPTIONS from the softswitch to an address no rule covers: 403');
ok($t->wait_log(qr/"event":"request_refused".*"reason":"egress_denied"/, 2), '... logged as egress_denied');

# --- a request that has been through tollgate already -------------------------

my $looped = $cust->build(method => 'INVITE');
$_->[1] = "SIP/2.0/UDP $tg;branch=z9hG4bKtg0123456789abcdef" for grep { lc $_->[0] eq 'via' } @{ $looped->{headers} };
$cust->send($looped);
$r = $cust->wait_response(call_id => $looped->header('call-id'), timeout => 2);
is($r && $r->status, 482, "a request whose top Via is tollgate's own gets 482 Loop Detected");
is($ss->recv(timeout => 0.3), undef, '... and is not forwarded');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

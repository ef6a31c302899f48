#!/usr/bin/perl
# SIP digest authentication (issue 5) for sources that no IP rule covers:
# a request without credentials for our realm is challenged (407, two
# Proxy-Authenticate: SHA-256 then MD5, qop="auth", one nonce); answered
# with MD5 or SHA-256 it reaches the softswitch with X-Tollgate-Account
# and X-Tollgate-User and without the credentials. Wrong password,
# unknown, inactive or restricted user, inactive account, bad credentials
# and a nonce count that does not increase (on whichever worker) get 403
# with the reason logged and counted; an expired nonce gets a fresh
# challenge with stale=true. Dialogs of digest callers follow a token in
# tollgate's Record-Route both ways. A source an IP rule covers is never
# challenged; with no digest section nobody is.
#
# sipp (uac_auth.xml behind Tollgate::SIP::Relay, uas_auth.xml) places
# MD5 calls with its [authentication] keyword; a raw client (Digest::MD5,
# Digest::SHA) does the rest, SHA-256 included.
#
# Addresses: tollgate 127.0.0.1, softswitch 127.0.0.10, IP-rule customers
# 127.0.0.21-22, digest callers 127.0.0.30-39 (no IP rule).

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time sleep);
use Tollgate qw(wait_until wait_udp_bound);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $REALM = 'tollgate';

# --- self-check of the test's own digest code: RFC 7616 3.9.1 ------------------

{
	my %v = (username => 'Mufasa', realm => 'http-auth@example.org', password => 'Circle of Life',
	    method => 'GET', uri => '/dir/index.html', nonce => '7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v',
	    nc => 1, cnonce => 'f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ');
	is(Tollgate::SIP::digest_response(%v, algorithm => 'MD5'), '8ca523f5e9506fed4657c9700eebdbec',
	    'test client: RFC 7616 MD5 vector');
	is(Tollgate::SIP::digest_response(%v, algorithm => 'SHA-256'),
	    '753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1', 'test client: RFC 7616 SHA-256 vector');
}

# --- provisioning -------------------------------------------------------------------

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);

my %acct;
$acct{$_} = $pg->add_account($_) for qw(digestco orgco ipco portco);
$acct{sleepy} = $pg->add_account('sleepy', status => 'inactive');
$pg->add_rule($acct{ipco}, '127.0.0.21');
my $ip_port = Tollgate::free_port();
$pg->add_rule($acct{portco}, '127.0.0.22', port => $ip_port);

$pg->add_sip_user($acct{digestco}, 'alice', password => 'secret');
# carol twice: any domain, and example.org (a user of another account);
# each password is set while that carol is the only one it can name
$pg->add_sip_user($acct{digestco}, 'carol', password => 'anypw');
$pg->add_sip_user($acct{orgco}, 'carol', password => 'orgpw', domain => 'example.org');
$pg->add_sip_user($acct{digestco}, 'bob', password => 'bobpw', domain => 'example.com');
$pg->add_sip_user($acct{digestco}, 'ivan', password => 'ivanpw', status => 'inactive');
$pg->add_sip_user($acct{sleepy}, 'dora', password => 'dorapw');
$pg->add_sip_user($acct{digestco}, 'rita', password => 'ritapw', restrict_sources => 1,
    allowed_sources => [ '127.0.0.34', '192.0.2.0/24' ]);
$pg->add_sip_user($acct{digestco}, 'nobody', password => 'nobodypw', restrict_sources => 1, allowed_sources => []);
my $lena = $pg->add_sip_user($acct{digestco}, 'lena', password => 'lenapw');

my $config = <<'EOF';
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
digest:
  realm: "tollgate"
  nonce_ttl_s: 300
  user_header: "X-Tollgate-User"
capacity:
  sip_users: 100
  nonces: 4096
  failure_sources: 1024
EOF
$t->write_config($config);
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $tg_port = $t->port('SIP');
my %refused;	# reason => how many refusals this file caused
my $failures_expected = 0;	# of them, the ones counted as authentication failures
my %auth_failure = map { $_ => 1 } qw(wrong_password unknown_user user_inactive account_inactive source_not_allowed);

# --- sipp: MD5 calls with [authentication] ---------------------------------------

SKIP: {
	skip 'sipp not installed (apt-get install sip-tester)', 7 unless Tollgate::which('sipp');
	sipp_calls(name => 'alice', user => 'alice', password => 'secret', account => 'digestco',
	    expected_user => 'alice', calls => 10);
	sipp_calls(name => 'bob', user => 'bob@example.com', password => 'bobpw', account => 'digestco',
	    expected_user => 'bob@example.com', calls => 3, what => 'full-URI username bob@example.com');
}

# --- the raw client -----------------------------------------------------------------

# bound only now: in the sipp part above, sipp's UAS held this address
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $c = Tollgate::SIP->new(local => '127.0.0.32', peer => $tg);

# --- the challenge ------------------------------------------------------------------

my $m0 = $t->metrics;
ok($m0 && grep({ /^tollgate_auth_failures_total(?:\{|$)/ } keys %$m0), 'metrics: tollgate_auth_failures_total is exported');
my $before_failures = auth_failures($m0);
my $mark = $t->log_mark;
my ($r, $req) = $c->request(method => 'INVITE');
is($r && $r->status, 407, 'INVITE without credentials from an address with no IP rule: 407');
like($r && $r->reason, qr/^Proxy Authentication Required$/i, '... Proxy Authentication Required');
check_challenges($r, 'Proxy-Authenticate', 'INVITE');
is($r && $r->header_count('WWW-Authenticate'), 0, '... and no WWW-Authenticate');
is(forwarded($req), 0, '... nothing reached the softswitch');
my $nonce1 = (($r ? $r->challenges : ())[0] // {})->{nonce};

my $ack = $c->ack_for($req, $r // $req);
$c->send($ack);
is($c->recv(timeout => 0.5), undef, 'the ACK of the 407 gets no answer');
is(forwarded($ack), 0, '... and is not forwarded (dropped: an ACK cannot be challenged)');

for my $m (qw(OPTIONS MESSAGE)) {
	($r) = $c->request(method => $m);
	is($r && $r->status, 407, "$m without credentials: 407");
	is($r && $r->header_count('Proxy-Authenticate'), 2, '... with two Proxy-Authenticate');
}

# a To tag is the sender's word, not a dialog: no token route, no pass
($r, $req) = $c->request(method => 'BYE', to_tag => 'made-up');
is($r && $r->status, 407, 'BYE with a made-up To tag and no credentials: 407');
is(forwarded($req), 0, '... not forwarded');

# CANCEL cannot be challenged (RFC 3261 22.1): it goes on
$req = $c->build(method => 'CANCEL');
$c->send($req);
my $fwd = $ss->wait_request(method => 'CANCEL', timeout => 2);
ok($fwd && $fwd->header('call-id') eq $req->header('call-id'), 'CANCEL without credentials is forwarded');

# credentials, but for another realm only: as if none
my $res = digest_call($c, user => 'alice', password => 'secret', cred => { realm => 'elsewhere.example' });
is($res->{status}, 407, 'credentials for another realm only: challenged again (407)');
ok(!$res->{fwd}, '... not forwarded');

# --- success, MD5 and SHA-256 -----------------------------------------------------

for my $alg ('MD5', 'SHA-256') {
	$mark = $t->log_mark;
	$res = digest_call($c, user => 'alice', password => 'secret', alg => $alg);
	is($res->{status}, 200, "alice answers the $alg challenge: the call is answered (200)");
	forwarded_as($res, 'digestco', 'alice', "$alg: alice");
	my $ev = $t->wait_event('request_forwarded', 3, from => $mark, call_id => $res->{call_id});
	is($ev && $ev->{account}, 'digestco', "log: request_forwarded for the $alg call with account digestco");
}
is(auth_failures(), $before_failures, 'metrics: no authentication failure counted for challenges and successes');

# Authorization instead of Proxy-Authorization: accepted too
$res = digest_call($c, user => 'alice', password => 'secret', header => 'Authorization');
is($res->{status}, 200, 'INVITE answered with Authorization (not Proxy-Authorization): accepted');
forwarded_as($res, 'digestco', 'alice', 'Authorization');

# a caller cannot name its own account or user
$res = digest_call($c, user => 'alice', password => 'secret',
    headers => [ [ 'X-Tollgate-Account' => 'orgco' ], [ 'X-Tollgate-User' => 'carol@example.org' ] ]);
forwarded_as($res, 'digestco', 'alice', 'forged X-Tollgate-Account and X-Tollgate-User');

# --- refusals ------------------------------------------------------------------

refused_as(digest_call($c, user => 'alice', password => 'wrong', alg => 'MD5'), 'wrong_password',
    'wrong password (MD5)', $c);
refused_as(digest_call($c, user => 'alice', password => 'wrong', alg => 'SHA-256'), 'wrong_password',
    'wrong password (SHA-256)', $c);
refused_as(digest_call($c, user => 'mallory', password => 'secret'), 'unknown_user', 'unknown user', $c);
refused_as(digest_call($c, user => 'ivan', password => 'ivanpw'), 'user_inactive', 'inactive user', $c);
refused_as(digest_call($c, user => 'dora', password => 'dorapw'), 'account_inactive',
    'user of an inactive account', $c);

my $rita_ok = Tollgate::SIP->new(local => '127.0.0.34', peer => $tg);
my $rita_no = Tollgate::SIP->new(local => '127.0.0.35', peer => $tg);
$res = digest_call($rita_ok, user => 'rita', password => 'ritapw');
is($res->{status}, 200, 'rita from 127.0.0.34, in her allowed_sources: accepted');
forwarded_as($res, 'digestco', 'rita', 'rita');
refused_as(digest_call($rita_no, user => 'rita', password => 'ritapw'), 'source_not_allowed',
    'rita from 127.0.0.35, not in her allowed_sources', $rita_no);
refused_as(digest_call($c, user => 'nobody', password => 'nobodypw'), 'source_not_allowed',
    'restrict_sources with an empty list: nobody may use the user', $c);

# RFC 2069 form (no qop, nc, cnonce): no replay protection, refused
refused_as(digest_call($c, user => 'alice', password => 'secret', cred => { qop => undef }),
    'bad_credentials', 'credentials without qop', $c);
# read from the datagram as sent: what libosip2 would drop on re-serialising still counts
refused_as(digest_call($c, user => 'alice', password => 'secret', cred => { extra => 'userhash=true' }),
    'bad_credentials', 'credentials with userhash=true (never offered)', $c);
refused_as(digest_call($c, user => 'alice', password => 'secret', cred => { extra => 'nc=00000009' }),
    'bad_credentials', 'credentials with nc twice', $c);

# --- domains ----------------------------------------------------------------------

$res = digest_call($c, user => 'carol', password => 'orgpw', from => '<sip:carol@example.org>');
is($res->{status}, 200, 'carol from example.org with the example.org password: accepted');
forwarded_as($res, 'orgco', 'carol@example.org', 'carol of example.org (the domain user first)');
$res = digest_call($c, user => 'carol', password => 'anypw');
is($res->{status}, 200, 'carol from a host no carol has: the any-domain carol');
forwarded_as($res, 'digestco', 'carol', 'any-domain carol');
refused_as(digest_call($c, user => 'carol', password => 'anypw', from => '<sip:carol@example.org>'),
    'wrong_password', 'carol from example.org with the any-domain password', $c);

$res = digest_call($c, user => 'bob@example.com', password => 'bobpw', from => '<sip:bob@example.com>');
is($res->{status}, 200, 'full-URI username bob@example.com: accepted');
forwarded_as($res, 'digestco', 'bob@example.com', 'full-URI bob@example.com');
$res = digest_call($c, user => 'bob', password => 'bobpw', from => '<sip:bob@example.com>');
is($res->{status}, 200, 'plain username bob, From host example.com: accepted');
forwarded_as($res, 'digestco', 'bob@example.com', 'plain bob of example.com');
refused_as(digest_call($c, user => 'bob', password => 'bobpw', from => '<sip:bob@other.example>'),
    'unknown_user', 'plain bob from other.example (bob has a domain, there is no any-domain bob)', $c);
$res = digest_call($c, user => 'alice@example.com', password => 'secret', from => '<sip:alice@example.com>');
is($res->{status}, 403, 'full-URI username for alice, who has no domain: 403');
ok(!$res->{fwd}, '... not forwarded');
like(refusal_reason($res, $c) // 'none', qr/^(unknown_user|wrong_password)$/, '... as unknown_user or wrong_password');
count_refusal(refusal_reason($res, $c));

# --- sources with IP rules are never challenged -----------------------------------

my $ipc = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);
my ($resp, $f) = $ipc->call_through($ss, headers => [ [ 'X-Tollgate-User' => 'alice' ] ]);
is($resp && $resp->status, 200, 'IP-rule customer 127.0.0.21 without credentials: passes, no challenge');
is($f && $f->header('X-Tollgate-Account'), 'ipco', '... as ipco');
is($f ? $f->header('X-Tollgate-User') : 'not forwarded', undef, '... naming no user (its forged one removed)');
# with alice's valid credentials for a nonce tollgate issued: still the IP rule
($r) = $c->request(method => 'INVITE');
my $ch = pick($r, 'MD5');
my $uri = "sip:15551234\@$tg";
($resp, $f) = $ipc->call_through($ss, uri => $uri, headers => [ [ 'Proxy-Authorization' =>
    Tollgate::SIP::digest_credentials(challenge => $ch, username => 'alice', password => 'secret',
    method => 'INVITE', uri => $uri) ] ]);
is($f && $f->header('X-Tollgate-Account'), 'ipco', 'IP-rule customer sending alice\'s credentials: still ipco');
is($f ? $f->header('X-Tollgate-User') : 'not forwarded', undef, '... and no user');

my $portc = Tollgate::SIP->new(local => '127.0.0.22', peer => $tg);
$mark = $t->log_mark;
($r, $req) = $portc->request(method => 'INVITE');
is($r && $r->status, 403, '127.0.0.22 (a rule for another port): 403');
is($r && $r->header_count('Proxy-Authenticate'), 0, '... no challenge');
my $ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $req->header('call-id'));
is($ev && $ev->{reason}, 'no_rule_fits', '... reason no_rule_fits');
my $portc_ok = Tollgate::SIP->new(local => '127.0.0.22', port => $ip_port, peer => $tg);
($resp, $f) = $portc_ok->call_through($ss);
is($f && $f->header('X-Tollgate-Account'), 'portco', "127.0.0.22 from port $ip_port: portco, no challenge");

# --- nonce counts ------------------------------------------------------------------

$res = digest_call($c, user => 'alice', password => 'secret');
is($res->{status}, 200, 'nonce N, nc=1: accepted');
my %again = (user => 'alice', password => 'secret', challenge => $res->{challenge});
my $res2 = authed_call($c, %again, nc => 2);
is($res2->{status}, 200, 'nonce N again for a new call, nc=2: accepted');
refused_as(authed_call($c, %again, nc => 2), 'nonce_replay', 'nonce N, nc=2 a second time', $c);
refused_as(authed_call($c, %again, nc => 1), 'nonce_replay', 'nonce N, nc=1 (lower)', $c);
$res2 = authed_call($c, %again, nc => 7);
is($res2->{status}, 200, 'nonce N, nc=7 (a jump up): accepted');

# The same authorized INVITE again, byte for byte, from other source
# ports: SO_REUSEPORT spreads them over the workers, and every one must be
# refused, whichever worker it reaches. Keep going (bounded) until a
# refusal came from another worker than the one that forwarded it.
{
	my $c0 = Tollgate::SIP->new(local => '127.0.0.36', peer => $tg);
	($r, $req) = $c0->request(method => 'INVITE');
	$ch = pick($r, 'SHA-256');
	$c0->send($c0->ack_for($req, $r)) if $r;
	$uri = "sip:15551234\@$tg";
	my $inv = $c0->build(method => 'INVITE', uri => $uri, headers => [ [ 'Proxy-Authorization' =>
	    Tollgate::SIP::digest_credentials(challenge => $ch, username => 'alice', password => 'secret',
	    method => 'INVITE', uri => $uri, nc => 1) ] ]);
	my $cid = $inv->header('call-id');
	$mark = $t->log_mark;
	$c0->send($inv);
	my $first = $ss->wait_request(method => 'INVITE', timeout => 2);
	ok($first && $first->header('call-id') eq $cid, 'replay test: the authorized INVITE is forwarded once');
	$ev = $t->wait_event('request_forwarded', 3, from => $mark, call_id => $cid);
	my $fwd_proc = $ev && $ev->{proc};
	my ($tries, $refused_all, $other_worker) = (0, 1, 0);
	while ($tries < 40 && !$other_worker) {
		$tries++;
		my $ci = Tollgate::SIP->new(local => '127.0.0.36', peer => $tg);
		my $m = $t->log_mark;
		$ci->send($inv->as_string);
		my $got = $ci->wait_response(call_id => $cid, timeout => 2);
		my $e = $t->wait_event('request_refused', 3, from => $m, src => $ci->local_hostport);
		unless ($got && $got->status == 403 && $e && ($e->{reason} // '') eq 'nonce_replay') {
			$refused_all = 0;
			diag('replay ' . $ci->local_hostport . ': status ' . ($got ? $got->status : 'none')
			    . ', reason ' . ($e ? $e->{reason} // 'none' : 'no log'));
			last;
		}
		count_refusal('nonce_replay');
		$other_worker = 1 if defined $fwd_proc && ($e->{proc} // '') ne $fwd_proc;
	}
	ok($refused_all, "replayed from $tries other source port(s): 403 nonce_replay each time");
	ok($other_worker, "... one of them on another worker than the one that forwarded the original ($fwd_proc)");
	my @dup = grep { !$_->is_response && ($_->header('call-id') // '') eq $cid } $ss->drain;
	is(scalar @dup, 0, '... and no replay reached the softswitch');

	# A UDP retransmission of the accepted INVITE (the same datagram from the
	# same address and port: a lost 100 Trying) is forwarded again, not refused:
	# a 403 there would end the caller's transaction while the call goes on.
	$mark = $t->log_mark;
	$c0->send($inv->as_string);
	my $again = $ss->wait_request(method => 'INVITE', timeout => 2);
	ok($again && $again->header('call-id') eq $cid, 'the same INVITE retransmitted from its own address: forwarded again');
	is($again && $again->header('via'), $first && $first->header('via'),
	    '... with the same Via (branch) as the first copy, so the softswitch absorbs it');
	ok(!$t->wait_event('request_refused', 1, from => $mark, call_id => $cid), '... and not refused');
}

# --- dialogs: the Record-Route token -------------------------------------------

{
	my $caller = Tollgate::SIP->new(local => '127.0.0.33', peer => $tg);
	# the caller's Contact names another socket: tollgate must use the real source
	my $decoy = Tollgate::SIP->new(local => '127.0.0.38', peer => $tg);
	my $contact = '<sip:caller@' . $decoy->local_hostport . '>';
	$res = digest_call($caller, user => 'alice', password => 'secret', contact => $contact);
	is($res->{status}, 200, 'dialog: the caller\'s authenticated INVITE is answered');
	my @rr = $res->{resp} ? $res->{resp}->header_values('Record-Route') : ();
	my ($rr_uri) = ($rr[0] // '') =~ /^<([^>]+)>/;
	like($rr_uri // '', qr/^sip:[^@;>]+\@127\.0\.0\.1:$tg_port;(?:[^>]*;)?lr(?:[;=]|$)/,
	    "... tollgate's Record-Route carries a token: <sip:TOKEN\@127.0.0.1:$tg_port;lr>");
	$rr_uri //= "sip:127.0.0.1:$tg_port;lr";
	my $to_tag = $res->{resp} ? $res->{resp}->tag_of('to') : 'none';
	my $ss_contact = $res->{resp} ? ($res->{resp}->header('contact') =~ /<([^>]+)>/)[0] : "sip:ss\@127.0.0.10";
	my %dialog = (call_id => $res->{call_id}, from_tag => $res->{from_tag}, to_tag => $to_tag,
	    uri => $ss_contact, contact => $contact, headers => [ [ Route => "<$rr_uri>" ] ]);

	my $mark2 = $t->log_mark;
	$caller->send($caller->build(method => 'ACK', cseq => 2, %dialog));
	my $a = $ss->wait_request(method => 'ACK', timeout => 2);
	ok($a && $a->header('call-id') eq $res->{call_id}, 'the caller\'s ACK for the 200, with the token Route and no credentials: forwarded');
	$caller->send($caller->build(method => 'BYE', cseq => 3, %dialog));
	my $bye = $ss->wait_request(method => 'BYE', timeout => 2);
	ok($bye && $bye->header('call-id') eq $res->{call_id}, 'the caller\'s BYE with the token Route: forwarded without credentials');
	ok($bye && !defined $bye->header('Proxy-Authorization'), '... carrying no credentials');
	$ss->send($ss->reply($bye, 200, 'OK')) if $bye;
	$r = $caller->wait_response(call_id => $res->{call_id}, timeout => 2);
	is($r && $r->status, 200, '... and its 200 comes back to the caller');

	# the softswitch ends a dialog: to the caller's source, not its Contact
	my $ss_bye = $ss->build(method => 'BYE', uri => "sip:caller\@" . $decoy->local_hostport,
	    call_id => $res->{call_id}, from => '<sip:15551234@127.0.0.10>', from_tag => $to_tag,
	    to => '<sip:customer@' . $caller->local_hostport . '>', to_tag => $res->{from_tag},
	    cseq => 1, headers => [ [ Route => "<$rr_uri>" ] ]);
	$ss->send($ss_bye);
	my $in = $caller->wait_request(method => 'BYE', timeout => 2);
	ok($in, 'a BYE from the softswitch with the token Route reaches the caller at its real source address');
	is(scalar(grep { !$_->is_response } $decoy->drain), 0, '... not the address in its Contact');
	if ($in) {
		$caller->send($caller->reply($in, 200, 'OK'));
		my $ok = $ss->wait_response(call_id => $res->{call_id}, timeout => 2);
		is($ok && $ok->status, 200, '... and the caller\'s 200 reaches the softswitch');
	} else {
		fail('... and the caller\'s 200 reaches the softswitch');
	}

	# a token tollgate did not make, or one used from another source
	(my $forged = $rr_uri) =~ s/^sip:([^@]+)\@/sip:forged0token\@/;
	($r, $req) = $caller->request(method => 'BYE', cseq => 4, %dialog, headers => [ [ Route => "<$forged>" ] ]);
	ok($r && ($r->status == 407 || $r->status == 403), 'BYE with a forged token in its Route: challenged or refused')
	    or diag('status ' . ($r ? $r->status : 'none'));
	is(forwarded($req), 0, '... not forwarded');
	my $other = Tollgate::SIP->new(local => '127.0.0.39', peer => $tg);
	($r, $req) = $other->request(method => 'BYE', cseq => 5, %dialog);
	ok($r && ($r->status == 407 || $r->status == 403),
	    'the caller\'s token Route in a BYE from another address (127.0.0.39): challenged or refused')
	    or diag('status ' . ($r ? $r->status : 'none'));
	is(forwarded($req), 0, '... not forwarded');
}

# --- live changes ---------------------------------------------------------------

$res = digest_call($c, user => 'lena', password => 'lenapw');
is($res->{status}, 200, 'lena: accepted');
$pg->psql("update tollgate.sip_users set status = 'inactive' where id = $lena");
my $last;
wait_until { $last = digest_call($c, user => 'lena', password => 'lenapw'); $last->{status} == 403 } 5;
is($last->{status}, 403, 'lena made inactive in PostgreSQL: refused within 5 s, no reload');
is(refusal_reason($last, $c), 'user_inactive', '... as user_inactive');
count_refusal('user_inactive');
$pg->psql("update tollgate.sip_users set status = 'active' where id = $lena; "
    . "select tollgate.set_password('lena', 'newpw');");
wait_until { $last = digest_call($c, user => 'lena', password => 'newpw'); $last->{status} == 200 } 5;
is($last->{status}, 200, 'active again with a new password: the new password is accepted within 5 s');
refused_as(digest_call($c, user => 'lena', password => 'lenapw'), 'wrong_password', 'lena\'s old password', $c);

# --- metrics ---------------------------------------------------------------------

my $m = $t->metrics;
ok($m, 'metrics endpoint answers');
for my $reason (sort keys %refused) {
	cmp_ok($m->{"tollgate_refusals_total{reason=\"$reason\"}"} // 0, '>=', $refused{$reason},
	    "metrics: tollgate_refusals_total{reason=\"$reason\"} >= $refused{$reason}");
}
cmp_ok(auth_failures($m) - $before_failures, '>=', $failures_expected,
    "metrics: tollgate_auth_failures_total went up by >= $failures_expected");

is($t->stop, 0, 'SIGTERM: exit 0');

# --- expired nonces: nonce_ttl_s 2 -----------------------------------------------

{
	my $t2 = Tollgate->new(keep_pg => 1);
	$t2->pg($pg);
	(my $cfg2 = $config) =~ s/nonce_ttl_s: 300/nonce_ttl_s: 2/;
	$t2->write_config($cfg2);
	$t2->run;
	my $tg2 = '127.0.0.1:' . $t2->port('SIP');
	my $ss2 = Tollgate::SIP->new(local => '127.0.0.10', port => $t2->port('SS'), peer => $tg2);
	my $c2 = Tollgate::SIP->new(local => '127.0.0.37', peer => $tg2);
	my ($t_main, $ss_main) = ($t, $ss);
	($t, $ss) = ($t2, $ss2);	# what digest_call() and authed_call() use
	$res = digest_call($c2, user => 'alice', password => 'secret');
	is($res->{status}, 200, 'nonce_ttl_s 2: a fresh nonce is accepted');
	my $nonce = $res->{challenge}{nonce};
	# the same nonce, right password, rising nc, until it has expired (bounded)
	my ($stale, $n) = (undef, 1);
	wait_until {
		my $x = authed_call($c2, user => 'alice', password => 'secret', challenge => $res->{challenge},
		    nc => ++$n, timeout => 1);
		$stale = $x if $x->{status} != 200;
		sleep 0.25 unless $stale;
		$stale;
	} 10;
	is($stale && $stale->{status}, 407, 'the nonce, older than nonce_ttl_s, with the right password: 407 again');
	my @chs = $stale && $stale->{resp} ? $stale->{resp}->challenges : ();
	is(scalar(grep { ($_->{stale} // '') =~ /^true$/i } @chs), 2, '... both challenges with stale=true');
	isnt($chs[0] && $chs[0]{nonce}, $nonce, '... and a new nonce');
	ok($stale && !$stale->{fwd}, '... not forwarded');
	if (@chs) {
		my $x = authed_call($c2, user => 'alice', password => 'secret', challenge => $chs[1], nc => 1);
		is($x->{status}, 200, 'the new nonce is accepted');
	} else {
		fail('the new nonce is accepted');
	}
	my $x = authed_call($c2, user => 'alice', password => 'wrong', challenge => $res->{challenge}, nc => ++$n);
	is($x->{status}, 403, 'the expired nonce with a wrong password: 403, not a new challenge');
	is($t2->stop, 0, 'nonce_ttl_s 2: SIGTERM, exit 0');
	$t2->finish;
	($t, $ss) = ($t_main, $ss_main);
}

# --- no digest section: nobody is challenged ------------------------------------

{
	my $t3 = Tollgate->new(keep_pg => 1);
	$t3->pg($pg);
	(my $cfg3 = $config) =~ s/^digest:\n(?:  .*\n)+//m;
	$cfg3 =~ s/^capacity:\n(?:  .*\n)+//m;
	$t3->write_config($cfg3);
	$t3->run;
	my $tg3 = '127.0.0.1:' . $t3->port('SIP');
	my $ss3 = Tollgate::SIP->new(local => '127.0.0.10', port => $t3->port('SS'), peer => $tg3);
	my $c3 = Tollgate::SIP->new(local => '127.0.0.32', peer => $tg3);
	my $mark3 = $t3->log_mark;
	($r, $req) = $c3->request(method => 'INVITE');
	is($r && $r->status, 403, 'no digest section: an address with no IP rule gets 403');
	is($r && $r->header_count('Proxy-Authenticate'), 0, '... no challenge');
	$ev = $t3->wait_event('request_refused', 3, from => $mark3, call_id => $req->header('call-id'));
	is($ev && $ev->{reason}, 'unknown_source', '... reason unknown_source');
	# credentials tollgate would accept with digest on change nothing
	$uri = "sip:15551234\@$tg3";
	($resp, $f) = $c3->call_through($ss3, uri => $uri, headers => [ [ 'Proxy-Authorization' =>
	    Tollgate::SIP::digest_credentials(challenge => { realm => $REALM, nonce => $nonce1 // 'x',
	    algorithm => 'MD5' }, username => 'alice', password => 'secret', method => 'INVITE', uri => $uri, nc => 9) ] ]);
	is($resp && $resp->status, 403, '... and with digest credentials too: 403');
	ok(!$f, '... not forwarded');
	$ipc = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg3);
	($resp, $f) = $ipc->call_through($ss3);
	is($f && $f->header('X-Tollgate-Account'), 'ipco', 'the IP-rule customer still passes');
	is($t3->stop, 0, 'no digest: SIGTERM, exit 0');
	$t3->finish;
}

$t->finish;
done_testing;

###########################################################################

# Run sipp calls through tollgate: uas_auth.xml as the softswitch,
# uac_auth.xml behind an MD5-only relay at 127.0.0.31 (what tollgate sees).
sub sipp_calls {
	my (%o) = @_;
	my $what = $o{what} // "user $o{user}";
	my $uas = $t->sipp(name => "uas-$o{name}", scenario => 'uas_auth.xml',
	    local => '127.0.0.10', port => $t->port('SS'),
	    args => [ '-m', $o{calls}, '-set', 'expected_account', $o{account},
	    '-set', 'expected_user', $o{expected_user} ], timeout => 60);
	ok(wait_udp_bound('127.0.0.10', $t->port('SS')), "sipp $what: softswitch (sipp uas) is listening")
	    or diag $uas->report;
	my $uac_port = Tollgate::free_port();
	my $relay = Tollgate::SIP::Relay->start(local => '127.0.0.31', client => "127.0.0.30:$uac_port",
	    server => $tg, lifetime => 90);
	my $service = '15551234';
	my $uac = $t->sipp(name => "uac-$o{name}", scenario => 'uac_auth.xml',
	    remote => $relay->local_hostport, local => '127.0.0.30', port => $uac_port,
	    args => [ '-m', $o{calls}, '-r', 10, '-d', 50, '-s', $service,
	    '-au', $o{user}, '-ap', $o{password}, '-auth_uri', "$service\@" . $relay->local_hostport ],
	    timeout => 60);
	is($uac->wait(70), 0, "sipp $what: $o{calls} calls challenged, authenticated and completed")
	    or diag $uac->report;
	is($uas->wait(20), 0, "sipp $what: the softswitch saw account $o{account}, user $o{expected_user}, no credentials")
	    or diag $uas->report;
	$relay->stop;
	cmp_ok($relay->stripped, '>=', $o{calls} || 1,
	    "sipp $what: each 407 offered a non-MD5 challenge too (taken out for sipp 3.6.1)")
	    if $o{name} eq 'alice';
}

# digest_call($client, user => NAME, password => PW, alg => 'MD5'|'SHA-256',
# header => 'Proxy-Authorization', from => URI, contact => URI, cred =>
# {digest_credentials overrides}, headers => [...]): an
# INVITE without credentials (expect 407, ACKed), then again with the
# answer to the challenge of that algorithm; the softswitch socket answers
# 200 when it gets there. Returns { status, resp, fwd, req, first,
# challenge, call_id, from_tag }.
sub digest_call {
	my ($cl, %o) = @_;
	my $cid = sprintf('%x%x@digest.test', int(rand(2**31)), int(time() * 1000) % 2**31);
	my $ftag = sprintf('ft%x', int(rand(2**31)));
	my %common = (call_id => $cid, from_tag => $ftag, uri => "sip:15551234\@$tg",
	    (defined $o{from} ? (from => $o{from}) : ()), (defined $o{contact} ? (contact => $o{contact}) : ()));
	my ($first, $req) = $cl->request(method => 'INVITE', cseq => 1, %common);
	my %res = (call_id => $cid, from_tag => $ftag, first => $first, status => $first ? $first->status : 0);
	return \%res unless $first && $first->status == 407;
	$cl->send($cl->ack_for($req, $first));
	my $ch = pick($first, $o{alg} // 'MD5') or return \%res;
	my $r2 = authed_call($cl, %o, %common, challenge => $ch, cseq => 2);
	return { %$r2, first => $first, call_id => $cid, from_tag => $ftag };
}

# authed_call($client, challenge => HASH, user, password, nc => 1, ...):
# one INVITE with the answer to that challenge (a nonce may be used again
# with a higher nc).
sub authed_call {
	my ($cl, %o) = @_;
	my %build = (call_id => $o{call_id} // sprintf('%x@digest.test', int(rand(2**31))),
	    from_tag => $o{from_tag}, cseq => $o{cseq} // 1, uri => $o{uri} // "sip:15551234\@$tg",
	    map { defined $o{$_} ? ($_ => $o{$_}) : () } qw(from contact));
	my $cred = Tollgate::SIP::digest_credentials(challenge => $o{challenge}, username => $o{user},
	    password => $o{password}, method => 'INVITE', uri => $build{uri}, nc => $o{nc} // 1,
	    %{ $o{cred} // {} });
	my @h = ([ $o{header} // 'Proxy-Authorization' => $cred ], @{ $o{headers} // [] });
	my ($resp, $fwd, $req) = $cl->call_through($ss, %build, headers => \@h, timeout => $o{timeout} // 3);
	return { status => $resp ? $resp->status : 0, resp => $resp, fwd => $fwd, req => $req,
	    challenge => $o{challenge}, call_id => $build{call_id} };
}

# The challenge of one algorithm in a 401/407, or undef.
sub pick {
	my ($resp, $alg) = @_;
	my ($ch) = grep { uc($_->{algorithm} // '') eq uc $alg } ($resp ? $resp->challenges : ());
	return $ch;
}

# The two challenges tollgate sends: SHA-256 then MD5, qop auth, our realm, one nonce.
sub check_challenges {
	my ($resp, $header, $what) = @_;
	my @ch = $resp ? grep { lc $_->{header} eq lc $header } $resp->challenges : ();
	is(scalar @ch, 2, "$what: two $header headers");
	is(join(',', map { $_->{scheme} // '' } @ch), 'Digest,Digest', "$what: both Digest");
	is(join(',', map { $_->{algorithm} // 'none' } @ch), 'SHA-256,MD5', "$what: algorithm SHA-256 first, then MD5");
	is(scalar(grep { ($_->{qop} // '') =~ /^\s*auth\s*$/ } @ch), 2, "$what: both qop=\"auth\"");
	is(scalar(grep { ($_->{realm} // '') eq $REALM } @ch), 2, "$what: both realm=\"$REALM\"");
	ok(@ch == 2 && length($ch[0]{nonce} // '') && $ch[0]{nonce} eq ($ch[1]{nonce} // ''), "$what: one nonce in both");
	is(scalar(grep { ($_->{stale} // 'false') =~ /^true$/i } @ch), 0, "$what: not stale");
}

# Did the softswitch get (another copy of) this request? Waits 0.5 s.
sub forwarded {
	my ($req) = @_;
	my $cid = $req->header('call-id');
	my $deadline = time() + 0.5;
	while ((my $left = $deadline - time()) > 0) {
		my $m = $ss->recv(timeout => $left) or last;
		return 1 if !$m->is_response && ($m->header('call-id') // '') eq $cid && $m->method eq $req->method;
	}
	return 0;
}

# What the softswitch got is this account and user, once each, without credentials.
sub forwarded_as {
	my ($res, $account, $user, $what) = @_;
	my $f = $res->{fwd};
	ok($f, "$what: forwarded to the softswitch") or return;
	is(join(',', $f->header_values('X-Tollgate-Account')), $account, "$what: X-Tollgate-Account: $account (once)");
	is(join(',', $f->header_values('X-Tollgate-User')), $user, "$what: X-Tollgate-User: $user (once)");
	is($f->header_count('Proxy-Authorization') + $f->header_count('Authorization'), 0,
	    "$what: the credentials are not passed on");
}

# The reason tollgate logged for refusing this call with 403.
sub refusal_reason {
	my ($res, $cl) = @_;
	my $ev = $t->wait_event('request_refused', 3, call_id => $res->{call_id}, code => 403,
	    src => $cl->local_hostport);
	return $ev && $ev->{reason};
}

sub count_refusal {
	my ($reason) = @_;
	return unless defined $reason;
	$refused{$reason}++;
	$failures_expected++ if $auth_failure{$reason};
}

sub refused_as {
	my ($res, $reason, $what, $cl) = @_;
	is($res->{status}, 403, "$what: 403");
	ok(!$res->{fwd}, "$what: not forwarded");
	is(refusal_reason($res, $cl), $reason, "$what: log request_refused, reason $reason");
	count_refusal($reason);
}

# tollgate_auth_failures_total, summed over any labels.
sub auth_failures {
	my ($m) = @_;
	$m //= $t->metrics or return -1;
	my $sum = 0;
	$sum += $m->{$_} for grep { /^tollgate_auth_failures_total(?:\{|$)/ } keys %$m;
	return $sum;
}

#!/usr/bin/perl
# REGISTER with SIP digest (issue 5): a device with no IP rule gets 401
# with two WWW-Authenticate (SHA-256 then MD5); answered, its REGISTER
# reaches the registrar (the softswitch, a raw socket at 127.0.0.10) with
# X-Tollgate-Account, X-Tollgate-User and a Path naming tollgate with a
# token (RFC 3327), and without the credentials. The registrar then sends
# requests with Route: <that Path URI>, and tollgate delivers them to the
# address and port the REGISTER came from, whatever the Request-URI (or
# the device's Contact) names, from any worker. A Path token tollgate did
# not make opens nothing (403 egress_denied). sipp (reg_auth.xml behind
# Tollgate::SIP::Relay) registers with its [authentication] keyword.
#
# Addresses: tollgate 127.0.0.1, registrar 127.0.0.10, the device
# 127.0.0.36, the address its Contact and the Request-URIs name 127.0.0.37
# (a decoy socket that must stay silent), sipp 127.0.0.30 behind a relay
# at 127.0.0.31.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time);
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $REALM = 'tollgate';

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $regco = $pg->add_account('regco');
$pg->add_sip_user($regco, 'dave', password => 'davepw');
$pg->add_sip_user($regco, 'erin', password => 'erinpw');

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
digest:
  realm: "tollgate"
  nonce_ttl_s: 300
capacity:
  sip_users: 100
  nonces: 4096
  failure_sources: 1024
EOF
$t->run;

my $tg_port = $t->port('SIP');
my $tg = "127.0.0.1:$tg_port";
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $dev = Tollgate::SIP->new(local => '127.0.0.36', peer => $tg);
my $decoy = Tollgate::SIP->new(local => '127.0.0.37', peer => $tg);
my $contact = '<sip:dave@' . $decoy->local_hostport . '>';
my %reg = (method => 'REGISTER', uri => "sip:$tg", from => '<sip:dave@127.0.0.36>', to => '<sip:dave@127.0.0.36>',
    contact => $contact, headers => [ [ Expires => 300 ] ]);

# --- the challenge ------------------------------------------------------------------

my ($r, $req) = $dev->request(%reg, cseq => 1);
is($r && $r->status, 401, 'REGISTER without credentials: 401');
like($r && $r->reason, qr/^Unauthorized$/i, '... Unauthorized');
my @ch = $r ? grep { lc $_->{header} eq 'www-authenticate' } $r->challenges : ();
is(scalar @ch, 2, '... with two WWW-Authenticate');
is(join(',', map { $_->{algorithm} // 'none' } @ch), 'SHA-256,MD5', '... SHA-256 first, then MD5');
is(scalar(grep { ($_->{qop} // '') =~ /^\s*auth\s*$/ && ($_->{realm} // '') eq $REALM } @ch), 2,
    "... both qop=\"auth\", realm=\"$REALM\"");
ok(@ch == 2 && length($ch[0]{nonce} // '') && $ch[0]{nonce} eq ($ch[1]{nonce} // ''), '... one nonce in both');
is($r && $r->header_count('Proxy-Authenticate'), 0, '... and no Proxy-Authenticate');
is(scalar(grep { !$_->is_response && $_->method eq 'REGISTER' } drain_wait($ss)), 0,
    '... nothing reached the registrar');

# wrong password
my $mark = $t->log_mark;
($r, $req) = $dev->request(%reg, cseq => 2, call_id => $req->header('call-id'),
    headers => [ @{ $reg{headers} }, [ Authorization => cred($ch[1], 'dave', 'wrong', 'REGISTER', "sip:$tg", 1) ] ]);
is($r && $r->status, 403, 'REGISTER with a wrong password: 403');
my $ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $req->header('call-id'), code => 403);
is($ev && $ev->{reason}, 'wrong_password', '... reason wrong_password');
is(scalar(grep { !$_->is_response && $_->method eq 'REGISTER' } drain_wait($ss)), 0, '... not forwarded');

# erin's password registering dave (RFC 3261 10.3): refused, whatever the password
($r, $req) = $dev->request(%reg, cseq => 1);
my ($md5_ch) = grep { ($_->{algorithm} // "") eq "MD5" } ($r ? $r->challenges : ());
$mark = $t->log_mark;
($r, $req) = $dev->request(%reg, cseq => 2, call_id => $req->header('call-id'),
    headers => [ @{ $reg{headers} }, [ Authorization => cred($md5_ch, 'erin', 'erinpw', 'REGISTER', "sip:$tg", 1) ] ]);
is($r && $r->status, 403, "erin's right password on a REGISTER for dave: 403");
$ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $req->header('call-id'), code => 403);
is($ev && $ev->{reason}, 'aor_mismatch', '... reason aor_mismatch');
is(scalar(grep { !$_->is_response && $_->method eq 'REGISTER' } drain_wait($ss)), 0, '... not forwarded');

# --- the answer: REGISTER reaches the registrar with a Path ---------------------------

($r, $req) = $dev->request(%reg, cseq => 1);
my ($sha) = grep { ($_->{algorithm} // '') eq 'SHA-256' } ($r ? $r->challenges : ());
$mark = $t->log_mark;
my $reg_req = $dev->build(%reg, cseq => 2, call_id => $req->header('call-id'),
    headers => [ @{ $reg{headers} }, [ Authorization => cred($sha, 'dave', 'davepw', 'REGISTER', "sip:$tg", 1) ] ]);
$dev->send($reg_req);
my $fwd = $ss->wait_request(method => 'REGISTER', timeout => 3);
ok($fwd, 'REGISTER answered with SHA-256 credentials (Authorization): forwarded to the registrar');
$fwd //= Tollgate::SIP::Message->new(start => 'REGISTER sip:none SIP/2.0');
is(join(',', $fwd->header_values('X-Tollgate-Account')), 'regco', '... X-Tollgate-Account: regco');
is(join(',', $fwd->header_values('X-Tollgate-User')), 'dave', '... X-Tollgate-User: dave');
is($fwd->header_count('Authorization') + $fwd->header_count('Proxy-Authorization'), 0,
    '... the credentials are not passed on');
my @path = $fwd->header_values('Path');
is(scalar @path, 1, '... one Path header');
my ($path_uri, $token, $params) = ($path[0] // '') =~ /^<(sip:([^@;>]+)\@127\.0\.0\.1:$tg_port((?:;[^>]*)?))>$/;
ok(defined $token && length $token, "... Path: <sip:TOKEN\@127.0.0.1:$tg_port;lr> names tollgate with a token")
    or diag('Path: ' . ($path[0] // 'none'));
like($params // '', qr/;lr(?:[;=]|$)/, '... loose-routing (;lr)');
$ev = $t->wait_event('request_forwarded', 3, from => $mark, call_id => $req->header('call-id'));
is($ev && $ev->{account}, 'regco', 'log: request_forwarded for the REGISTER, account regco');

$ss->send($ss->reply($fwd, 200, 'OK', headers => [ (map { [ Path => $_ ] } @path),
    [ Contact => $contact . ';expires=300' ] ])) if $fwd->header('via');
$r = $dev->wait_response(call_id => $req->header('call-id'), timeout => 3);
is($r && $r->status, 200, 'the registrar\'s 200 reaches the device');

# --- the registrar reaches the device through the Path --------------------------------

$path_uri //= "sip:127.0.0.1:$tg_port;lr";
my $unrelated = 'sip:dave@' . $decoy->local_hostport;
$mark = $t->log_mark;
my $inv = $ss->build(method => 'INVITE', uri => $unrelated, headers => [ [ Route => "<$path_uri>" ] ]);
$ss->send($inv);
my $got = $dev->wait_request(method => 'INVITE', timeout => 3);
ok($got && $got->header('call-id') eq $inv->header('call-id'),
    'an INVITE from the registrar with Route: <Path URI> reaches the device at the address it registered from');
is($got && $got->from_addr, $tg, '... sent by tollgate');
like($got ? ($got->header_values('via'))[0] : '', qr{^SIP/2\.0/UDP 127\.0\.0\.1:$tg_port;}i, '... with tollgate\'s Via on top');
is(scalar(grep { !$_->is_response } $decoy->drain), 0, '... and nothing went to the Request-URI\'s address');
if ($got) {
	$dev->send($dev->reply($got, 200, 'OK'));
	$r = $ss->wait_response(call_id => $inv->header('call-id'), timeout => 3);
	is($r && $r->status, 200, 'the device\'s 200 reaches the registrar');
} else {
	fail('the device\'s 200 reaches the registrar');
}

# from several source ports of the softswitch: SO_REUSEPORT spreads them
# over the workers, and the token must work in each
my ($delivered, $answered, $tries) = (0, 0, 8);
for my $i (1 .. $tries) {
	my $ssi = Tollgate::SIP->new(local => '127.0.0.10', peer => $tg);
	my $m = $ssi->build(method => 'INVITE', uri => $unrelated, headers => [ [ Route => "<$path_uri>" ] ]);
	$ssi->send($m);
	my $g = $dev->wait_request(method => 'INVITE', timeout => 2);
	next unless $g && $g->header('call-id') eq $m->header('call-id');
	$delivered++;
	$dev->send($dev->reply($g, 486, 'Busy Here'));
	my $resp = $ssi->wait_response(call_id => $m->header('call-id'), timeout => 2);
	$answered++ if $resp && $resp->status == 486;
}
is($delivered, $tries, "INVITEs through the Path from $tries source ports of the softswitch: all delivered");
is($answered, $tries, '... and each answer reached the port it came from');
my %procs = map { ($_->{proc} // '') => 1 }
    grep { ($_->{method} // '') eq 'INVITE' } $t->log_events('request_forwarded', from => $mark);
diag('INVITEs through the Path forwarded by: ' . join(', ', sort keys %procs));

# --- a Path token tollgate did not make opens nothing ------------------------------

my $tampered = $token // 'x';
{
	my $i = int(length($tampered) / 2);
	my $ch = substr($tampered, $i, 1);
	my $new = $ch =~ /[0-8a-yA-Y]/ ? chr(ord($ch) + 1) : $ch =~ /[9zZ]/ ? chr(ord($ch) - 1) : $ch eq '-' ? '_' : '-';
	substr($tampered, $i, 1) = $new;
}
for my $case ([ 'a made-up token', 'forged0token' ], [ 'the token with one character changed', $tampered ],
    [ 'no Route at all', undef ]) {
	my ($what, $tok) = @$case;
	my @route = defined $tok ? ([ Route => "<sip:$tok\@127.0.0.1:$tg_port;lr>" ]) : ();
	$mark = $t->log_mark;
	my $m = $ss->build(method => 'INVITE', uri => $unrelated, headers => \@route);
	$ss->send($m);
	$r = $ss->wait_response(call_id => $m->header('call-id'), timeout => 2);
	is($r && $r->status, 403, "registrar's INVITE with $what: 403");
	is(scalar(grep { !$_->is_response } $dev->drain, $decoy->drain), 0, '... delivered to nobody');
	$ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $m->header('call-id'));
	is($ev && $ev->{reason}, 'egress_denied', '... reason egress_denied');
}

# The account made inactive: its devices' Paths open no new calls (within 5 s,
# no reload), and come back with the account.
{
	$pg->psql("update tollgate.accounts set status = 'inactive' where id = $regco");
	my $refused = wait_until {
		my $m = $ss->build(method => 'INVITE', uri => $unrelated, headers => [ [ Route => "<$path_uri>" ] ]);
		$ss->send($m);
		my $resp = $ss->wait_response(call_id => $m->header('call-id'), timeout => 1);
		$resp && $resp->status == 403;
	} 5;
	ok($refused, "regco inactive: the registrar's INVITE through dave's Path gets 403");
	$dev->drain;
	$pg->psql("update tollgate.accounts set status = 'active' where id = $regco");
	my $back = wait_until {
		my $m = $ss->build(method => 'INVITE', uri => $unrelated, headers => [ [ Route => "<$path_uri>" ] ]);
		$ss->send($m);
		my $got = $dev->wait_request(method => 'INVITE', timeout => 1);
		$dev->send($dev->reply($got, 486, 'Busy Here')) if $got;
		$got;
	} 5;
	ok($back, '... active again: it reaches dave');
	$ss->drain;
}

# --- Proxy-Authorization on a REGISTER is accepted too -------------------------------

($r, $req) = $dev->request(%reg, cseq => 1);
my ($md5) = grep { ($_->{algorithm} // "") eq "MD5" } ($r ? $r->challenges : ());
$dev->send($dev->build(%reg, cseq => 2, call_id => $req->header('call-id'),
    headers => [ @{ $reg{headers} }, [ 'Proxy-Authorization' => cred($md5, 'dave', 'davepw', 'REGISTER', "sip:$tg", 1) ] ]));
$fwd = $ss->wait_request(method => 'REGISTER', timeout => 3);
ok($fwd, 'REGISTER answered with MD5 credentials in Proxy-Authorization: forwarded');
is($fwd && $fwd->header('X-Tollgate-User'), 'dave', '... as dave');
is($fwd ? $fwd->header_count('Path') : 0, 1, '... with a Path');

# --- sipp registers ----------------------------------------------------------------

SKIP: {
	skip 'sipp not installed (apt-get install sip-tester)', 4 unless Tollgate::which('sipp');
	my $port = Tollgate::free_port();
	my $relay = Tollgate::SIP::Relay->start(local => '127.0.0.31', client => "127.0.0.30:$port",
	    server => $tg, lifetime => 60);
	my $sipp = $t->sipp(name => 'reg', scenario => 'reg_auth.xml', remote => $relay->local_hostport,
	    local => '127.0.0.30', port => $port,
	    args => [ '-m', 1, '-s', 'erin', '-au', 'erin', '-ap', 'erinpw' ], timeout => 30);
	# the registrar: answer the REGISTER, echoing its Path (bounded)
	my $sipp_reg;
	wait_until {
		my $m = $ss->wait_request(method => 'REGISTER', timeout => 0.5);
		if ($m) {
			$sipp_reg = $m;
			$ss->send($ss->reply($m, 200, 'OK', headers => [ map { [ Path => $_ ] } $m->header_values('Path') ]));
		}
		$sipp_reg || defined $sipp->exited;
	} 30;
	ok($sipp_reg, 'sipp\'s REGISTER (MD5, behind the relay) reaches the registrar');
	is($sipp_reg && $sipp_reg->header('X-Tollgate-User'), 'erin', '... as erin');
	is($sipp->wait(30), 0, 'sipp: 401, REGISTER with Authorization, 200 with tollgate\'s Path')
	    or diag $sipp->report;
	$relay->stop;
	cmp_ok($relay->stripped, '>=', 1, 'the 401 offered a non-MD5 challenge too (taken out for sipp 3.6.1)');
}

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

###########################################################################

# The credentials answering one challenge.
sub cred {
	my ($ch, $user, $pw, $method, $uri, $nc) = @_;
	return Tollgate::SIP::digest_credentials(challenge => $ch, username => $user, password => $pw,
	    method => $method, uri => $uri, nc => $nc);
}

# What reaches a socket within 0.5 s.
sub drain_wait {
	my ($sock) = @_;
	my @got;
	my $deadline = time() + 0.5;
	while ((my $left = $deadline - time()) > 0) {
		my $m = $sock->recv(timeout => $left) or last;
		push @got, $m;
	}
	return @got;
}


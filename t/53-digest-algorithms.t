#!/usr/bin/perl
# digest.algorithms: which digest algorithms tollgate offers, in what
# order. A challenge (407 Proxy-Authenticate; 401 WWW-Authenticate for
# REGISTER) carries one header per configured algorithm, in the configured
# order, all with one nonce; the default is [SHA-256, MD5]. SIGHUP applies
# a change. An answer in an algorithm that is not (any longer) offered is
# challenged again with stale=true (every configured algorithm), not
# refused, and counts no authentication failure. A user with no SHA-256
# HA1 (ha1_sha256 NULL, imported hashes) answering SHA-256 while MD5 is
# offered is challenged again with stale=true for MD5 alone, and passes
# with MD5.
#
#   1. [MD5]: one Proxy-Authenticate, MD5; sipp (uac_auth.xml) calls
#      tollgate directly, with no MD5-only relay in front of it.
#   2. SIGHUP to [SHA-256]: one challenge, SHA-256; an MD5 answer with
#      the right password gets 407 stale=true, is not forwarded, and
#      tollgate_auth_failures_total stays where it was.
#   3. SIGHUP to [SHA-256, MD5]: the user without SHA-256 HA1 answering
#      SHA-256 gets 407 stale=true offering MD5 only; MD5 then passes.
#   4. No algorithms key (after SIGHUP, and at start): SHA-256 then MD5.
#
# Addresses: tollgate 127.0.0.1, softswitch 127.0.0.10, digest callers
# 127.0.0.50-59 (no IP rule).

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Time::HiRes qw(time);
use Tollgate qw(wait_until wait_udp_bound);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $REALM = 'tollgate';

# --- provisioning -------------------------------------------------------------------

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);

my $acct = $pg->add_account('algco');
$pg->add_sip_user($acct, 'alice', password => 'secret');
my $olga = $pg->add_sip_user($acct, 'olga', password => 'olgapw');
# olga's hashes were imported from an MD5-only system: no SHA-256 HA1
$pg->psql("update tollgate.sip_users set ha1_sha256 = NULL where id = $olga");
is($pg->psql("select (ha1_sha256 is null)::text || ',' || (ha1_md5 is not null)::text "
    . "from tollgate.sip_users where id = $olga"), 'true,true',
    'provisioning: olga has an MD5 HA1 and no SHA-256 HA1');

# config(ALGS): the config with `algorithms: ALGS` in digest, none when undef
sub config {
	my ($algs) = @_;
	my $c = <<'EOF';
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
%%ALGS%%capacity:
  sip_users: 100
  nonces: 4096
  failure_sources: 1024
EOF
	my $line = defined $algs ? "  algorithms: $algs\n" : '';
	$c =~ s/%%ALGS%%/$line/;
	return $c;
}

$t->write_config(config('[MD5]'));
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss;	# the softswitch socket, bound once sipp's UAS has let go of its address

my $c = Tollgate::SIP->new(local => '127.0.0.50', peer => $tg);

# --- 1. [MD5] ------------------------------------------------------------------------

my $failures0 = failures();
ok(defined $failures0, 'metrics: tollgate_auth_failures_total is readable');
my ($r, $req) = challenge_for($c, 'INVITE');
is($r && $r->status, 407, '[MD5]: INVITE without credentials: 407');
check_offer($r, 'Proxy-Authenticate', [ 'MD5' ], 0, '[MD5] INVITE');
is($r && $r->header_count('WWW-Authenticate'), 0, '[MD5] INVITE: no WWW-Authenticate');
my $old_md5 = pick($r, 'MD5');	# answered after the reload to [SHA-256] in part 2

($r) = challenge_for($c, 'REGISTER');
is($r && $r->status, 401, '[MD5]: REGISTER without credentials: 401');
check_offer($r, 'WWW-Authenticate', [ 'MD5' ], 0, '[MD5] REGISTER');
is($r && $r->header_count('Proxy-Authenticate'), 0, '[MD5] REGISTER: no Proxy-Authenticate');

SKIP: {
	skip 'sipp not installed (apt-get install sip-tester)', 6 unless Tollgate::which('sipp');
	my $calls = 5;
	my $accepted0 = $t->metric('tollgate_digest_total', result => 'accepted') // 0;
	my $mark = $t->log_mark;
	my $uas = $t->sipp(name => 'uas-md5', scenario => 'uas_auth.xml',
	    local => '127.0.0.10', port => $t->port('SS'),
	    args => [ '-m', $calls, '-set', 'expected_account', 'algco', '-set', 'expected_user', 'alice' ],
	    timeout => 60);
	ok(wait_udp_bound('127.0.0.10', $t->port('SS')), 'sipp: softswitch (sipp uas) is listening')
	    or diag $uas->report;
	my $uac_port = Tollgate::free_port();
	my $service = '15551234';
	# no Tollgate::SIP::Relay: sipp 3.6.1 answers the first challenge, MD5 here
	my $uac = $t->sipp(name => 'uac-md5', scenario => 'uac_auth.xml',
	    remote => $tg, local => '127.0.0.51', port => $uac_port,
	    args => [ '-m', $calls, '-r', 10, '-d', 50, '-s', $service,
	    '-au', 'alice', '-ap', 'secret', '-auth_uri', "$service\@$tg" ], timeout => 60);
	is($uac->wait(70), 0, "[MD5]: sipp straight at tollgate: $calls calls challenged, authenticated and completed")
	    or diag $uac->report;
	is($uas->wait(20), 0, '[MD5]: the softswitch (sipp) saw account algco, user alice, no credentials')
	    or diag $uas->report;
	my @fwd = grep { ($_->{src} // '') =~ /^127\.0\.0\.51:/ && ($_->{method} // '') eq 'INVITE' }
	    $t->log_events('request_forwarded', from => $mark);
	cmp_ok(scalar @fwd, '>=', $calls, "[MD5]: log: >= $calls INVITEs from sipp (127.0.0.51) forwarded")
	    or diag('request_forwarded from 127.0.0.51: ' . scalar @fwd);
	cmp_ok(($t->metric('tollgate_digest_total', result => 'accepted') // 0) - $accepted0, '>=', $calls,
	    "[MD5]: metrics: tollgate_digest_total{result=\"accepted\"} rose by >= $calls");
	failures_are($failures0, '[MD5]: metrics: sipp\'s calls counted no authentication failure');
}

# bound only now: in the sipp part above, sipp's UAS held this address
$ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);

my $res = digest_call($c, user => 'alice', password => 'secret', alg => 'MD5');
is($res->{status}, 200, '[MD5]: raw client, MD5 answer: 200');
forwarded_as($res, 'alice', '[MD5] raw MD5 answer');

# --- 2. SIGHUP to [SHA-256] ------------------------------------------------------

$t->write_config(config('[SHA-256]'));
my $ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP with algorithms [SHA-256]: reload_done');

($r, $req) = challenge_for($c, 'INVITE');
is($r && $r->status, 407, '[SHA-256]: INVITE without credentials: 407');
check_offer($r, 'Proxy-Authenticate', [ 'SHA-256' ], 0, '[SHA-256] INVITE');
my $sha_only = ($r ? ($r->challenges)[0] : undef) // {};
($r) = challenge_for($c, 'REGISTER');
is($r && $r->status, 401, '[SHA-256]: REGISTER without credentials: 401');
check_offer($r, 'WWW-Authenticate', [ 'SHA-256' ], 0, '[SHA-256] REGISTER');

my $failures1 = failures();
my $stale0 = $t->metric('tollgate_digest_total', result => 'stale') // 0;

# MD5 credentials over the nonce of the SHA-256 challenge just received,
# and over the MD5 challenge issued before the reload
my @md5_answers = ([ 'the nonce of the SHA-256 challenge', $sha_only ], [ 'an MD5 challenge from before the reload', $old_md5 ]);
for my $ans (@md5_answers) {
	my ($how, $ch) = @$ans;
	my $mark = $t->log_mark;
	$res = authed_call($c, user => 'alice', password => 'secret', challenge => $ch // {},
	    cred => { algorithm => 'MD5' });
	my $what = "[SHA-256]: alice answers MD5 (right password, $how)";
	is($res->{status}, 407, "$what: 407, not 403");
	check_offer($res->{resp}, 'Proxy-Authenticate', [ 'SHA-256' ], 1, "$what, the new challenge");
	my ($new) = $res->{resp} ? $res->{resp}->challenges : ();
	ok($new && length($new->{nonce} // '') && $new->{nonce} ne ($ch->{nonce} // ''), "$what: a new nonce");
	ok(!$res->{fwd}, "$what: not forwarded");
	ok(!$t->wait_event('request_refused', 1, from => $mark, call_id => $res->{call_id}),
	    "$what: no request_refused logged");
	$ev = $t->wait_event('digest_challenge', 3, from => $mark, call_id => $res->{call_id});
	ok($ev && $ev->{stale} && $ev->{algorithms} == 1, "$what: log: digest_challenge stale=1 algorithms=1")
	    or diag explain $ev;
	$ans->[2] = $res;
}
failures_are($failures1, '[SHA-256]: metrics: tollgate_auth_failures_total did not rise for the MD5 answers');
cmp_ok(($t->metric('tollgate_digest_total', result => 'stale') // 0) - $stale0, '>=', 2,
    '[SHA-256]: metrics: tollgate_digest_total{result="stale"} rose by >= 2');

# the stale challenge answered in SHA-256: passes
my $stale_ch = pick($md5_answers[0][2]{resp}, 'SHA-256');
$res = authed_call($c, user => 'alice', password => 'secret', challenge => $stale_ch // {});
is($res->{status}, 200, '[SHA-256]: the stale challenge answered with SHA-256: 200');
forwarded_as($res, 'alice', '[SHA-256] SHA-256 answer to the stale challenge');

# the metric does count: a wrong password (SHA-256, from its own address) is one failure
my $w = Tollgate::SIP->new(local => '127.0.0.59', peer => $tg);
my $failures_ctl = failures();
$res = digest_call($w, user => 'alice', password => 'wrong', alg => 'SHA-256');
is($res->{status}, 403, '[SHA-256]: control: a wrong password (SHA-256): 403');
failures_are(defined $failures_ctl ? $failures_ctl + 1 : undef,
    '[SHA-256]: control: ... and tollgate_auth_failures_total rose by 1');

# --- 3. SIGHUP to [SHA-256, MD5]: the user without a SHA-256 HA1 -----------------------

$t->write_config(config('[SHA-256, MD5]'));
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP with algorithms [SHA-256, MD5]: reload_done');

my $o = Tollgate::SIP->new(local => '127.0.0.53', peer => $tg);
($r, $req) = challenge_for($o, 'INVITE');
is($r && $r->status, 407, '[SHA-256, MD5]: INVITE without credentials: 407');
check_offer($r, 'Proxy-Authenticate', [ 'SHA-256', 'MD5' ], 0, '[SHA-256, MD5] INVITE');

my $failures2 = failures();
my $mark = $t->log_mark;
$res = authed_call($o, user => 'olga', password => 'olgapw', challenge => pick($r, 'SHA-256') // {});
my $what = '[SHA-256, MD5]: olga (no SHA-256 HA1) answers SHA-256';
is($res->{status}, 407, "$what: 407, not 403");
check_offer($res->{resp}, 'Proxy-Authenticate', [ 'MD5' ], 1, "$what, the new challenge");
ok(!$res->{fwd}, "$what: not forwarded");
ok(!$t->wait_event('request_refused', 1, from => $mark, call_id => $res->{call_id}),
    "$what: no request_refused logged");
failures_are($failures2, "$what: tollgate_auth_failures_total did not rise");

my $olga_md5 = pick($res->{resp}, 'MD5');
$res = authed_call($o, user => 'olga', password => 'olgapw', challenge => $olga_md5 // {});
is($res->{status}, 200, '[SHA-256, MD5]: olga answers that MD5 challenge with her password: 200');
forwarded_as($res, 'olga', '[SHA-256, MD5] olga, MD5');
$ev = $t->wait_event('request_forwarded', 3, from => $mark, call_id => $res->{call_id});
is($ev && $ev->{account}, 'algco', '[SHA-256, MD5]: log: request_forwarded for olga with account algco');

# olga's wrong password in MD5 is still refused (the stale challenge proves no password)
$res = authed_call($o, user => 'olga', password => 'wrong', challenge => $olga_md5 // {}, nc => 2);
is($res->{status}, 403, '[SHA-256, MD5]: olga with a wrong password (MD5): 403');
ok(!$res->{fwd}, '[SHA-256, MD5]: ... not forwarded');

# a user with both HA1s is not sent to MD5
my $c2 = Tollgate::SIP->new(local => '127.0.0.54', peer => $tg);
$res = digest_call($c2, user => 'alice', password => 'secret', alg => 'SHA-256');
is($res->{status}, 200, '[SHA-256, MD5]: alice (both HA1s) answers SHA-256: 200, no second challenge');
forwarded_as($res, 'alice', '[SHA-256, MD5] alice, SHA-256');

# --- 4. no algorithms key: the default, SHA-256 then MD5 ---------------------------

$t->write_config(config(undef));
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP with the algorithms key removed: reload_done');
my $c3 = Tollgate::SIP->new(local => '127.0.0.55', peer => $tg);
($r) = challenge_for($c3, 'INVITE');
is($r && $r->status, 407, 'key removed by SIGHUP: INVITE: 407');
check_offer($r, 'Proxy-Authenticate', [ 'SHA-256', 'MD5' ], 0, 'key removed by SIGHUP, INVITE');
$res = digest_call($c3, user => 'alice', password => 'secret', alg => 'MD5');
is($res->{status}, 200, 'key removed by SIGHUP: an MD5 answer passes again');

is($t->stop, 0, 'SIGTERM: exit 0');

{
	my $t2 = Tollgate->new(keep_pg => 1);
	$t2->pg($pg);
	$t2->write_config(config(undef));
	$t2->run;
	my $tg2 = '127.0.0.1:' . $t2->port('SIP');
	my $c4 = Tollgate::SIP->new(local => '127.0.0.56', peer => $tg2);
	my ($r4, $req4) = $c4->request(method => 'INVITE');
	is($r4 && $r4->status, 407, 'started with no algorithms key: INVITE: 407');
	check_offer($r4, 'Proxy-Authenticate', [ 'SHA-256', 'MD5' ], 0, 'default, INVITE');
	$c4->send($c4->ack_for($req4, $r4)) if $r4;
	($r4) = $c4->request(method => 'REGISTER', uri => "sip:$tg2", from => '<sip:alice@127.0.0.56>',
	    to => '<sip:alice@127.0.0.56>', headers => [ [ Expires => 300 ] ]);
	is($r4 && $r4->status, 401, 'started with no algorithms key: REGISTER: 401');
	check_offer($r4, 'WWW-Authenticate', [ 'SHA-256', 'MD5' ], 0, 'default, REGISTER');
	is($t2->stop, 0, 'default: SIGTERM, exit 0');
	$t2->finish;
}

$t->finish;
done_testing;

###########################################################################

# challenge_for($client, 'INVITE'|'REGISTER'): the request without
# credentials and its final response (an INVITE's is ACKed).
sub challenge_for {
	my ($cl, $method) = @_;
	my %o = (method => $method);
	if ($method eq 'REGISTER') {
		my $me = $cl->local_host;
		%o = (%o, uri => "sip:$tg", from => "<sip:alice\@$me>", to => "<sip:alice\@$me>",
		    headers => [ [ Expires => 300 ] ]);
	}
	my ($resp, $rq) = $cl->request(%o);
	$cl->send($cl->ack_for($rq, $resp)) if $resp && $method eq 'INVITE';
	return ($resp, $rq);
}

# check_offer($resp, $header, [algorithms], $stale, $what): exactly one
# $header per algorithm, in that order, all Digest, qop="auth", our realm,
# one nonce, stale=true on all (or on none).
sub check_offer {
	my ($resp, $header, $algs, $stale, $what) = @_;
	my @ch = $resp ? grep { lc $_->{header} eq lc $header } $resp->challenges : ();
	my $n = @$algs;
	is(scalar @ch, $n, "$what: $n $header header" . ($n == 1 ? '' : 's'));
	is(join(',', map { $_->{algorithm} // 'none' } @ch), join(',', @$algs),
	    "$what: algorithm " . join(' then ', @$algs));
	is(scalar(grep { ($_->{scheme} // '') eq 'Digest' && ($_->{qop} // '') =~ /^\s*auth\s*$/
	    && ($_->{realm} // '') eq $REALM } @ch), $n, "$what: Digest, qop=\"auth\", realm=\"$REALM\"");
	my %nonces = map { ($_->{nonce} // '') => 1 } @ch;
	ok(@ch && keys(%nonces) == 1 && length($ch[0]{nonce} // ''), "$what: one nonce")
	    if $n > 1;
	ok(@ch && length($ch[0]{nonce} // ''), "$what: a nonce") if $n == 1;
	is(scalar(grep { ($_->{stale} // 'false') =~ /^true$/i } @ch), $stale ? $n : 0,
	    "$what: " . ($stale ? 'stale=true' : 'not stale'));
}

# digest_call($client, user => NAME, password => PW, alg => 'MD5'|'SHA-256'):
# an INVITE without credentials (expect 407, ACKed), then again with the
# answer to the challenge of that algorithm; the softswitch socket answers
# 200 when it gets there. Returns what authed_call() returns, and first.
sub digest_call {
	my ($cl, %o) = @_;
	my $cid = sprintf('%x%x@alg.test', int(rand(2**31)), int(time() * 1000) % 2**31);
	my $ftag = sprintf('ft%x', int(rand(2**31)));
	my %common = (call_id => $cid, from_tag => $ftag, uri => "sip:15551234\@$tg");
	my ($first, $rq) = $cl->request(method => 'INVITE', cseq => 1, %common);
	my %res = (call_id => $cid, first => $first, status => $first ? $first->status : 0);
	return \%res unless $first && $first->status == 407;
	$cl->send($cl->ack_for($rq, $first));
	my $ch = pick($first, $o{alg} // 'MD5') or return \%res;
	my $r2 = authed_call($cl, %o, %common, challenge => $ch, cseq => 2);
	return { %$r2, first => $first };
}

# authed_call($client, challenge => HASH, user, password, nc => 1,
# cred => {digest_credentials overrides}): one INVITE with the answer to
# that challenge, through to the softswitch socket (answered 200 there).
sub authed_call {
	my ($cl, %o) = @_;
	my %build = (call_id => $o{call_id} // sprintf('%x@alg.test', int(rand(2**31))),
	    from_tag => $o{from_tag}, cseq => $o{cseq} // 1, uri => $o{uri} // "sip:15551234\@$tg");
	my $cred = Tollgate::SIP::digest_credentials(challenge => $o{challenge}, username => $o{user},
	    password => $o{password}, method => 'INVITE', uri => $build{uri}, nc => $o{nc} // 1,
	    %{ $o{cred} // {} });
	my ($resp, $fwd, $rq) = $cl->call_through($ss, %build,
	    headers => [ [ 'Proxy-Authorization' => $cred ] ], timeout => 3);
	$cl->send($cl->ack_for($rq, $resp)) if $resp && $resp->status >= 300;
	return { status => $resp ? $resp->status : 0, resp => $resp, fwd => $fwd, req => $rq,
	    call_id => $build{call_id} };
}

# The challenge of one algorithm in a 401/407, or undef.
sub pick {
	my ($resp, $alg) = @_;
	my ($ch) = grep { uc($_->{algorithm} // '') eq uc $alg } ($resp ? $resp->challenges : ());
	return $ch;
}

# What the softswitch got names account algco and this user, once each,
# without credentials.
sub forwarded_as {
	my ($res, $user, $what) = @_;
	my $f = $res->{fwd};
	ok($f, "$what: forwarded to the softswitch") or return;
	is(join(',', $f->header_values('X-Tollgate-Account')), 'algco', "$what: X-Tollgate-Account: algco");
	is(join(',', $f->header_values('X-Tollgate-User')), $user, "$what: X-Tollgate-User: $user");
	is($f->header_count('Proxy-Authorization') + $f->header_count('Authorization'), 0,
	    "$what: the credentials are not passed on");
}

# tollgate_auth_failures_total, summed over any labels; undef when the
# metrics endpoint does not answer.
sub failures {
	my $m = $t->metrics or return undef;
	my @k = grep { /^tollgate_auth_failures_total(?:\{|$)/ } keys %$m;
	return undef unless @k;
	my $sum = 0;
	$sum += $m->{$_} for @k;
	return $sum;
}

# failures_are($want, $what): tollgate_auth_failures_total is $want now
# (fails when either is unknown).
sub failures_are {
	my ($want, $what) = @_;
	my $now = failures();
	ok(defined $want && defined $now && $now == $want, $what)
	    or diag('tollgate_auth_failures_total: ' . ($now // 'unknown') . ', expected ' . ($want // 'unknown'));
}

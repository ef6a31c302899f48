#!/usr/bin/perl
# Who does not get through: an unprovisioned source gets 403 (reject:
# reply) or silence (reject: drop); an inactive account or rule gets 403;
# nothing of it reaches the softswitch. A customer cannot choose its
# account: a forged X-Tollgate-Account is replaced by the real one.

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
$pg->add_rule($acme, '127.0.0.21');
my $sleepy = $pg->add_account('sleepy', status => 'inactive');
$pg->add_rule($sleepy, '127.0.0.22');
my $parked = $pg->add_account('parked');
$pg->add_rule($parked, '127.0.0.23', status => 'inactive');

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
reject: %%REJECT%%
server_name: "tollgate-under-test"
EOF
(my $reply = $config) =~ s/%%REJECT%%/reply/;
(my $drop = $config) =~ s/%%REJECT%%/drop/;
$t->write_config($reply);
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $stranger = Tollgate::SIP->new(local => '127.0.0.2', peer => $tg);
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);

# The request_refused event for a request this client sent after $mark.
sub refused_event {
	my ($client, $req, $mark) = @_;
	return $t->wait_event('request_refused', 3, from => $mark,
	    src => $client->local_hostport, method => $req->method);
}

# --- unknown source, reject: reply ----------------------------------------

my $mark = $t->log_mark;
my ($resp, $fwd, $req) = $stranger->call_through($ss);
is($resp && $resp->status, 403, 'INVITE from unprovisioned 127.0.0.2: 403');
is($resp && $resp->from_addr, $tg, '... sent from tollgate\'s listen address');
is($resp && $resp->header('via'), $req->header('via'), '... with our Via, untouched');
is($resp && $resp->header_count('via'), 1, '... and only our Via');
is($resp && $resp->header('call-id'), $req->header('call-id'), '... same Call-ID');
like($resp && $resp->header('to'), qr/;\s*tag=\S/, '... To has a tag');
is($resp && ($resp->header('server') // $resp->header('user-agent')), 'tollgate-under-test',
    '... Server: the configured server_name');
is($fwd, undef, '... and nothing reached the softswitch');
my $ev = refused_event($stranger, $req, $mark);
ok($ev, 'log: request_refused from the sender\'s src, method INVITE');
is($ev && $ev->{reason}, 'unknown_source', 'log: reason unknown_source');
is($ev && $ev->{call_id}, $req->header('call-id'), 'log: call_id is the whole Call-ID');

# other methods are refused the same way
($resp) = $stranger->request(method => 'OPTIONS');
is($resp && $resp->status, 403, 'OPTIONS from 127.0.0.2: 403');
($resp) = $stranger->request(method => 'REGISTER', uri => "sip:$tg");
is($resp && $resp->status, 403, 'REGISTER from 127.0.0.2: 403');
is(scalar $ss->drain, 0, 'softswitch got none of them');

cmp_ok($t->metric('tollgate_refusals_total', reason => 'unknown_source') // 0, '>=', 3,
    'metrics: refusals{reason="unknown_source"} >= 3');
cmp_ok($t->metric('tollgate_requests_total', method => 'INVITE', outcome => 'rejected') // 0, '>=', 1,
    'metrics: requests{INVITE,rejected} >= 1');

# --- inactive account, inactive rule ---------------------------------------

my $inactive = Tollgate::SIP->new(local => '127.0.0.22', peer => $tg);
$mark = $t->log_mark;
($resp, $fwd, $req) = $inactive->call_through($ss);
is($resp && $resp->status, 403, "INVITE from the inactive account's 127.0.0.22: 403");
is($fwd, undef, '... not forwarded');
$ev = refused_event($inactive, $req, $mark);
is($ev && $ev->{reason}, 'account_inactive', 'log: reason account_inactive');

my $parked_c = Tollgate::SIP->new(local => '127.0.0.23', peer => $tg);
($resp, $fwd) = $parked_c->call_through($ss);
is($resp && $resp->status, 403, 'INVITE from an inactive rule (127.0.0.23): 403');
is($fwd, undef, '... not forwarded');

# --- forged account header ---------------------------------------------------

($resp, $fwd) = $cust->call_through($ss, headers => [
	[ 'X-Tollgate-Account' => 'bigspender' ],
	[ 'x-tollgate-account' => 'someone-else' ],
]);
is($resp && $resp->status, 200, 'INVITE from acme with forged X-Tollgate-Account passes');
ok($fwd, '... and reached the softswitch');
is_deeply([ $fwd ? $fwd->header_values('X-Tollgate-Account') : () ], ['acme'],
    '... carrying exactly one X-Tollgate-Account: acme');
unlike($fwd ? $fwd->raw : '', qr/bigspender|someone-else/, '... and no trace of the forged ones');

# --- reject: drop ----------------------------------------------------------

$t->write_config($drop);
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'reload with reject: drop');
my $before = $t->metric('tollgate_requests_total', method => 'INVITE', outcome => 'dropped') // 0;
$req = $stranger->build(method => 'INVITE');
$mark = $t->log_mark;
$stranger->send($req);
is($stranger->recv(timeout => 1), undef, 'reject: drop — unprovisioned INVITE gets nothing within 1 s');
is(scalar $ss->drain, 0, '... and nothing reached the softswitch');
$ev = refused_event($stranger, $req, $mark);
is($ev && $ev->{reason}, 'unknown_source', '... but it is logged as refused');
ok($t->wait_metric('tollgate_requests_total', { method => 'INVITE', outcome => 'dropped' },
    sub { $_[0] > $before }, 3), 'metrics: requests{INVITE,dropped} went up');

($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'the customer still gets through');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

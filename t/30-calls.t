#!/usr/bin/perl
# 100 calls from a provisioned customer (sipp uac at 127.0.0.21) go
# through tollgate to the softswitch (sipp uas at 127.0.0.10): INVITE,
# 180, 200, then ACK and BYE along the Record-Route set. The softswitch
# checks every INVITE carries X-Tollgate-Account: acme. Both sipps must
# exit 0, and tollgate's metrics and log must count what passed.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_udp_bound);
use Tollgate::PG;

Tollgate::need_pg();
Tollgate::need_sipp();

my $CALLS = 100;

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $acme = $pg->add_account('acme');
$pg->add_rule($acme, '127.0.0.21');

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

my $uas = $t->sipp(name => 'uas', scenario => 'uas.xml',
    local => '127.0.0.10', port => $t->port('SS'),
    args => [ '-m', $CALLS, '-set', 'expected_account', 'acme' ], timeout => 90);
ok(wait_udp_bound('127.0.0.10', $t->port('SS')), 'softswitch (sipp uas) is listening')
    or diag $uas->report;

my $uac = $t->sipp(name => 'uac', scenario => 'uac.xml',
    remote => '127.0.0.1:' . $t->port('SIP'), local => '127.0.0.21', port => $t->port('UAC'),
    args => [ '-m', $CALLS, '-r', 50, '-d', 50, '-s', '15551234' ], timeout => 90);

is($uac->wait(100), 0, "customer (sipp uac): $CALLS calls completed") or diag $uac->report;
is($uas->wait(30), 0, "softswitch (sipp uas): $CALLS calls, each with X-Tollgate-Account: acme")
    or diag $uas->report;

my $m = $t->metrics;
ok($m, 'metrics endpoint answers');
cmp_ok($m->{'tollgate_requests_total{method="INVITE",outcome="forwarded"}'} // 0, '>=', $CALLS,
    "metrics: >= $CALLS INVITEs forwarded");
cmp_ok($m->{'tollgate_requests_total{method="ACK",outcome="forwarded"}'} // 0, '>=', $CALLS,
    "metrics: >= $CALLS ACKs forwarded");
cmp_ok($m->{'tollgate_requests_total{method="BYE",outcome="forwarded"}'} // 0, '>=', $CALLS,
    "metrics: >= $CALLS BYEs forwarded");
cmp_ok($m->{'tollgate_requests_total{method="RESPONSE",outcome="forwarded"}'} // 0, '>=', 3 * $CALLS,
    "metrics: >= @{[3 * $CALLS]} responses forwarded (180, 200, 200 to BYE)");
is($m->{'tollgate_requests_total{method="INVITE",outcome="rejected"}'} // 0, 0, 'metrics: no INVITE rejected');
is($m->{tollgate_workers_alive}, 2, 'metrics: 2 workers alive');
is($m->{tollgate_database_connected}, 1, 'metrics: database connected');

my @fwd = grep { ($_->{method} // '') eq 'INVITE' } $t->log_events('request_forwarded');
cmp_ok(scalar @fwd, '>=', $CALLS, "log: >= $CALLS request_forwarded for INVITE");
is(scalar(grep { ($_->{account} // '') ne 'acme' } @fwd), 0, 'log: every one as account acme');
is(scalar(grep { ($_->{src} // '') !~ /^127\.0\.0\.21:\d+$/ } @fwd), 0, 'log: every one from 127.0.0.21');
my %cid = map { ($_->{call_id} // '') => 1 } @fwd;
is(scalar keys %cid, $CALLS, "log: $CALLS distinct Call-IDs");
is(scalar $t->log_events('request_refused'), 0, 'log: nothing refused');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

#!/usr/bin/perl
# IPv6: tollgate listens on [::1] as well as 127.0.0.1. Every IPv6 peer
# on loopback is ::1, so the customer is ::1: an INVITE from it passes
# when ::1 is provisioned (to the IPv4 softswitch and back), and is
# refused once the only IPv6 rule no longer covers it.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use IO::Socket::IP;
use Socket qw(SOCK_DGRAM);
use Tollgate;
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();
IO::Socket::IP->new(LocalHost => '::1', LocalPort => 0, Type => SOCK_DGRAM)
    or plan skip_all => "no IPv6 on loopback (cannot bind ::1: $@)";

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $v6 = $pg->add_account('v6co');
my $rule = $pg->add_rule($v6, '::1');
my $acme = $pg->add_account('acme');
$pg->add_rule($acme, '127.0.0.21');

$t->write_config(<<'EOF');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
  - "[::1]:%%PORT_SIP6%%"
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

my $tg4 = '127.0.0.1:' . $t->port('SIP');
my $tg6 = '[::1]:' . $t->port('SIP6');
ok(Tollgate::wait_udp_bound('::1', $t->port('SIP6'), 2), "tollgate listens on $tg6");

my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg4);
my $cust6 = Tollgate::SIP->new(local => '::1', peer => $tg6);

my ($resp, $fwd, $req) = $cust6->call_through($ss);
is($resp && $resp->status, 200, 'INVITE from ::1 to [::1] passes');
is($resp && $resp->from_addr, $tg6, '... the 200 comes back from tollgate\'s IPv6 address');
ok($fwd, '... it reached the IPv4 softswitch');
is($fwd && $fwd->header('X-Tollgate-Account'), 'v6co', '... as account v6co');
is($fwd && $fwd->from_addr, $tg4, '... sent from tollgate\'s IPv4 address');
like($fwd && ($fwd->header_values('via'))[1] // '', qr/\[::1\]:\d+/, '... the customer\'s IPv6 Via kept below ours');

my @fwd = grep { ($_->{src} // '') =~ /^\[::1\]:\d+$/ } $t->log_events('request_forwarded');
ok(@fwd, 'log: request_forwarded with src [::1]:port');

# the IPv4 listener still works next to it
my $cust4 = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg4);
($resp, $fwd) = $cust4->call_through($ss);
is($resp && $resp->status, 200, 'an IPv4 customer still passes on 127.0.0.1');
is($fwd && $fwd->header('X-Tollgate-Account'), 'acme', '... as acme');

# a v6 rule that does not cover ::1
$pg->psql("update tollgate.ip_rules set address = '2001:db8::/32' where id = $rule");
my $ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'reload with ::1 replaced by 2001:db8::/32');
my $mark = $t->log_mark;
($resp, $fwd) = $cust6->call_through($ss);
is($resp && $resp->status, 403, '::1 is now refused');
is($fwd, undef, '... not forwarded');
$ev = $t->wait_event('request_refused', 3, from => $mark);
is($ev && $ev->{src}, $cust6->local_hostport, 'log: refused src is [::1]:port');

# and a v6 CIDR that covers it
$pg->psql("update tollgate.ip_rules set address = '::/127' where id = $rule");
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'reload with ::/127');
($resp, $fwd) = $cust6->call_through($ss);
is($resp && $resp->status, 200, '::1 passes again under ::/127');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

#!/usr/bin/perl
# Egress (issue 5): an initial request (no To tag) from the softswitch
# towards a customer address goes out only when a rule with direction
# 'egress' or 'both' of an active account covers that address (and its
# port, when the rule names one); otherwise the softswitch gets 403 and
# the log says egress_denied. In-dialog requests from the softswitch are
# forwarded as before. An egress-only rule lets nothing in; a 'both' rule
# works both ways; rules change live. IPv6 too when [::1] is there.
#
# Addresses: tollgate 127.0.0.1 (and [::1]), the softswitch 127.0.0.10
# (raw socket where `downstream` points), customers 127.0.0.41-47 and ::1.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use IO::Socket::IP;
use Socket qw(SOCK_DGRAM);
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $have_v6 = IO::Socket::IP->new(LocalHost => '::1', LocalPort => 0, Type => SOCK_DGRAM) ? 1 : 0;

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
my $tg = '127.0.0.1:' . $t->port('SIP');
my $tg6 = '[::1]:' . $t->port('SIP6');

# customers' sockets first: port-bound rules name their ports
my %cust = map { $_ => Tollgate::SIP->new(local => "127.0.0.$_", peer => $tg) } (41 .. 47);
my $other44 = Tollgate::SIP->new(local => '127.0.0.44', peer => $tg);	# the port its rule does not name
my ($cust6, $other6);
if ($have_v6) {
	$cust6 = Tollgate::SIP->new(local => '::1', peer => $tg6);
	$other6 = Tollgate::SIP->new(local => '::1', peer => $tg6);
}

my %acct;
$acct{$_} = $pg->add_account($_) for qw(egressco ingressco bothco portco liveco v6co);
$acct{deadco} = $pg->add_account('deadco', status => 'inactive');
$pg->add_rule($acct{egressco}, '127.0.0.41', direction => 'egress');
$pg->add_rule($acct{ingressco}, '127.0.0.42');	# direction defaults to ingress
$pg->add_rule($acct{bothco}, '127.0.0.43', direction => 'both');
$pg->add_rule($acct{portco}, '127.0.0.44', port => $cust{44}->local_port, direction => 'egress');
# 127.0.0.45: no rule at all
$pg->add_rule($acct{deadco}, '127.0.0.46', direction => 'egress');
$pg->add_rule($acct{v6co}, '::1', port => $cust6->local_port, direction => 'egress') if $have_v6;

$t->write_config(<<EOF);
listen:
  - "127.0.0.1:%%PORT_SIP%%"
@{[ $have_v6 ? '  - "[::1]:%%PORT_SIP6%%"' : '' ]}
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

my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);

# out($customer_socket, what => ..., method => 'INVITE', to_tag => ...,
# uri => ...): the softswitch sends a request towards that customer's
# address and port. Returns (status the softswitch got, request the
# customer got); a request that arrives is answered 200.
sub out {
	my ($cust, %o) = @_;
	my $uri = $o{uri} // 'sip:4420123456@' . $cust->local_hostport;
	my $m = $ss->build(method => $o{method} // 'INVITE', uri => $uri,
	    (defined $o{to_tag} ? (to_tag => $o{to_tag}) : ()));
	$ss->send($m);
	my $got = $cust->wait_request(timeout => 1);
	$got = undef if $got && ($got->header('call-id') // '') ne $m->header('call-id');
	$cust->send($cust->reply($got, 200, 'OK')) if $got;
	my $r = $ss->wait_response(call_id => $m->header('call-id'), timeout => 2);
	return ($r ? $r->status : 0, $got, $m);
}

sub allowed {
	my ($cust, $what, %o) = @_;
	my ($status, $got) = out($cust, %o);
	ok($got, "$what: delivered to the customer");
	is($got && $got->from_addr, $o{via} // $tg, "$what: sent by tollgate") if $got;
	is($status, 200, "$what: the customer's 200 reaches the softswitch");
}

sub denied {
	my ($cust, $what, %o) = @_;
	my $mark = $t->log_mark;
	my ($status, $got, $m) = out($cust, %o);
	is($status, 403, "$what: 403 to the softswitch");
	ok(!$got, "$what: not delivered");
	my $ev = $t->wait_event('request_refused', 3, from => $mark, call_id => $m->header('call-id'));
	is($ev && $ev->{reason}, 'egress_denied', "$what: log reason egress_denied");
	is($ev && $ev->{src}, $ss->local_hostport, "$what: log src is the softswitch");
}

my $denied_before = $t->metric('tollgate_refusals_total', reason => 'egress_denied') // 0;

# --- initial requests from the softswitch ------------------------------------------

allowed($cust{41}, 'INVITE to 127.0.0.41 (egress rule)');
allowed($cust{41}, 'OPTIONS to 127.0.0.41 (egress rule)', method => 'OPTIONS');
denied($cust{42}, 'INVITE to 127.0.0.42 (ingress-only rule)');
denied($cust{42}, 'OPTIONS to 127.0.0.42 (ingress-only rule)', method => 'OPTIONS');
allowed($cust{43}, 'INVITE to 127.0.0.43 (rule for both directions)');
allowed($cust{44}, 'INVITE to 127.0.0.44 at the port its egress rule names');
denied($other44, 'INVITE to 127.0.0.44 at another port');
denied($cust{45}, 'INVITE to 127.0.0.45 (no rule)');
denied($cust{46}, 'INVITE to 127.0.0.46 (egress rule of an inactive account)');

# in-dialog: no egress check, but the dialog must exist (481 otherwise)
for my $c ([ 45, 'no rule' ], [ 42, 'ingress-only rule' ]) {
	my ($status, $got) = out($cust{ $c->[0] }, method => 'BYE', to_tag => "dialog$c->[0]");
	is($status, 481, "in-dialog BYE (To tag) of no known dialog to 127.0.0.$c->[0] ($c->[1]): 481");
	ok(!$got, '... not delivered');
}

# --- from the customers ------------------------------------------------------

for my $case ([ 41, 403, undef, 'egress-only 127.0.0.41' ], [ 42, 200, 'ingressco', 'ingress-only 127.0.0.42' ],
    [ 43, 200, 'bothco', '"both" 127.0.0.43' ]) {
	my ($n, $want, $account, $what) = @$case;
	my ($resp, $fwd) = $cust{$n}->call_through($ss);
	is($resp && $resp->status, $want, "INVITE from $what: $want");
	if ($account) {
		is($fwd && $fwd->header('X-Tollgate-Account'), $account, "... as $account");
	} else {
		ok(!$fwd, '... not forwarded');
	}
}

# --- live ---------------------------------------------------------------------

denied($cust{47}, 'INVITE to 127.0.0.47 before its rule');
my $rule47 = $pg->add_rule($acct{liveco}, '127.0.0.47', direction => 'egress');
my $status;
wait_until { ($status) = out($cust{47}); $status == 200 } 5;
is($status, 200, 'an egress rule for 127.0.0.47 inserted: INVITEs reach it within 5 s, no reload');
$pg->psql("update tollgate.ip_rules set direction = 'ingress' where id = $rule47");
wait_until { ($status) = out($cust{47}); $status == 403 } 5;
is($status, 403, '... turned into an ingress rule: refused again within 5 s');

# --- IPv6 ------------------------------------------------------------------------

SKIP: {
	skip 'no IPv6 on loopback', 8 unless $have_v6;
	allowed($cust6, 'INVITE to [::1] at the port its egress rule names', via => $tg6);
	denied($other6, 'INVITE to [::1] at another port');
}

my $m = $t->metrics;
cmp_ok(($m->{'tollgate_refusals_total{reason="egress_denied"}'} // 0) - $denied_before, '>=', 6 + ($have_v6 ? 1 : 0),
    'metrics: tollgate_refusals_total{reason="egress_denied"} counted them');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

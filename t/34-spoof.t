#!/usr/bin/perl
# tollgate must not be a reflector: a response goes on only when its top
# Via is one tollgate put there for that next hop. Forged responses from
# the softswitch side or from a customer, naming a bystander in a lower
# Via, reach nobody; the genuine ones still pass.

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
# both: the softswitch also sends this customer an OPTIONS below
$pg->add_rule($acme, '127.0.0.21', direction => 'both');

$t->write_config(<<'EOF');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log:
  level: debug
  file: "-"
reject: reply
EOF
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);
my $stranger = Tollgate::SIP->new(local => '127.0.0.2', peer => $tg);
my $bystander = Tollgate::SIP->new(local => '127.0.0.99', peer => $tg);
my $me = $cust->local_hostport;
my $by = $bystander->local_hostport;

sub response {
	my (%o) = @_;
	return join '', "SIP/2.0 200 OK\r\n", map({ "Via: $_\r\n" } @{ $o{via} }),
	    "From: <sip:a\@example.net>;tag=f1\r\n", "To: <sip:b\@example.net>;tag=t1\r\n",
	    "Call-ID: $o{call_id}\r\n", "CSeq: 1 OPTIONS\r\n", "Content-Length: 0\r\n\r\n";
}

# A genuine request from the softswitch to the customer, so the customer
# holds a real tollgate Via (a valid branch) to play with.
my $opt = $ss->build(method => 'OPTIONS', uri => "sip:customer\@$me",
    headers => [ [ Route => "<sip:$tg;lr>" ] ]);
$ss->send($opt);
my $got = $cust->wait_request(method => 'OPTIONS', timeout => 2);
ok($got, 'the customer received an OPTIONS through tollgate');
my @via = $got ? $got->header_values('via') : ('SIP/2.0/UDP x;branch=z9hG4bKnone');

my @cases = (
	[ $cust, 'customer: real top Via, lower Via swapped for a bystander',
	  [ $via[0], "SIP/2.0/UDP $by;branch=z9hG4bKevil1" ] ],
	[ $ss, 'softswitch: made-up tollgate branch, then a bystander',
	  [ "SIP/2.0/UDP $tg;branch=z9hG4bKtg0123456789abcdef", "SIP/2.0/UDP $by;branch=z9hG4bKevil2" ] ],
	[ $ss, 'softswitch: top Via is the bystander itself', [ "SIP/2.0/UDP $by;branch=z9hG4bKevil3" ] ],
	[ $cust, 'customer: top Via is the bystander itself', [ "SIP/2.0/UDP $by;branch=z9hG4bKevil4" ] ],
	[ $stranger, 'unknown source: real top Via, then a bystander',
	  [ $via[0], "SIP/2.0/UDP $by;branch=z9hG4bKevil5" ] ],
);
my $n = 0;
for my $case (@cases) {
	my ($from, $what, $vias) = @$case;
	$from->send(response(via => $vias, call_id => 'forged-' . ++$n));
	is($bystander->recv(timeout => 0.5), undef, "forged response ($what): the bystander gets nothing");
}
# The real Vias and the real Call-ID and CSeq, the lower Via re-aimed at the
# bystander with received/rport: the branch MAC covers where it goes.
my ($by_ip, $by_port) = split /:/, $by;
(my $reaimed = $via[1] // '') =~ s/;\s*(?:received|rport)(?:=[^;]*)?//gi;
$reaimed .= ";received=$by_ip;rport=$by_port";
for my $i (1 .. 3) {
	$cust->send(response(via => [ $via[0], $reaimed ], call_id => $opt->header('call-id')));
}
is($bystander->recv(timeout => 0.5), undef,
    'forged response with real branches and Call-ID, re-aimed by received/rport: the bystander gets nothing');
is(scalar $ss->drain, 0, 'none of them went to the softswitch either');

# the genuine answer still goes through
$cust->send($cust->reply($got, 200, 'OK')) if $got;
my $r = $ss->wait_response(call_id => $opt->header('call-id'), timeout => 2);
is($r && $r->status, 200, 'the genuine 200 still reaches the softswitch');
is($bystander->recv(timeout => 0.3), undef, 'and the bystander never heard a thing');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

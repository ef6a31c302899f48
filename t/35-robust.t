#!/usr/bin/perl
# Hostile and broken datagrams from a provisioned customer and from an
# unknown source: every prefix of a good INVITE, seeded random byte
# damage, oversized headers and URIs, a hundred Vias, lying
# Content-Length, empty and keepalive datagrams. None may kill a worker
# (no child_exited), none may be forwarded half-parsed, and afterwards a
# good call still passes. Under the sanitizer build the log check at the
# end catches memory errors on the parse path.

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

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);
my $stranger = Tollgate::SIP->new(local => '127.0.0.2', peer => $tg);

# Fixed identifiers, so the message has the same length every run and the
# seeded damage below hits the same bytes (ports are always 5 digits).
my $good = $cust->fixture('invite', CALL_ID => 'robust-1@127.0.0.21', BRANCH => 'z9hG4bKrobust1',
    TAG => 'robust1');
my @nasty;

# every prefix of a good INVITE (a datagram cut anywhere)
push @nasty, map { substr($good, 0, $_) } 0 .. length($good) - 1;

# seeded random damage: a few bytes overwritten
srand(20261124);
for (1 .. 300) {
	my $m = $good;
	for (1 .. 1 + int(rand(4))) {
		substr($m, int(rand(length $m)), 1) = chr(int(rand(256)));
	}
	push @nasty, $m;
}

(my $head, my $body) = split /\r\n\r\n/, $good, 2;
my $with = sub { my ($extra) = @_; (my $h = $head) =~ s/\r\nCSeq:/\r\n$extra\r\nCSeq:/; "$h\r\n\r\n$body" };
push @nasty,
	"",
	"\r\n\r\n",
	"\r\n",
	"\0" x 100,
	"INVITE",
	"INVITE sip:x SIP/2.0",
	"SIP/2.0 200 OK\r\n\r\n",
	"SIP/2.0 999999999999 Big\r\nVia: SIP/2.0/UDP $tg;branch=z9hG4bKx\r\n\r\n",
	$with->('X-Long: ' . ('a' x 60000)),
	$with->(join "\r\n", map { "Via: SIP/2.0/UDP 192.0.2.$_:5060;branch=z9hG4bK$_" } 1 .. 100),
	$with->("Max-Forwards: 99999999999999999999"),
	$with->("Max-Forwards: -1"),
	$with->("Content-Length: 999999"),
	$with->("Content-Length: -5"),
	$with->("Via: SIP/2.0/UDP [::1:5060;branch=z9hG4bKbad"),
	$with->("Via: SIP/2.0/UDP 127.0.0.21:99999;branch=z9hG4bKbad"),
	$with->("Via: SIP/2.0/UDP ;branch="),
	$with->("Route: <sip:" . ('r' x 5000) . ";lr>"),
	$with->("X-Tollgate-Account: " . ('x' x 5000)),
	$with->("Contact: \"\\\"unterminated <sip:a\@b"),
	"INVITE sip:" . ('9' x 30000) . "\@$tg SIP/2.0\r\n" . (split /\r\n/, $head, 2)[1] . "\r\n\r\n$body",
	"INVITE sip:15551234\@$tg SIP/2.0\r\n" . ("X: y\r\n" x 3000) . "\r\n",
	"OPTIONS sip:$tg SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.21:1;branch=z9hG4bK1\r\nCall-ID: a\r\nCSeq: 4294967296 OPTIONS\r\nFrom: <sip:a\@b>;tag=1\r\nTo: <sip:c\@d>\r\nMax-Forwards: 70\r\n\r\n",
	"BYE sip:$tg SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.21:1;branch=z9hG4bK1\r\nCall-ID: \r\nCSeq: 1 BYE\r\nFrom: \r\nTo: \r\n\r\n";

my $mark = $t->log_mark;
my $sent = 0;
for my $i (0 .. $#nasty) {
	my $from = $i % 2 ? $stranger : $cust;
	eval { $from->send($nasty[$i]); $sent++ };
	# keep the socket buffers from overflowing: drain replies as we go
	if ($i % 50 == 49) { $cust->drain; $stranger->drain }
}
note "sent $sent hostile datagrams";
cmp_ok($sent, '>=', 700, 'hundreds of hostile datagrams sent');
$cust->drain;
$stranger->drain;

# Anything forwarded must at least be a whole SIP request.
my @fwd = $ss->drain;
my @broken = grep {
	# (header lines libosip2 tolerates and passes on are t/32-proxy.t's business)
	$_->start_line !~ m{^[A-Z]+ \S+ SIP/2\.0$} || !defined $_->header('call-id')
	    || !defined $_->header('via') || ($_->header('content-length') // -1) != length($_->body)
} @fwd;
is(scalar @broken, 0, 'whatever was forwarded is a whole request (request line, Call-ID, Via, true Content-Length)')
    or diag join "\n---\n", map { $_->raw } @broken[0 .. ($#broken < 2 ? $#broken : 2)];
note scalar(@fwd) . ' survivors forwarded (damage in harmless places)';
$ss->send($ss->reply($_, 200, 'OK')) for grep { !$_->is_response && $_->method eq 'INVITE' } @fwd;

my ($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'a good call still passes afterwards');
is($fwd && $fwd->header('X-Tollgate-Account'), 'acme', '... as acme');
is(scalar $t->log_events('child_exited'), 0, 'no process died');
is($t->metric('tollgate_workers_alive'), 2, 'metrics: both workers alive');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

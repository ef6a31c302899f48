#!/usr/bin/perl
# Which account a source is, by the IP rules an operator provisions:
# single addresses, ranges, netmasks and CIDR blocks; the most specific
# rule wins; IP+port rules; tech prefixes (matched at the start of the
# Request-URI user and stripped downstream), so that several accounts can
# share one address; direction (an egress-only rule lets nothing in).

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

my %acct;
$acct{$_} = $pg->add_account($_) for qw(ranger masked wide narrow portco portless pfx44 pfx4420 plain egressco bothco);

$pg->add_rule($acct{ranger}, '127.0.0.40-127.0.0.45');
$pg->add_rule($acct{masked}, '127.0.0.48/255.255.255.252');	# .48 - .51
$pg->add_rule($acct{wide}, '127.0.0.56/29');			# .56 - .63
$pg->add_rule($acct{narrow}, '127.0.0.60');
my $pport = Tollgate::free_port();
$pg->add_rule($acct{portco}, '127.0.0.70', port => $pport);
$pg->add_rule($acct{portless}, '127.0.0.71');
$pg->add_rule($acct{portco}, '127.0.0.71', port => $pport);
$pg->add_rule($acct{pfx44}, '127.0.0.80', tech_prefix => '44');
$pg->add_rule($acct{pfx4420}, '127.0.0.80', tech_prefix => '4420');
$pg->add_rule($acct{plain}, '127.0.0.81');
$pg->add_rule($acct{pfx44}, '127.0.0.81', tech_prefix => '44');
$pg->add_rule($acct{egressco}, '127.0.0.90', direction => 'egress');
$pg->add_rule($acct{bothco}, '127.0.0.91', direction => 'both');

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

# call($src_ip, user => ..., port => ...) -> (status, account, forwarded request, refusal reason)
sub call {
	my ($ip, %o) = @_;
	my $c = Tollgate::SIP->new(local => $ip, port => delete $o{port}, peer => $tg);
	my $mark = $t->log_mark;
	my ($resp, $fwd) = $c->call_through($ss, %o);
	my $reason;
	if ($resp && $resp->status == 403) {
		my $ev = $t->wait_event('request_refused', 2, from => $mark, src => $c->local_hostport);
		$reason = $ev && $ev->{reason};
	}
	return ($resp ? $resp->status : 'no reply', $fwd ? $fwd->header('X-Tollgate-Account') : undef, $fwd, $reason);
}

sub passes_as {
	my ($ip, $account, $what, %o) = @_;
	my ($status, $got) = call($ip, %o);
	ok($status eq '200' && ($got // '') eq $account, "$what: passes as $account")
	    or diag "status $status, account " . ($got // 'none');
}

sub refused {
	my ($ip, $reason, $what, %o) = @_;
	my ($status, $got, $fwd, $why) = call($ip, %o);
	is($status, 403, "$what: 403");
	is($fwd, undef, "$what: not forwarded");
	is($why, $reason, "$what: reason $reason") if $reason;
}

# --- address notations ------------------------------------------------------

passes_as('127.0.0.40', 'ranger', 'range start 127.0.0.40');
passes_as('127.0.0.42', 'ranger', 'inside range 127.0.0.42');
passes_as('127.0.0.45', 'ranger', 'range end 127.0.0.45');
refused('127.0.0.46', 'unknown_source', 'just past the range, 127.0.0.46');
refused('127.0.0.39', 'unknown_source', 'just before the range, 127.0.0.39');

passes_as('127.0.0.48', 'masked', 'netmask block start 127.0.0.48');
passes_as('127.0.0.51', 'masked', 'netmask block end 127.0.0.51');
refused('127.0.0.52', 'unknown_source', 'past the netmask block, 127.0.0.52');

passes_as('127.0.0.57', 'wide', '127.0.0.57 in 127.0.0.56/29');
passes_as('127.0.0.63', 'wide', '127.0.0.63 in 127.0.0.56/29');
refused('127.0.0.64', 'unknown_source', '127.0.0.64 past 127.0.0.56/29');

# --- most specific wins -----------------------------------------------------

passes_as('127.0.0.60', 'narrow', '127.0.0.60: the /32 beats the /29');

# --- IP + port ----------------------------------------------------------------

passes_as('127.0.0.70', 'portco', "127.0.0.70 from port $pport", port => $pport);
refused('127.0.0.70', 'no_rule_fits', '127.0.0.70 from another port');
passes_as('127.0.0.71', 'portco', "127.0.0.71 from port $pport: the port-bound rule beats the portless one",
    port => $pport);
passes_as('127.0.0.71', 'portless', '127.0.0.71 from another port: the portless rule');

# --- tech prefixes ------------------------------------------------------------

my (undef, undef, $fwd) = call('127.0.0.80', user => '4420123456');
is($fwd && $fwd->header('X-Tollgate-Account'), 'pfx4420', '127.0.0.80, user 4420123456: the longest prefix (4420) wins');
like($fwd ? $fwd->uri : '', qr/^sip:123456\@/, '... and the prefix is stripped from the Request-URI');
(undef, undef, $fwd) = call('127.0.0.80', user => '4499887766');
is($fwd && $fwd->header('X-Tollgate-Account'), 'pfx44', '127.0.0.80, user 4499887766: prefix 44');
like($fwd ? $fwd->uri : '', qr/^sip:99887766\@/, '... stripped');
refused('127.0.0.80', 'no_rule_fits', '127.0.0.80, user 3312345 (no prefix fits)', user => '3312345');
# A To tag (the sender's claim of being in a dialog) skips the prefix
# check, and names no dialog tollgate knows: 481, never a way past the
# prefix rules.
my $st;
($st, undef, $fwd) = call('127.0.0.80', user => '3312345', to_tag => 'made-up');
is($st, 481, '127.0.0.80 with a made-up To tag: 481 (no such dialog)');
ok(!$fwd, '... not forwarded');

passes_as('127.0.0.81', 'pfx44', '127.0.0.81, user 44123: the prefix rule beats the plain one', user => '44123');
(undef, undef, $fwd) = call('127.0.0.81', user => '5551234');
is($fwd && $fwd->header('X-Tollgate-Account'), 'plain', '127.0.0.81, user 5551234: the plain rule');
like($fwd ? $fwd->uri : '', qr/^sip:5551234\@/, '... Request-URI untouched');

# --- direction ------------------------------------------------------------------

refused('127.0.0.90', undef, 'an egress-only rule lets no INVITE in');
passes_as('127.0.0.91', 'bothco', 'a direction "both" rule lets it in');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

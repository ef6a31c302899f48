#!/usr/bin/perl
# Configuration as an operator meets it: -V, -t on the sample file, -t on
# broken files naming FILE:LINE: key, refusing to start on a bad file
# (exit 2, same message), and a SIGHUP with a broken file refused while
# the running configuration keeps serving calls.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(run_cmd);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $t = Tollgate->new;
my $bin = $t->bin;
my $repo = Tollgate::repo_dir();

# --- -V -------------------------------------------------------------------

my ($rc, $out, $err) = run_cmd([ $bin, '-V' ], timeout => 10);
is($rc, 0, '-V exits 0');
my ($mk_version) = Tollgate::slurp("$repo/GNUmakefile") =~ /^VERSION\s*:?=\s*(\S+)/m;
like($out, qr/^tollgate \Q$mk_version\E$/m, "-V prints 'tollgate $mk_version'");

# --- -t -------------------------------------------------------------------

($rc, $out, $err) = run_cmd([ $bin, '-t', '-c', 'etc/tollgate.yaml' ], dir => $repo, timeout => 10);
is($rc, 0, '-t on the sample etc/tollgate.yaml exits 0') or diag $err;
like($out, qr{etc/tollgate\.yaml: ok}, '... and says "etc/tollgate.yaml: ok"');

my $valid = <<'EOF';
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
log:
  level: info
  file: "-"
EOF

my $path = $t->write_config($valid, 'valid.yaml');
($rc, $out, $err) = run_cmd([ $bin, '-t', '-c', $path ], timeout => 10);
is($rc, 0, '-t on a small valid file exits 0') or diag $err;
like($out, qr/\Q$path\E: ok/, '... and says FILE: ok');

# Each broken file: the offending line carries "# BAD"; the message must be
# FILE:LINE: key: problem for that line and key. The fourth field names a
# key of $valid to leave out so the broken one is its only occurrence.
my @broken = (
	[ 'unknown key', 'colour', "colour: blue  # BAD\n" ],
	[ 'unknown nested key', qr/(?:log\.)?colour/, "log:\n  level: info\n  colour: blue  # BAD\n", 'log' ],
	[ 'wrong type (sequence for an int)', 'workers', "workers: [1, 2]  # BAD\n", 'workers' ],
	[ 'wrong type (word for an int)', 'workers', "workers: many  # BAD\n", 'workers' ],
	[ 'wrong type (mapping for a list)', 'listen', "listen: {a: 1}  # BAD\n", 'listen' ],
	[ 'bad value: workers 0', 'workers', "workers: 0  # BAD\n", 'workers' ],
	[ 'bad value: reject', 'reject', "reject: maybe  # BAD\n" ],
	[ 'bad value: log level', qr/(?:log\.)?level/, "log:\n  level: loud  # BAD\n  file: \"-\"\n", 'log' ],
	[ 'bad value: port out of range', 'downstream', "downstream: \"127.0.0.10:99999\"  # BAD\n", 'downstream' ],
	[ 'bad value: not an address', 'downstream', "downstream: \"softswitch\"  # BAD\n", 'downstream' ],
	[ 'bad value: metrics', 'metrics', "metrics: \"sometimes\"  # BAD\n" ],
	[ 'repeated key', 'reject', "reject: reply\nreject: drop  # BAD\n" ],
);

my $n = 0;
for my $case (@broken) {
	my ($what, $key, $snippet, $without) = @$case;
	my $base = $valid;
	if ($without) {
		$base =~ s/^\Q$without\E:.*\n(?:  .*\n)*//m or die "no $without in \$valid";
	}
	my $text = $base . $snippet;
	my @lines = split /\n/, $t->expand($text);
	my ($line) = grep { $lines[$_ - 1] =~ /# BAD/ } 1 .. @lines;
	my $file = $t->write_config($text, 'broken' . ++$n . '.yaml');
	my $keyre = ref $key ? $key : qr/\Q$key\E/;

	($rc, $out, $err) = run_cmd([ $bin, '-t', '-c', $file ], timeout => 10);
	is($rc, 1, "-t, $what: exits 1");
	like($err, qr/\Q$file\E:$line: $keyre: \S/, "-t, $what: stderr says $file:$line: key: problem")
	    or diag "stdout: $out\nstderr: $err";
}

# Starting with a bad config: exit 2, the same message, nothing started.
{
	my $file = $t->write_config($valid . "colour: blue\n", 'start-broken.yaml');
	my $line = 1 + (() = $t->expand($valid) =~ /\n/g);
	($rc, $out, $err) = run_cmd([ $bin, '-c', $file ], timeout => 10);
	is($rc, 2, 'starting with an unknown key exits 2');
	like($err, qr/\Q$file\E:$line: colour: \S/, '... with FILE:LINE: key: problem on stderr');
	unlike($out . $err, qr/"event"\s*:\s*"ready"/, '... and never became ready');
}

# --- SIGHUP with a broken file ---------------------------------------------

my $pg = Tollgate::PG->new($t);
my $acme = $pg->add_account('acme');
$pg->add_rule($acme, '127.0.0.21');

my $running = <<'EOF';
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
EOF
$t->write_config($running);
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => $tg);

my ($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'a call passes before the reload');
is($fwd && $fwd->header('X-Tollgate-Account'), 'acme', '... as account acme');

$t->write_config($running . "colour: blue\n");
my $ev = $t->reload;
is($ev && $ev->{event}, 'reload_failed', 'SIGHUP with an unknown key: reload_failed');
like($ev && $ev->{reason}, qr/colour/, '... and the reason names the key');

($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'a call still passes after the refused reload');
is($fwd && $fwd->header('X-Tollgate-Account'), 'acme', '... still as account acme');
is(scalar $t->worker_pids, 2, 'still 2 workers');

# a repaired file is taken, and its change is in force
$t->write_config($running . "account_header: \"X-Customer\"\n");
$ev = $t->reload;
is($ev && $ev->{event}, 'reload_done', 'SIGHUP with a good file: reload_done');
($resp, $fwd) = $cust->call_through($ss);
is($resp && $resp->status, 200, 'a call passes after the good reload');
is($fwd && $fwd->header('X-Customer'), 'acme', '... with the reloaded account_header name');
is($fwd && $fwd->header('X-Tollgate-Account'), undef, '... and not the old one');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

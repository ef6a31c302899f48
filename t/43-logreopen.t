#!/usr/bin/perl
# logrotate: with `log: file: PATH`, renaming the file and sending SIGUSR1
# to the master makes every process (master, loader, workers) write to a
# new file at PATH; nothing more lands in the renamed one.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until);
use Tollgate::SIP;

my $t = Tollgate->new;
$t->write_config(<<'EOF');
listen:
  - "127.0.0.1:%%PORT_SIP%%"
workers: 2
downstream: "127.0.0.10:%%PORT_SS%%"
database: "host=%%TESTDIR%%/no-such-db dbname=tollgate"
log:
  level: info
  file: "%%TESTDIR%%/events.log"
metrics: "127.0.0.1:%%PORT_METRICS%%"
reject: reply
EOF
$t->run(wait_db => 0);

my $path = $t->testdir . '/events.log';
my $rotated = "$path.1";
like(Tollgate::slurp($path), qr/"event"\s*:\s*"ready"/, 'events go to the configured log file');

rename $path, $rotated or die "rename: $!";
my $mark = $t->log_mark;
$t->signal('USR1');
my $ev = $t->wait_event('log_reopened', 5, from => $mark);
ok($ev, 'SIGUSR1: log_reopened');
ok(-e $path, 'a new log file exists at the configured path');

# Requests from several source ports, so that both workers log refusals.
my $tg = '127.0.0.1:' . $t->port('SIP');
my @clients = map { Tollgate::SIP->new(local => '127.0.0.2', peer => $tg) } 1 .. 8;
$_->send($_->build(method => 'OPTIONS')) for @clients;
my $n = 0;
for my $c (@clients) {
	my $r = $c->recv(timeout => 2);
	$n++ if $r && $r->status == 403;
}
is($n, scalar @clients, 'every request still answered (403)');
my $got = wait_until {
	my @ev = grep { ($_->{src} // '') =~ /^127\.0\.0\.2:/ } $t->log_events('request_refused', from => $mark);
	@ev >= @clients ? \@ev : undef;
} 5;
ok($got, 'every refusal was logged');
my %procs = map { $_->{proc} => 1 } @{ $got || [] };
note 'logged by: ' . join ', ', sort keys %procs;

my $new_text = Tollgate::slurp($path);
my $old_text = Tollgate::slurp($rotated);
my $in_new = () = $new_text =~ /"event"\s*:\s*"request_refused"/g;
is($in_new, scalar @clients, 'the refusals are in the new file');
unlike($old_text, qr/"event"\s*:\s*"request_refused"/, '... none in the rotated one');
like($old_text, qr/"event"\s*:\s*"ready"/, 'the rotated file keeps the old lines');

is($t->stop, 0, 'SIGTERM: exit 0');
unlike(Tollgate::slurp($rotated), qr/"event"\s*:\s*"(?:stopping|stopped)"/,
    'shutdown is logged in the new file, not the rotated one');
$t->finish;
done_testing;

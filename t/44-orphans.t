#!/usr/bin/perl
# A master killed with SIGKILL leaves no orphans: every child watches the
# master's pipe and exits when it closes, and the UDP port is free again so
# a new tollgate can start on it.

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use Tollgate qw(wait_until);
use Tollgate::PG;
use Tollgate::SIP;

Tollgate::need_pg();

my $t = Tollgate->new;
my $pg = Tollgate::PG->new($t);
$pg->add_rule($pg->add_account('acme'), '127.0.0.21');
my $config = <<'EOF';
listen: ["127.0.0.1:%%PORT_SIP%%"]
workers: 3
downstream: "127.0.0.10:%%PORT_SS%%"
database: "%%DB%%"
log: { level: info, file: "-" }
EOF
$t->write_config($config);
$t->run;

my @children = values %{ $t->children };
is(scalar @children, 4, 'loader and 3 workers running');
kill 'KILL', $t->master_pid;
ok(scalar(wait_until { !grep { Tollgate::pid_alive($_) } @children } 5),
    'every child exits once the master is SIGKILLed')
    or diag 'left: ' . join ' ', grep { Tollgate::pid_alive($_) } @children;

# the same port again: nothing is still bound to it
my $t2 = Tollgate->new;
$t2->{ports} = { %{ $t->{ports} } };
$t2->pg($pg);
$t2->{keep_pg} = 1;
$t2->write_config($config);
$t2->run;
my $cust = Tollgate::SIP->new(local => '127.0.0.21', peer => '127.0.0.1:' . $t->port('SIP'));
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => '127.0.0.1:' . $t->port('SIP'));
my ($r, $fwd) = $cust->call_through($ss, timeout => 3);
is($r && $r->status, 200, 'a new tollgate on the same port carries a call');
is($ss->recv(timeout => 0.3), undef, '... forwarded once (no orphan worker on the port)');
$t2->finish;
$t->finish;
done_testing;

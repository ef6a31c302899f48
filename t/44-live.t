#!/usr/bin/perl
# Live provisioning: a committed change reaches the SIP path without a
# reload. Inserting a rule lets its calls through within a second;
# deactivating or deleting it (or its account) refuses them again; a rule
# given as a host name follows what the name resolves to; a statement
# changing 100,000 rows costs one full load, not 100,000 deltas.

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
my $acme = $pg->add_account('acme');
my $globex = $pg->add_account('globex');
$pg->add_rule($globex, '127.0.0.29');
$t->write_file('hosts', "127.0.0.22 pbx.acme.test\n");

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
capacity:
  ip_rules: 200000
provisioning:
  coalesce_ms: 5
  max_delay_ms: 50
  dns_refresh_s: 1
  hosts_file: "%%TESTDIR%%/hosts"
EOF
$t->run;

my $tg = '127.0.0.1:' . $t->port('SIP');
my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $t->port('SS'), peer => $tg);
my %cust = map { $_ => Tollgate::SIP->new(local => "127.0.0.$_", peer => $tg) } (21, 22, 23, 29);

# The final status a call from 127.0.0.N gets (0: none).
sub status_of { $cust{ $_[0] }->call_status($ss) }
sub poll_status { $cust{ $_[0] }->poll_status($ss, $_[1], $_[2]) }

is(status_of(21), 403, 'before the rule: 127.0.0.21 is refused');
is(status_of(29), 200, 'globex on 127.0.0.29 passes');

# --- insert ----------------------------------------------------------------

my $mark = $t->log_mark;
my $rule = $pg->add_rule($acme, '127.0.0.21');
is(poll_status(21, 200, 1), 200, 'a rule inserted: its calls pass within 1 s, no reload');
my $ev = $t->wait_event('snapshot_published', 3, from => $mark);
is($ev && $ev->{kind}, 'delta', '... published as a delta');
is($ev && $ev->{compaction}, 0, '... a new head over the same base');
ok($ev && defined $ev->{latency_us}, '... with its latency logged (measured in bench/, never asserted here)');
diag sprintf('notification to publish: %d us', $ev->{latency_us}) if $ev && defined $ev->{latency_us};
is(scalar $t->log_events('reload_done', from => $mark), 0, '... and no reload was involved');
cmp_ok($t->metric('tollgate_notifications_total'), '>=', 1, 'metrics: notifications counted');
cmp_ok($t->metric('tollgate_deltas_total'), '>=', 1, 'metrics: deltas counted');

# --- inactive, active, delete ---------------------------------------------

$pg->psql("update tollgate.ip_rules set status = 'inactive' where id = $rule");
is(poll_status(21, 403, 1), 403, 'rule marked inactive: refused within 1 s');
$pg->psql("update tollgate.ip_rules set status = 'active' where id = $rule");
is(poll_status(21, 200, 1), 200, 'active again: passes');
$pg->psql("update tollgate.accounts set status = 'inactive' where id = $acme");
is(poll_status(21, 403, 1), 403, 'account marked inactive: refused within 1 s');
$pg->psql("update tollgate.accounts set status = 'active' where id = $acme");
is(poll_status(21, 200, 1), 200, 'account active again: passes');
$pg->psql("delete from tollgate.ip_rules where id = $rule");
is(poll_status(21, 403, 1), 403, 'rule deleted: refused within 1 s');

# a rule and its account in one transaction, then the account deleted (its rules cascade)
$pg->psql("begin; insert into tollgate.accounts (name) values ('initech');"
    . " insert into tollgate.ip_rules (account_id, address) select id, '127.0.0.23/32'"
    . " from tollgate.accounts where name = 'initech'; commit;");
is(poll_status(23, 200, 1), 200, 'a new account and its rule in one transaction: passes');
$pg->psql("delete from tollgate.accounts where name = 'initech'");
is(poll_status(23, 403, 1), 403, 'the account deleted: its rules go with it');
is(status_of(29), 200, 'globex was never disturbed');

# --- host names ---------------------------------------------------------------

$mark = $t->log_mark;
my $host_rule = $pg->add_rule($acme, 'pbx.acme.test');
is(poll_status(22, 200, 2), 200, 'a rule by host name: its address (hosts file) passes');
ok($t->wait_event('dns_resolved', 2, from => $mark, id => $host_rule), 'log: dns_resolved');
is($t->metric('tollgate_hostname_rules'), 1, 'metrics: one host-name rule');
$t->write_file('hosts', "127.0.0.23 pbx.acme.test\n");
is(poll_status(23, 200, 5), 200, 'the name moves to 127.0.0.23: re-resolved, passes');
is(status_of(22), 403, '... and the old address is refused');
$mark = $t->log_mark;
$t->write_file('hosts', "# nothing\n");
# not in the hosts file any more: asked of the nameservers, which may take their timeouts to fail
ok($t->wait_event('dns_failed', 40, from => $mark, id => $host_rule), 'a failed lookup logs dns_failed');
is(status_of(23), 200, '... and keeps the last addresses');
$pg->psql("delete from tollgate.ip_rules where id = $host_rule");
is(poll_status(23, 403, 1), 403, 'the host-name rule deleted: refused');

# typed as an operator might: blanks, capitals, a trailing dot
$t->write_file('hosts', "127.0.0.22 pbx.acme.test\n");
$host_rule = $pg->add_rule($acme, ' PBX.Acme.Test. ');
is(poll_status(22, 200, 5), 200, "a host name typed as ' PBX.Acme.Test. ' resolves as pbx.acme.test");
$pg->psql("delete from tollgate.ip_rules where id = $host_rule");
is(poll_status(22, 403, 1), 403, '... deleted: refused');

# --- a burst ------------------------------------------------------------------

$mark = $t->log_mark;
$pg->psql("insert into tollgate.ip_rules (account_id, address) select $acme,"
    . " '10.' || (i >> 16) || '.' || ((i >> 8) & 255) || '.' || (i & 255)"
    . " from generate_series(1, 100000) i", timeout => 120);
$pg->add_rule($acme, '127.0.0.21');
is(poll_status(21, 200, 10), 200, '100,000 rows inserted in one statement, then one more: all there');
wait_until { $t->log_events('snapshot_published', from => $mark) >= 1 } 5;
my @full = grep { $_->{kind} eq 'full' } $t->log_events('snapshot_published', from => $mark);
is(scalar @full, 1, '... in one full load');
# the single-row insert after it lands in that load or in a delta after it
cmp_ok($full[0] && $full[0]{ip_rules}, '>=', 100001, '... holding the bulk rows');
my @forced = $t->log_events('resync_forced', from => $mark);
is(scalar @forced, 1, '... forced by the bulk change, once');
cmp_ok(scalar $t->log_events('snapshot_published', from => $mark), '<=', 3, '... and at most 3 publishes in all');

is($t->stop, 0, 'SIGTERM: exit 0');
$t->finish;
done_testing;

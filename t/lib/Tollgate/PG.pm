package Tollgate::PG;

# A throwaway PostgreSQL cluster per test file: initdb in the test dir,
# pg_ctl -w start on a free port with only a unix socket in the test dir
# (listen_addresses = '', no TCP), createdb tollgate, sql/install.sql.
# Always stopped at exit. When we are root the server runs as the
# `postgres` user (initdb refuses root) via runuser.
#
#   my $pg = Tollgate::PG->new($t);    # $t: a Tollgate; attaches as %%DB%%
#   $pg->psql("insert into tollgate.accounts ...");
#   $pg->stop; $pg->start;             # an outage
#
# Needs the server binaries: `pg_config --bindir`, else the newest
# /usr/lib/postgresql/*/bin. Test files call Tollgate::need_pg() first,
# which skips the file when they are missing (.ci/run installs them).

use strict;
use warnings;

use Carp qw(croak);
use File::Path qw(make_path);
use Test::More ();
use Tollgate qw(run_cmd wait_until);

my @clusters;
my $BINDIR;

sub bindir {
	return $BINDIR if defined $BINDIR;
	my @cand;
	my $pgc = `pg_config --bindir 2>/dev/null`;
	chomp $pgc;
	push @cand, $pgc if $pgc;
	push @cand, map { $_->[1] }
	    sort { $b->[0] <=> $a->[0] }
	    map { [ m{/(\d+)/bin$} ? $1 : 0, $_ ] } glob('/usr/lib/postgresql/*/bin');
	for my $d (@cand) {
		if (grep({ -x "$d/$_" } qw(initdb pg_ctl postgres psql createdb)) == 5) {
			return $BINDIR = $d;
		}
	}
	return $BINDIR = '';
}

sub new {
	my ($class, $t, %o) = @_;
	my $bin = bindir() or croak "PostgreSQL server binaries not found";
	my $base = $o{dir} // $t->testdir . '/pg';
	my $self = bless {
		t => $t,
		bin => $bin,
		base => $base,
		data => "$base/data",
		sock => "$base/sock",
		logfile => "$base/postgres.log",
		port => $t->port('PG'),
		user => ($> == 0 ? 'postgres' : undef),
		running => 0,
		dbname => 'tollgate',
	}, $class;
	push @clusters, $self;
	$t->pg($self) if $t;
	make_path($self->{data}, $self->{sock});
	chmod 0700, $self->{data};
	if ($self->{user}) {
		my (undef, undef, $uid, $gid) = getpwnam($self->{user})
		    or croak "no user $self->{user} to run PostgreSQL as (we are root)";
		chown $uid, $gid, $base, $self->{data}, $self->{sock}
		    or croak "chown $base: $!";
		my ($rc) = run_cmd([ 'test', '-w', $base ], user => $self->{user}, timeout => 10);
		croak "$base is not reachable for the $self->{user} user (a parent directory "
		    . "is not searchable?): set TMPDIR to a directory like /tmp" if $rc;
	}
	$self->_run_pg('initdb', [ "$bin/initdb", '-D', $self->{data}, '-U', 'postgres',
	    '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync' ], 120);
	$self->_append_conf(
		"listen_addresses = ''",
		"unix_socket_directories = '$self->{sock}'",
		"port = $self->{port}",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 30",
		"shared_buffers = 16MB",
		"log_min_messages = warning",
	);
	$self->start;
	$self->_run_pg('createdb', [ "$bin/createdb", '-h', $self->{sock}, '-p', $self->{port},
	    '-U', 'postgres', $self->{dbname} ], 30);
	$self->install unless defined $o{install} && !$o{install};
	return $self;
}

sub _append_conf {
	my ($self, @lines) = @_;
	my $conf = "$self->{data}/postgresql.conf";
	open(my $fh, '>>', $conf) or croak "$conf: $!";
	print $fh "$_\n" for @lines;
	close $fh;
}

sub _run_pg {
	my ($self, $what, $cmd, $timeout) = @_;
	my ($rc, $out, $err) = run_cmd($cmd, user => $self->{user}, timeout => $timeout,
	    dir => '/');
	croak "$what failed (exit $rc): $err$out" if $rc != 0;
	return $out;
}

sub port { $_[0]{port} }
sub socket_dir { $_[0]{sock} }
sub running { $_[0]{running} }

# libpq conninfo for tollgate's `database:` key.
sub conninfo {
	my ($self) = @_;
	return "host=$self->{sock} port=$self->{port} dbname=$self->{dbname} user=postgres";
}

sub start {
	my ($self) = @_;
	return if $self->{running};
	$self->_run_pg('pg_ctl start', [ "$self->{bin}/pg_ctl", '-w', '-t', '60', '-D', $self->{data},
	    '-l', $self->{logfile}, 'start' ], 90);
	$self->{running} = 1;
}

sub stop {
	my ($self, %o) = @_;
	return unless $self->{running};
	my ($rc, $out, $err) = run_cmd([ "$self->{bin}/pg_ctl", '-w', '-t', '30', '-D', $self->{data},
	    '-m', $o{mode} // 'fast', 'stop' ], user => $self->{user}, timeout => 40, dir => '/');
	Test::More::diag("pg_ctl stop failed: $err$out") if $rc != 0;
	$self->{running} = 0;
}

# psql_try($sql, %o) — run SQL; returns (exit code, stdout, stderr).
# Output is unaligned, tuples only, '|' separated.
sub psql_try {
	my ($self, $sql, %o) = @_;
	my @cmd = ("$self->{bin}/psql", '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
	    '-h', $self->{sock}, '-p', $self->{port}, '-U', 'postgres',
	    '-d', $o{dbname} // $self->{dbname});
	push @cmd, defined $o{file} ? ('-f', $o{file}) : ('-f', '-');
	return run_cmd(\@cmd, stdin => $sql // '', timeout => $o{timeout} // 60,
	    env => { PGCONNECT_TIMEOUT => 10 });
}

# psql($sql) — run SQL, return its output (trailing newline removed);
# dies with psql's error when it fails.
sub psql {
	my ($self, $sql, %o) = @_;
	my ($rc, $out, $err) = $self->psql_try($sql, %o);
	croak "psql failed (exit $rc): $err\nSQL: " . ($o{file} // $sql) if $rc != 0;
	chomp $out;
	return $out;
}

# install() — psql -v ON_ERROR_STOP=1 -f sql/install.sql
sub install {
	my ($self) = @_;
	my $file = Tollgate::repo_dir() . '/sql/install.sql';
	croak "no $file" unless -r $file;
	return $self->psql(undef, file => $file);
}

# Provisioning shortcuts used by several tests. Returns the new id.
#
#   $pg->add_account('acme', status => 'inactive', max_channels => 30, max_cps => 5,
#       cps_burst => 10, allowed_prefixes => ['44'], denied_prefixes => ['4490'],
#       restricted_codecs => ['G729']);
#   $pg->add_rule($acme, '192.0.2.0/24', port => 5060, tech_prefix => '99',
#       status => 'active', direction => 'both', max_channels => 4, max_cps => 2, cps_burst => 3);
#
# Options left out take the column's default.
sub add_account {
	my ($self, $name, %o) = @_;
	my @cols = ('name', 'status');
	my @vals = (quote($name), quote($o{status} // 'active'));
	for my $k (qw(max_channels max_cps cps_burst)) {
		next unless defined $o{$k};
		push @cols, $k;
		push @vals, $o{$k} + 0;
	}
	for my $k (qw(allowed_prefixes denied_prefixes restricted_codecs)) {
		next unless defined $o{$k};
		push @cols, $k;
		push @vals, text_array($o{$k});
	}
	return $self->psql(sprintf("insert into tollgate.accounts (%s) values (%s) returning id",
	    join(', ', @cols), join(', ', @vals)));
}

sub add_rule {
	my ($self, $account_id, $address, %o) = @_;
	my @cols = ('account_id', 'address');
	my @vals = ($account_id + 0, quote($address));
	for my $k (qw(port tech_prefix status direction max_channels max_cps cps_burst)) {
		next unless defined $o{$k};
		push @cols, $k;
		push @vals, $k =~ /^(?:port|max_channels|max_cps|cps_burst)$/ ? $o{$k} + 0 : quote($o{$k});
	}
	return $self->psql(sprintf("insert into tollgate.ip_rules (%s) values (%s) returning id",
	    join(', ', @cols), join(', ', @vals)));
}

# A Perl array reference as an SQL text[] literal.
sub text_array {
	my ($list) = @_;
	return 'ARRAY[' . join(', ', map { quote($_) } @$list) . ']::text[]';
}

# add_sip_user($account_id, $username, password => ..., domain => ...,
#     status => ..., allowed_sources => [...], restrict_sources => 0/1)
# inserts a SIP user and, given a password, sets it with
# tollgate.set_password(). Returns the new id.
sub add_sip_user {
	my ($self, $account_id, $username, %o) = @_;
	my @cols = ('account_id', 'username');
	my @vals = ($account_id + 0, quote($username));
	for my $k (qw(domain status)) {
		next unless defined $o{$k};
		push @cols, $k;
		push @vals, quote($o{$k});
	}
	if (defined $o{restrict_sources}) {
		push @cols, 'restrict_sources';
		push @vals, $o{restrict_sources} ? 'true' : 'false';
	}
	if (defined $o{allowed_sources}) {
		push @cols, 'allowed_sources';
		push @vals, text_array($o{allowed_sources});
	}
	my $sql = sprintf("insert into tollgate.sip_users (%s) values (%s) returning id;\n",
	    join(', ', @cols), join(', ', @vals));
	$sql .= sprintf("select tollgate.set_password(%s, %s, %s);\n", quote($username),
	    quote($o{password}), quote($o{domain})) if defined $o{password};
	# one psql run, one transaction: the loader sees the user with its password
	my ($id) = $self->psql("begin;\n$sql" . "commit;\n") =~ /^(\d+)$/m;
	return $id;
}

# install_upto($version, dbname => NAME) runs sql/install.sql with its
# steps after $version left out and latest_version set to $version: a
# database as an older release installed it, to test upgrades from.
sub install_upto {
	my ($self, $version, %o) = @_;
	my $file = Tollgate::repo_dir() . '/sql/install.sql';
	open(my $fh, '<', $file) or croak "$file: $!";
	my $sql = do { local $/; <$fh> };
	close $fh;
	# A step is its "-- Step N:" comment through the \endif of its \if.
	$sql =~ s/^--\n-- Step (\d+):.*?^\\endif\n/$1 > $version ? '' : $&/gmse;
	$sql =~ s/^\\set latest_version \d+$/\\set latest_version $version/m
	    or croak "no latest_version in $file";
	my $out = $self->{t}->testdir . "/install-v$version.sql";
	open($fh, '>', $out) or croak "$out: $!";
	print $fh $sql;
	close $fh;
	return $self->psql(undef, file => $out, %o);
}

sub quote {
	my ($s) = @_;
	return 'NULL' unless defined $s;
	$s =~ s/'/''/g;
	return "'$s'";
}

sub DESTROY {
	my ($self) = @_;
	local ($?, $!, $@);
	$self->stop if $self->{running};
}

END {
	local $?;
	for my $pg (@clusters) {
		$pg->stop if $pg && $pg->{running};
	}
}

1;

package Tollgate;

# End-to-end test harness for tollgate, in the shape of nginx-tests'
# lib/Test/Nginx.pm: a temp dir per test file, a config from a heredoc with
# free ports, tollgate started in the foreground, waits on its JSON log
# events (bounded polling, never fixed sleeps), helpers for signals and
# /metrics, and a final check that fails the test when the log holds an
# "alert" or a sanitizer report.
#
#   use Tollgate;
#   my $t = Tollgate->new;
#   $t->write_config(<<'EOF');
#   listen: ["127.0.0.1:%%PORT_SIP%%"]
#   ...
#   EOF
#   $t->run;
#   ...
#   $t->finish;        # stop tollgate, check the log for alerts/sanitizers
#   done_testing;
#
# TEST_TOLLGATE_LEAVE=1 keeps the temp dir (its path is printed).
# TOLLGATE_BIN names the binary (default ./tollgate at the top of the repo).
# TEST_TOLLGATE_VERBOSE=1 prints the tollgate log when a test file ends.

use strict;
use warnings;

use Test::More ();
use Carp qw(croak confess);
use Cwd qw(abs_path);
use Fcntl qw(:flock O_WRONLY O_CREAT O_APPEND);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Spec;
use File::Temp qw(tempdir);
use IO::Socket::IP;
use JSON::PP ();
use POSIX qw(:sys_wait_h setsid);
use Socket qw(SOCK_DGRAM SOCK_STREAM SOL_SOCKET SO_REUSEADDR);
use Time::HiRes qw(time sleep);

use Exporter 'import';
our @EXPORT_OK = qw(repo_dir wait_until wait_udp_bound run_cmd need_sipp need_pg);

my $JSON = JSON::PP->new->utf8->canonical;

our $REPO = abs_path(dirname(__FILE__) . '/../..');
sub repo_dir { $REPO }

my @instances;	 # live Tollgate objects, for the END safety net

###########################################################################
# small utilities

# Poll $cond (a code ref) every 20 ms until it returns true or $timeout
# seconds pass. Returns the value of $cond, or undef on timeout.
sub wait_until(&;$) {
	my ($cond, $timeout) = @_;
	$timeout //= 5;
	my $deadline = time() + $timeout;
	my $delay = 0.005;
	while (1) {
		my $v = $cond->();
		return $v if $v;
		return undef if time() > $deadline;
		sleep($delay);
		$delay = 0.05 if ($delay *= 2) > 0.05;
	}
}

# Run a command, optionally feeding stdin; capture stdout and stderr via
# temp files (no pipe deadlocks). Returns (exit code, stdout, stderr); the
# exit code is 128+N when killed by signal N, -1 when exec failed.
# Options: stdin => STRING, timeout => SECONDS (then SIGKILL), env => {},
# user => NAME (via runuser when we are root), dir => CWD.
sub run_cmd {
	my ($cmd, %o) = @_;
	my $tmp = tempdir('tollgate-cmd-XXXXXX', TMPDIR => 1, CLEANUP => 1);
	my ($in, $out, $err) = map { "$tmp/$_" } qw(in out err);
	open(my $fh, '>', $in) or die "$in: $!";
	print $fh $o{stdin} // '';
	close $fh;
	my @argv = @$cmd;
	if (defined $o{user} && $> == 0) {
		@argv = ('runuser', '-u', $o{user}, '--', @argv);
	}
	my $pid = fork() // die "fork: $!";
	if ($pid == 0) {
		open(STDIN, '<', $in) or POSIX::_exit(127);
		open(STDOUT, '>', $out) or POSIX::_exit(127);
		open(STDERR, '>', $err) or POSIX::_exit(127);
		chdir $o{dir} or POSIX::_exit(127) if defined $o{dir};
		$ENV{$_} = $o{env}{$_} for keys %{ $o{env} // {} };
		do { no warnings q(exec); exec { $argv[0] } @argv };
		print STDERR "exec $argv[0]: $!\n";
		POSIX::_exit(127);
	}
	my $status;
	my $timeout = $o{timeout} // 60;
	my $done = wait_until {
		my $r = waitpid($pid, WNOHANG);
		$status = $? if $r == $pid;
		$r == $pid || $r < 0;
	} $timeout;
	unless ($done) {
		kill 'KILL', $pid;
		waitpid($pid, 0);
		$status = $?;
	}
	my $rc = ($status & 127) ? 128 + ($status & 127) : $status >> 8;
	return ($rc, slurp($out), slurp($err));
}

sub slurp {
	my ($path) = @_;
	open(my $fh, '<', $path) or return '';
	local $/;
	my $s = <$fh>;
	return $s // '';
}

sub which {
	my ($name) = @_;
	for my $d (split /:/, $ENV{PATH} // '/usr/bin:/bin') {
		return "$d/$name" if -x "$d/$name" && !-d "$d/$name";
	}
	return undef;
}

# plan skip_all unless sipp is installed (.ci/run installs it).
sub need_sipp {
	return if which('sipp');
	Test::More::plan(skip_all => 'sipp not installed (apt-get install sip-tester)');
}

# plan skip_all unless PostgreSQL server binaries are there.
sub need_pg {
	require Tollgate::PG;
	return if Tollgate::PG::bindir();
	Test::More::plan(skip_all =>
	    'PostgreSQL server binaries (initdb, pg_ctl) not found (apt-get install postgresql)');
}

# wait_udp_bound('127.0.0.10', 5060 [, $timeout]) — true once some
# process has a UDP socket bound there (read from /proc/net/udp{,6}), so a
# peer we started is known to be listening before traffic is sent to it.
sub wait_udp_bound {
	my ($ip, $port, $timeout) = @_;
	my ($file, $hex);
	if ($ip =~ /:/) {
		$file = '/proc/net/udp6';
		my $packed = Socket::inet_pton(Socket::AF_INET6(), $ip) // croak "bad IPv6 $ip";
		# four 32-bit words, each in host (little-endian) order
		$hex = join '', map { sprintf '%08X', $_ } unpack('V4', $packed);
	} else {
		$file = '/proc/net/udp';
		$hex = sprintf '%08X', unpack('V', Socket::inet_aton($ip) // croak "bad IPv4 $ip");
	}
	my $want = sprintf '%s:%04X', $hex, $port;
	return wait_until {
		open(my $fh, '<', $file) or return 0;
		while (my $l = <$fh>) {
			my (undef, $local) = split ' ', $l;
			return 1 if defined $local && $local eq $want;
		}
		0;
	} $timeout // 10;
}

###########################################################################
# free ports

# A port is taken by holding an flock on /tmp/tollgate-test-ports/PORT for
# the life of the test process, so parallel test files (prove -j) never
# pick the same one, and by checking that it binds on UDP and TCP, on the
# IPv4 wildcard and (if the host has IPv6) the IPv6 one. Ports are drawn
# below the ephemeral range so that no client socket takes them meanwhile.
my %port_locks;

sub _port_is_free {
	my ($port) = @_;
	for my $type (SOCK_DGRAM, SOCK_STREAM) {
		for my $addr ('0.0.0.0', '::') {
			my $s = IO::Socket::IP->new(
				LocalHost => $addr, LocalPort => $port, Type => $type,
				($type == SOCK_STREAM ? (Listen => 1) : ()),
				ReuseAddr => 0, V6Only => 1);
			# a host without IPv6 only has the IPv4 side to check
			next if !$s && $addr eq '::' && ($!{EAFNOSUPPORT} || $!{EADDRNOTAVAIL});
			return 0 unless $s;
			close $s;
		}
	}
	return 1;
}

sub free_port {
	my $dir = File::Spec->tmpdir() . '/tollgate-test-ports';
	mkdir $dir, 01777;
	for (1 .. 500) {
		my $port = 20000 + int(rand(12000));
		next if $port_locks{$port};
		open(my $fh, '>', "$dir/$port") or next;
		unless (flock($fh, LOCK_EX | LOCK_NB)) {
			close $fh;
			next;
		}
		unless (_port_is_free($port)) {
			close $fh;
			next;
		}
		$port_locks{$port} = $fh;
		return $port;
	}
	croak "no free port found";
}

###########################################################################
# the test object

sub new {
	my ($class, %o) = @_;
	my $leave = $ENV{TEST_TOLLGATE_LEAVE} ? 1 : 0;
	my $dir = tempdir('tollgate-test-XXXXXX', TMPDIR => 1, CLEANUP => !$leave);
	# PostgreSQL runs as the postgres user when we are root; let it in.
	chmod 0755, $dir;
	Test::More::diag("testdir: $dir") if $leave;
	my $bin = $ENV{TOLLGATE_BIN} // "$REPO/tollgate";
	my $self = bless {
		dir => $dir,
		bin => $bin,
		ports => {},
		log => "$dir/tollgate.log",
		pid => undef,
		status => undef,
		lines => [],	   # raw log lines read so far
		events => [],	   # parsed JSON events (undef for non-JSON lines)
		finished => 0,
		sipps => [],
		%o,
	}, $class;
	push @instances, $self;
	# Interrupted (prove's timeout, ^C): still run END, which stops
	# tollgate and PostgreSQL.
	for my $sig (qw(INT TERM HUP)) {
		$SIG{$sig} = sub { Test::More::diag("caught SIG$sig, cleaning up"); exit 128 + 1 }
		    unless $SIG{$sig};
	}
	return $self;
}

sub testdir { $_[0]{dir} }
sub bin { $_[0]{bin} }
sub logfile { $_[0]{log} }

# $t->port('SIP') — the free port bound to that name (stable per object).
sub port {
	my ($self, $name) = @_;
	return $self->{ports}{$name} //= free_port();
}

# Attach a Tollgate::PG cluster: %%DB%% expands to its conninfo.
sub pg {
	my ($self, $pg) = @_;
	$self->{pg} = $pg if @_ > 1;
	return $self->{pg};
}

sub expand {
	my ($self, $text) = @_;
	$text =~ s/%%PORT_(\w+)%%/$self->port($1)/ge;
	$text =~ s/%%TESTDIR%%/$self->{dir}/g;
	if ($text =~ /%%DB%%/) {
		croak "config uses %%DB%% but no database attached (\$t->pg(\$pg))"
		    unless $self->{pg};
		my $ci = $self->{pg}->conninfo;
		$text =~ s/%%DB%%/$ci/g;
	}
	return $text;
}

# write_config($yaml [, $name]) — write a config (default tollgate.yaml) with
# %%PORT_NAME%%, %%DB%%, %%TESTDIR%% expanded. Returns its path.
sub write_config {
	my ($self, $text, $name) = @_;
	$name //= 'tollgate.yaml';
	my $path = "$self->{dir}/$name";
	$self->write_file($name, $self->expand($text));
	$self->{config} = $path if $name eq 'tollgate.yaml' || !$self->{config};
	if ($path eq $self->{config}) {
		$self->{has_db} = $text =~ /^\s*database\s*:/m ? 1 : 0;
		# log: { file: PATH } — where the JSON events go when not stdout
		my $exp = $self->expand($text);
		my ($file) = $exp =~ /^log\s*:.*?\bfile\s*:\s*["']?([^"'\s,}]+)/ms;
		$self->{event_log} = (defined $file && $file ne '-') ? $file : undef;
	}
	return $path;
}

sub write_file {
	my ($self, $name, $content) = @_;
	my $path = "$self->{dir}/$name";
	open(my $fh, '>', "$path.tmp") or croak "$path: $!";
	print $fh $content;
	close $fh or croak "$path: $!";
	rename "$path.tmp", $path or croak "rename $path: $!";
	return $path;
}

sub config { $_[0]{config} }

# run(%o) — start tollgate -c CONFIG in the foreground, stdout and stderr to
# the log file. Waits for `ready` and, when the config names a database and
# wait_db is not 0, the first `snapshot_published`. Options: wait_db => 0,
# timeout => SECONDS (default 20), args => [...].
sub run {
	my ($self, %o) = @_;
	croak "tollgate already running" if $self->{pid};
	croak "write_config first" unless $self->{config};
	croak "no tollgate binary at $self->{bin} (build it, or set TOLLGATE_BIN)"
	    unless -x $self->{bin};
	my $pid = fork() // die "fork: $!";
	if ($pid == 0) {
		sysopen(my $fh, $self->{log}, O_WRONLY | O_CREAT | O_APPEND)
		    or POSIX::_exit(127);
		open(STDOUT, '>&', $fh) or POSIX::_exit(127);
		open(STDERR, '>&', $fh) or POSIX::_exit(127);
		open(STDIN, '<', '/dev/null');
		# Sanitizer builds: report, and keep going in other processes.
		$ENV{ASAN_OPTIONS} //= 'abort_on_error=0:detect_leaks=1';
		$ENV{UBSAN_OPTIONS} //= 'print_stacktrace=1';
		do { no warnings q(exec); exec { $self->{bin} } $self->{bin}, @{ $o{args} // [] }, '-c', $self->{config} };
		print STDERR "exec $self->{bin}: $!\n";
		POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	$self->{status} = undef;
	my $timeout = $o{timeout} // 20;
	# ready, or an early exit (a bad config exits 2 at once)
	my $ready;
	wait_until {
		$ready = $self->wait_event('ready', 0);
		$ready || defined $self->exited;
	} $timeout;
	unless ($ready) {
		my $why = defined $self->exited ? "exited with status $self->{status_text}"
		    : "no ready event within ${timeout}s";
		$self->dump_log;
		croak "tollgate did not start: $why";
	}
	if ($self->{has_db} && ($o{wait_db} // 1)) {
		$self->wait_event('snapshot_published', $timeout)
		    or do { $self->dump_log; croak "no snapshot_published within ${timeout}s" };
	}
	return $self;
}

sub master_pid { $_[0]{pid} }

# Reap tollgate if it has exited. Returns its exit code (128+N for signal
# N) or undef while it runs.
sub exited {
	my ($self) = @_;
	return $self->{status} if defined $self->{status};
	return undef unless $self->{pid};
	my $r = waitpid($self->{pid}, WNOHANG);
	if ($r == $self->{pid}) {
		my $st = $?;
		$self->{raw_status} = $st;
		if ($st & 127) {
			$self->{status} = 128 + ($st & 127);
			$self->{status_text} = "signal " . ($st & 127) . (($st & 128) ? " (core)" : '');
		} else {
			$self->{status} = $st >> 8;
			$self->{status_text} = $self->{status};
		}
		return $self->{status};
	}
	return undef;
}

###########################################################################
# the log

# The files tollgate writes: its stdout+stderr capture, and the log file
# the config names (log: file: PATH) when that is not "-".
sub log_sources {
	my ($self) = @_;
	my @s = ($self->{log});
	push @s, $self->{event_log} if $self->{event_log} && $self->{event_log} ne $self->{log};
	return @s;
}

# Read what tollgate appended since the last call; parse JSON lines. Files
# are followed like tail -F: after a rotation (rename, SIGUSR1) the old
# file is read to its end, then the new one from its start.
sub read_log {
	my ($self) = @_;
	for my $path ($self->log_sources) {
		my $src = $self->{src}{$path} //= { partial => '' };
		my $chunk = '';
		for (1 .. 2) {
			unless ($src->{fh}) {
				open(my $fh, '<', $path) or last;
				$src->{fh} = $fh;
				$src->{ino} = (stat $fh)[1];
			}
			while (1) {
				my $n = sysread($src->{fh}, my $buf, 65536);
				last unless $n;
				$chunk .= $buf;
			}
			my @st = stat $path;
			last if !@st || $st[1] == $src->{ino};
			close $src->{fh};	# the path names a new file now
			delete $src->{fh};
		}
		next unless length $chunk;
		$chunk = $src->{partial} . $chunk;
		my @lines = split /\n/, $chunk, -1;
		$src->{partial} = pop @lines;	 # '' when chunk ended with a newline
		for my $line (@lines) {
			push @{ $self->{lines} }, $line;
			my $ev;
			if ($line =~ /^\s*\{/) {
				$ev = eval { $JSON->decode($line) };
			}
			push @{ $self->{events} }, $ev;
		}
	}
}

sub log_lines { my ($self) = @_; $self->read_log; return @{ $self->{lines} } }

# The whole log as a string (for diagnostics).
sub log_text {
	my ($self) = @_;
	return join '', map { slurp($_) } $self->log_sources;
}

# A mark: the number of lines read so far. Pass it as from => $mark to
# only look at what came after.
sub log_mark { my ($self) = @_; $self->read_log; return scalar @{ $self->{lines} } }

# log_events('child_started') — the parsed events with that name, in order.
# log_events('child_started', from => $mark) — only after the mark.
sub log_events {
	my ($self, $name, %o) = @_;
	$self->read_log;
	my @ev = @{ $self->{events} };
	splice(@ev, 0, $o{from}) if $o{from};
	return grep { defined $_ && (!defined $name || ($_->{event} // '') eq $name) } @ev;
}

# wait_log(qr/.../, $timeout, from => $mark) — poll the log until a line
# matches; returns the parsed event (a hash; for a non-JSON line
# { raw => LINE }), or undef on timeout. The first argument may also be a
# code ref called with each parsed event.
sub wait_log {
	my ($self, $what, $timeout, %o) = @_;
	$timeout //= 5;
	my $i = $o{from} // 0;
	return wait_until {
		$self->read_log;
		while ($i < @{ $self->{lines} }) {
			my $line = $self->{lines}[$i];
			my $ev = $self->{events}[$i] // { raw => $line };
			$i++;
			if (ref $what eq 'CODE') {
				return $ev if $self->{events}[$i - 1] && $what->($ev);
			} elsif ($line =~ $what) {
				return $ev;
			}
		}
		return undef;
	} $timeout;
}

# wait_event('ready', $timeout, from => $mark, field => value ...) —
# the first event with that name (and those field values) after the mark.
sub wait_event {
	my ($self, $name, $timeout, %o) = @_;
	my $from = delete $o{from};
	return $self->wait_log(sub {
		my ($ev) = @_;
		return 0 unless ($ev->{event} // '') eq $name;
		for my $k (keys %o) {
			return 0 unless defined $ev->{$k} && $ev->{$k} eq $o{$k};
		}
		return 1;
	}, $timeout, from => $from);
}

sub dump_log {
	my ($self) = @_;
	my $text = $self->log_text;
	$text = '...' . substr($text, -8000) if length $text > 8000;
	Test::More::diag("tollgate log ($self->{log}):\n$text");
}

###########################################################################
# processes

# Current pid of each child, from child_started/child_exited events:
# { 'worker 0' => PID, ..., 'loader 0' => PID }.
sub children {
	my ($self) = @_;
	my %pid;
	for my $ev ($self->log_events) {
		my $key = join ' ', $ev->{role} // '', $ev->{index} // 0;
		if ($ev->{event} eq 'child_started') {
			$pid{$key} = $ev->{pid};
		} elsif ($ev->{event} eq 'child_exited') {
			delete $pid{$key} if defined $pid{$key} && $pid{$key} == ($ev->{pid} // -1);
		}
	}
	return \%pid;
}

# worker_pids() — pids of the live workers, ordered by index.
sub worker_pids {
	my ($self) = @_;
	my $c = $self->children;
	return map { $c->{$_} } sort { (split / /, $a)[1] <=> (split / /, $b)[1] }
	    grep { /^worker / } keys %$c;
}

sub worker_pid {
	my ($self, $index) = @_;
	return $self->children->{"worker $index"};
}

# kill_worker($index [, $signal]) — send SIGKILL (default) to worker N;
# returns the pid killed.
sub kill_worker {
	my ($self, $index, $sig) = @_;
	my $pid = $self->worker_pid($index) or croak "no pid known for worker $index";
	kill($sig // 'KILL', $pid) or croak "kill $pid: $!";
	return $pid;
}

# True while the process exists and is not a zombie.
sub pid_alive {
	my ($pid) = @_;
	return 0 unless $pid && kill(0, $pid);
	if (open(my $fh, '<', "/proc/$pid/stat")) {
		my $stat = <$fh> // '';
		return 0 if $stat =~ /^\d+ \(.*\) Z/s;
	}
	return 1;
}

# Every pid tollgate ever started (master and children), still alive.
sub live_pids {
	my ($self) = @_;
	my @pids = grep { defined } ($self->{pid}, map { $_->{pid} } $self->log_events('child_started'));
	my %seen;
	return grep { !$seen{$_}++ && pid_alive($_) } @pids;
}

sub signal {
	my ($self, $sig) = @_;
	croak "tollgate is not running" unless $self->{pid} && !defined $self->exited;
	kill($sig, $self->{pid}) or croak "kill $sig $self->{pid}: $!";
}

# reload(%o) — SIGHUP, then wait for a NEW reload_done or reload_failed.
# Returns that event (check ->{event}), or undef on timeout.
sub reload {
	my ($self, %o) = @_;
	my $mark = $self->log_mark;
	$self->signal('HUP');
	return $self->wait_log(sub { $_[0]{event} =~ /^reload_(done|failed)$/ },
	    $o{timeout} // 15, from => $mark);
}

# stop(%o) — SIGTERM (or $o{signal}) and wait up to $o{timeout} (5) s.
# Returns the exit code (128+N when killed by signal N), or undef if it
# did not exit in time (then it is SIGKILLed).
sub stop {
	my ($self, %o) = @_;
	return $self->{status} if defined $self->{status} || !$self->{pid};
	kill($o{signal} // 'TERM', $self->{pid});
	my $ok = wait_until { defined $self->exited } $o{timeout} // 5;
	unless ($ok) {
		kill 'KILL', $self->{pid};
		waitpid($self->{pid}, 0);
		$self->{status} = undef;
		$self->{killed} = 1;
		delete $self->{pid};
		return undef;
	}
	return $self->{status};
}

###########################################################################
# metrics

# metrics() — GET /metrics from the configured metrics address (default
# the one named PORT_METRICS on 127.0.0.1). Returns a hash of
# 'name' => value and 'name{a="x",b="y"}' => value (labels sorted by
# name), or undef when the endpoint does not answer.
sub metrics {
	my ($self, %o) = @_;
	my $addr = $o{addr} // "127.0.0.1:" . $self->port('METRICS');
	my ($host, $port) = $addr =~ /^\[?(.*?)\]?:(\d+)$/ or croak "bad address $addr";
	my $s = IO::Socket::IP->new(PeerHost => $host, PeerPort => $port,
	    Type => SOCK_STREAM, Timeout => 3) or return undef;
	print $s "GET /metrics HTTP/1.0\r\nHost: $host\r\nConnection: close\r\n\r\n";
	my $resp = '';
	my $deadline = time() + 5;
	my $rin = '';
	vec($rin, fileno($s), 1) = 1;
	while (time() < $deadline) {
		my $n = select(my $rout = $rin, undef, undef, 0.2);
		next unless $n;
		my $got = sysread($s, my $buf, 65536);
		last unless $got;
		$resp .= $buf;
	}
	close $s;
	my ($head, $body) = split /\r?\n\r?\n/, $resp, 2;
	return undef unless defined $head && $head =~ m{^HTTP/1\.[01] 200};
	$self->{metrics_raw} = $body;
	return parse_metrics($body // '');
}

sub parse_metrics {
	my ($text) = @_;
	my %m;
	for my $line (split /\n/, $text) {
		next if $line =~ /^\s*(#|$)/;
		my ($name, $labels, $value) =
		    $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/ or next;
		my $key = $name;
		if (defined $labels && length $labels) {
			my %l = $labels =~ /([a-zA-Z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
			$key .= '{' . join(',', map { "$_=\"$l{$_}\"" } sort keys %l) . '}';
		}
		$m{$key} = $value + 0;
	}
	return \%m;
}

# metric('tollgate_requests_total', method => 'INVITE', outcome => 'forwarded')
# — one value from a fresh scrape, 0 when the series is absent, undef when
# the endpoint does not answer.
sub metric {
	my ($self, $name, %l) = @_;
	my $m = $self->metrics or return undef;
	return $m->{ series_key($name, %l) } // 0;
}

sub series_key {
	my ($name, %l) = @_;
	return %l ? $name . '{' . join(',', map { "$_=\"$l{$_}\"" } sort keys %l) . '}' : $name;
}

# series('tollgate_account_channels', account => 'acme') — like metric(),
# but undef when the series is not exported (to tell 0 from absent).
sub series {
	my ($self, $name, %l) = @_;
	my $m = $self->metrics or return undef;
	return $m->{ series_key($name, %l) };
}

# wait_series($want, $name, labels...) — poll series() until it equals
# $want (at most 5 s); returns the last value.
sub wait_series {
	my ($self, $want, $name, %l) = @_;
	my $v;
	wait_until(sub { $v = $self->series($name, %l); defined $v && $v == $want }, 5);
	return $v;
}

# wait_metric($name, \%labels, sub { $_[0] >= 100 }, $timeout) — poll.
sub wait_metric {
	my ($self, $name, $labels, $cond, $timeout) = @_;
	my $last;
	my $ok = wait_until {
		$last = $self->metric($name, %{ $labels // {} });
		defined $last && $cond->($last);
	} $timeout // 5;
	return wantarray ? ($ok, $last) : $ok;
}

###########################################################################
# sipp peers

# sipp(name => 'uas', scenario => 'uas.xml', local => '127.0.0.10',
#      port => N, remote => 'HOST:PORT', args => [...]) — start sipp in the
# background in the test dir (its *_errors.log files land there). Returns a
# Tollgate::Sipp; ->wait($timeout) gives its exit code.
sub sipp {
	my ($self, %o) = @_;
	my $p = Tollgate::Sipp->start(dir => $self->{dir}, %o);
	push @{ $self->{sipps} }, $p;
	return $p;
}

###########################################################################
# the end

my @bad_patterns = (
	qr/"level"\s*:\s*"alert"/,
	qr/AddressSanitizer/,
	qr/UndefinedBehaviorSanitizer/,
	qr/LeakSanitizer/,
	qr/ThreadSanitizer/,
	qr/runtime error:/,
);

# Lines of the log that must fail a test: alerts and sanitizer reports.
sub bad_lines {
	my ($self) = @_;
	my @bad;
	for my $line ($self->log_lines, map { $_->{partial} } values %{ $self->{src} // {} }) {
		push @bad, $line if grep { $line =~ $_ } @bad_patterns;
	}
	return @bad;
}

# finish() — stop sipp peers and tollgate (SIGTERM, 5 s, then SIGKILL),
# then one test: the log holds no alert and no sanitizer report.
sub finish {
	my ($self) = @_;
	return if $self->{finished}++;
	$_->kill for @{ $self->{sipps} };
	if ($self->{pid} && !defined $self->{status}) {
		my $rc = $self->stop;
		Test::More::diag("tollgate did not stop within 5 s on SIGTERM; killed")
		    unless defined $rc;
	}
	# children exit when the master's pipe closes; sanitizer builds write
	# their leak reports on the way out, so wait for them (bounded)
	wait_until { !$self->live_pids } 5;
	for my $pid ($self->live_pids) {
		Test::More::diag("tollgate process $pid left behind; killed");
		kill 'KILL', $pid;
	}
	if (grep { -e } $self->log_sources) {
		my @bad = $self->bad_lines;
		Test::More::ok(!@bad, 'no alert or sanitizer report in the tollgate log')
		    or Test::More::diag(join "\n", "log $self->{log}:", @bad[0 .. ($#bad < 30 ? $#bad : 30)]);
		$self->dump_log if $ENV{TEST_TOLLGATE_VERBOSE};
	}
	$self->{pg}->stop if $self->{pg} && !$self->{keep_pg};
}

sub DESTROY {
	my ($self) = @_;
	local ($?, $!, $@);
	return if $self->{finished};
	return unless $self->{pid};
	# not finished explicitly: at least do not leave processes behind
	kill 'KILL', $_ for $self->live_pids;
	$_->kill for @{ $self->{sipps} };
}

END {
	# Safety net for a test file that died or forgot $t->finish: stop
	# everything, and still check the log (an extra test fails the plan).
	local $?;
	for my $t (@instances) {
		next if !$t || $t->{finished};
		$t->finish;
	}
}

###########################################################################
package Tollgate::Sipp;

use strict;
use warnings;
use Carp qw(croak);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time);

# Start sipp in the background. Options: name, scenario (file name in
# t/sip or a path), local (IP), port, remote ('host:port', omitted for a
# UAS), args => [...], timeout => global -timeout seconds (default 60).
sub start {
	my ($class, %o) = @_;
	my $name = $o{name} // 'sipp';
	my $scen = $o{scenario} // "$name.xml";
	$scen = "$Tollgate::REPO/t/sip/$scen" unless $scen =~ m{/};
	croak "no scenario $scen" unless -r $scen;
	my @argv = ('sipp', '-sf', $scen);
	push @argv, $o{remote} if defined $o{remote};
	push @argv, '-i', $o{local} if defined $o{local};
	push @argv, '-p', $o{port} if defined $o{port};
	push @argv, '-nostdin', '-trace_err', '-trace_screen',
	    '-timeout', ($o{timeout} // 60) . 's', '-timeout_error',
	    @{ $o{args} // [] };
	my $dir = "$o{dir}/sipp-$name";
	mkdir $dir;
	my $out = "$dir/out";
	my $pid = fork() // die "fork: $!";
	if ($pid == 0) {
		chdir $dir;
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $out) or POSIX::_exit(127);
		open(STDERR, '>&', \*STDOUT);
		$ENV{TERM} //= 'dumb';
		do { no warnings q(exec); exec { $argv[0] } @argv };
		print STDERR "exec sipp: $!\n";
		POSIX::_exit(127);
	}
	return bless { %o, name => $name, pid => $pid, dir => $dir, argv => \@argv }, $class;
}

sub pid { $_[0]{pid} }

# Reap; returns the exit code or undef while running.
sub exited {
	my ($self) = @_;
	return $self->{status} if defined $self->{status};
	my $r = waitpid($self->{pid}, WNOHANG);
	if ($r == $self->{pid}) {
		$self->{status} = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
	}
	return $self->{status};
}

# wait($timeout) — exit code of sipp (0: every call succeeded), or undef if
# it still runs after $timeout seconds (then it is killed).
sub wait {
	my ($self, $timeout) = @_;
	my $ok = Tollgate::wait_until { defined $self->exited } $timeout // 60;
	unless ($ok) {
		$self->kill;
		return undef;
	}
	return $self->{status};
}

sub kill {
	my ($self) = @_;
	return if defined $self->exited;
	CORE::kill('KILL', $self->{pid});
	waitpid($self->{pid}, 0);
	$self->{status} = 'killed';
}

# What went wrong, for diag(): the error log and the tail of the screen.
sub report {
	my ($self) = @_;
	my $text = "sipp $self->{name}: @{ $self->{argv} }\n";
	opendir(my $dh, $self->{dir}) or return $text;
	for my $f (sort grep { /_errors\.log$|_screen\.log$/ } readdir $dh) {
		my $s = Tollgate::slurp("$self->{dir}/$f");
		$s = substr($s, 0, 4000) . "\n..." if length $s > 4000;
		$text .= "--- $f\n$s\n";
	}
	return $text;
}

# Statistics from the screen dump: successful and failed calls.
sub counts {
	my ($self) = @_;
	opendir(my $dh, $self->{dir}) or return {};
	my ($f) = grep { /_screen\.log$/ } readdir $dh;
	return {} unless $f;
	my $s = Tollgate::slurp("$self->{dir}/$f");
	my %c;
	$c{successful} = $1 if $s =~ /Successful call\s+\|\s+\d+\s+\|\s+(\d+)/;
	$c{failed} = $1 if $s =~ /Failed call\s+\|\s+\d+\s+\|\s+(\d+)/;
	return \%c;
}

1;

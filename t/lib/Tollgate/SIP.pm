package Tollgate::SIP;

# A small raw SIP-over-UDP peer for the tests: a socket bound to a chosen
# local address (each simulated peer has its own 127.0.0.x), a message
# builder, a parser, and bounded waits. It sends only to the one peer
# address it was given (tollgate's listen address), never to an address
# taken from a received message.
#
#   my $c = Tollgate::SIP->new(local => '127.0.0.21', peer => "127.0.0.1:$port");
#   my $r = $c->request(method => 'OPTIONS');   # send, wait for a final reply
#   is($r->status, 200);
#
#   # the softswitch side: capture what tollgate forwards, answer it
#   my $ss = Tollgate::SIP->new(local => '127.0.0.10', port => $p, peer => "127.0.0.1:$port");
#   my $req = $ss->recv(timeout => 2);
#   $ss->send($ss->reply($req, 200, 'OK'));

use strict;
use warnings;

use Carp qw(croak);
use IO::Socket::IP;
use Socket qw(SOCK_DGRAM);
use Time::HiRes qw(time);

our $RAW_DIR;

my %compact = (
	i => 'call-id', m => 'contact', e => 'content-encoding', l => 'content-length',
	c => 'content-type', f => 'from', s => 'subject', k => 'supported', t => 'to',
	v => 'via', r => 'refer-to', o => 'event', u => 'allow-events', x => 'session-expires',
);

sub raw_dir {
	require Tollgate;
	return $RAW_DIR //= Tollgate::repo_dir() . '/t/sip/raw';
}

my $seq = 0;
sub _rand { return sprintf('%x%x%x', $$, int(rand(0xffffff)), ++$seq) }

# new(local => IP, port => N (default any), peer => 'HOST:PORT' or '[v6]:PORT')
sub new {
	my ($class, %o) = @_;
	croak "peer required" unless $o{peer};
	my ($phost, $pport) = split_hostport($o{peer});
	my $s = IO::Socket::IP->new(
		LocalHost => $o{local} // '127.0.0.1',
		LocalPort => $o{port} // 0,
		Type => SOCK_DGRAM,
		ReuseAddr => 1,
	) or croak "bind $o{local}:" . ($o{port} // 0) . ": $@";
	my $self = bless {
		sock => $s,
		peer_host => $phost,
		peer_port => $pport,
		peer => $o{peer},
		local_host => $s->sockhost,
		local_port => $s->sockport,
	}, $class;
	# where our replies go: resolved once, from the peer we were given
	my ($err, @res) = Socket::getaddrinfo($phost, $pport,
	    { socktype => SOCK_DGRAM, flags => Socket::AI_NUMERICHOST() });
	croak "bad peer $o{peer}: $err" if $err;
	$self->{peer_addr} = $res[0]{addr};
	return $self;
}

sub split_hostport {
	my ($hp) = @_;
	return ($1, $2) if $hp =~ /^\[([^\]]+)\]:(\d+)$/;
	return ($1, $2) if $hp =~ /^([^:]+):(\d+)$/;
	croak "bad address '$hp'";
}

sub local_host { $_[0]{local_host} }
sub local_port { $_[0]{local_port} }
sub peer { $_[0]{peer} }

# "127.0.0.21:40000" or "[::1]:40000": what goes into our Via / Contact.
sub local_hostport {
	my ($self) = @_;
	my $h = $self->{local_host};
	return ($h =~ /:/ ? "[$h]" : $h) . ":$self->{local_port}";
}

sub peer_hostport {
	my ($self) = @_;
	my $h = $self->{peer_host};
	return ($h =~ /:/ ? "[$h]" : $h) . ":$self->{peer_port}";
}

# send($msg) — a Tollgate::SIP::Message or a string; always to the peer.
sub send {
	my ($self, $msg) = @_;
	my $data = ref $msg ? $msg->as_string : $msg;
	my $n = send($self->{sock}, $data, 0, $self->{peer_addr});
	croak "send to $self->{peer}: $!" unless defined $n && $n == length $data;
	return $n;
}

# recv(timeout => SECONDS) — the next datagram, parsed (a
# Tollgate::SIP::Message, with ->from_addr set), or undef on timeout.
# Datagrams that do not parse come back with ->parse_error set.
sub recv {
	my ($self, %o) = @_;
	my $deadline = time() + ($o{timeout} // 2);
	my $rin = '';
	vec($rin, fileno($self->{sock}), 1) = 1;
	while (1) {
		my $left = $deadline - time();
		return undef if $left <= 0;
		my $n = select(my $rout = $rin, undef, undef, $left);
		next unless $n && $n > 0;
		my $from = recv($self->{sock}, my $buf, 65535, 0);
		next unless defined $from;
		my $m = Tollgate::SIP::Message->parse($buf);
		my ($err, $host, $port) = Socket::getnameinfo($from,
		    Socket::NI_NUMERICHOST() | Socket::NI_NUMERICSERV());
		$m->{from_addr} = $err ? '?' : ($host =~ /:/ ? "[$host]:$port" : "$host:$port");
		return $m;
	}
}

# Drain anything queued (e.g. retransmissions) without waiting.
sub drain {
	my ($self) = @_;
	my @got;
	while (my $m = $self->recv(timeout => 0.01)) { push @got, $m }
	return @got;
}

# wait_response(timeout => S, call_id => ID, final => 1): the next
# response (final only unless final => 0) for that Call-ID; others are
# skipped.
sub wait_response {
	my ($self, %o) = @_;
	my $deadline = time() + ($o{timeout} // 2);
	my $final = $o{final} // 1;
	while (1) {
		my $left = $deadline - time();
		return undef if $left <= 0;
		my $m = $self->recv(timeout => $left) or return undef;
		next unless $m->is_response;
		next if defined $o{call_id} && ($m->header('call-id') // '') ne $o{call_id};
		next if $final && $m->status < 200;
		return $m;
	}
}

# wait_request(timeout => S, method => M): the next request (of that method).
sub wait_request {
	my ($self, %o) = @_;
	my $deadline = time() + ($o{timeout} // 2);
	while (1) {
		my $left = $deadline - time();
		return undef if $left <= 0;
		my $m = $self->recv(timeout => $left) or return undef;
		next if $m->parse_error || $m->is_response;
		next if defined $o{method} && $m->method ne $o{method};
		return $m;
	}
}

# build(method => 'INVITE', %o) — a request from this socket, to the peer.
# Options: uri, user (Request-URI user, default 15551234), from, to,
# call_id, cseq, max_forwards (undef: none when given as undef explicitly),
# branch, headers => [[Name => value], ...], body, omit => [header names],
# contact.
sub build {
	my ($self, %o) = @_;
	my $method = $o{method} // 'INVITE';
	my $me = $self->local_hostport;
	my $user = $o{user} // '15551234';
	my $uri = $o{uri} // "sip:$user\@" . $self->peer_hostport;
	my $body = $o{body};
	if (!defined $body && $method eq 'INVITE') {
		my $ipv = $self->{local_host} =~ /:/ ? 6 : 4;
		$body = "v=0\r\no=test 1 1 IN IP$ipv $self->{local_host}\r\ns=-\r\n"
		    . "c=IN IP$ipv $self->{local_host}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
		    . "a=rtpmap:0 PCMU/8000\r\n";
	}
	$body //= '';
	my @h = (
		[ 'Via' => "SIP/2.0/UDP $me;branch=" . ($o{branch} // 'z9hG4bK' . _rand()) . ';rport' ],
		[ 'Max-Forwards' => exists $o{max_forwards} ? $o{max_forwards} : 70 ],
		[ 'From' => ($o{from} // "<sip:customer\@$me>") . ';tag=' . ($o{from_tag} // _rand()) ],
		[ 'To' => ($o{to} // "<$uri>") . (defined $o{to_tag} ? ";tag=$o{to_tag}" : '') ],
		[ 'Call-ID' => $o{call_id} // _rand() . '@' . $self->{local_host} ],
		[ 'CSeq' => ($o{cseq} // 1) . " $method" ],
		[ 'Contact' => $o{contact} // "<sip:customer\@$me>" ],
		[ 'User-Agent' => 'tollgate-tests' ],
		@{ $o{headers} // [] },
	);
	push @h, [ 'Content-Type' => 'application/sdp' ] if length $body && !grep { lc $_->[0] eq 'content-type' } @h;
	push @h, [ 'Content-Length' => length $body ];
	my %omit = map { lc($_) => 1 } @{ $o{omit} // [] };
	@h = grep { !$omit{ lc $_->[0] } && defined $_->[1] } @h;
	return Tollgate::SIP::Message->new(
		start => "$method $uri SIP/2.0",
		headers => \@h,
		body => $body,
	);
}

# request(%build_options, timeout => S) — build, send, and wait for the
# final response with the same Call-ID. Returns (response, request) in
# list context; the response is undef on timeout.
sub request {
	my ($self, %o) = @_;
	my $timeout = delete $o{timeout} // 2;
	my $req = $self->build(%o);
	$self->send($req);
	my $r = $self->wait_response(timeout => $timeout, call_id => $req->header('call-id'));
	return wantarray ? ($r, $req) : $r;
}

# call_through($softswitch, %build_options, timeout => S, answer => CODE)
# — send an INVITE from this socket to tollgate; if it reaches the
# softswitch socket (a Tollgate::SIP bound where `downstream` points),
# answer it there (200 by default, to tollgate's address); wait for the
# final response here. Returns (response, forwarded request, sent
# request); response or forwarded is undef when nothing came.
sub call_through {
	my ($self, $ss, %o) = @_;
	my $timeout = delete $o{timeout} // 3;
	my $answer = delete $o{answer} // 200;
	my $req = $self->build(method => 'INVITE', %o);
	my $cid = $req->header('call-id');
	$self->send($req);
	my ($fwd, $resp);
	my $deadline = time() + $timeout;
	while (!$resp && time() < $deadline) {
		if ($ss && (my $m = $ss->recv(timeout => 0.02))) {
			if (!$m->is_response && ($m->header('call-id') // '') eq $cid) {
				$fwd //= $m;
				$ss->send($ss->reply($m, $answer, $answer == 200 ? 'OK' : 'Refused'))
				    if $m->method eq 'INVITE';
			}
		}
		my $r = $self->recv(timeout => $ss ? 0.02 : $deadline - time());
		$resp = $r if $r && $r->is_response && $r->status >= 200
		    && ($r->header('call-id') // '') eq $cid;
	}
	return ($resp, $fwd, $req);
}

# call_status($softswitch, timeout => S) — the final status an INVITE from
# this socket gets through tollgate (answered 200 at the softswitch socket
# when it gets there), or 0 when none came.
sub call_status {
	my ($self, $ss, %o) = @_;
	my ($resp) = $self->call_through($ss, timeout => $o{timeout} // 1);
	return $resp ? $resp->status : 0;
}

# poll_status($softswitch, $want, $timeout) — call_status until it is
# $want, for at most $timeout s; returns the last status seen.
sub poll_status {
	my ($self, $ss, $want, $timeout) = @_;
	my $got;
	Tollgate::wait_until(sub { ($got = $self->call_status($ss)) == $want }, $timeout);
	return $got;
}

# reply($request, $code, $reason, headers => [...], to_tag => TAG) — a
# response to a received request: its Vias (all of them), Record-Route,
# From, To (+ a tag), Call-ID, CSeq copied.
sub reply {
	my ($self, $req, $code, $reason, %o) = @_;
	my @h;
	for my $name (qw(Via Record-Route From To Call-ID CSeq)) {
		for my $v ($req->header_values($name)) {
			$v .= ';tag=' . ($o{to_tag} // _rand())
			    if $name eq 'To' && $code > 100 && $v !~ /;\s*tag=/i;
			push @h, [ $name => $v ];
		}
	}
	push @h, [ 'Contact' => '<sip:softswitch@' . $self->local_hostport . '>' ] if $code >= 200 && $code < 300;
	push @h, @{ $o{headers} // [] };
	my $body = $o{body} // '';
	push @h, [ 'Content-Length' => length $body ];
	return Tollgate::SIP::Message->new(start => "SIP/2.0 $code $reason", headers => \@h, body => $body);
}

# fixture($name, %vars) — t/sip/raw/NAME(.sip): %%LOCAL%% (our host:port),
# %%LOCAL_HOST%%, %%TARGET%% (the peer host:port), %%CALL_ID%%,
# %%BRANCH%%, %%TAG%% and any %%KEY%% given in %vars are expanded; lines
# become CRLF and %%LEN%% the body length. Files ending .bin are sent
# byte for byte.
sub fixture {
	my ($self, $name, %vars) = @_;
	my $path = raw_dir() . "/$name";
	$path .= '.sip' if !-e $path && -e "$path.sip";
	open(my $fh, '<:raw', $path) or croak "$path: $!";
	local $/;
	my $text = <$fh>;
	close $fh;
	return $text if $path =~ /\.bin$/;
	my %v = (
		LOCAL => $self->local_hostport,
		LOCAL_HOST => $self->{local_host},
		TARGET => $self->peer_hostport,
		CALL_ID => _rand() . '@' . $self->{local_host},
		BRANCH => 'z9hG4bK' . _rand(),
		TAG => _rand(),
		%vars,
	);
	$text =~ s/\r\n/\n/g;
	my ($head, $body) = split /\n\n/, $text, 2;
	$body //= '';
	$body =~ s/\n/\r\n/g;
	my $subst = sub {
		my ($k) = @_;
		return length($body) if $k eq 'LEN';
		return $v{$k} // croak "$name: no value for %%$k%%";
	};
	$body =~ s{%%(\w+)%%}{$subst->($1)}ge;
	$head =~ s{%%(\w+)%%}{$subst->($1)}ge;
	$head =~ s/\n/\r\n/g;
	my $msg = "$head\r\n\r\n$body";
	$self->{last_fixture_vars} = \%v;
	return $msg;
}

sub last_fixture_vars { $_[0]{last_fixture_vars} }

###########################################################################
package Tollgate::SIP::Message;

use strict;
use warnings;

sub new {
	my ($class, %o) = @_;
	my $self = bless { headers => [], body => '', %o }, $class;
	$self->_classify;
	return $self;
}

sub _classify {
	my ($self) = @_;
	my $start = $self->{start} // '';
	if ($start =~ m{^SIP/2\.0\s+(\d{3})\s*(.*)$}) {
		@$self{qw(is_response status reason)} = (1, $1 + 0, $2);
	} elsif ($start =~ m{^([A-Za-z]+)\s+(\S+)\s+SIP/2\.0$}) {
		@$self{qw(is_response method uri)} = (0, $1, $2);
	} else {
		$self->{parse_error} //= "bad start line";
	}
}

# parse($datagram) — never dies; a message that does not parse has
# ->parse_error and ->raw.
sub parse {
	my ($class, $raw) = @_;
	my $self = bless { raw => $raw, headers => [], body => '' }, $class;
	my ($head, $body) = split /\r?\n\r?\n/, $raw, 2;
	$self->{body} = $body // '';
	my @lines = split /\r?\n/, $head // '';
	$self->{start} = shift @lines // '';
	my @h;
	for my $line (@lines) {
		if ($line =~ /^[ \t]+(.*)/ && @h) {	# folded
			$h[-1][1] .= " $1";
			next;
		}
		# lenient on purpose: what tollgate forwards is judged by the tests
		if ($line =~ /^([^\s:]+)[ \t]*:[ \t]*(.*?)\s*$/) {
			push @h, [ $1, $2 ];
		} else {
			$self->{parse_error} //= "bad header line '$line'";
		}
	}
	$self->{headers} = \@h;
	$self->_classify;
	return $self;
}

sub raw { $_[0]{raw} // $_[0]->as_string }
sub parse_error { $_[0]{parse_error} }
sub is_response { $_[0]{is_response} }
sub status { $_[0]{status} // 0 }
sub reason { $_[0]{reason} }
sub method { $_[0]{method} // '' }
sub uri { $_[0]{uri} }
sub body { $_[0]{body} }
sub start_line { $_[0]{start} }
sub from_addr { $_[0]{from_addr} }

sub _canon {
	my ($name) = @_;
	$name = lc $name;
	return $compact{$name} // $name;
}

# header_values('Via') — every value, in order, comma lists split for
# headers that may be combined (Via, Route, Record-Route).
sub header_values {
	my ($self, $name) = @_;
	my $want = _canon($name);
	my @v = map { $_->[1] } grep { _canon($_->[0]) eq $want } @{ $self->{headers} };
	if ($want =~ /^(via|route|record-route)$/) {
		@v = map { split_list($_) } @v;
	}
	return @v;
}

# header('Call-ID') — the first value, or undef.
sub header {
	my ($self, $name) = @_;
	my @v = $self->header_values($name);
	return $v[0];
}

sub header_count {
	my ($self, $name) = @_;
	return scalar $self->header_values($name);
}

# Split "a, <b,c>, d" on commas outside <> and quotes.
sub split_list {
	my ($s) = @_;
	my @out;
	my ($cur, $depth, $q) = ('', 0, 0);
	for my $ch (split //, $s) {
		if ($q) { $q = 0 if $ch eq '"' }
		elsif ($ch eq '"') { $q = 1 }
		elsif ($ch eq '<') { $depth++ }
		elsif ($ch eq '>') { $depth-- if $depth }
		elsif ($ch eq ',' && !$depth) {
			$cur =~ s/^\s+|\s+$//g;
			push @out, $cur;
			$cur = '';
			next;
		}
		$cur .= $ch;
	}
	$cur =~ s/^\s+|\s+$//g;
	push @out, $cur if length $cur;
	return @out;
}

sub as_string {
	my ($self) = @_;
	return join('', "$self->{start}\r\n", map({ "$_->[0]: $_->[1]\r\n" } @{ $self->{headers} }),
	    "\r\n", $self->{body} // '');
}

1;

###########################################################################
# SIP digest authentication (RFC 3261 22, RFC 7616, RFC 8760) for the
# tests: read the challenges of a 401/407, answer them, ACK a non-2xx
# final response; and Tollgate::SIP::Relay, which plays an MD5-only
# client in front of sipp. Digest::MD5 and Digest::SHA are in Perl core.
#
#   my ($r, $req) = $c->request(method => 'INVITE');       # 407
#   $c->send($c->ack_for($req, $r));
#   my ($ch) = grep { $_->{algorithm} eq 'MD5' } $r->challenges;
#   my $cred = Tollgate::SIP::digest_credentials(challenge => $ch,
#       username => 'alice', password => 'secret', method => 'INVITE',
#       uri => $req->uri, nc => 1);
#   $c->request(method => 'INVITE', headers => [[ 'Proxy-Authorization' => $cred ]]);

package Tollgate::SIP;

use Digest::MD5 ();
use Digest::SHA ();

# parse_auth($value) — ('Digest', { realm => ..., nonce => ..., ... }) of a
# challenge or credentials value; parameter names lower case, values
# unquoted. A parameter given twice keeps its first value and is listed
# in $params->{_dup}.
sub parse_auth {
	my ($value) = @_;
	my ($scheme, $rest) = ($value // '') =~ /^\s*([!-~]+?)(?:\s+(.*))?$/s or return;
	my %p;
	$rest //= '';
	while ($rest =~ /\G[\s,]*([A-Za-z0-9_*-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]*)\s*/gc) {
		my ($k, $v) = (lc $1, defined $3 ? $3 : $2);
		$v =~ s/\\(.)/$1/g if defined $3;
		if (exists $p{$k}) {
			push @{ $p{_dup} }, $k;
			next;
		}
		$p{$k} = $v;
	}
	return ($scheme, \%p);
}

# The hash of an algorithm as named in a challenge: MD5 or SHA-256.
sub digest_hash {
	my ($alg, $data) = @_;
	return Digest::MD5::md5_hex($data) if !defined $alg || uc $alg eq 'MD5';
	return Digest::SHA::sha256_hex($data) if uc $alg eq 'SHA-256';
	Carp::croak("digest_hash: no algorithm '$alg' here");
}

# digest_response(algorithm => 'MD5'|'SHA-256', username, realm, password
# (or ha1 => HEX), method, uri, nonce, nc (a number or 8 hex digits),
# cnonce, qop (default auth; '' for the RFC 2069 form)) — the response in
# lower-case hex, RFC 7616 3.4.1.
sub digest_response {
	my (%o) = @_;
	my $alg = $o{algorithm} // 'MD5';
	my $ha1 = $o{ha1} // digest_hash($alg, "$o{username}:$o{realm}:$o{password}");
	my $ha2 = digest_hash($alg, "$o{method}:$o{uri}");
	my $qop = $o{qop} // 'auth';
	return digest_hash($alg, "$ha1:$o{nonce}:$ha2") if $qop eq '';
	my $nc = $o{nc} // 1;
	$nc = sprintf('%08x', $nc) unless $nc =~ /^[0-9a-fA-F]{8}$/;
	return digest_hash($alg, "$ha1:$o{nonce}:$nc:$o{cnonce}:$qop:$ha2");
}

# digest_credentials(challenge => HASH from ->challenges (realm, nonce,
# algorithm), username, password, method, uri, nc => 1, cnonce, and any
# of realm, nonce, algorithm, qop to override the challenge's; response
# => HEX to send a given one; omit => [param names]; extra => 'k=v') —
# the value of an Authorization / Proxy-Authorization header.
sub digest_credentials {
	my (%o) = @_;
	my $ch = $o{challenge} // {};
	my %v = (
		username => $o{username},
		realm => $o{realm} // $ch->{realm},
		nonce => $o{nonce} // $ch->{nonce},
		uri => $o{uri},
		algorithm => $o{algorithm} // $ch->{algorithm} // 'MD5',
		qop => exists $o{qop} ? $o{qop} : 'auth',
		nc => sprintf('%08x', $o{nc} // 1),
		cnonce => $o{cnonce} // _rand(),
	);
	$v{response} = $o{response} // digest_response(%v, method => $o{method},
	    password => $o{password}, ha1 => $o{ha1}, qop => $v{qop} // '');
	my %omit = map { $_ => 1 } @{ $o{omit} // [] };
	delete $v{qop} if !defined $v{qop} || $v{qop} eq '';
	if ($omit{qop} || !defined $v{qop}) {
		$omit{$_} = 1 for qw(qop nc cnonce);
	}
	my @order = qw(username realm nonce uri response algorithm qop nc cnonce);
	my %bare = map { $_ => 1 } qw(algorithm qop nc);
	my @parts;
	for my $k (@order) {
		next if $omit{$k} || !defined $v{$k};
		(my $q = $v{$k}) =~ s/(["\\])/\\$1/g;
		push @parts, $bare{$k} ? "$k=$v{$k}" : "$k=\"$q\"";
	}
	push @parts, $o{extra} if defined $o{extra};
	return 'Digest ' . join(', ', @parts);
}

# ack_for($request, $response) — the ACK of a non-2xx final response to an
# INVITE (RFC 3261 17.1.1.3): same Request-URI, top Via, From, Call-ID
# and CSeq number, the response's To (with its tag), the request's Route.
sub ack_for {
	my ($self, $req, $resp) = @_;
	my ($cseq) = ($req->header('cseq') // '1') =~ /^\s*(\d+)/;
	my @h = (
		[ 'Via' => ($req->header_values('via'))[0] ],
		[ 'Max-Forwards' => 70 ],
		[ 'From' => $req->header('from') ],
		[ 'To' => $resp->header('to') ],
		[ 'Call-ID' => $req->header('call-id') ],
		[ 'CSeq' => "$cseq ACK" ],
		(map { [ 'Route' => $_ ] } $req->header_values('route')),
		[ 'Content-Length' => 0 ],
	);
	return Tollgate::SIP::Message->new(start => 'ACK ' . $req->uri . ' SIP/2.0', headers => \@h, body => '');
}

package Tollgate::SIP::Message;

# challenges() — the challenges of a 401/407 in the order of their header
# lines: [{ header => 'Proxy-Authenticate', scheme => 'Digest', realm,
# nonce, algorithm, qop, stale, opaque, ..., raw => VALUE }, ...]. A header
# line holding several challenges is not split (tollgate sends one per
# line).
sub challenges {
	my ($self) = @_;
	my @out;
	for my $h (@{ $self->{headers} }) {
		next unless lc $h->[0] eq 'proxy-authenticate' || lc $h->[0] eq 'www-authenticate';
		my ($scheme, $p) = Tollgate::SIP::parse_auth($h->[1]);
		push @out, { %{ $p // {} }, header => $h->[0], scheme => $scheme, raw => $h->[1] };
	}
	return @out;
}

# tag_of('to') / tag_of('from') — the tag parameter of that header, or undef.
sub tag_of {
	my ($self, $name) = @_;
	my $v = $self->header($name) // return undef;
	$v =~ s/^[^<]*<[^>]*>//;	# not a ;tag= inside the URI
	return $v =~ /;\s*tag=([^;\s,]+)/i ? $1 : undef;
}

###########################################################################
package Tollgate::SIP::Relay;

# A datagram relay that plays an MD5-only client (RFC 8760 2.4: a client
# skips challenges whose algorithm it does not know) in front of sipp:
# sipp 3.6.1 (Debian 12) answers the first challenge of a 401/407 and
# gives up on algorithm=SHA-256, where newer UAs skip to the MD5 one.
#
#   my $relay = Tollgate::SIP::Relay->start(local => '127.0.0.31',
#       client => '127.0.0.30:5070', server => '127.0.0.1:5060');
#   # sipp -sf ... $relay->local_hostport -i 127.0.0.30 -p 5070
#
# Datagrams from `client` go to `server` and those from `server` to
# `client`, unchanged but for the challenge lines (Proxy-/WWW-Authenticate)
# of a response whose algorithm is not MD5, which are taken out. It sends
# only to those two addresses, given here, never to one read from a
# message; anything from elsewhere is dropped. The server therefore sees
# the relay's address as the client's source. It stops after `lifetime`
# seconds (default 120) or on ->stop. stripped() counts lines taken out.

use strict;
use warnings;
use Carp qw(croak);
use IO::Socket::IP;
use POSIX ();
use Socket qw(SOCK_DGRAM);
use Time::HiRes qw(time);

my @relays;

sub _addr {
	my ($hp) = @_;
	my ($h, $p) = Tollgate::SIP::split_hostport($hp);
	my ($err, @res) = Socket::getaddrinfo($h, $p,
	    { socktype => SOCK_DGRAM, flags => Socket::AI_NUMERICHOST() });
	croak "bad address $hp: $err" if $err;
	return $res[0]{addr};
}

sub _name {
	my ($sa) = @_;
	my ($err, $h, $p) = Socket::getnameinfo($sa, Socket::NI_NUMERICHOST() | Socket::NI_NUMERICSERV());
	return $err ? '?' : ($h =~ /:/ ? "[$h]:$p" : "$h:$p");
}

# Take the challenge lines of other algorithms out of a 401/407.
sub md5_only {
	my ($data) = @_;
	return ($data, 0) unless $data =~ m{^SIP/2\.0 40[17] };
	my ($head, $body) = split /\r\n\r\n/, $data, 2;
	my $n = 0;
	my @lines = grep {
		my $keep = 1;
		if (/^(?:proxy|www)-authenticate\s*:\s*(.*)$/i) {
			my (undef, $p) = Tollgate::SIP::parse_auth($1);
			$keep = 0 if uc($p->{algorithm} // 'MD5') ne 'MD5';
		}
		$n++ unless $keep;
		$keep;
	} split /\r\n/, $head;
	return (join("\r\n", @lines) . "\r\n\r\n" . ($body // ''), $n);
}

sub start {
	my ($class, %o) = @_;
	my $s = IO::Socket::IP->new(LocalHost => $o{local}, LocalPort => $o{port} // 0,
	    Type => SOCK_DGRAM, ReuseAddr => 1) or croak "relay bind $o{local}: $@";
	my ($client, $server) = map { _addr($_) } @o{qw(client server)};
	my ($cname, $sname) = map { _name($_) } ($client, $server);
	pipe(my $rd, my $wr) or croak "pipe: $!";
	my $lifetime = $o{lifetime} // 120;
	my $pid = fork() // croak "fork: $!";
	if ($pid == 0) {
		# never run the parent's END blocks or signal handlers (they stop tollgate)
		$SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
		close $rd;
		my $stripped = 0;
		my $deadline = time() + $lifetime;
		my $rin = '';
		vec($rin, fileno($s), 1) = 1;
		while (time() < $deadline) {
			my $n = select(my $rout = $rin, undef, undef, 0.2);
			next unless $n && $n > 0;
			my $from = recv($s, my $buf, 65535, 0);
			next unless defined $from;
			my $src = _name($from);
			if ($src eq $cname) {
				send($s, $buf, 0, $server);
			} elsif ($src eq $sname) {
				my ($out, $k) = md5_only($buf);
				$stripped += $k;
				syswrite($wr, "$k\n") if $k;
				send($s, $out, 0, $client);
			}
		}
		POSIX::_exit(0);
	}
	close $wr;
	$rd->blocking(0);
	my $self = bless { pid => $pid, sock => $s, rd => $rd, stripped => 0,
	    local_host => $s->sockhost, local_port => $s->sockport }, $class;
	push @relays, $self;
	return $self;
}

sub local_host { $_[0]{local_host} }
sub local_port { $_[0]{local_port} }
sub local_hostport {
	my ($self) = @_;
	my $h = $self->{local_host};
	return ($h =~ /:/ ? "[$h]" : $h) . ":$self->{local_port}";
}

# Challenge lines taken out so far.
sub stripped {
	my ($self) = @_;
	while (defined(my $l = readline($self->{rd}))) {
		$self->{stripped} += $l;
	}
	return $self->{stripped};
}

sub stop {
	my ($self) = @_;
	return unless $self->{pid};
	$self->stripped;
	kill 'KILL', $self->{pid};
	waitpid($self->{pid}, 0);
	delete $self->{pid};
}

END {
	local $?;
	$_->stop for grep { $_ } @relays;
}

1;

###########################################################################
# Calls through tollgate, for the call-limit tests (t/8*.t): the messages
# of one call kept together, so that either side can carry on with the
# dialog (ACK, re-INVITE, BYE, CANCEL) the way a user agent would. The
# caller is a customer socket and the callee the softswitch socket, or
# the other way round for an egress call. Nothing is retransmitted unless
# a test sends it again; every wait is bounded.
#
#   my $call = $cust->dial($ss);         # INVITE: ->forwarded is the copy the
#                                        # softswitch got, ->response a refusal
#   $call->answer(180);                  # early
#   $call->answer(200);                  # the caller gets it and ACKs it
#   my ($status, $got) = $call->request('callee', 'BYE');   # 200 from the caller
#   $call->cancel;                       # CANCEL, 200, 487, ACK

package Tollgate::SIP;

use Time::HiRes ();

# take(call_id => ID, method => M, response => 1, final => 1, status => N,
# cseq => METHOD, timeout => S) — the next message that fits: a request of
# that method, or a response (final only with final => 1; that status; to
# a request of that CSeq method). Looks first among the messages an
# earlier take() kept aside, then receives for at most timeout seconds (0:
# only the kept ones); what does not fit is kept for a later take().
sub take {
	my ($self, %o) = @_;
	my $fits = sub {
		my ($m) = @_;
		return 0 if $m->parse_error;
		return 0 if defined $o{call_id} && ($m->header('call-id') // '') ne $o{call_id};
		if (defined $o{method}) {
			return 0 if $m->is_response || $m->method ne $o{method};
		}
		if ($o{response}) {
			return 0 unless $m->is_response;
			return 0 if $o{final} && $m->status < 200;
			return 0 if defined $o{status} && $m->status != $o{status};
		}
		if (defined $o{cseq}) {
			my ($cm) = ($m->header('cseq') // '') =~ /^\s*\d+\s+(\S+)/;
			return 0 unless defined $cm && $cm eq $o{cseq};
		}
		return 1;
	};
	my $kept = $self->{kept} //= [];
	for my $i (0 .. $#$kept) {
		return splice(@$kept, $i, 1) if $fits->($kept->[$i]);
	}
	my $deadline = Time::HiRes::time() + ($o{timeout} // 2);
	while ((my $left = $deadline - Time::HiRes::time()) > 0) {
		my $m = $self->recv(timeout => $left) or last;
		return $m if $fits->($m);
		push @$kept, $m;
		shift @$kept while @$kept > 2000;
	}
	return undef;
}

# dial($callee, %build_options, timeout => S) — an INVITE from this socket
# through tollgate; waits (at most timeout, default 2 s) until the callee
# socket gets it or this one gets a final response. Returns a
# Tollgate::SIP::Call.
sub dial {
	my ($self, $callee, %o) = @_;
	my $timeout = delete $o{timeout} // 2;
	$o{call_id} //= _rand() . '@' . $self->{local_host};
	$o{from_tag} //= 'ft' . _rand();
	$o{branch} //= 'z9hG4bK' . _rand();
	my $call = bless {
		caller => $self,
		callee => $callee,
		call_id => $o{call_id},
		from_tag => $o{from_tag},
		branch => $o{branch},
		cseq => { caller => 1, callee => 100 },
	}, 'Tollgate::SIP::Call';
	$call->{req} = $self->build(method => 'INVITE', cseq => 1, %o);
	$call->offer(timeout => $timeout);
	return $call;
}

# sipp_log($sipp) — the lines a sipp scenario's <log> actions wrote
# (-trace_logs: <scenario>_<pid>_logs.log in its directory).
sub sipp_log {
	my ($sipp) = @_;
	opendir(my $dh, $sipp->{dir}) or return ();
	my @lines;
	for my $f (sort grep { /_logs\.log$/ } readdir $dh) {
		open(my $fh, '<', "$sipp->{dir}/$f") or next;
		push @lines, map { s/\r?\n$//r } <$fh>;
	}
	return @lines;
}

###########################################################################
package Tollgate::SIP::Call;

use strict;
use warnings;
use Time::HiRes ();

my %REASON = (100 => 'Trying', 180 => 'Ringing', 183 => 'Session Progress', 200 => 'OK',
    404 => 'Not Found', 480 => 'Temporarily Unavailable', 486 => 'Busy Here',
    487 => 'Request Terminated', 488 => 'Not Acceptable Here', 503 => 'Service Unavailable');

sub call_id { $_[0]{call_id} }
sub from_tag { $_[0]{from_tag} }
sub to_tag { $_[0]{to_tag} }
sub caller { $_[0]{caller} }
sub callee { $_[0]{callee} }
# the INVITE as sent
sub req { $_[0]{req} }
# the copy of the INVITE the callee got (undef: none yet)
sub forwarded { $_[0]{fwd} }
# the final response to the INVITE the caller got (undef: none yet)
sub response { $_[0]{resp} }
sub status { $_[0]{resp} ? $_[0]{resp}->status : 0 }

# offer(timeout => S) — send the INVITE (again: a retransmission, byte for
# byte) and wait until the callee gets a copy or the caller a final
# response. Returns (copy, final response) of this attempt; either may
# be undef.
sub offer {
	my ($self, %o) = @_;
	my ($c, $e) = @$self{qw(caller callee)};
	$c->send($self->{req});
	my ($fwd, $resp);
	my $deadline = Time::HiRes::time() + ($o{timeout} // 2);
	while (!$fwd && !$resp && Time::HiRes::time() < $deadline) {
		$fwd = $e->take(call_id => $self->{call_id}, method => 'INVITE', timeout => 0.01) if $e;
		$resp = $c->take(call_id => $self->{call_id}, response => 1, final => 1, cseq => 'INVITE',
		    timeout => 0.01);
	}
	$self->{fwd} //= $fwd;
	$self->{resp} = $resp if $resp;
	return ($fwd, $resp);
}

# answer($code, reason => TEXT, headers => [...], body => ..., ack => 0,
# timeout => S) — the callee answers the INVITE it got (one To tag for all
# its answers); waits for the caller to get it. A final response is
# ACKed by the caller (a 2xx in the dialog, along the route set; a
# non-2xx with the INVITE's branch) unless ack => 0. Returns the response
# the caller got, or undef.
sub answer {
	my ($self, $code, %o) = @_;
	my $fwd = $self->{fwd} or return undef;
	my $e = $self->{callee};
	$self->{to_tag} //= 'tt' . Tollgate::SIP::_rand();
	$e->send($e->reply($fwd, $code, $o{reason} // $REASON{$code} // 'Answer', to_tag => $self->{to_tag},
	    headers => $o{headers} // [], body => $o{body}));
	my $r = $self->{caller}->take(call_id => $self->{call_id}, response => 1, status => $code,
	    cseq => 'INVITE', timeout => $o{timeout} // 2);
	$self->{early} = $r if $r && $code < 200;
	if ($r && $code >= 200) {
		$self->{resp} = $r;
		$self->{ack_got} = $self->ack(timeout => $code < 300 ? 2 : 0) if $o{ack} // 1;
	}
	return $r;
}

# ack(timeout => S) — the caller ACKs the final response it got. Returns
# the copy the callee got within timeout (default 1 s), or undef.
sub ack {
	my ($self, %o) = @_;
	my $resp = $self->{resp} or return undef;
	my $c = $self->{caller};
	my $ack = $resp->status < 300 ? $self->in_dialog('caller', 'ACK', cseq => 1)
	    : $c->ack_for($self->{req}, $resp);
	$c->send($ack);
	return $self->{callee}->take(call_id => $self->{call_id}, method => 'ACK', timeout => $o{timeout} // 1);
}

sub _bare {
	my ($v) = @_;
	$v //= '';
	$v =~ s/;\s*tag=[^;]*//i;
	return $v;
}

sub _contact_uri {
	my ($m) = @_;
	my $v = $m ? $m->header('contact') : undef;
	return undef unless defined $v;
	return $v =~ /<([^>]+)>/ ? $1 : (split /[;\s]/, $v)[0];
}

# in_dialog($side, $method, cseq => N, uri => URI, from_tag => TAG, to_tag
# => TAG, build => {...}) — a request within the dialog from 'caller' or
# 'callee': Call-ID, tags and URIs of the dialog, the remote target (the
# other side's Contact) as Request-URI, the route set (tollgate's
# Record-Route) as Route. Not sent.
sub in_dialog {
	my ($self, $side, $method, %o) = @_;
	my $s = $self->{$side};
	my $inv = $self->{req};
	my ($from, $to) = (_bare($inv->header('from')), _bare($inv->header('to')));
	my ($target, @route);
	if ($side eq 'caller') {
		my $r = $self->{resp} // $self->{early};
		@route = reverse($r ? $r->header_values('record-route') : ());
		$target = _contact_uri($r) // $inv->uri;
	} else {
		@route = $self->{fwd} ? $self->{fwd}->header_values('record-route') : ();
		$target = _contact_uri($self->{fwd} // $inv);
	}
	my $cseq = $o{cseq} // ++$self->{cseq}{$side};
	my %tags = $side eq 'caller'
	    ? (from => $from, from_tag => $o{from_tag} // $self->{from_tag},
	       to => $to, to_tag => $o{to_tag} // $self->{to_tag} // 'none')
	    : (from => $to, from_tag => $o{from_tag} // $self->{to_tag} // 'none',
	       to => $from, to_tag => $o{to_tag} // $self->{from_tag});
	return $s->build(method => $method, uri => $o{uri} // $target, call_id => $self->{call_id},
	    cseq => $cseq, %tags, headers => [ map { [ Route => $_ ] } @route ], %{ $o{build} // {} });
}

# request($side, $method, answer => CODE (200), timeout => S (2), request
# => MSG, %in_dialog_options) — send an in-dialog request from 'caller' or
# 'callee' (or the given one again: a retransmission); the other side
# answers it when it gets it (not an ACK). Returns (final status the
# sender got, 0 for none; the copy the other side got, or undef; the
# request sent). An ACK waits the whole timeout for its copy.
sub request {
	my ($self, $side, $method, %o) = @_;
	my $other = $side eq 'caller' ? 'callee' : 'caller';
	my ($s, $t) = @$self{ $side, $other };
	my $req = $o{request} // $self->in_dialog($side, $method, %o);
	$method = $req->method;
	$s->send($req);
	my ($got, $resp);
	my $deadline = Time::HiRes::time() + ($o{timeout} // 2);
	while (!$resp && Time::HiRes::time() < $deadline) {
		if (!$got && ($got = $t->take(call_id => $self->{call_id}, method => $method, timeout => 0.01))) {
			last if $method eq 'ACK';
			my $code = $o{answer} // 200;
			$t->send($t->reply($got, $code, $REASON{$code} // 'Answer',
			    to_tag => $got->tag_of('to') // 'x' . Tollgate::SIP::_rand()));
		}
		next if $method eq 'ACK';
		$resp = $s->take(call_id => $self->{call_id}, response => 1, final => 1, cseq => $method,
		    timeout => 0.01);
	}
	return ($resp ? $resp->status : 0, $got, $req);
}

# cancel(timeout => S) — the caller cancels the INVITE (its branch, no To
# tag); the callee, if it gets the CANCEL, answers it 200 and the INVITE
# 487, which the caller ACKs. Returns (status the caller got for the
# CANCEL, for the INVITE; the CANCEL the callee got).
sub cancel {
	my ($self, %o) = @_;
	my ($c, $e) = @$self{qw(caller callee)};
	my $inv = $self->{req};
	my $cancel = $c->build(method => 'CANCEL', uri => $inv->uri, call_id => $self->{call_id},
	    from => _bare($inv->header('from')), from_tag => $self->{from_tag}, to => $inv->header('to'),
	    cseq => 1, branch => $self->{branch});
	$c->send($cancel);
	my $got = $e->take(call_id => $self->{call_id}, method => 'CANCEL', timeout => $o{timeout} // 2);
	my $ok = $c->take(call_id => $self->{call_id}, response => 1, final => 1, cseq => 'CANCEL',
	    timeout => $got ? 0 : 0.2);
	return ($ok ? $ok->status : 0, 0, undef) unless $got;
	$self->{to_tag} //= 'tt' . Tollgate::SIP::_rand();
	$e->send($e->reply($got, 200, 'OK', to_tag => $self->{to_tag}));
	$ok //= $c->take(call_id => $self->{call_id}, response => 1, final => 1, cseq => 'CANCEL',
	    timeout => $o{timeout} // 2);
	my $r = $self->answer(487);
	return ($ok ? $ok->status : 0, $r ? $r->status : 0, $got);
}

1;

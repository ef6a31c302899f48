#!/usr/bin/perl
# The C unit tests: every test_* binary in $TOLLGATE_UNIT_DIR (build/t),
# one subtest each, their TAP re-emitted. A binary that exits non-zero,
# stops before its plan, or prints a sanitizer report fails; so does a
# t/unit/test_*.c without a built binary (none is skipped).

use strict;
use warnings;
use lib 't/lib';
use Test::More;
use TAP::Parser;
use Tollgate;

my $dir = $ENV{TOLLGATE_UNIT_DIR} // Tollgate::repo_dir() . '/build/t';
ok(-d $dir, "unit test dir $dir exists") or BAIL_OUT("no $dir: run make first");

opendir(my $dh, $dir) or die "$dir: $!";
my @bins = sort grep { /^test_/ && -f "$dir/$_" && -x _ } readdir $dh;
closedir $dh;

my @sources = map { m{/(test_[^/]+)\.c$} ? $1 : () } glob(Tollgate::repo_dir() . '/t/unit/test_*.c');
my %have = map { $_ => 1 } @bins;
ok($have{$_}, "t/unit/$_.c is built") for sort @sources;
cmp_ok(scalar @bins, '>', 0, 'there are unit tests to run');

my $san = qr/AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer|runtime error:/;

for my $bin (@bins) {
	subtest $bin => sub {
		local $ENV{ASAN_OPTIONS} = $ENV{ASAN_OPTIONS} // 'detect_leaks=1';
		my $parser = TAP::Parser->new({ exec => ["$dir/$bin"], merge => 1 });
		my (@sanitizer, $n);
		while (my $r = $parser->next) {
			if ($r->is_test) {
				$n++;
				my $desc = $r->description;
				$desc =~ s/^\s*-\s*//;
				ok($r->is_actual_ok, $desc);
			} elsif ($r->is_comment) {
				note $r->as_string;
			} elsif ($r->is_unknown) {
				my $line = $r->as_string;
				push @sanitizer, $line if $line =~ $san || @sanitizer;
				note $line;
			}
		}
		ok(!@sanitizer, "$bin: no sanitizer report")
		    or diag join "\n", @sanitizer[0 .. ($#sanitizer < 40 ? $#sanitizer : 40)];
		ok(defined $parser->tests_planned, "$bin printed a plan");
		is($parser->tests_run, $parser->tests_planned // -1, "$bin ran all its planned tests");
		is($parser->exit, 0, "$bin exit status 0")
		    or diag "wait status " . $parser->wait;
		done_testing;
	};
}

done_testing;

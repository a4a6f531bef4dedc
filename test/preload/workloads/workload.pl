# Perl workload for the preload tests: hashes of arrays, sorting, deletes, regexes.
use strict;
use warnings;

my $seed = 12345;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed; }

my %h;
for my $i (1 .. 200000) {
    push @{ $h{ "key" . (rnd() % 50000) } }, $i;
}
print scalar(keys %h), "\n";
my $total = 0;
$total += scalar(@{ $h{$_} }) for keys %h;
print "$total\n";
my @sorted = sort { scalar(@{ $h{$b} }) <=> scalar(@{ $h{$a} }) or $a cmp $b } keys %h;
print join(",", @sorted[0 .. 9]), "\n";
delete $h{$_} for grep { /7$/ } keys %h;
print scalar(keys %h), "\n";

my %words;
my $text = join(" ", map { "w" . (rnd() % 3000) } 1 .. 300000);
$words{$_}++ for split / /, $text;
my @top = (sort { $words{$b} <=> $words{$a} or $a cmp $b } keys %words)[0 .. 9];
print join(" ", map { "$_=$words{$_}" } @top), "\n";

my $s = "";
$s .= chr(65 + $_ % 26) x ($_ % 100) for 1 .. 20000;
print length($s), "\n";
my @parts = split /(?<=Z)/, $s;
print scalar(@parts), "\n";
(my $t = $s) =~ s/([AEIOU]+)/lc($1)/ge;
print length($t), " ", substr($t, 0, 60), "\n";

my %nested;
for my $i (1 .. 50000) {
    $nested{ $i % 101 }{ $i % 1009 } .= chr(97 + $i % 26);
}
my $n = 0;
$n += length($nested{$_}{$_ * 3 % 1009} // "") for keys %nested;
print "$n\n";

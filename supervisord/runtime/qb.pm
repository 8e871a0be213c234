# The qb module a Perl callback sees (perl -Mqb FILE): $qb::jobid, $qb::subid, $qb::workid
# here; qb::event(), qb::jobinfo(...) and the actions (qb::unblock($id), ...) in qb_impl.pm.
#
# Every Perl callback loads this file, so it is kept tiny and uses no module (strict.pm
# alone costs a fifth of a bare perl start): the rest compiles on the first qb:: call.
package qb;

# A copy is numified, never %ENV itself (that would turn its strings into numbers).
sub _env_int { my $v = $ENV{$_[0]}; return (defined $v && $v =~ /^\d+$/) ? 0 + "$v" : undef; }

our $jobid = _env_int('QBJOBID');
our $subid = _env_int('QBSUBID');
our $workid = $ENV{QB_WORK};

our $AUTOLOAD;

sub AUTOLOAD {
    my $name = $AUTOLOAD;
    $name =~ s/.*:://;
    return if $name eq 'DESTROY';
    require qb_impl;
    goto &$AUTOLOAD if defined &$AUTOLOAD;
    die "Undefined subroutine &qb::$name called\n";
}

1;

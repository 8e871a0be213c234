# The qb module a Perl callback sees (perl -Mqb FILE): $qb::jobid, $qb::subid, $qb::workid
# here; qb::event(), qb::jobinfo(...) and the actions (qb::unblock($id), ...) in qb_impl.pm.
#
# Every Perl callback loads this file, so it is kept to a few statements: no module
# (strict.pm alone costs a fifth of a bare perl start), no regular expression, no loop
# (each cost tens of microseconds of a ~1.3 ms start). The rest compiles on the first
# qb:: call. Copies are numified, never %ENV itself (that would turn its strings into
# numbers); a value that is not a plain integer is undef.
package qb;
our ($jobid, $subid, $workid) = @ENV{'QBJOBID', 'QBSUBID', 'QB_WORK'};
$jobid = (defined $jobid && $jobid eq int $jobid) ? 0 + $jobid : undef;
$subid = (defined $subid && $subid eq int $subid) ? 0 + $subid : undef;
our $AUTOLOAD;
sub AUTOLOAD { require qb_impl; goto &qb::_autoload }
1;

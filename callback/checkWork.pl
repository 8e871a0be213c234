#!/usr/bin/perl
#
# Universal callback (done-work-self-*): check a finished work item's output.
#
# Runs once per work item (frame) that completes, fails or is killed. Finds
# the item's output path(s) in the event, checks that each exists and is not
# empty, and prints a report to the job's .cb log.
#
# Where the output path comes from, first found wins:
#   event.work_output               set by the submission client per work item
#   event.resultpackage.outputPaths Qube's work result package (comma list)
#   event.job.outputPath            the job's output path
#   job.outputPath                  the owning job's output path
# A path may hold a frame pattern, "####" or "%04d", filled with the work name
# when that is a number (frame 7 -> 0007).
#
# Exit status: 1 when an output path is given and a file is missing (so the run
# shows as failed in `qbsupervisor history`), else 0 -- an empty file is
# reported as a warning only, and no path at all is not an error.
#
# The daemon starts Perl with -Mqb, so $qb::jobid and $qb::workid are set
# without a `use qb`; outside the daemon they fall back to the environment.

use strict;
use warnings;
no warnings 'once';
use JSON::PP ();

sub read_document {
    local $/;
    my $text = <STDIN>;
    return {} unless defined $text && $text =~ /\S/;
    my $doc = eval { JSON::PP->new->utf8->decode($text) };
    if (!defined $doc || ref $doc ne 'HASH') {
        print "checkWork: stdin is not a JSON object, nothing to check\n";
        return {};
    }
    return $doc;
}

sub hash_at {
    my ($value) = @_;
    return ref $value eq 'HASH' ? $value : {};
}

sub output_paths {
    my ($doc) = @_;
    my $event = hash_at($doc->{event});
    my @candidates = (
        $event->{work_output},
        hash_at($event->{resultpackage})->{outputPaths},
        hash_at($event->{job})->{outputPath},
        hash_at($doc->{job})->{outputPath},
    );
    for my $value (@candidates) {
        next unless defined $value;
        my @paths = ref $value eq 'ARRAY' ? @$value : split /\s*,\s*/, $value;
        @paths = grep { defined && length } @paths;
        return @paths if @paths;
    }
    return ();
}

sub fill_frame {
    my ($path, $work) = @_;
    return $path unless defined $work && $work =~ /^-?\d+$/;
    $path =~ s/(#+)/sprintf('%0*d', length $1, $work)/ge;
    $path =~ s/%(0?\d*)d/sprintf("%${1}d", $work)/ge;
    return $path;
}

my $doc   = read_document();
my $jobid = defined $qb::jobid ? $qb::jobid : ($ENV{QBJOBID} // '?');
my $work  = defined $qb::workid ? $qb::workid : $ENV{QB_WORK};
my $event = hash_at($doc->{event});
my $label = "job $jobid work " . ($work // '?')
    . ' (' . ($event->{name} // $ENV{QB_EVENT_NAME} // '?') . ')';

my @paths = map { fill_frame($_, $work) } output_paths($doc);
if (!@paths) {
    print "checkWork: $label: no output path in the event, nothing to check\n";
    exit 0;
}

my $missing = 0;
for my $path (@paths) {
    if (!-e $path) {
        print "checkWork: $label: MISSING $path\n";
        $missing++;
    } elsif (-s _) {
        printf "checkWork: %s: ok %s (%d bytes)\n", $label, $path, -s _;
    } else {
        print "checkWork: $label: WARNING empty $path\n";
    }
}
exit($missing ? 1 : 0);

# The body of the qb module for Perl callbacks, compiled by qb.pm's AUTOLOAD on first use:
# the event document, jobinfo and the actions, over fd 3.
package qb;

use strict;

# qb.pm's AUTOLOAD lands here, this file compiled: call the sub asked for, now defined.
sub _autoload {
    no strict 'refs';
    my $name = substr($qb::AUTOLOAD, rindex($qb::AUTOLOAD, ':') + 1);
    return if $name eq 'DESTROY';
    goto &{"qb::$name"} if defined &{"qb::$name"};
    die "Undefined subroutine &qb::$name called\n";
}

# JSON::PP costs tens of ms to load: it is required only to read the event document or a
# jobinfo reply; actions are written without it.
my $json;
my $channel;     # fd 3, opened on first use; 0 when there is none
my $buffer = '';
my $hello;       # the first line on fd 3, read when first needed
my $doc;

# fd 3 is ours only when the daemon started us (QB_CALLBACK set) and it is a socket.
sub _channel {
    return $channel if defined $channel;
    $channel = 0;
    if (defined $ENV{QB_CALLBACK} && open(my $fh, '+<&=', 3)) {
        $channel = $fh if -S $fh;
    }
    return $channel;
}

sub _readline {
    my $fh = _channel() or return undef;
    while (index($buffer, "\n") < 0) {
        my $got = sysread($fh, my $chunk, 65536);
        return undef unless $got;
        $buffer .= $chunk;
    }
    my $at = index($buffer, "\n");
    my $line = substr($buffer, 0, $at);
    $buffer = substr($buffer, $at + 1);
    return $line;
}

sub _decode {
    my ($line) = @_;
    return undef unless defined $line;
    unless ($json) { require JSON::PP; $json = JSON::PP->new->utf8; }
    my $value = eval { $json->decode($line) };
    return $value;
}

# A JSON string, without JSON::PP: the few escapes JSON requires; bytes pass as they are.
sub _string {
    my ($text) = @_;
    $text =~ s/(["\\])/\\$1/g;
    $text =~ s/([\x00-\x1f])/sprintf('\\u%04x', ord $1)/ge;
    return qq{"$text"};
}

# The daemon's first line; read before any reply, so replies are the lines after it.
sub _hello {
    $hello = _readline() || '' unless defined $hello;
    return $hello;
}

sub _send {
    my ($data) = @_;
    my $fh = _channel() or return 0;
    while (length $data) {
        my $n = syswrite($fh, $data);
        return 0 unless defined $n && $n > 0;
        $data = substr($data, $n);
    }
    return 1;
}

sub _doc {
    return $doc if $doc;
    my $message = _decode(_hello());
    $doc = (ref $message eq 'HASH' && ref $message->{doc} eq 'HASH') ? $message->{doc} : {};
    return $doc;
}

# The triggering event (a hash ref), and the owning job.
sub event { my $e = _doc()->{event}; return ref $e eq 'HASH' ? $e : {}; }
sub job   { my $j = _doc()->{job};   return ref $j eq 'HASH' ? $j : {}; }
sub jobstatus { return job()->{status}; }

# qb::jobinfo('-id', 12) / qb::jobinfo('-pgrp', 12): a list of job hash refs.
sub jobinfo {
    my ($by, $value) = @_;
    die "qb::jobinfo: expected '-id' or '-pgrp'\n" unless defined $by && $by =~ /^-(id|pgrp)$/;
    die "qb::jobinfo: not a job id: $value\n" unless defined $value && $value =~ /^\d+$/;
    _hello();
    _send(qq({"op":"jobinfo","by":"$by","value":$value}\n)) or return ();
    my $reply = _decode(_readline());
    return ref $reply eq 'ARRAY' ? @$reply : ();
}

my %pattern = (job => qr/^\d+(?:\.\d+)?$/, subjob => qr/^\d+\.\d+$/, work => qr/^\d+:.+$/s);

sub _act {
    my ($verb, $scope, @ids) = @_;
    @ids = map { ref $_ eq 'ARRAY' ? @$_ : $_ } @ids;
    for my $id (@ids) {
        die "qb: not a $scope id: " . (defined $id ? $id : 'undef') . "\n"
            unless defined $id && $id =~ $pattern{$scope};
        _send(qq({"action":"$verb","target":) . _string("$id") . "}\n")
            or print STDERR "qb: no daemon channel; $verb $id not sent\n";
    }
    return 1;
}

for my $verb (qw(unblock block kill remove retry requeue interrupt suspend resume
                 complete fail migrate preempt)) {
    no strict 'refs';
    *{"qb::$verb"}       = sub { _act($verb, 'job', @_) };
    *{"qb::work$verb"}   = sub { _act($verb, 'work', @_) };
    *{"qb::subjob$verb"} = sub { _act($verb, 'subjob', @_) };
}

1;

"""The run machinery: the scheduler (slots and per-job order), the runner, spawning with
posix_spawn and pidfds (or the Python fork server), the fd-3 action channel, the callback
environment, output capture into the job's .cb log, and the .qcb interpreter.

It may import the core only; the daemon hands it requests and takes back results.
"""

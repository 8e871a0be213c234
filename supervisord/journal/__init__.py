"""The journal: the SQLite store, the sequencer that numbers, matches and commits events in
one writer thread, the batches handed to it, and recovery of what was acknowledged but not run.

It may import the core only; it knows runs by the core's value types (``RunRequest``,
``RunResult``) and never imports the run machinery.
"""

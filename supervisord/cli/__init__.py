"""The ``qbsupervisor`` command line: argument parsing, the subcommands and their text output.

It may import the core, the client and (for ``serve`` and ``check``) the daemon.
"""

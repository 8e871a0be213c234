"""The pure core: configuration parsers, the trigger grammar, event validation, matching,
latches, the job registry, the clock's arithmetic and the value types every other wing shares.

Functions from text and dicts to frozen dataclasses. It imports only the standard library's
pure parts — never asyncio, os, socket, sqlite3, threading, subprocess, signal or ctypes — and
nothing else of this package, so that it can be read and tested without a daemon, a file or a
clock (import-linter keeps it so: see ``[tool.importlinter]`` in pyproject.toml).
"""

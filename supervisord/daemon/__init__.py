"""The daemon shell: wiring (``service.Daemon``), ``serve`` (loop and signals), the socket
server and its replies, listening sockets and peer credentials, socket operations, systemd
notification, logging setup, memory release, and loading configuration from disk.

It may import the core, the journal and the run machinery; nothing imports it but the CLI.
"""

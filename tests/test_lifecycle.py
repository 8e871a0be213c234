"""The daemon as a process: start, reload, stop, systemd notifications, bad configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon_harness import DEADLINE, Client, Daemon, event, make_tree, wait_for_file

SLOW = (
    "import os, pathlib, sys\n"
    "root = pathlib.Path(os.environ['QBDIR'])\n"
    "(root / ('started-' + os.environ['QB_EVENT_SEQ'])).write_text('x')\n"
    "sys.stdin.read()\n"
    "import time\n"
    "while not (root / 'release').exists():\n"
    "    time.sleep(0.02)\n"
    "(root / ('finished-' + os.environ['QB_EVENT_SEQ'])).write_text('x')\n"
)


def test_notify_sequence_ready_reloading_ready_stopping(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n")
    d.signal(signal.SIGHUP)
    reloading = d.wait_message("RELOADING=1")
    assert any(f.startswith("MONOTONIC_USEC=") for f in reloading)
    d.wait_message("READY=1")
    assert d.request({"op": "reload"}) == {"ok": True, "callbacks": 1}
    d.wait_message("READY=1")
    assert d.stop() == 0
    d.wait_message("STOPPING=1")
    assert not os.path.exists(d.sock), "the socket file is removed at stop"


def test_watchdog_pings_when_watchdog_usec_is_set(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({}, "", start=False, env={"WATCHDOG_USEC": "200000"})
    d.start()
    for _ in range(3):
        d.wait_message("WATCHDOG=1")


def test_bad_reload_keeps_the_running_table(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "pass\n"}, "a.py = complete-job-self\n")
    (d.root / "callback" / "callbacks.conf").write_text(
        "a.py = complete-jb-self\nmissing.py = done-job-self\nnoequals\n"
    )
    reply = d.request({"op": "reload"})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_config"
    conf = str((d.root / "callback" / "callbacks.conf").resolve())
    joined = "\n".join(reply["errors"])
    for line in (1, 2, 3):
        assert f"callbacks.conf:{line}:" in joined, joined
    assert conf in joined or "callbacks.conf" in joined
    assert d.request({**event("complete"), "op": "match"})["matched"] == ["a.py"]


def test_good_reload_swaps_the_table(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"a.py": "pass\n", "b.py": "pass\n"}, "a.py = complete-job-self\n")
    (d.root / "callback" / "callbacks.conf").write_text("b.py = complete-job-self\n")
    d.signal(signal.SIGHUP)
    d.wait_message("RELOADING=1")
    d.wait_message("READY=1")
    assert d.request({**event("complete"), "op": "match"})["matched"] == ["b.py"]


def test_bad_configuration_at_start_exits_78_naming_file_and_line(short_tmp: Path) -> None:
    root = make_tree({}, "x.sh = complete-job-self\n", root=short_tmp)
    out = subprocess.run(
        [sys.executable, "-m", "supervisord", "serve", "--config", str(root / "etc/qb.conf")],
        env={**os.environ, "QBDIR": str(root)}, capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert out.returncode == 78
    assert "callbacks.conf:1:" in out.stderr and "x.sh" in out.stderr


def test_missing_qbconf_exits_78(short_tmp: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "supervisord", "serve", "--config", str(short_tmp / "nope.conf")],
        capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert out.returncode == 78 and "nope.conf" in out.stderr


def test_sigterm_lets_running_callbacks_finish_and_keeps_queued_ones(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(
        {"slow.py": SLOW}, "slow.py = complete-job-self\n",
        qbconf_extra="supervisor_callback_concurrency = 1\n",
    )  # fmt: skip
    first = d.request(event("complete", job=1))["seq"]
    second = d.request(event("complete", job=2))["seq"]
    wait_for_file(d.root / f"started-{first}")
    d.signal(signal.SIGTERM)
    d.wait_message("STOPPING=1")
    with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
        Client(d.sock)
    (d.root / "release").write_text("go")
    assert d.proc is not None and d.proc.wait(DEADLINE) == 0
    assert (d.root / f"finished-{first}").exists()
    assert not (d.root / f"started-{second}").exists()
    d.log.close()
    d.start()  # the queued run is still stored and runs after the next start
    assert d.request({"op": "wait", "seq": second, "timeout": DEADLINE})["done"] is True
    assert (d.root / f"finished-{second}").exists()


def test_socket_activation_uses_the_inherited_socket(short_tmp: Path) -> None:
    root = make_tree({"a.py": "pass\n"}, "a.py = complete-job-self\n", root=short_tmp)
    d = Daemon(root)
    path = str(root / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    os.set_inheritable(listener.fileno(), True)
    # The child gets the socket as fd 3 with LISTEN_PID set to its own pid by a tiny shim.
    shim = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = "
        "str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; "
        "os.execv(sys.executable, [sys.executable] + sys.argv[2:])"
    )
    try:
        d.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        d.notify.bind(d.notify_path)
        d.log = open(root / "daemon.log", "ab")  # noqa: SIM115
        d.proc = subprocess.Popen(
            [sys.executable, "-c", shim, str(listener.fileno()), "-m", "supervisord", "serve",
             "--config", str(d.conf)],
            env=d.env(), pass_fds=(listener.fileno(),), stdout=d.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        d.wait_message("READY=1")
        assert Client(path).request({"op": "ping"})["ok"] is True
        assert not os.path.exists(d.sock), "no socket of its own when one is inherited"
        assert d.stop() == 0
        assert os.path.exists(path), "a socket we did not create is not unlinked"
    finally:
        listener.close()
        d.close()


def test_peer_not_allowed_is_refused_with_its_uid(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({}, "", qbconf_extra="supervisor_event_socket_mode = 0666\n")
    os.chmod(d.root, 0o755)
    os.chmod(d.root / "run", 0o755)
    probe = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "print(s.makefile().readline().strip())"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         probe, d.sock],
        capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    assert '"not_allowed"' in out.stdout and "65534" in out.stdout, out.stderr
    assert d.request({"op": "ping"})["ok"] is True
    assert d.request({"op": "status"})["events_total"] == 0


def test_stop_leaves_no_process_behind(daemon_factory: Callable[..., Daemon]) -> None:
    grandchild = (
        "import os, pathlib, subprocess\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "pathlib.Path(os.environ['QBDIR'], 'grandchild').write_text(str(p.pid))\n"
    )
    d = daemon_factory({"g.py": grandchild}, "g.py = complete-job-self\n")
    server = d.request({"op": "status"})["forkserver"]
    assert server["mode"] == "forkserver" and server["pid"], server
    seq = d.request(event("complete", job=1))["seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    sleeper = int(wait_for_file(d.root / "grandchild"))
    assert d.stop() == 0
    for pid in (server["pid"], sleeper):
        # Gone, or at most a zombie waiting for init (this sandbox's pid 1 does not reap).
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
        except FileNotFoundError:
            continue
        assert state == "Z", f"pid {pid} still running after stop (state {state})"

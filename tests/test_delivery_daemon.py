"""The delivery policy (SPEC §7) through a real daemon: retries, dead runs, replay, breakers,
caps and fair share, across restarts and kill -9."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DEADLINE, REPO, Daemon, event, wait_for_file

# Appends "attempt replayed redelivered" to attempts-<job>; fails while the file
# `fail-<attempt>` or `fail-always` exists in QBDIR.
FLAKY = (
    "import os, pathlib, sys\n"
    "root = pathlib.Path(os.environ['QBDIR'])\n"
    "attempt = os.environ['QB_ATTEMPT']\n"
    "line = ' '.join([attempt, os.environ.get('QB_REPLAYED', '0'), os.environ['QB_REDELIVERED']])\n"
    "with open(root / ('attempts-' + os.environ['QBJOBID']), 'a') as f:\n"
    "    f.write(line + '\\n')\n"
    "if (root / ('fail-' + attempt)).exists() or (root / 'fail-always').exists():\n"
    "    sys.exit(3)\n"
    "(root / ('ok-' + os.environ['QBJOBID'])).write_text(attempt)\n"
)
# Blocks until QBDIR/release-<job> exists; marks its start.
HOLD = (
    "import os, pathlib, time\n"
    "root = pathlib.Path(os.environ['QBDIR'])\n"
    "job = os.environ['QBJOBID']\n"
    "(root / ('started-' + job)).write_text(os.environ['QB_CALLBACK'])\n"
    "while not (root / ('release-' + job)).exists():\n"
    "    time.sleep(0.01)\n"
)
MARK = (
    "import os, pathlib\n"
    "root = pathlib.Path(os.environ['QBDIR'])\n"
    "(root / ('mark-' + os.environ['QBJOBID'])).write_text(os.environ['QB_CALLBACK'])\n"
)


def until(fact: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll a fact the daemon reports (a reply field) until it holds, under a deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fact()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def attempts(d: Daemon, job: int) -> list[str]:
    path = d.root / f"attempts-{job}"
    return path.read_text().splitlines() if path.exists() else []


def settle(d: Daemon, name: str, job: int) -> int:
    """Send one event and wait until its runs' current attempts have ended; its seq."""
    seq: int = d.request(event(name, job=job))["seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    return seq


def runs_of(d: Daemon, job: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = d.request({"op": "history", "job": job})["runs"]
    return sorted(runs, key=lambda r: r["run_id"])


def test_a_failing_run_is_retried_with_its_attempt_number_until_ok(
    daemon_factory: Callable[..., Daemon],
) -> None:
    policy = "flaky.py:\n  retries: 3\n  backoff: [0.05, 0.2]\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-1").touch()
    (d.root / "fail-2").touch()
    reply = d.request(event("complete", job=7))
    assert reply["matched"] == ["flaky.py"]
    assert wait_for_file(d.root / "ok-7") == "3"
    assert attempts(d, 7) == ["1 0 0", "2 0 0", "3 0 0"]
    runs = until(lambda: [r for r in runs_of(d, 7) if r["ended"]][2:] and runs_of(d, 7), "runs")
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "failed"), (2, "failed"), (3, "ok")]
    assert {r["first_run_id"] for r in runs} == {runs[0]["run_id"]}
    assert not any(r["dead"] for r in runs)
    assert d.request({"op": "status"})["runs_retried_total"] == 2


def test_the_last_failed_attempt_is_dead_and_replay_dead_runs_it_again(
    daemon_factory: Callable[..., Daemon],
) -> None:
    policy = "flaky.py:\n  retries: 2\n  backoff: [0.05, 0.05]\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-always").touch()
    d.request(event("complete", job=8))
    dead = until(lambda: d.request({"op": "dead"})["runs"], "a dead run")
    assert [(r["job_id"], r["attempt"], r["outcome"], r["dead"]) for r in dead] == [
        (8, 3, "failed", True)
    ]
    status = d.request({"op": "status"})
    assert status["runs_dead_total"] == 1
    assert status["per_callback"]["flaky.py"]["dead"] == 1
    history_dead = d.request({"op": "history", "dead": True})["runs"]
    assert [r["run_id"] for r in history_dead] == [dead[0]["run_id"]]
    # Fixed: replay every dead run; it runs once more, as attempt 1, marked replayed.
    (d.root / "fail-always").unlink()
    replay = d.request({"op": "replay", "dead": True, "callback": "flaky.py"})
    assert replay["ok"] is True and len(replay["run_ids"]) == 1
    assert wait_for_file(d.root / "ok-8") == "1"
    assert attempts(d, 8)[-1] == "1 1 0"
    assert len(attempts(d, 8)) == 4


def test_replay_by_run_id_and_by_seq_and_bad_requests(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"mark.py": MARK}, "mark.py = complete-job-self\n")
    seq = settle(d, "complete", 5)
    [run] = runs_of(d, 5)
    (d.root / "mark-5").unlink()
    reply = d.request({"op": "replay", "runs": [run["run_id"], 999999]})
    assert reply["missing"] == [999999] and len(reply["run_ids"]) == 1
    wait_for_file(d.root / "mark-5")
    (d.root / "mark-5").unlink()
    assert len(d.request({"op": "replay", "seq": seq})["run_ids"]) == 1
    wait_for_file(d.root / "mark-5")
    replayed = [r for r in runs_of(d, 5) if r["replayed"]]
    assert len(replayed) == 2 and all(r["seq"] == seq for r in replayed)
    bad = d.request({"op": "replay", "runs": [1], "seq": 1})
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_event"
    assert d.request({"op": "ping"})["ok"] is True  # the connection and daemon live on


def test_a_retry_due_during_a_kill9_runs_once_after_restart(
    daemon_factory: Callable[..., Daemon],
) -> None:
    policy = "flaky.py:\n  retries: 1\n  backoff: [1.5, 1.5]\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-1").touch()
    d.request(event("complete", job=9))
    until(lambda: any(r["state"] == "retrying" for r in runs_of(d, 9)), "a stored retry")
    d.kill9()
    d.start()
    assert wait_for_file(d.root / "ok-9") == "2"
    assert attempts(d, 9) == ["1 0 0", "2 0 0"]


def test_breaker_opens_holds_new_runs_and_resume_releases_them(
    daemon_factory: Callable[..., Daemon],
) -> None:
    policy = "flaky.py:\n  breaker: {failures: 2, cooldown: 3600}\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-always").touch()
    for job in (1, 2):
        settle(d, "complete", job)
    status = d.request({"op": "status"})
    assert status["per_callback"]["flaky.py"]["breaker"] == "open"
    [breaker] = status["breakers"]
    assert breaker["callback"] == "flaky.py" and breaker["retry_at"] > time.time() + 3000
    # Held: acknowledged and matched, stored, not started; `wait` does not wait for them.
    for job in (3, 4, 5):
        reply = d.request(event("complete", job=job))
        assert reply["matched"] == ["flaky.py"]
    waited = d.request({"op": "wait", "seq": reply["seq"], "timeout": DEADLINE})
    assert waited["done"] is True and waited["held"] == 3
    assert d.request({"op": "status"})["runs_held"] == 3
    assert attempts(d, 3) == []
    # A held run survives a restart, still held.
    assert d.stop() == 0
    d.start()
    assert d.request({"op": "status"})["per_callback"]["flaky.py"]["held"] == 3
    (d.root / "fail-always").unlink()
    assert d.request({"op": "resume", "callback": "flaky.py"})["was"] == "open"
    for job in (3, 4, 5):
        wait_for_file(d.root / f"ok-{job}")
    assert d.request({"op": "status"})["per_callback"]["flaky.py"]["breaker"] == "closed"


def test_breaker_half_open_trial_closes_it_on_success(
    daemon_factory: Callable[..., Daemon],
) -> None:
    policy = "flaky.py:\n  breaker: {failures: 1, cooldown: 0.5}\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-always").touch()
    settle(d, "complete", 1)
    assert d.request({"op": "status"})["per_callback"]["flaky.py"]["breaker"] == "open"
    (d.root / "fail-always").unlink()
    for job in (2, 3):
        d.request(event("complete", job=job))
    wait_for_file(d.root / "ok-2")  # the trial, after the cooldown
    wait_for_file(d.root / "ok-3")  # released once the trial was ok
    until(
        lambda: d.request({"op": "status"})["per_callback"]["flaky.py"]["breaker"] == "closed",
        "the breaker to close",
    )


def flood_then_mark(
    daemon_factory: Callable[..., Daemon], slots: int, policy: str | None = None
) -> Daemon:
    """Five runs of hold.py (the first one started), then one event for mark.py."""
    files = {"hold.py": HOLD, "mark.py": MARK} | ({"policy.yaml": policy} if policy else {})
    d = daemon_factory(
        files, "hold.py = complete-job-self\nmark.py = failed-job-self\n",
        qbconf_extra=f"supervisor_callback_concurrency = {slots}\n"
        "supervisor_callback_per_job_order = false\n",
    )  # fmt: skip
    for job in range(1, 6):
        d.request(event("complete", job=job))
    wait_for_file(d.root / "started-1")
    d.request(event("failed", job=100))
    return d


def test_concurrency_cap_and_fair_share(daemon_factory: Callable[..., Daemon]) -> None:
    """One global slot: a flood of hold.py waits its turn behind mark.py's one run."""
    d = flood_then_mark(daemon_factory, slots=2, policy="hold.py:\n  concurrency: 1\n")
    # The second slot is free but hold.py is at its cap: mark.py takes it at once.
    assert wait_for_file(d.root / "mark-100") == "mark.py"
    status = d.request({"op": "status"})["per_callback"]["hold.py"]
    assert (status["running"], status["queued"]) == (1, 4)
    assert not (d.root / "started-2").exists()
    for job in range(1, 6):
        (d.root / f"release-{job}").touch()
    last = d.request({"op": "status"})["last_seq"]
    assert d.request({"op": "wait", "seq": last, "timeout": DEADLINE})["done"]


def test_round_robin_gives_the_next_slot_to_another_callback(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = flood_then_mark(daemon_factory, slots=1)
    (d.root / "release-1").touch()
    # Round robin: mark.py's run is next, not hold.py's second of five.
    assert wait_for_file(d.root / "mark-100") == "mark.py"
    for job in range(2, 6):
        (d.root / f"release-{job}").touch()
    last = d.request({"op": "status"})["last_seq"]
    assert d.request({"op": "wait", "seq": last, "timeout": DEADLINE})["done"]
    runs = d.request({"op": "history"})["runs"]
    order = [(r["callback"], r["job_id"]) for r in sorted(runs, key=lambda r: r["started"])]
    assert order[:3] == [("hold.py", 1), ("mark.py", 100), ("hold.py", 2)]
    started = sorted(p.name for p in d.root.glob("started-*"))
    assert started == [f"started-{j}" for j in range(1, 6)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("flaky.py:\n  retrys: 3\n", "policy.yaml:2: unknown key 'retrys'", id="key"),
        pytest.param("nosuch.py:\n  retries: 1\n", "policy.yaml:1: 'nosuch.py'", id="callback"),
        pytest.param("flaky.py:\n  retries: -1\n", "policy.yaml:2: retries", id="range"),
    ],
)
def test_a_bad_policy_is_refused_by_check_serve_and_reload(
    daemon_factory: Callable[..., Daemon], text: str, message: str
) -> None:
    d = daemon_factory({"flaky.py": FLAKY}, "flaky.py = complete-job-self\n")
    (d.root / "callback" / "policy.yaml").write_text(text)
    reload = d.request({"op": "reload"})
    assert reload["ok"] is False and reload["error"]["code"] == "invalid_config"
    assert any(message in e for e in reload["errors"]), reload["errors"]
    assert d.request({"op": "ping"})["ok"] is True
    check = subprocess.run(
        [sys.executable, "-m", "supervisord", "check", "--config", str(d.conf)],
        env=d.env(), capture_output=True, text=True, cwd=REPO, timeout=DEADLINE,
    )  # fmt: skip
    assert check.returncode == 1 and message in check.stdout
    assert d.stop() == 0
    serve = subprocess.run(
        [sys.executable, "-m", "supervisord", "serve", "--config", str(d.conf)],
        env=d.env(), capture_output=True, text=True, cwd=REPO, timeout=DEADLINE,
    )  # fmt: skip
    assert serve.returncode == 78 and message in serve.stdout + serve.stderr


def test_status_cli_shows_the_per_callback_table(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    policy = "flaky.py:\n  breaker: {failures: 1, cooldown: 3600}\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-always").touch()
    settle(d, "complete", 1)
    out = subprocess.run(
        [sys.executable, "-m", "supervisord", "status", "--socket", d.sock],
        env=d.env(), capture_output=True, text=True, cwd=REPO, timeout=DEADLINE,
    ).stdout  # fmt: skip
    header = next(line for line in out.splitlines() if line.startswith("CALLBACK"))
    assert header.split() == [
        "CALLBACK", "LANGUAGE", "RUNNING", "QUEUED", "HELD", "RETRYING", "DEAD", "BREAKER",
        "P50", "P99",
    ]  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("flaky.py"))
    assert "python" in row and "open until " in row


def test_policy_timeout_overrides_the_global_one(daemon_factory: Callable[..., Daemon]) -> None:
    slow = "import time\ntime.sleep(60)\n"
    d = daemon_factory(
        {"slow.py": slow, "policy.yaml": "slow.py:\n  timeout: 0.5\n"},
        "slow.py = complete-job-self\n",
    )
    settle(d, "complete", 4)
    [run] = runs_of(d, 4)
    assert (run["outcome"], run["description"]) == ("timeout", "timed out after 0.5 s")


def test_reload_applies_a_new_policy_and_metrics_count_it(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"flaky.py": FLAKY}, "flaky.py = complete-job-self\n")
    (d.root / "fail-1").touch()
    settle(d, "complete", 1)
    assert attempts(d, 1) == ["1 0 0"]  # no policy: Qube's one attempt
    policy = "flaky.py:\n  retries: 1\n  backoff: [0.05, 0.05]\n"
    (d.root / "callback" / "policy.yaml").write_text(policy)
    assert d.request({"op": "reload"})["ok"] is True
    d.request(event("complete", job=2))
    assert wait_for_file(d.root / "ok-2") == "2"
    (d.root / "fail-2").touch()
    d.request(event("complete", job=3))
    until(lambda: d.request({"op": "dead"})["runs"], "a dead run")
    lines = d.request({"op": "metrics"})["text"].splitlines()
    assert "qbcallbacks_runs_retried_total 2" in lines
    assert "qbcallbacks_runs_dead_total 1" in lines


def test_removing_a_breaker_from_the_policy_releases_its_held_runs(
    daemon_factory: Callable[..., Daemon],
) -> None:
    policy = "flaky.py:\n  breaker: {failures: 1, cooldown: 3600}\n"
    d = daemon_factory({"flaky.py": FLAKY, "policy.yaml": policy}, "flaky.py = complete-job-self\n")
    (d.root / "fail-always").touch()
    settle(d, "complete", 1)
    assert d.request(event("complete", job=2))["matched"] == ["flaky.py"]
    assert d.request({"op": "status"})["runs_held"] == 1
    (d.root / "fail-always").unlink()
    (d.root / "callback" / "policy.yaml").write_text("flaky.py:\n  retries: 0\n")
    assert d.request({"op": "reload"})["ok"] is True
    assert wait_for_file(d.root / "ok-2") == "1"
    assert d.request({"op": "status"})["breakers"] == []


def test_replay_of_many_run_ids_is_read_in_chunks(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"mark.py": MARK}, "mark.py = complete-job-self\n")
    seq = settle(d, "complete", 6)
    [run] = runs_of(d, 6)
    ids = [run["run_id"], *range(10**6, 10**6 + 40_000)]  # past SQLite's parameter limit
    reply = d.request({"op": "replay", "runs": ids})
    assert reply["ok"] is True and len(reply["run_ids"]) == 1
    assert len(reply["missing"]) == 40_000
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    assert [r["replayed"] for r in runs_of(d, 6)] == [False, True]

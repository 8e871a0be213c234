"""The per-callback duration samples behind `status`'s p50/p99."""

from __future__ import annotations

from supervisord.daemon.ops import Samples


def test_keeps_the_last_size_values() -> None:
    samples = Samples(4)
    assert samples.values() == []
    for v in (1.0, 2.0, 3.0):
        samples.append(v)
    assert sorted(samples.values()) == [1.0, 2.0, 3.0]
    for v in (4.0, 5.0, 6.0):
        samples.append(v)
    assert sorted(samples.values()) == [3.0, 4.0, 5.0, 6.0]

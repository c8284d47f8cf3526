"""FSDP failure modes end on every rank: a model that is not sharded is refused, an empty
shard is refused everywhere before any FSDP collective starts, a non-finite product raises
on every rank, and a rank whose loss raises mid-product (and exits, as an uncaught error under
torchrun does) makes the other rank fail promptly instead of waiting forever. The local shards
are restored bit for bit throughout."""

from __future__ import annotations

import pytest

from tests.distributed._launch import launch

pytestmark = pytest.mark.timeout(240)


def test_fsdp_failures_reach_every_rank() -> None:
    # a 60 s process-group timeout: an error well before it comes from the peer's exit
    r0, r1 = launch("fsdp_failure", pg_timeout=60.0)
    for r in (r0, r1):
        assert r["plain_error"][0] == "InvalidArgumentError"
        assert "is not an FSDP2 DTensor" in r["plain_error"][1]
        kind, message = r["empty_error"]
        assert kind == "InvalidArgumentError"
        assert "rank(s) [1]" in message
        assert "non-empty shard" in message
        assert r["dense_error"][0] == "InvalidArgumentError"
        assert "to_dense() is not supported" in r["dense_error"][1]
        assert r["nan_error"][0] == "NonFiniteError"
        assert "non-finite on rank(s)" in r["nan_error"][1]
        assert r["unchanged"]  # the local shards were restored after the interrupted sweep
    assert r1["error"] == ("ValueError", "loss exploded on rank 1")
    assert r0["error"] is not None
    assert r0["error"][0] == "RuntimeError"
    assert r0["elapsed"] < 40

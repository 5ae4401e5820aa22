"""wiring.build: what the flags become in one process's parts."""

import pytest

from geproxy import tls, wiring
from geproxy.settings import parse


def transport_for(argv, tmp_path):
    settings, _notes = parse(["--initial-cluster", "m0=http://127.0.0.1:2380",
                              "--data-dir", str(tmp_path)] + argv, environ={})
    parts = wiring.build(settings, tls.load(settings))
    try:
        return parts.transport
    finally:
        parts.transport.close()


@pytest.mark.parametrize("argv, pipes", [
    ([], 2),
    (["--workers", "2"], 1),  # each worker's share: two pipes per member in all
    (["--workers", "3"], 1),  # at least one each
    (["--workers", "2", "--proxy-pipeline", "4"], 2),
    (["--workers", "2", "--proxy-pipeline", "0"], 0),  # none stays none
])
def test_workers_share_the_pipes_to_each_member(argv, pipes, tmp_path):
    assert transport_for(argv, tmp_path).pipelines == pipes

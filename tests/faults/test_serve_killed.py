"""`serve` killed (SIGKILL) in the middle of a stream of payment notifications: started
again, it takes what the channels send again — every notification not answered with
success — and every payment is applied exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

from backend.config import Settings
from tests.faults.conftest import (
    Orders,
    applied,
    once_each,
    paid_ids,
    resend_until_taken,
    serve,
)

N = 200
KILL_AFTER = 60      # answered with success, then SIGKILL


def test_serve_killed_mid_stream_loses_and_doubles_nothing(live_settings: Settings,
                                                           tmp_path: Path) -> None:
    server = serve(live_settings, tmp_path / "serve.log").spawn()
    killed = threading.Event()

    def kill_once(answered: int) -> None:
        if answered >= KILL_AFTER and not killed.is_set():
            killed.set()
            server.kill()

    try:
        orders = Orders(live_settings, N)
        server.ready()
        first = orders.send(server.base_url, range(1, N + 1), concurrency=12, after=kill_once)
        assert killed.is_set() and server.proc is not None and server.proc.returncode == -9
        answered = first.taken
        unanswered = first.unanswered
        assert len(answered) + len(unanswered) == N and len(unanswered) > 0
        assert not first.refused, first.refused     # killed: no answer at all, never a refusal
        # What was answered with success is in the database; some of what was not may be
        # too (committed, the answer lost with the process): a repeat when sent again.
        in_db = paid_ids(live_settings.database_url, range(1, N + 1))
        assert answered <= in_db
        committed_unanswered = len(in_db - answered)

        server.start()
        rounds = resend_until_taken(orders, server.base_url, unanswered)
        assert rounds == [len(unanswered)]          # all taken at the first resend
    finally:
        server.stop()
    assert applied(live_settings.database_url, range(1, N + 1)) == once_each(N)
    print(f"\nserve killed: {len(answered)} answered / {len(unanswered)} unanswered before "
          f"the kill ({committed_unanswered} of them committed, the answer lost) -> all {N} "
          "applied once after one resend")

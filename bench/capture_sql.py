"""Print the SQL one channel notification runs, as PostgreSQL receives it.

    .venv/bin/python bench/capture_sql.py [--channel wechat|alipay|unionpay|all]
    .venv/bin/python bench/capture_sql.py --order alipay_qr [--wire]   # an order creation

Creates a small fresh database (``bench_capture``), seeds a few pending orders the way
``notify_load.py`` does, and calls the notification path (``backend.notifications.service
.handle``) in-process with a real-format signed notification from the simulator: first a
few to warm up (keys, pool, psycopg's prepared statements), then one new notification and
the same one again (a re-delivery). The service's engine connects through a small loopback
proxy that reads PostgreSQL's frontend protocol: each Bind (or simple Query) is one
statement run, each Sync ends one round trip. That is the truth whichever layer sent the
statement — the ORM, Core, or the hot path's driver-level statements (``backend/sql.py``) —
and it shows BEGIN, COMMIT and which statements went as prepared ones.

For an order creation (``--order``) it prints what SQLAlchemy sends
(``before_cursor_execute``), and with ``--wire`` the round trips too.

``bench/notify_baseline.sql`` (the pgbench baseline) is written from this list by
``bench/baseline_sql.py``: when the path changes, run this, compare, and update the
template there (it says which statement each line mirrors).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as sup  # noqa: E402
from sqlalchemy import event  # noqa: E402

from backend.migrate import upgrade  # noqa: E402
from payment_adapters.base import Channel  # noqa: E402

DB = sup.own_database_name("bench_capture")
PER_CHANNEL = 8


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 12] + f"…[{len(text)} chars]"


class Recorder:
    def __init__(self, engine: Any) -> None:
        self.items: list[str] = []
        self.on = False
        event.listen(engine, "before_cursor_execute", self._stmt)
        event.listen(engine, "begin", lambda conn: self._mark("-- begin (SQLAlchemy)"))
        event.listen(engine, "commit", lambda conn: self._mark("-- COMMIT"))
        event.listen(engine, "rollback", lambda conn: self._mark("-- ROLLBACK"))

    def _mark(self, text: str) -> None:
        if self.on:
            self.items.append(text)

    def _stmt(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:
        if not self.on:
            return
        shown = (", ".join(f"{k}={_short(v)}" for k, v in params.items())
                 if isinstance(params, dict) else _short(params))
        self.items.append(f"{' '.join(statement.split())}\n      params: {shown}")


class WireCounter:
    """A loopback TCP proxy in front of PostgreSQL that reads the frontend protocol:
    every simple Query and every Parse/Bind/Execute up to a Sync is one round trip."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.log: list[str] = []
        self.on = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
            threading.Thread(target=self._frontend, args=(client, server), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _frontend(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        started = False
        prepared: dict[bytes, str] = {}    # this connection's named statements
        pending: list[str] = []            # statements bound since the last Sync
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                buf += data
                while True:
                    if not started:          # startup packet: no type byte
                        if len(buf) < 4:
                            break
                        n = struct.unpack("!I", buf[:4])[0]
                        if len(buf) < n:
                            break
                        buf = buf[n:]
                        started = True
                        continue
                    if len(buf) < 5:
                        break
                    kind, n = buf[:1], struct.unpack("!I", buf[1:5])[0]
                    if len(buf) < 1 + n:
                        break
                    body, buf = buf[5:1 + n], buf[1 + n:]
                    self._message(kind, body, prepared, pending)
        except OSError:
            pass

    def _message(self, kind: bytes, body: bytes, prepared: dict[bytes, str],
                 pending: list[str]) -> None:
        if kind == b"Q":
            self._record([body.rstrip(b"\0").decode("utf-8", "replace")])
        elif kind == b"P":
            name, _, rest = body.partition(b"\0")
            text, _, _ = rest.partition(b"\0")
            prepared[name] = text.decode("utf-8", "replace")
            if name:
                prepared[name] = "[prepared] " + prepared[name]
        elif kind == b"B":             # one execution of a statement
            _portal, _, rest = body.partition(b"\0")
            name, _, _ = rest.partition(b"\0")
            pending.append(prepared.get(name, f"[prepared {name.decode()}]"))
        elif kind == b"S":
            self._record(list(pending))
            pending.clear()

    def _record(self, statements: list[str]) -> None:
        with self.lock:
            if self.on:
                self.log.append([" ".join(text.split()) for text in statements])


def _is_statement(text: str) -> bool:
    """BEGIN, COMMIT and ROLLBACK are the transaction around the statements."""
    return text.removeprefix("[prepared] ").split(" ", 1)[0].upper() not in (
        "BEGIN", "COMMIT", "ROLLBACK", "")


def _wire_url(wire: WireCounter) -> str:
    return (f"postgresql://postgres@127.0.0.1:{wire.port}/{DB}?sslmode=disable"
            "&gssencmode=disable")


@dataclass
class Captured:
    """A runtime whose engine connects through the wire counter, over seeded pending orders."""

    rt: Any
    wire: WireCounter
    factory: Any
    ranges: dict[Channel, range]

    def run(self, channel: Channel, headers: dict[str, str], body: bytes) -> tuple[Any, list[
            list[str]]]:
        """One notification through the path: its answer and the round trips it made."""
        from backend.notifications.service import handle

        self.wire.log.clear()
        self.wire.on = True
        answer = handle(self.rt, channel, headers, body)
        self.wire.on = False
        return answer, list(self.wire.log)


@contextmanager
def captured(keep: bool = False) -> Iterator[Captured]:
    from backend.runtime import Runtime

    url = sup.database_url(DB)
    sup.recreate_database(url)
    rt = None
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
            wire = WireCounter()
            settings = sup.bench_settings(_wire_url(wire), Path(tmp), 8000,
                                          log_level="WARNING")
            numbers = sup.order_numbers(settings)
            n = PER_CHANNEL * len(Channel)
            ranges = sup.channel_ranges(n, {c: 1.0 for c in Channel})
            sup.seed_pending_orders(url, n, ranges, numbers)
            rt = Runtime(settings)
            yield Captured(rt, wire, sup.NotificationFactory(settings, numbers, 38_000), ranges)
    finally:
        if rt is not None:
            rt.close()
        if not keep:
            sup.drop_database(url)


def _warm_up(c: Captured, channel: Channel, ids: list[int]) -> None:
    """Past psycopg's prepare threshold, keys and pool warm."""
    for i in ids:
        answer, _ = c.run(channel, *c.factory.build(channel, i)[1:])
        assert answer.status in (200, 204), answer


def count_statements(channel: Channel = Channel.WECHAT) -> tuple[int, int]:
    """How many statements the notification path runs today, as PostgreSQL receives them:
    (a new notification, the same one again). Used by notify_load.py to check that
    notify_baseline.sql still mirrors it."""
    with captured() as c:
        ids = list(c.ranges[channel])
        _warm_up(c, channel, ids[:2])
        _, headers, body = c.factory.build(channel, ids[2])
        counts = []
        for _ in range(2):
            _, trips = c.run(channel, headers, body)
            counts.append(sum(_is_statement(x) for trip in trips for x in trip))
        return counts[0], counts[1]


def capture_order(channel: str, wire_on: bool, idempotency_key: bool = True) -> None:
    """The statements of one order creation (POST /api/v1/orders) and its QR image fetches,
    through the served app (the channel call goes to the simulator over loopback)."""
    import uuid

    import httpx

    from backend.app import create_app
    from backend.demo.generator import load_demo
    from backend.runtime import Runtime
    from tests.servers import ServedApp

    url = sup.database_url(DB)
    sup.recreate_database(url)
    rt = None
    served = None
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
            wire = WireCounter() if wire_on else None
            db_url = url if wire is None else _wire_url(wire)
            port = sup.free_port()
            settings = sup.bench_settings(db_url, Path(tmp), port, log_level="WARNING")
            rt = Runtime(settings)
            load_demo(rt, residents=200, progress=False)
            from order_create import demo_people

            people = demo_people(rt, 200, 2021)
            served = ServedApp(create_app(runtime=rt), port).start()
            rec = Recorder(rt.engine)
            http = httpx.Client(base_url=served.base_url, timeout=30)
            token = http.post("/api/v1/auth/wechat",
                              json={"code": "sandbox:oCapture0001"}).json()["access_token"]
            http.headers["Authorization"] = f"Bearer {token}"
            items = []
            for person in people[:40]:
                data = http.post("/api/v1/residents/lookup", json={
                    "name": person.name, "id_number": person.id_number,
                    "year": sup.YEAR}).json()
                items += [{"resident_ref": data["resident"]["ref"], "insurance": i["insurance"]}
                          for i in data["items"] if i["status"] == "unpaid" and i["payable"]]
            for n in range(7):        # warm-up, then the one shown
                key = {"Idempotency-Key": uuid.uuid4().hex} if idempotency_key else {}
                if n == 6:
                    rec.items.clear()
                    rec.on = True
                    if wire is not None:
                        wire.log.clear()
                        wire.on = True
                r = http.post("/api/v1/orders", headers=key, json={
                    "year": sup.YEAR, "channel": channel, "items": [items.pop()]})
                png = r.json()["payment"]["qr_image_url"]
                marks = len(rec.items)
                if rec.on:
                    rec.items.append("-- then GET the QR PNG (first fetch):")
                http.get(png)
                rec.on = False
                if wire is not None:
                    wire.on = False
            stmts = [x for x in rec.items[:marks] if not x.startswith("--")]
            commits = sum(1 for x in rec.items[:marks] if x == "-- COMMIT")
            print(f"\n=== POST /api/v1/orders ({channel}, Idempotency-Key: "
                  f"{'yes' if idempotency_key else 'no'}) → HTTP {r.status_code}")
            print(f"--- SQLAlchemy: {len(stmts)} statements in {commits} transactions "
                  "(then the first QR PNG fetch)")
            k = 0
            for x in rec.items:
                if x.startswith("--"):
                    print(f"      {x}")
                else:
                    k += 1
                    print(f"  {k:2d}. {x[:300]}")
            if wire is not None:
                print(f"--- PostgreSQL received {len(wire.log)} round trips (order + QR):")
                for k, trip in enumerate(wire.log):
                    print(f"  {k + 1:2d}. {' | '.join(trip)[:160]}")
    finally:
        if served is not None:
            served.stop()
        if rt is not None:
            rt.close()
        sup.drop_database(url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel", default="all", choices=["all", *[c.value for c in Channel]])
    p.add_argument("--wire", action="store_true",
                   help="with --order: also show what PostgreSQL received")
    p.add_argument("--keep", action="store_true", help="do not drop the database")
    p.add_argument("--order", metavar="CHANNEL",
                   help="instead: one order creation (alipay_qr, wechat_native, …) and its QR")
    p.add_argument("--no-idempotency-key", action="store_true", help="with --order")
    args = p.parse_args(argv)
    if args.order:
        capture_order(args.order, args.wire, not args.no_idempotency_key)
        return 0

    channels = [c for c in Channel if args.channel in ("all", c.value)]
    with captured(args.keep) as c:
        for ch in channels:
            ids = list(c.ranges[ch])
            _warm_up(c, ch, ids[:6])
            _, headers, body = c.factory.build(ch, ids[6])
            for label in ("new notification", "the same notification again"):
                answer, trips = c.run(ch, headers, body)
                n_stmts = sum(_is_statement(x) for trip in trips for x in trip)
                print(f"\n=== {ch.value}: {label} → HTTP {answer.status} {answer.body[:40]!r}")
                print(f"--- PostgreSQL received {n_stmts} statements in {len(trips)} "
                      "round trips (a line each):")
                for k, trip in enumerate(trips):
                    for j, x in enumerate(trip):
                        print(f"  {str(k + 1) + '.' if j == 0 else '':>4} {x[:400]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

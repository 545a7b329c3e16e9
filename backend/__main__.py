"""The command line of the resident insurance collection backend.

commands:
  serve     run the API (without DATABASE_URL it runs the worker's jobs too)
  worker    run the outbox relay and scheduled jobs
  migrate   apply database migrations
  import    import regions, residents, department lists or deaths (CSV or XLSX)
  users     staff accounts (users create …)
  demo      load a generated demo district
  sandbox   drive the channel simulator of a running serve (sandbox pay …)
  receipts  check a receipt's token offline, without the database (receipts verify …)

Each command tells more with --help, e.g. python -m backend import --help
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from backend.config import ConfigError, Settings, get_settings
from backend.errors import AppError


def _runtime():  # type: ignore[no-untyped-def]
    from backend.runtime import Runtime

    return Runtime(get_settings())


def uvicorn_options(settings: Settings, *, host: str, port: int,
                    workers: int) -> dict[str, Any]:
    """How `serve` runs uvicorn. Everything uvicorn would otherwise take from the environment
    (WEB_CONCURRENCY, FORWARDED_ALLOW_IPS) is given here, from Settings."""
    trusted = settings.trusted_proxy_list
    return {"host": host, "port": port, "workers": workers, "log_config": None,
            "server_header": False,
            # the access line is backend.ops.RequestLog's (JSON, with the request id)
            "access_log": False,
            # X-Forwarded-For names the client only when a trusted proxy sent it; otherwise
            # anyone could pick the address the per-IP limits count.
            "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted}


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from backend.app import create_app
    from backend.logs import configure_logging

    settings = get_settings()
    workers = args.workers if args.workers is not None else settings.web_concurrency
    if workers > 1 and settings.sandbox:
        print(f"error: {workers} server processes asked for (--workers or WEB_CONCURRENCY), "
              "but the channel simulator keeps its trades in one process: serve the sandbox "
              "(PAYMENT_SANDBOX) with one", file=sys.stderr)
        return 2
    if workers > 1 and not settings.redis_url:
        print(f"error: {workers} server processes asked for without REDIS_URL: the lookup and "
              "login limits would count apart in each process (and multiply); set REDIS_URL",
              file=sys.stderr)
        return 2
    settings.check_live_mode()
    configure_logging(settings.log_level, settings.log_format)
    options = uvicorn_options(settings, host=args.host, port=args.port, workers=workers)
    if workers > 1:
        # each process builds its own app (and Runtime) from the same Settings, and counts
        # its metrics into files that /metrics sums, whichever process answers it
        with _metrics_dir():
            uvicorn.run("backend.app:create_logged_app", factory=True, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0


@contextmanager
def _metrics_dir() -> Iterator[None]:
    """prometheus-client's multiprocess mode for ``serve --workers N``: a folder the
    processes write their counts to (PROMETHEUS_MULTIPROC_DIR; made here and removed at the
    end unless given, and emptied at the start: counts of an earlier serve would add up)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="collect-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):
        old.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def cmd_migrate(args: argparse.Namespace) -> int:
    from backend.migrate import current_revision, upgrade

    url = get_settings().resolved_database_url
    before = current_revision(url) if not url.startswith("sqlite:///") or Path(
        url.removeprefix("sqlite:///")).exists() else None
    upgrade(url)
    after = current_revision(url)
    if before == after:
        print(f"database is at the newest migration ({after}): nothing to apply")
    else:
        print(f"database migrated from {before or 'empty'} to {after}, the newest migration")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from backend.imports.service import run_import

    rt = _runtime()
    report = run_import(rt, args.kind, Path(args.file), skip_bad_rows=args.skip_bad_rows,
                        progress=not args.quiet)
    print(report.summary(), file=sys.stderr if report.errors else sys.stdout)
    return 0 if report.committed else 1


def cmd_users_create(args: argparse.Namespace) -> int:
    from backend.auth.service import create_staff_user
    from backend.db import unit_of_work

    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("error: --password-stdin: no password on the first line of standard input",
                  file=sys.stderr)
            return 2
    rt = _runtime()
    with unit_of_work(rt.sessions) as session:
        user = create_staff_user(session, username=args.username, password=password,
                                 role=args.role, town_code=args.town,
                                 village_code=args.village, department=args.department,
                                 clock=rt.clock)
        print(f"created {user.role} {user.username}")
    return 0


def cmd_users_set_active(args: argparse.Namespace) -> int:
    from backend.auth.service import set_staff_active

    active = args.action == "activate"
    user = set_staff_active(_runtime(), args.username, active, reason=args.reason)
    print(f"{'activated' if active else 'deactivated'} {user.username}"
          + ("" if active else "; the tokens it held no longer work"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo.generator import load_demo

    rt = _runtime()
    print(load_demo(rt, residents=args.residents, seed=args.seed, progress=not args.quiet))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from backend.logs import configure_logging
    from backend.worker.runner import run_forever

    settings = get_settings()
    settings.check_live_mode()
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_forever(_runtime(), stop)
    return 0


# What each channel's notify endpoint answers when it took the notification.
_TAKEN = {"wechat": lambda status, text: status in (200, 204),
          "alipay": lambda status, text: status == 200 and text.strip() == "success",
          "unionpay": lambda status, text: status == 200 and text.strip() == "SUCCESS"}


def cmd_sandbox_clock(args: argparse.Namespace) -> int:
    """Show, or move forward, the business clock of a running sandbox serve."""
    from datetime import datetime, timedelta

    import httpx

    from backend.clock import SHANGHAI

    base = (args.url or get_settings().public_base_url).rstrip("/")
    try:
        now = datetime.fromisoformat(httpx.get(base + "/sandbox/clock", timeout=10)
                                     .raise_for_status().json()["now"])
        target: datetime | None = None
        if args.to:
            target = datetime.fromisoformat(args.to)
            if target.tzinfo is None:
                target = target.replace(tzinfo=SHANGHAI)
        elif args.next_morning:
            local = now.astimezone(SHANGHAI)
            target = (local + timedelta(days=1)).replace(hour=10, minute=30, second=0,
                                                         microsecond=0)
        if target is not None:
            resp = httpx.post(base + "/sandbox/clock", json={"to": target.isoformat()},
                              timeout=10)
            if resp.status_code != 200:
                print(f"error: {resp.json().get('error', {}).get('message', resp.text)}",
                      file=sys.stderr)
                return 1
            now = datetime.fromisoformat(resp.json()["now"])
    except ValueError as exc:
        print(f"error: --to: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"error: no simulator answers at {base} ({type(exc).__name__}: {exc}). Give the "
              "service's address with --url", file=sys.stderr)
        return 1
    print(f"business time at {base}: {now.astimezone(SHANGHAI).isoformat()}")
    return 0


def cmd_sandbox_pay(args: argparse.Namespace) -> int:
    import httpx

    base = (args.url or get_settings().public_base_url).rstrip("/")
    body: dict[str, object] = {"out_trade_no": args.out_trade_no, "times": args.times}
    if args.amount_fen:
        body["amount_fen"] = args.amount_fen
    try:
        resp = httpx.post(base + "/sandbox/pay", json=body, timeout=30)
    except httpx.HTTPError as exc:
        print(f"error: no simulator answers at {base} ({type(exc).__name__}: {exc}). Is the "
              "service serving there in sandbox mode? Give its address with --url "
              "(make run PORT=8123 serves at http://127.0.0.1:8123)", file=sys.stderr)
        return 1
    if resp.status_code == 404:
        print(f"error: the simulator at {base} has no trade {args.out_trade_no}: it forgets its "
              "trades when the service restarts, so make a new order", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        print(f"error: the simulator at {base} answered {resp.status_code}: {resp.text[:300]}",
              file=sys.stderr)
        return 1
    data = resp.json()
    channel = data["trade"]["channel"]
    print(f"{channel} trade {args.out_trade_no} paid at the simulator")
    refused = 0
    for n, d in enumerate(data["deliveries"], 1):
        taken = _TAKEN[channel](d["status"], d["body"])
        refused += not taken
        answer = f"{d['status']} {d['body'][:200]}".strip()
        print(f"notification {n}: our notify endpoint answered {answer} — "
              + ("taken" if taken else "refused: the service did not apply it (its log and "
                 "notification inbox say why)"))
    return 1 if refused else 0


def cmd_receipts_verify(args: argparse.Namespace) -> int:
    """Check a receipt's token (or its /r/ URL) with the public key alone: no database."""
    from backend.clock import SHANGHAI
    from backend.money import yuan
    from backend.receipts.service import explain_token, load_public_key, token_from
    from backend.receipts.view import CHANNEL_LABELS, INSURANCE_LABELS

    if args.public_key:
        where = args.public_key
        try:
            pem = Path(where).read_bytes()
        except OSError as exc:
            print(f"error: --public-key: {where} cannot be read ({exc.strerror})",
                  file=sys.stderr)
            return 2
    else:
        # the service's own key (its public half): RECEIPT_SIGNING_KEY, else the one the
        # sandbox generated into the data folder — never a new one made here
        settings = get_settings()
        path = Path(settings.receipt_signing_key or
                    settings.data_dir / "receipt_signing_key.pem")
        where = f"{path} (RECEIPT_SIGNING_KEY)" if settings.receipt_signing_key else str(path)
        try:
            pem = path.read_bytes()
        except OSError:
            print(f"error: no receipt signing key at {where}: give the service's public key "
                  "with --public-key FILE (it serves it at /r/public-key)", file=sys.stderr)
            return 2
    key = load_public_key(pem)
    checked, why = explain_token(key, token_from(args.token))
    if checked is None:
        print(f"NOT VALID: {why}")
        return 1
    c = checked.content
    print(f"VALID: receipt {c.receipt_no}, signed with the key of {where}")
    print(f"  payer:         {c.payer_name}"
          + (f" ({c.payer_id_masked})" if c.payer_id_masked else ""))
    print(f"  amount:        {yuan(c.amount_fen)} yuan ({c.amount_fen} fen), {c.year}年度")
    print(f"  channel:       {c.channel} ({CHANNEL_LABELS.get(c.channel, c.channel)})")
    print(f"  paid at:       {c.paid_at.astimezone(SHANGHAI).isoformat()} "
          f"(business date {c.business_date.isoformat()})")
    if c.agent or c.paper_receipt_no:
        print(f"  agent:         {c.agent or '-'}, paper receipt {c.paper_receipt_no or '-'}")
    print(f"  order:         {c.order_no}")
    for item in c.items:
        whose = " ".join(x for x in (item.name, item.id_number_masked) if x)
        count = f" x{item.count}" if item.count != 1 else ""
        print(f"  item:          {item.insurance} "
              f"({INSURANCE_LABELS.get(item.insurance, item.insurance)}){count} "
              f"{yuan(item.amount_fen)} yuan" + (f" {whose}" if whose else ""))
    print("Refunds since are not in the token: the receipt's URL shows them (online).")
    return 0


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 up, got {value!r}")
    return int(value)


def _import_columns() -> str:
    """The columns and allowed values of each import kind, tiers from the configured policy."""
    from backend.imports.columns import describe
    from backend.policy import Policy, load_policy

    policy: Policy | None
    try:
        policy = load_policy(get_settings().policy)
    except Exception:  # a broken POLICY or environment must not break --help
        policy = None
    return describe(policy)


def build_parser() -> argparse.ArgumentParser:
    from backend.auth.models import STAFF_ROLES
    from backend.imports.columns import KINDS
    from backend.policy import DEPARTMENTS

    p = argparse.ArgumentParser(prog="python -m backend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=_positive, default=None,
                   help="server processes (not with the simulator); one per core is usual "
                        "(default: WEB_CONCURRENCY, else 1)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("worker", help="run the outbox relay and scheduled jobs")
    s.set_defaults(func=cmd_worker)

    sandbox = sub.add_parser("sandbox", help="drive the channel simulator of a running serve")
    sandbox_sub = sandbox.add_subparsers(dest="action", required=True)
    s = sandbox_sub.add_parser("pay", help="make the simulator pay a trade and notify us")
    s.add_argument("out_trade_no")
    s.add_argument("--times", type=int, default=1, help="send the notification n times")
    s.add_argument("--amount-fen", type=int, help="pay a different amount (a fault)")
    s.add_argument("--url", help="the service's address (default: PUBLIC_BASE_URL, "
                                 "http://127.0.0.1:8000)")
    s.set_defaults(func=cmd_sandbox_pay)
    s = sandbox_sub.add_parser(
        "clock", help="show or move forward the business clock of a running sandbox serve "
                      "(COLLECT_NOW rehearsals only)")
    move = s.add_mutually_exclusive_group()
    move.add_argument("--to", help="the instant to move to, e.g. 2020-11-03T10:30:00+08:00 "
                                   "(Beijing time when no offset is given)")
    move.add_argument("--next-morning", action="store_true",
                      help="10:30 the next day: yesterday's statements are published")
    s.add_argument("--url", help="the service's address (default: PUBLIC_BASE_URL)")
    s.set_defaults(func=cmd_sandbox_clock)

    s = sub.add_parser("migrate", help="apply database migrations")
    s.set_defaults(func=cmd_migrate)

    s = sub.add_parser("import", help="import a CSV or XLSX file",
                       description=_import_columns(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("kind", choices=KINDS)
    s.add_argument("file")
    s.add_argument("--skip-bad-rows", action="store_true",
                   help="import the good rows even if some are bad")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_import)

    users = sub.add_parser("users", help="staff accounts").add_subparsers(dest="action",
                                                                          required=True)
    s = users.add_parser("create", help="create a staff account")
    s.add_argument("--username", required=True)
    secret = s.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", help="the password (seen by other users of the machine "
                        "in ps and kept in shell history: prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input "
                             "(printf '%%s\\n' \"$PW\" | … or < a file only you can read)")
    s.add_argument("--role", required=True, choices=STAFF_ROLES)
    s.add_argument("--town", help="the town's code (role town_staff)")
    s.add_argument("--village", help="the village's code (role agent)")
    s.add_argument("--department", choices=DEPARTMENTS, help="(role department)")
    s.set_defaults(func=cmd_users_create)
    for action, what in (("deactivate", "deactivate a staff account and revoke its tokens"),
                         ("activate", "reactivate a staff account (its old tokens stay dead)")):
        s = users.add_parser(action, help=what)
        s.add_argument("--username", required=True)
        s.add_argument("--reason", help="why, for the audit trail")
        s.set_defaults(func=cmd_users_set_active)

    receipts = sub.add_parser(
        "receipts", help="check a receipt's token offline (receipts verify …)"
    ).add_subparsers(dest="action", required=True)
    s = receipts.add_parser(
        "verify", help="check a receipt's token or URL with the public key, without the database",
        description="Checks the token of a receipt's QR code (PUBLIC_BASE_URL/r/<token>, or the "
                    "token alone) offline: the signature with the public key, and that what it "
                    "signs is a receipt. Prints VALID and what the receipt says (exit 0), or NOT "
                    "VALID and why (exit 1); 2 for a usage error. Refunds since are shown only "
                    "online, at the URL.")
    s.add_argument("token", metavar="TOKEN_OR_URL")
    s.add_argument("--public-key", metavar="PEM",
                   help="a PEM file of the service's public key (download it from "
                        "PUBLIC_BASE_URL/r/public-key); default: the public half of this "
                        "installation's RECEIPT_SIGNING_KEY (or of the key the sandbox "
                        "generated into DATA_DIR)")
    s.set_defaults(func=cmd_receipts_verify)

    s = sub.add_parser("demo", help="load a generated demo district")
    s.add_argument("--residents", type=int, default=20_000)
    s.add_argument("--seed", type=int, default=2021)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AppError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:
        text = str(exc.orig)
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            print("error: the database has none of the service's tables yet: run "
                  "`python -m backend migrate` first", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

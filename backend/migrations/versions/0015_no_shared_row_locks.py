"""postings lose their foreign key to ledger_accounts; one function applies a notification

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01

Every posting's foreign key to ``ledger_accounts`` made PostgreSQL take a FOR KEY SHARE lock
on the account's row: every channel payment locked one of the same few rows (the channel's
clearing account, the year's contributions accounts), and under concurrent payments those
locks became MultiXacts that every later lock on the row had to read and extend. The key is
replaced by what it guaranteed, without the lock:

- an account row is never deleted, nor its id, code or kind changed (triggers);
- a posting's account exists: checked without locking, on PostgreSQL by the entry's
  balance check at commit, on SQLite by a trigger before the insert.

``apply_channel_notification`` (PostgreSQL) applies the common case of a channel's payment
notification in one statement — one round trip, in autocommit — exactly as
``backend/orders/payment_flow.py`` does it: the attempt and order locked, the payment, the
attempt, the bill lines, the payment lines, the balanced journal entry, the order and the
inbox row, making the ledger accounts on first use. Anything else (an unknown trade, another
amount, a line paid by someone else, a closed order, another live attempt of the order, a
transaction id another trade holds) raises SQLSTATE ``PF001`` before it commits anything,
and the caller takes the general path in Python.
"""
from __future__ import annotations

from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

# the SQLite append-only triggers of postings (0003), made again after the table is rebuilt
SQLITE_APPEND_ONLY = [
    f"""CREATE TRIGGER postings_no_{action.lower()} BEFORE {action} ON postings
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END"""
    for action in ("UPDATE", "DELETE")]

ACCOUNTS_KEPT_SQLITE = [
    """CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE ON ledger_accounts
       BEGIN SELECT RAISE(ABORT, 'ledger accounts are never deleted'); END""",
    """CREATE TRIGGER ledger_accounts_no_rekey BEFORE UPDATE OF id, code, kind ON ledger_accounts
       BEGIN SELECT RAISE(ABORT, 'a ledger account keeps its id, code and kind'); END""",
    """CREATE TRIGGER postings_account_exists BEFORE INSERT ON postings
       WHEN NOT EXISTS (SELECT 1 FROM ledger_accounts WHERE id = NEW.account_id)
       BEGIN SELECT RAISE(ABORT, 'a posting names a ledger account that does not exist'); END""",
]

CHECK_ENTRY_WITH_ACCOUNTS = """
    CREATE OR REPLACE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        total numeric;
        orphan bigint;
    BEGIN
        SELECT COALESCE(SUM(amount_fen), 0) INTO total FROM postings
        WHERE entry_id = NEW.entry_id;
        IF total <> 0 THEN
            RAISE EXCEPTION 'journal entry % does not balance: its postings sum to % fen',
                NEW.entry_id, total;
        END IF;
        -- what the foreign key to ledger_accounts guaranteed, read without a lock (an
        -- account is never deleted: ledger_accounts_kept)
        SELECT p.account_id INTO orphan FROM postings p
        WHERE p.entry_id = NEW.entry_id
          AND NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = p.account_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'journal entry % posts to ledger account %, which does not exist',
                NEW.entry_id, orphan USING ERRCODE = 'foreign_key_violation';
        END IF;
        DELETE FROM ledger_entry_checks WHERE entry_id = NEW.entry_id;
        RETURN NULL;
    END $$"""

CHECK_ENTRY_0012 = """
    CREATE OR REPLACE FUNCTION ledger_check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        total numeric;
    BEGIN
        SELECT COALESCE(SUM(amount_fen), 0) INTO total FROM postings
        WHERE entry_id = NEW.entry_id;
        IF total <> 0 THEN
            RAISE EXCEPTION 'journal entry % does not balance: its postings sum to % fen',
                NEW.entry_id, total;
        END IF;
        DELETE FROM ledger_entry_checks WHERE entry_id = NEW.entry_id;
        RETURN NULL;
    END $$"""

ACCOUNTS_KEPT_PG = [
    """CREATE FUNCTION ledger_accounts_kept() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           IF TG_OP = 'DELETE' THEN
               RAISE EXCEPTION 'ledger account % is never deleted', OLD.code;
           END IF;
           IF NEW.id <> OLD.id OR NEW.code <> OLD.code OR NEW.kind <> OLD.kind THEN
               RAISE EXCEPTION 'ledger account % keeps its id, code and kind', OLD.code;
           END IF;
           RETURN NEW;
       END $$""",
    """CREATE TRIGGER ledger_accounts_kept BEFORE UPDATE OR DELETE ON ledger_accounts
       FOR EACH ROW EXECUTE FUNCTION ledger_accounts_kept()""",
]

# The statements of backend/orders/payment_flow.py (confirm_channel_payment, apply_payment),
# backend/ledger/service.py (post_entry) and backend/notifications/service.py (the inbox
# row), in the same order, for the case where nothing is unusual.
# tests/notifications/test_at_once.py checks that both write the same rows.
APPLY_FUNCTION = """
CREATE FUNCTION apply_channel_notification(
    p_channel text, p_out_trade_no text, p_transaction_id text, p_amount bigint,
    p_paid_at timestamptz, p_business_date date, p_now timestamptz, p_dedupe_key text,
    p_headers json, p_body text, p_source text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    a_id integer; a_fen bigint; o_id integer; o_no text; o_status text; o_year integer;
    o_channel text; o_role text;
    known_txn text;
    pay_id integer;
    line_ids integer[]; insurances text[]; fens bigint[]; villages text[]; towns text[];
    all_lines integer;
    e_id integer; e_day date;
    posted integer;
    codes text[];
BEGIN
    SELECT attempts.id, attempts.amount_fen, orders.id, orders.order_no, orders.status,
           orders.year, orders.channel, orders.payer_role
      INTO a_id, a_fen, o_id, o_no, o_status, o_year, o_channel, o_role
      FROM attempts JOIN orders ON orders.id = attempts.order_id
     WHERE attempts.out_trade_no = p_out_trade_no AND attempts.channel = p_channel
       FOR UPDATE;
    IF NOT FOUND OR a_fen <> p_amount THEN
        RAISE EXCEPTION 'general path: unknown trade or another amount' USING ERRCODE = 'PF001';
    END IF;
    -- under the attempt's lock no other payment of this trade can come or go
    SELECT transaction_id INTO known_txn FROM payments WHERE attempt_id = a_id;
    IF FOUND THEN
        IF known_txn = p_transaction_id THEN
            RETURN 'repeat ' || o_no;
        END IF;
        RAISE EXCEPTION 'general path: paid under another transaction' USING ERRCODE = 'PF001';
    END IF;
    IF o_status <> 'pending' THEN
        RAISE EXCEPTION 'general path: order %', o_status USING ERRCODE = 'PF001';
    END IF;
    IF (o_channel = 'aggregate_qr' OR o_role = 'agent') AND EXISTS (
            SELECT 1 FROM attempts WHERE order_id = o_id AND id <> a_id
               AND status IN ('creating', 'pending', 'unknown')) THEN
        RAISE EXCEPTION 'general path: another live attempt' USING ERRCODE = 'PF001';
    END IF;

    INSERT INTO payments (attempt_id, order_id, channel, transaction_id, amount_fen, paid_at,
                          business_date, source, shared_transaction, created_at)
    SELECT a_id, o_id, p_channel, p_transaction_id, p_amount, p_paid_at, p_business_date,
           p_source, false, p_now
     WHERE NOT EXISTS (SELECT 1 FROM payments WHERE channel = p_channel
                          AND transaction_id = p_transaction_id AND NOT shared_transaction
                          AND attempt_id <> a_id)
    ON CONFLICT (attempt_id) WHERE attempt_id IS NOT NULL DO NOTHING
    RETURNING id INTO pay_id;
    IF pay_id IS NULL THEN
        RAISE EXCEPTION 'general path: transaction id of another trade' USING ERRCODE = 'PF001';
    END IF;
    UPDATE attempts SET status = 'paid', transaction_id = p_transaction_id,
                        paid_at = p_paid_at, updated_at = p_now
     WHERE id = a_id AND status IN ('creating', 'pending', 'unknown', 'closed', 'failed');

    WITH won AS (
        UPDATE bill_lines SET status = 'paid', paid_payment_id = pay_id, paid_at = p_paid_at,
                              paid_tier_yuan = order_lines.tier_yuan,
                              paid_fen = order_lines.amount_fen
          FROM order_lines
         WHERE bill_lines.id = order_lines.bill_line_id AND order_lines.order_id = o_id
           AND bill_lines.status = 'unpaid'
        RETURNING bill_lines.id AS line_id, order_lines.insurance, order_lines.amount_fen AS fen,
                  order_lines.village_code, order_lines.town_code)
    SELECT array_agg(line_id ORDER BY line_id), array_agg(insurance ORDER BY line_id),
           array_agg(fen ORDER BY line_id), array_agg(village_code ORDER BY line_id),
           array_agg(town_code ORDER BY line_id)
      INTO line_ids, insurances, fens, villages, towns FROM won;
    SELECT count(*) INTO all_lines FROM order_lines WHERE order_id = o_id;
    IF line_ids IS NULL OR cardinality(line_ids) <> all_lines
       OR (SELECT sum(f) FROM unnest(fens) AS f) <> p_amount THEN
        RAISE EXCEPTION 'general path: a line is paid already' USING ERRCODE = 'PF001';
    END IF;
    -- the accounts, made on first use as backend/ledger/service.py account_ids makes them
    codes := ARRAY['channel_clearing:' || p_channel] || ARRAY(
        SELECT DISTINCT 'contributions:' || ins || ':' || o_year FROM unnest(insurances) AS ins);
    IF (SELECT count(*) FROM ledger_accounts WHERE code = ANY(codes)) < cardinality(codes) THEN
        INSERT INTO ledger_accounts (code, kind, name, created_at)
        SELECT 'channel_clearing:' || p_channel, 'channel_clearing', p_channel || ' 待清算', p_now
        UNION ALL
        SELECT DISTINCT 'contributions:' || ins || ':' || o_year, 'contributions',
               o_year || '年度 ' || ins || ' 保费', p_now
          FROM unnest(insurances) AS ins
        ON CONFLICT (code) DO NOTHING;
    END IF;
    INSERT INTO payment_lines (payment_id, bill_line_id, amount_fen, applied)
    SELECT pay_id, l, f, true FROM unnest(line_ids, fens) AS u(l, f);

    INSERT INTO journal_entries (kind, reason, business_date, for_date, occurred_at,
                                 payment_id, refund_id, remittance_id, created_at)
    SELECT 'channel_payment',
           left('order ' || o_no || ' paid by ' || p_channel || ' ' || p_transaction_id, 200),
           d.effective, CASE WHEN d.effective = p_business_date THEN NULL ELSE p_business_date END,
           p_paid_at, pay_id, NULL, NULL, p_now
      FROM (SELECT CASE WHEN EXISTS (SELECT 1 FROM closed_days
                                      WHERE business_date = p_business_date)
                   THEN (SELECT MIN(c.business_date + 1) FROM closed_days c
                          WHERE c.business_date >= p_business_date AND NOT EXISTS (
                              SELECT 1 FROM closed_days n
                               WHERE n.business_date = c.business_date + 1))
                   ELSE p_business_date END AS effective) AS d
    RETURNING id, business_date INTO e_id, e_day;
    INSERT INTO postings (entry_id, account_id, amount_fen, business_date, town_code,
                          village_code, channel, measure, items)
    SELECT e_id, a.id, CASE WHEN leg.debit THEN u.f ELSE -u.f END, e_day, u.t, u.v,
           p_channel, CASE WHEN leg.debit THEN 'collected' END, 1
      FROM unnest(line_ids, insurances, fens, villages, towns) WITH ORDINALITY
           AS u(l, ins, f, v, t, n)
     CROSS JOIN (VALUES (true), (false)) AS leg(debit)
      JOIN ledger_accounts a ON a.code = CASE WHEN leg.debit
                                              THEN 'channel_clearing:' || p_channel
                                              ELSE 'contributions:' || u.ins || ':' || o_year END
     ORDER BY u.n, NOT leg.debit;
    GET DIAGNOSTICS posted = ROW_COUNT;
    IF posted <> 2 * cardinality(line_ids) THEN
        RAISE EXCEPTION 'a posting found no ledger account';
    END IF;

    UPDATE orders SET status = 'paid', paid_at = p_paid_at,
                      channel_transaction_id = p_transaction_id, updated_at = p_now
     WHERE id = o_id AND status IN ('pending', 'closed');
    INSERT INTO notification_inbox (channel, dedupe_key, out_trade_no, verified, outcome,
                                    detail, headers, body, received_at)
    VALUES (p_channel, p_dedupe_key, p_out_trade_no, true, 'applied', 'order ' || o_no,
            p_headers, p_body, p_now)
    ON CONFLICT (channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING;
    RETURN 'applied ' || o_no;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE postings DROP CONSTRAINT postings_account_id_fkey")
        for sql in ACCOUNTS_KEPT_PG:
            op.execute(sql)
        op.execute(CHECK_ENTRY_WITH_ACCOUNTS)
        op.execute(APPLY_FUNCTION)
        return
    # SQLite cannot drop a constraint: the table is rebuilt without it (its append-only
    # triggers go with the old table and are made again).
    with op.batch_alter_table(
            "postings", recreate="always",
            naming_convention={"fk": "fk_%(table_name)s_%(column_0_name)s"}) as batch:
        batch.drop_constraint("fk_postings_account_id", type_="foreignkey")
    for sql in (*SQLITE_APPEND_ONLY, *ACCOUNTS_KEPT_SQLITE):
        op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION apply_channel_notification(text, text, text, bigint, "
                   "timestamptz, date, timestamptz, text, json, text, text)")
        op.execute(CHECK_ENTRY_0012)
        op.execute("DROP TRIGGER ledger_accounts_kept ON ledger_accounts")
        op.execute("DROP FUNCTION ledger_accounts_kept()")
        op.execute("ALTER TABLE postings ADD CONSTRAINT postings_account_id_fkey "
                   "FOREIGN KEY (account_id) REFERENCES ledger_accounts (id)")
        return
    for name in ("ledger_accounts_no_delete", "ledger_accounts_no_rekey",
                 "postings_account_exists"):
        op.execute(f"DROP TRIGGER {name}")
    with op.batch_alter_table("postings", recreate="always") as batch:
        batch.create_foreign_key("fk_postings_account_id", "ledger_accounts",
                                 ["account_id"], ["id"])
    for sql in SQLITE_APPEND_ONLY:
        op.execute(sql)

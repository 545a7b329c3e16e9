"""Charts drawn on the server: the geometry of inline SVG bar charts, no script, no library.

Each chart is a list of horizontal bars in a ``viewBox`` 360 units wide (a phone's width, so
12-unit labels stay readable at 375 px; ``width="100%"`` scales it to any screen). The
template ``charts.html`` turns a :class:`Chart` into SVG; colours are presentation attributes
(the desk's CSP allows no inline style) and classes of desk.css.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from backend.desk.render import yuan
from backend.progress.schemas import Measure

WIDTH = 360
TOP = 20            # room for the axis labels above the first bar
ROW = 24            # one bar per row
BAR_H = 14
LABEL_CHARS = 7     # CJK characters of a label at 12 units (the full name is in its <title>)

BEHIND, ON_TARGET, MONEY, NO_DATA = "#c62828", "#2f855a", "#0b5cad", "#9aa5b1"


@dataclass(frozen=True)
class Bar:
    label: str          # shown left of the bar (shortened)
    title: str          # the whole sentence, as a tooltip and for screen readers
    y: int
    width: float        # 0 … the chart's bar_w
    value: str          # shown right of the bar
    fill: str
    behind: bool = False
    strong: bool = False     # the town's own row above its villages


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    key: str                 # unique in the page (the SVG's ids)
    title: str
    desc: str
    bar_x: int
    bar_w: int
    bars: list[Bar]
    ticks: list[Tick]
    target_x: float | None = None
    target_label: str = ""
    width: int = WIDTH

    @property
    def height(self) -> int:
        return TOP + ROW * max(len(self.bars), 1) + 6

    @property
    def value_x(self) -> int:
        return self.bar_x + self.bar_w + 5


def short(name: str, chars: int = LABEL_CHARS) -> str:
    return name if len(name) <= chars else name[:chars - 1] + "…"


def percent(bp: int | None) -> str:
    """Basis points as a percentage with two decimals: 4285 → 42.85%."""
    if bp is None:
        return "无参保对象"
    return f"{bp // 100}.{bp % 100:02d}%"


def rate_chart(key: str, title: str, rows: list[tuple[str, Measure, bool]],
               target_bp: int) -> Chart:
    """Paid rate per place (label, measure, strong) against the target, behind ones red."""
    bar_x, bar_w = 100, 190
    bars = []
    for i, (name, m, strong) in enumerate(rows):
        rate = m.rate_bp
        width = 0.0 if rate is None else bar_w * min(rate, 10000) / 10000
        fill = NO_DATA if rate is None else BEHIND if m.behind else ON_TARGET
        state = "未达标" if m.behind else "已达标"
        detail = (f"{name}：参保对象 {m.eligible} 人，已缴 {m.paid} 人，缴费率 {percent(rate)}，"
                  f"目标 {percent(m.target_bp)}，{state}")
        if m.shortfall:
            detail += f"，还差 {m.shortfall} 人"
        if rate is None:
            detail = f"{name}：无参保对象"
        bars.append(Bar(label=short(name), title=detail, y=TOP + ROW * i, width=round(width, 1),
                        value=percent(rate), fill=fill, behind=m.behind, strong=strong))
    ticks = [Tick(bar_x + bar_w * p / 100, f"{p}%") for p in (0, 50, 100)]
    target_x = round(bar_x + bar_w * min(target_bp, 10000) / 10000, 1)
    behind = sum(b.behind for b in bars)
    desc = (f"{title}：目标 {percent(target_bp)}，{len(bars)} 项中 {behind} 项未达标（红色）。")
    return Chart(key=key, title=title, desc=desc, bar_x=bar_x, bar_w=bar_w, bars=bars,
                 ticks=ticks, target_x=target_x, target_label=f"目标 {target_bp // 100}%")


def money_chart(days: list[tuple[date, int]]) -> Chart:
    """Money collected per business day (fen), in yuan with two decimals."""
    bar_x, bar_w = 62, 190
    top = max([fen for _, fen in days] + [1])
    bars = []
    for i, (day, fen) in enumerate(days):
        width = bar_w * max(fen, 0) / top
        bars.append(Bar(label=f"{day.month}月{day.day}日",
                        title=f"{day.month}月{day.day}日 收款 {yuan(fen)} 元",
                        y=TOP + ROW * i, width=round(width, 1), value=yuan(fen), fill=MONEY))
    total = sum(fen for _, fen in days)
    first, last = (days[0][0], days[-1][0]) if days else (None, None)
    span = f"{first.month}月{first.day}日至{last.month}月{last.day}日" if first and last else ""
    return Chart(key="money", title="每日收款（元）",
                 desc=f"{span}每日收款，合计 {yuan(total)} 元。", bar_x=bar_x, bar_w=bar_w,
                 bars=bars, ticks=[Tick(bar_x, "0"), Tick(bar_x + bar_w, yuan(top) if
                                                           top > 1 else "")])

"""The publication files as PDF: A4 landscape, the table's header row repeated on every
page, a CJK TrueType font embedded (subset to the characters used, by fpdf2).

The font comes from ``settings.pdf_font_path`` (Debian's fonts-wqy-microhei by default): no
maintained PyPI package ships a CJK font. Without it the PDF answers 503
``pdf_font_unavailable``; the XLSX needs no font.

Cells are drawn with ``FPDF.text`` and ruled with lines rather than ``FPDF.cell``/``table``:
five times faster, which keeps a 5,000-resident roster around a second.
"""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

from backend.errors import AppError
from backend.publications.service import (
    CHANGE_HEADERS,
    Fen,
    Publication,
    change_heading,
    change_table,
    header_rows,
    table,
    title,
)

FONT = "cjk"
MARGIN = 10.0            # mm
ROW = 6.0                # row height, mm
SIZE = 8.5               # table font size, pt
SMALLER = (7.5, 6.5, 6.0)  # for a text too wide for its cell
BASELINE = 1.9           # text baseline above a row's bottom rule, mm
# column widths (mm) of the 277 mm between the margins of A4 landscape
WIDTHS = {"roster": [11, 14, 36, 20, 25, 25, 20, 25, 25, 76],
          "paid": [14, 24, 46, 30, 34, 34],
          "changes": [14, 16, 36, 22, 20, 24, 22, 20, 24, 22]}
RIGHT = {"roster": {0, 4, 7}, "paid": {0, 4}, "changes": {5, 8}}


class FontUnavailable(AppError):
    status, code = 503, "pdf_font_unavailable"


def _font(path: Path) -> Path:
    if not path.is_file():
        raise FontUnavailable(f"the PDF's CJK font {path} is not installed (PDF_FONT_PATH; "
                              f"Debian: apt-get install fonts-wqy-microhei); the XLSX of "
                              f"the same list is available")
    return path


class _Doc(FPDF):
    label = ""

    def footer(self) -> None:
        self.set_y(-MARGIN + 2)
        self.set_font(FONT, size=7.5)
        self.cell(0, 4, f"{self.label}    第 {self.page_no()} 页 / 共 {{nb}} 页", align="C")


class _Table:
    """Rows drawn by hand: text at computed positions, a rule under each row, the column
    rules per page, and the header row again at the top of every page."""

    def __init__(self, doc: _Doc, head: list[str], widths: list[int], right: set[int]):
        self.doc, self.head, self.right = doc, head, right
        self.xs = [MARGIN + sum(widths[:i]) for i in range(len(widths) + 1)]
        self.widths = widths
        self.top = 0.0
        self._width: dict[str, float] = {}

    def _text_width(self, s: str) -> float:
        w = self._width.get(s)
        if w is None:
            w = self._width[s] = self.doc.get_string_width(s)
        return w

    def _fits(self, s: str, width: float) -> bool:
        # a CJK character is about as wide as the font is high: most cells need no measuring
        return len(s) * SIZE * 0.353 < width or self._text_width(s) <= width

    def _squeezed(self, s: str, x: float, y: float, width: float) -> None:
        """A text too wide for its cell (a long 备注): smaller type, cut with … only if it
        still does not fit at 6 pt."""
        doc = self.doc
        for size in SMALLER:
            doc.set_font_size(size)
            if doc.get_string_width(s) <= width:
                break
        else:
            while s and doc.get_string_width(s + "…") > width:
                s = s[:-1]
            s += "…"
        doc.text(x, y, s)
        doc.set_font_size(SIZE)

    def _row(self, cells: list[object], fill: bool = False) -> None:
        doc = self.doc
        y = doc.y
        if fill:
            doc.rect(MARGIN, y, self.xs[-1] - MARGIN, ROW, style="F")
        for i, value in enumerate(cells):
            if value is None or value == "":
                continue
            s = value.yuan() if isinstance(value, Fen) else str(value)
            if not self._fits(s, self.widths[i] - 2):
                self._squeezed(s, self.xs[i] + 1, y + ROW - BASELINE, self.widths[i] - 2)
                continue
            x = (self.xs[i + 1] - 1 - self._text_width(s)) if i in self.right else self.xs[i] + 1
            doc.text(x, y + ROW - BASELINE, s)
        doc.line(MARGIN, y + ROW, self.xs[-1], y + ROW)
        doc.y = y + ROW

    def _rules(self) -> None:
        for x in self.xs:
            self.doc.line(x, self.top, x, self.doc.y)

    def start(self) -> None:
        doc = self.doc
        if doc.y + 2 * ROW > doc.page_break_trigger:
            doc.add_page()
        self.top = doc.y
        doc.line(MARGIN, doc.y, self.xs[-1], doc.y)
        self._row(list(self.head), fill=True)

    def add(self, cells: list[object]) -> None:
        if self.doc.y + ROW > self.doc.page_break_trigger:
            self._rules()
            self.doc.add_page()
            self.start()
        self._row(cells)

    def end(self) -> None:
        self._rules()


def _lines(doc: _Doc, p: Publication) -> None:
    """The title and the header lines of the XLSX, above the table."""
    rows = header_rows(p)
    doc.set_font(FONT, size=14)
    doc.set_xy(MARGIN, MARGIN)
    doc.cell(0, 9, str(rows[0][0]), align="C", new_x="LMARGIN", new_y="NEXT")
    doc.set_font(FONT, size=9)
    for label, *value in (r for r in rows[1:] if r):
        doc.cell(22, 5, str(label))
        doc.cell(0, 5, "".join(str(v) for v in value), new_x="LMARGIN", new_y="NEXT")
    doc.ln(2)


def write_pdf(p: Publication, font_path: Path) -> bytes:
    """The publication as PDF; a version with a version before it has a section 变更
    listing what changed."""
    font = _font(font_path)
    doc = _Doc(orientation="L", unit="mm", format="A4")
    doc.label = title(p) + (f"  第{p.version}版" if p.version else "")
    doc.set_title(doc.label)
    doc.set_creator("resident-insurance-collection")
    doc.set_creation_date(p.generated_at)
    doc.set_margins(MARGIN, MARGIN, MARGIN)
    doc.set_auto_page_break(False, margin=MARGIN + 4)
    doc.add_font(FONT, fname=str(font))
    doc.set_draw_color(120)
    doc.set_fill_color(225)
    doc.add_page()
    _lines(doc, p)
    head, body, total = table(p)
    t = _Table(doc, head, WIDTHS[p.kind], RIGHT[p.kind])
    doc.set_font(FONT, size=SIZE)
    t.start()
    for row in body:
        t.add(row)
    t.add(total)
    t.end()
    if p.changes is not None:
        doc.add_page()
        doc.set_font(FONT, size=12)
        doc.set_xy(MARGIN, MARGIN)
        doc.cell(0, 8, "变更", new_x="LMARGIN", new_y="NEXT")
        doc.set_font(FONT, size=9)
        doc.cell(0, 6, change_heading(p), new_x="LMARGIN", new_y="NEXT")
        doc.set_font(FONT, size=SIZE)
        t = _Table(doc, CHANGE_HEADERS, WIDTHS["changes"], RIGHT["changes"])
        t.start()
        for row in change_table(p):
            t.add(row)
        t.end()
    return bytes(doc.output())

"""A small table type shared by every report: plain text always, rich where the terminal allows.

Reports (summary, placement, profile, diff) build a `Table`; `str(table)` is plain aligned text
(stable, used by tests and when output is piped) and `table.show()` prints through rich when it
is installed and stdout is a terminal, else the plain text.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""
    footer: list[list[str]] = field(default_factory=list)  # totals, drawn under a rule
    right: set[int] = field(default_factory=set)  # right-aligned column indices (numbers)
    notes: list[str] = field(default_factory=list)  # lines printed under the table

    def add(self, *cells) -> None:
        self.rows.append([_cell(c) for c in cells])

    def total(self, *cells) -> None:
        self.footer.append([_cell(c) for c in cells])

    def __str__(self) -> str:
        allrows = [self.columns, *self.rows, *self.footer]
        widths = [max(len(r[i]) for r in allrows) for i in range(len(self.columns))]

        def line(r):
            cells = [c.rjust(w) if i in self.right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths).rstrip()
        out = [self.title] if self.title else []
        out += [line(self.columns), rule, *(line(r) for r in self.rows)]
        if self.footer:
            out += [rule, *(line(r) for r in self.footer)]
        out += self.notes
        return "\n".join(out)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table as RichTable
        from rich.text import Text
        t = RichTable(show_footer=False)
        for i, c in enumerate(self.columns):
            t.add_column(c, justify="right" if i in self.right else "left", no_wrap=True)
        for k, r in enumerate(self.rows):
            t.add_row(*r, end_section=bool(self.footer) and k == len(self.rows) - 1)
        for r in self.footer:
            t.add_row(*r, style="bold")
        head = [Text(self.title, style="bold")] if self.title else []
        return Group(*head, t, *(Text(n) for n in self.notes))

    def show(self, file=None) -> None:
        """Print: a rich table when rich is installed and `file` (stdout) is a terminal."""
        show(self, file)


class Report:
    """A printable report made of parts (Tables or lines of text): plain with str(), rich with show().

    Subclasses define `parts()`; dataclass subclasses need `repr=False` to keep this __repr__.
    """

    def parts(self) -> list:
        raise NotImplementedError

    def __str__(self) -> str:
        return "\n\n".join(str(p) for p in self.parts())

    __repr__ = __str__

    def __rich__(self):
        from rich.console import Group
        return Group(*(p.__rich__() if hasattr(p, "__rich__") else p for p in self.parts()))

    def show(self, file=None) -> None:
        show(self, file)


def show(obj, file=None) -> None:
    """Print any report: through rich (obj.__rich__) on a terminal when rich is installed, else str(obj)."""
    file = file or sys.stdout
    if hasattr(obj, "__rich__") and getattr(file, "isatty", lambda: False)():
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            Console(file=file).print(obj)
            return
    print(obj, file=file)


def _cell(c) -> str:
    return "" if c is None else str(c)


# -- number formatting ---------------------------------------------------------------------
def si(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23M' (FLOPs, parameter counts)."""
    if n is None:
        return "?"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{int(n)}{unit}"


def nbytes(n: float | None) -> str:
    """Bytes in binary units: 1536 -> '1.5 KiB'."""
    if n is None:
        return "?"
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{int(n)} B"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"

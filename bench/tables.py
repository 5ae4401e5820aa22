"""The bench's result tables: GitHub-flavoured Markdown, also readable as plain text."""


def table(headers, rows, aligns=None):
    """Headers and rows (None cells empty) as an aligned Markdown table.

    aligns: "l" or "r" per column; default first column left, the rest right.
    """
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    aligns = aligns or ["l"] + ["r"] * (len(headers) - 1)

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(cells, widths, aligns)) + " |"

    sep = "| " + " | ".join(("-" * w if a == "l" else "-" * (w - 1) + ":")
                            for w, a in zip(widths, aligns)) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])

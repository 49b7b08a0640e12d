"""Plain-text, Markdown and LaTeX tables for the results reports (compare, paired statistics)."""

from prettytable import PrettyTable, TableStyle

from domainbed.errors import UsageError

STYLES = ("text", "markdown", "latex")
PLUS_MINUS = {"text": "+/-", "markdown": "±", "latex": "$\\pm$"}


def check_style(style: str) -> None:
    if style not in STYLES:
        raise UsageError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")


def render(title: str, header: list, rows: list, style: str, note: str = "") -> str:
    """The table with `title` above and `note` (one line) under it."""
    check_style(style)
    if style == "latex":
        escape = str.maketrans({"_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#", "^": "\\^{}",
                                "|": "\\textbar{}", "<": "$<$", ">": "$>$"})
        title, note = title.translate(escape), note.translate(escape)
        header = [name.translate(escape) for name in header]
        rows = [[cell.translate(escape) if "$\\pm$" not in cell else cell for cell in map(str, row)] for row in rows]
    table = PrettyTable(header)
    table.align = "l"
    for row in rows:
        table.add_row(row)
    if style == "latex":
        text = f"\\subsubsection*{{{title}}}\n" + table.get_latex_string(format=True)
    elif style == "markdown":
        table.set_style(TableStyle.MARKDOWN)
        text = f"#### {title}\n\n" + table.get_string()
    else:
        table.title = title
        text = table.get_string()
    if note:
        text += "\n\n" + note if style != "text" else "\n" + note
    return text


def heading(text: str, style: str) -> str:
    return {"text": f"=== {text} ===", "markdown": f"### {text}", "latex": f"\\subsection*{{{text}}}"}[style]

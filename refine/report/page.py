"""The HTML of the run report: the page around its sections, its stylesheet, and the pieces
sections are made of. Every text goes through ``escape``; the only markup is refine's own.

The page is self-contained: inline styles, images as ``data:`` URLs, and a Content-Security-Policy
that allows nothing else (no script, no fetch), as defence in depth behind the escaping.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def document(title: str, header: str, sections: Sequence[tuple[str, str, str]], footer: str) -> str:
    """The whole page: ``title`` (text), ``header`` and ``footer`` (HTML), and ``sections`` as
    (id, heading text, HTML) with a table of contents of them."""
    toc = "".join(f'<li><a href="#{key}">{escape(name)}</a></li>' for key, name, _ in sections)
    body = "".join(
        f'<section id="{key}"><h2>{escape(name)}</h2>{content}</section>'
        for key, name, content in sections
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
{header}
<nav class="toc" aria-label="Contents"><ol>{toc}</ol></nav>
</header>
{body}
<footer>{footer}</footer>
</main>
</body>
</html>
"""


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans",
  "Liberation Sans", Arial, sans-serif; }
main { max-width: 960px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 1.7rem; margin: 0 0 .2rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .8rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
p { margin: .5rem 0; }
a { color: var(--accent); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: .85em; background: var(--soft); padding: .1em .35em; border-radius: 4px;
  overflow-wrap: anywhere; }
.meta, .note, figcaption, caption { color: var(--muted); font-size: .9rem; }
.toc ol { display: flex; flex-wrap: wrap; gap: .2rem 1.4rem; margin: .8rem 0 0;
  padding: .6rem 1rem .6rem 2rem; background: var(--soft); border-radius: 6px; }
.toc li { margin: 0; padding-left: .1rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(135px, 1fr));
  gap: 10px; margin: .4rem 0 1rem; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: .55rem .8rem; }
.card .name { color: var(--muted); font-size: .85rem; }
.card .value { font-size: 1.45rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .sub { color: var(--muted); font-size: .8rem; min-height: 1.2em; }
.warn { border-left: 4px solid #b35c00; background: #fff6e8; padding: .6rem .9rem; }
table { border-collapse: collapse; width: 100%; font-size: .88rem; margin: .4rem 0 1rem; }
caption { caption-side: bottom; text-align: left; padding-top: .4rem; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
thead th { background: var(--soft); font-weight: 600; border-bottom: 1px solid #afb8c1;
  white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.word { white-space: nowrap; }
table.keyvalue th { width: 16rem; font-weight: 500; color: var(--muted); background: none; }
.scroll { overflow-x: auto; }
figure { margin: .8rem 0 1.2rem; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
footer { margin-top: 3rem; border-top: 1px solid var(--line); }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  .toc { display: none; }
  .cards { grid-template-columns: repeat(6, 1fr); }
  h2 { break-after: avoid; }
  figure, .cards, tr { break-inside: avoid; }
  .scroll { overflow: visible; }
  a { color: inherit; text-decoration: none; }
}
@page { size: A4; margin: 14mm; }
"""


def figure(image: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{image}" alt="{escape(alt)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def table(
    heads: Sequence[str],
    body: Sequence[Sequence[str]],
    numeric: Any = (),
    caption: str = "",
    scroll: bool = False,
    words: Any = (),
) -> str:
    """A table of escaped cells; ``numeric`` columns align right, ``words`` never wrap."""
    numeric, words = set(numeric), set(words)
    cls = [
        ' class="num"' if i in numeric else ' class="word"' if i in words else ""
        for i in range(len(heads))
    ]
    head = "".join(f"<th{c}>{escape(h)}</th>" for c, h in zip(cls, heads, strict=True))
    rows = "".join(
        "<tr>"
        + "".join(f"<td{c}>{escape(v)}</td>" for c, v in zip(cls, row, strict=True))
        + "</tr>"
        for row in body
    )
    caption_html = f"<caption>{escape(caption)}</caption>" if caption else ""
    table = f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def escape(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)

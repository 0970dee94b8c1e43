"""The page machinery of every HTML page the project writes (report, analyze, sweep): jinja2
templates with autoescape on, and plotly figures inlined so a page opens with no network.

Every value a template prints is escaped (html.escape, quotes included) unless it is
:class:`markupsafe.Markup`; the only Markup is what plotly itself writes (:class:`FigureWriter`)
and the templates' own macros. Forget texts, chat answers, data names and hyperparameters are
untrusted and never reach the page as markup.
"""

from __future__ import annotations

import html
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup


class FigureWriter:
    """Plotly figures as HTML divs; plotly.js is inlined with the first figure only, so a page
    of many figures carries the 4.8 MB library once and still opens with no network."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig) -> Markup:
        div = fig.to_html(full_html=False, include_plotlyjs=self.count == 0,
                          config={"displaylogo": False, "responsive": True})
        self.count += 1
        return Markup(div)  # plotly's own markup; the data in it is JSON-encoded by plotly


def _escape(value: Any) -> Markup:
    """Every printed value: Markup passes, anything else is escaped like html.escape(quote=True)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


@cache
def environment() -> jinja2.Environment:
    """The templates beside this module (read from the package folder at run time)."""
    return jinja2.Environment(loader=jinja2.PackageLoader("unlearnviz.report", "templates"),
                              autoescape=True, finalize=_escape, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **context: Any) -> str:
    """One page from its template; ``plotly_div`` turns figures into divs in reading order."""
    return environment().get_template(template).render(plotly_div=FigureWriter(), **context)


def figures_page(title: str, header: dict, sections: list[tuple[str, object]], notes: list[str]) -> str:
    """A page of figures (the analyze and sweep pages): a header table, notes, one section each."""
    return render("figures.html.j2", title=title, header=list(header.items()), sections=sections, notes=notes)

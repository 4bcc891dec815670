"""The run report's figures, each returned as an SVG ``data:`` URL for an ``<img>``.

Drawn with matplotlib's object API (a ``Figure`` on the Agg canvas, never pyplot's global
state), inside ``style()``. An image-embedded SVG cannot run script, so a label drawn into a
plot stays inert. matplotlib is imported inside the functions, so importing refine does not
load it. Colours: cividis for the noise matrix and Okabe-Ito elsewhere, both distinguishable
with every common colour-vision deficiency.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the checker alone imports matplotlib here; refine loads it lazily
    from matplotlib.typing import RcKeyType

ANNOTATE_CLASSES = 12  # noise-matrix cells carry their counts up to this many classes
# Okabe-Ito colours.
BLUE, ORANGE, VERMILLION, SKY, GREY = "#0072B2", "#E69F00", "#D55E00", "#56B4E9", "#999999"

STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.frameon": False,
    "svg.hashsalt": "refine-report",  # the same run gives the same page, byte for byte
}


@contextmanager
def style() -> Iterator[None]:
    """The report's matplotlib settings, for the figures drawn inside, then the user's again."""
    import matplotlib

    with matplotlib.rc_context(STYLE), warnings.catch_warnings():
        # A label in a script DejaVu Sans lacks draws as boxes; the table shows it in full.
        warnings.filterwarnings(
            "ignore", message="Glyph .* missing from font", category=UserWarning
        )
        yield


def _new_figure(width: float, height: float) -> Any:
    """A figure on the Agg canvas, outside pyplot. Layouts are set by hand in inches: the
    constrained layout engine measures every text and cost half the report's time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _margins(figure: Any, left: float, right: float, bottom: float, top: float) -> dict:
    """Subplot margins in inches, as the fractions ``subplots_adjust`` and gridspecs take."""
    width, height = figure.get_size_inches()
    return {
        "left": left / width,
        "right": 1 - right / width,
        "bottom": bottom / height,
        "top": 1 - top / height,
    }


def _svg(figure: Any) -> str:
    """The figure as an SVG ``data:`` URL (glyphs as paths: the same look with any fonts)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def noise_heatmap(joint: np.ndarray, names: list[str]) -> str:
    """The noise matrix ``(K, K)`` with the diagonal in grey, so the colour scale belongs to the
    off-diagonal cells; cells carry their counts up to ``ANNOTATE_CLASSES`` classes."""
    import matplotlib as mpl

    k = len(joint)
    labels = [_elide(n, 16) for n in names]
    side = float(np.clip(0.42 * k, 2.4, 6.4))  # the matrix, in inches
    room = 0.15 + 0.075 * max(len(n) for n in labels)  # tick labels at 9 pt: ~0.075 in a letter
    rotate = room - 0.15 > 0.9 * side / k
    left, bottom, top, right = room + 0.3, (room if rotate else 0.3) + 0.3, 0.15, 1.05
    figure = _new_figure(left + side + right, bottom + side + top)
    width, height = figure.get_size_inches()
    ax = figure.add_axes((left / width, bottom / height, side / width, side / height))
    colourbar = figure.add_axes(
        ((left + side + 0.2) / width, bottom / height, 0.16 / width, side / height)
    )
    off = np.ma.masked_array(joint.astype(float), mask=np.eye(k, dtype=bool))
    top_value = max(float(off.max() or 0), 1.0)
    cmap = mpl.colormaps["cividis"].with_extremes(bad="#e9e9e9")
    image = ax.imshow(off, cmap=cmap, vmin=0, vmax=top_value, aspect="auto")
    ax.set_xticks(range(k), labels, rotation=90 if rotate else 0, parse_math=False)
    ax.set_yticks(range(k), labels, parse_math=False)
    ax.set_xlabel("most likely class (estimated true label)")
    ax.set_ylabel("given label")
    ax.spines[:].set_visible(False)
    ax.tick_params(length=0)
    if k <= ANNOTATE_CLASSES:
        for i in range(k):
            for j in range(k):
                value = int(joint[i, j])
                dark = i != j and value < 0.55 * top_value
                colour = "white" if dark else "#222222"
                ax.text(j, i, f"{value:,}", ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, cax=colourbar, label="rows (off-diagonal cells)")
    colourbar.yaxis.get_major_locator().set_params(integer=True)
    return _svg(figure)


def quality_histogram(kept: np.ndarray, flagged: np.ndarray, threshold: float | None) -> str:
    """Stacked histogram of label quality, not flagged and flagged, on a log scale."""
    figure = _new_figure(9.2, 2.9)
    figure.subplots_adjust(**_margins(figure, 0.75, 0.2, 0.55, 0.15))
    ax = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(
        [kept, flagged],
        bins=bins,
        stacked=True,
        color=[SKY, ORANGE],
        edgecolor="white",
        linewidth=0.4,
        label=[f"not flagged ({len(kept):,})", f"flagged ({len(flagged):,})"],
        log=True,
    )
    if threshold:
        ax.axvline(threshold, color=GREY, linestyle="--", linewidth=1)
        ax.annotate(
            f" exclude threshold {threshold:g}",
            (threshold, 1),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
            color="#555555",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0.7)
    ax.yaxis.set_major_formatter(_plain_numbers())
    ax.yaxis.set_minor_formatter("")
    ax.set_xlabel("label_quality (probability that the given label is right)")
    ax.set_ylabel("rows (log scale)")
    ax.legend(loc="upper center")
    return _svg(figure)


def reliability_diagram(
    before: dict[str, list], after: dict[str, list], titles: tuple[str, str]
) -> str:
    """Two reliability diagrams side by side (``calibrate.reliability_bins`` output), each over
    its rows-per-bin histogram."""
    figure = _new_figure(9.2, 4.4)
    grid = figure.add_gridspec(
        2,
        2,
        height_ratios=[3, 1],
        wspace=0.22,
        hspace=0.1,
        **_margins(figure, 0.75, 0.2, 0.55, 0.3),
    )
    for column, (title, bins) in enumerate(zip(titles, (before, after), strict=True)):
        edges = np.asarray(bins["edges"], dtype=float)
        width = np.diff(edges)
        left = edges[:-1]
        accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], float)
        confidence = np.array([np.nan if c is None else c for c in bins["confidence"]], float)
        filled = ~np.isnan(accuracy)
        ax = figure.add_subplot(grid[0, column])
        ax.plot(
            [0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1, label="perfect calibration"
        )
        ax.bar(
            left[filled],
            accuracy[filled],
            width[filled],
            align="edge",
            color=BLUE,
            edgecolor="white",
            linewidth=0.5,
            label="accuracy",
        )
        ax.bar(
            left[filled],
            confidence[filled] - accuracy[filled],
            width[filled],
            bottom=accuracy[filled],
            align="edge",
            color="none",
            edgecolor=VERMILLION,
            hatch="////",
            linewidth=0.5,
            label="gap to mean confidence",
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelbottom=False)
        ax.set_title(title)
        if column == 0:
            ax.set_ylabel("accuracy (given labels)")
            ax.legend(loc="upper left", fontsize=8)
        counts = figure.add_subplot(grid[1, column], sharex=ax)
        n = np.asarray(bins["count"], dtype=float)
        counts.bar(left[n > 0], n[n > 0], width[n > 0], align="edge", color=GREY, edgecolor="white")
        counts.set_yscale("log")
        counts.set_ylim(0.7, max(n.max(), 1) * 2.5)
        counts.yaxis.set_major_formatter(_plain_numbers())
        counts.yaxis.set_minor_formatter("")
        counts.set_xlabel("confidence (top-label probability)")
        if column == 0:
            counts.set_ylabel("rows")
    return _svg(figure)


def round_curves(columns: dict[str, list]) -> str:
    """Per-round flagged and changed rows, out-of-fold accuracy and ECE, from rounds.parquet's
    columns (name -> values by round)."""
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(9.2, 2.7)
    figure.subplots_adjust(wspace=0.3, **_margins(figure, 0.6, 0.2, 0.55, 0.3))
    rounds = columns["round"]
    panels = [
        (
            "flagged and changed rows",
            [("flagged", "flagged", VERMILLION), ("changed", "changed", BLUE)],
        ),
        ("out-of-fold accuracy", [("oof_accuracy", "accuracy", BLUE)]),
        ("ECE", [("ece_before", "before calibration", GREY), ("ece_after", "after", BLUE)]),
    ]
    for index, (title, series) in enumerate(panels):
        ax = figure.add_subplot(1, 3, index + 1)
        drawn = False
        for key, label, colour in series:
            values = [np.nan if v is None else v for v in columns.get(key, [])]
            if values and not all(math.isnan(v) for v in values):
                ax.plot(rounds, values, marker="o", color=colour, label=label, linewidth=1.5)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(rounds) == 1:
            ax.set_xlim(rounds[0] - 1, rounds[0] + 1)
        if len(series) > 1 and drawn:
            ax.legend(fontsize=8)
    return _svg(figure)


def risk_coverage(curve: list[dict[str, float]]) -> str:
    """Accuracy against coverage (``[{"coverage", "accuracy"}, ...]``, run.json's student)."""
    figure = _new_figure(4.6, 2.7)
    figure.subplots_adjust(**_margins(figure, 0.7, 0.2, 0.55, 0.3))
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker="o", color=BLUE)
    ax.set_xlabel("coverage (share of rows answered)")
    ax.set_ylabel("accuracy")
    ax.set_title("student: risk-coverage, out of fold")
    return _svg(figure)


def _plain_numbers() -> Any:
    """Tick labels 1, 10, 100 rather than 10^0, 10^1, 10^2."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")


def _elide(text: str, limit: int) -> str:
    """Shorten from the middle, keeping both ends ("category 001" and "category 002" differ
    at the end)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]

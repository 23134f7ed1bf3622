"""The report's figure: accuracy against parameters and against batch-1 latency (one point per model) and the
training curves. Apart from the report's tables, so that drawing never weighs on building one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..utils import atomic_write
from .measure import model_label

logger = logging.get_logger(__name__)


_CURVE_STYLES = {"loss": "-", "loss_ce": "--", "loss_kd": ":"}


def _plain_number(value: float, _position=None) -> str:
    """Tick labels as people write numbers: 80k, 0.05, 2 (never 6x10^-2)."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value >= 1e3 else f"{value:g}"


def _scatter(ax, report: Any, attribute: str, xlabel: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for i, model in enumerate(report.models):
        x, y = getattr(model, attribute), 100 * model.accuracy
        ax.scatter(x, y, s=60, color=f"C{i}")
        ax.annotate(model.label, (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.3, y=0.15)  # room for the labels
    ax.set(xlabel=xlabel, ylabel=f"{report.metric} (%)")
    ax.grid(True, alpha=0.3)


def _curves(ax, report: Any) -> None:
    colors = {model.name: f"C{i}" for i, model in enumerate(report.models)}  # as in the other panels
    for name, curve in (report.training_curves or {}).items():
        label, color = model_label(name), colors.get(name)
        for key in [k for k in curve if k != "step"]:
            if key == "loss" and {"loss_ce", "loss_kd"} <= set(curve):
                continue  # the weighted total of the two parts shown
            style = _CURVE_STYLES.get(key, "-")
            ax.plot(curve["step"], curve[key], style, color=color, marker=".", label=f"{label}: {key}")
    ax.set(xlabel="training step", ylabel="training loss", title="Training curves")
    if ax.get_legend_handles_labels()[0]:  # a run whose log has no loss points draws no curve: no empty legend
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)


def plot_report(report: Any, path: str | os.PathLike) -> bool:
    """Accuracy against parameters and against batch-1 latency (one point per model) and, when the report has them,
    the training curves; written atomically to `path`. False, with a warning, when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; also safe in worker threads
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            f"matplotlib is not installed: no {Path(path).name} is drawn. Install it with `pip install matplotlib` "
            '(or `pip install -e ".[plot]"` in a checkout of hf_kd).'
        )
        return False
    panels = 3 if report.training_curves else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), constrained_layout=True)
    _scatter(axes[0], report, "parameters", "parameters")
    _scatter(axes[1], report, "latency_ms", "latency at batch 1 (ms)")
    if report.training_curves:
        _curves(axes[2], report)
    fig.suptitle(f"{report.dataset}: teacher vs students")
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True

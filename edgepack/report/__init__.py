"""report.json (edgepack.report/1), report.md and plots: they read results, never run stages."""
from .build_report import build_report
from .markdown import render_markdown
from .plots import render_plots

__all__ = ["build_report", "render_markdown", "render_plots"]

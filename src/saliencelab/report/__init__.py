"""Self-contained HTML reports."""

from .html import ReportEntry, render_index, write_index

__all__ = ["ReportEntry", "render_index", "write_index"]

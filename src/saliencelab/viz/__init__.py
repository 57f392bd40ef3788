"""Drawing maps: colour maps, normalisation, overlays on photos, galleries, metric charts."""

from .colormaps import COLORMAPS, apply_colormap, colormap
from .curves import plot_metric_bars, plot_metric_curves, save_metric_bars, save_metric_curves
from .gallery import colorbar_legend, gallery, save_gallery
from .normalize import normalize_map
from .overlay import heatmap, overlay, save_overlay

__all__ = [
    "COLORMAPS",
    "apply_colormap",
    "colorbar_legend",
    "colormap",
    "gallery",
    "heatmap",
    "normalize_map",
    "overlay",
    "plot_metric_bars",
    "plot_metric_curves",
    "save_metric_bars",
    "save_metric_curves",
    "save_gallery",
    "save_overlay",
]

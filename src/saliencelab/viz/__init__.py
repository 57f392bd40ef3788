"""Drawing maps: colour maps, normalisation, overlays on photos, and galleries."""

from .colormaps import COLORMAPS, apply_colormap, colormap
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
    "save_gallery",
    "save_overlay",
]

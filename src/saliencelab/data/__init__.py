from . import shapes  # noqa: F401  (sl.data.shapes: the ground-truth test bed)

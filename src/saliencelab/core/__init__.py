"""The engine: the only code that touches autograd and hooks."""

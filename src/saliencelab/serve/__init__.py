"""The local web app: `saliencelab serve`, or `make_server(...)` from Python.

A page in the browser where a user picks a model, an image (uploaded, or a bundled sample photo)
and methods, and sees each method's map over the image, the model's top classes and what each
method cost; one click on a class explains that class. It runs on the standard library's HTTP
server (no extra dependency) and binds to localhost by default (`app.py`).
"""

from .app import App, make_server, serve

__all__ = ["App", "make_server", "serve"]

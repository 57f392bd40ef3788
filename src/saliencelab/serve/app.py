"""The web app's server: one page (`page.py`) and one action, explain.

    GET  /          the form
    POST /explain   the form sent back (`forms.py`): model, an uploaded image or a sample
                    photo (or `image_id`, an image the server kept from an earlier request;
                    a text for a text model), methods, target, layer, options, metrics, the
                    top channels → the page with the results, or with one sentence saying
                    what was wrong (status 400; the form keeps what was chosen)

It runs on `http.server.ThreadingHTTPServer` (standard library), one thread per request; calls
on one model take turns (`core/state.py`'s per-model lock), so two browser tabs are safe.

Safety (DESIGN.md): it binds to 127.0.0.1 unless told otherwise. It answers only requests whose
`Host` is well formed and a loopback name (on another address: an IP address or this machine's
own name), so a web page elsewhere cannot reach it through DNS rebinding, and refuses a POST
whose `Origin` is another site. A body over `max_upload_bytes` is refused from its
`Content-Length` before it is read (and before it is sent, to a client that asks with `Expect:
100-continue`); a refused POST's body is read and dropped (up to `DRAIN_BYTES`) so the browser
sees the answer. An image over `max_pixels` is refused from its header before it is decoded;
uploads are read in `UPLOAD_FORMATS` only, shrunk to `MAX_KEPT_SIDE`, never written to disk,
and the last `kept_images` kept in memory so "explain this class" needs no second upload. A
client silent for `Handler.timeout` seconds is dropped. Every text shown is escaped. An error
that is not the request's (a bug) gets status 500 and one sentence; its traceback goes to the
server's log.
"""

from __future__ import annotations

import http.server
import ipaddress
import logging
import re
import secrets
import socket
import threading
import webbrowser
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import torch
from PIL import Image

from ..cli_common import parse_explain_target, parse_options
from ..cli_common import parse_target as cli_parse_target
from ..core.attention import attention_layers
from ..core.errors import SaliencelabError
from ..core.explain import explain
from ..core.registry import MethodSpec
from ..core.registry import methods as registered_methods
from ..core.result import Explanation
from ..core.targets import LayerTarget
from ..data.images import image_from_bytes
from ..data.samples import sample_image, sample_images
from ..metrics.base import metric_classes
from ..metrics.evaluate import evaluate
from ..models.model import Model, displayed, preprocessed
from ..models.zoo import load_model
from ..neurons.activations import activations
from ..report.run import drawable_size, method_requests, shrunk
from ..text.model import TextModel
from ..text.render import legend_html, text_table
from ..text.targets import continuation, similarity_to
from ..viz.overlay import overlay
from .forms import Form, parse_form
from .page import Channels, Choices, Overlay, Result, Scores, render

log = logging.getLogger("saliencelab")

#: Methods ticked on a fresh page (one shared pass and one path integral).
DEFAULT_METHODS = ("saliency", "gradcam", "integrated_gradients")
#: ... and when the first model is a text model (no CAM for texts).
DEFAULT_TEXT_METHODS = ("saliency", "integrated_gradients")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DRAIN_BYTES = 64 * 1024 * 1024  # of a refused body, read and dropped before closing
#: Uploads are read in these formats only (Pillow's others include EPS, which runs Ghostscript).
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
#: Uploads are shrunk to this longer side before anything else: memory for the kept images
#: (32 × 2048² RGB ≈ 400 MB at most), and a 1 × 25,000,000 strip resized by a model's
#: preprocess took minutes. No model here reads images anywhere near this size.
MAX_KEPT_SIDE = 2048
SERVE_MAX_PIXELS = 25_000_000
TOP_CLASSES = 5
TOP_CHANNELS = 8
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


#: The library's Python wordings, as the form says them (a sentence shown on the page).
FORM_WORDS = {
    "or target=None for each input's predicted class": (
        "or leave Target empty to explain the predicted class"
    ),
    "(or leave layer=None to use the last one)": "(or leave Layer empty to use the last one)",
}


def form_words(message: str) -> str:
    """`message` on one line, with its Python wordings (`FORM_WORDS`) put as the form's."""
    message = " ".join(message.split())
    for python, form in FORM_WORDS.items():
        message = message.replace(python, form)
    return message


def parse_target(text: str) -> int | str | None:
    """ "" → None (the predicted class), "3" → 3, anything else → a class name."""
    return cli_parse_target(text) if text.strip() else None


def parse_image_target(text: str) -> Any:
    """`parse_target`, and a layer's channel or unit: "channel:LAYER:C", "neuron:LAYER:C[:Y:X]"
    (as `saliencelab explain --target`)."""
    if not text.strip():
        return None
    try:
        return parse_explain_target(text.strip())
    except SaliencelabError as e:
        raise SaliencelabError(str(e).replace("--target ", "Target ")) from None


class Request(NamedTuple):
    """A form's request, checked: `{method: options}`, the metrics, and the layer (Layer, else
    `layer=` in Options; None: found automatically)."""

    methods: dict[str, dict[str, Any]]
    metrics: list[str]
    layer: str | None


class App:
    """The models, the kept images and the explain action, without any HTTP: `explain(form)`
    returns the page for a submitted form (the server below only moves bytes).

    Args:
        models: names (`sl.load_model`, loaded here) or loaded `sl.Model`s by name; the
            first is the form's default.
        max_pixels: uploaded images with more pixels are refused (from their header).
        kept_images: how many recent images are kept in memory for "explain this class".
    """

    def __init__(
        self,
        models: Iterable[str] | Mapping[str, Model] = ("efficientnet_lite0",),
        max_pixels: int = SERVE_MAX_PIXELS,
        kept_images: int = 32,
    ) -> None:
        given = dict(models) if isinstance(models, Mapping) else {m: None for m in models}
        if not given:
            raise SaliencelabError("The web app needs at least one model to serve.")
        self._models: dict[str, Model] = {
            name: _check_servable(name, load_model(name) if model is None else model)
            for name, model in given.items()
        }
        self.max_pixels = max_pixels
        self.kept_images = kept_images
        # whether each image model has attention layers (attention_rollout, grad_rollout)
        self._attention = {
            name: bool(attention_layers(m.module))
            for name, m in self._models.items()
            if not isinstance(m, TextModel)
        }
        self._images: OrderedDict[str, tuple[str, Image.Image]] = OrderedDict()
        self._lock = threading.Lock()  # the kept images

    # -- what the form offers ---------------------------------------------------------------

    def offers(self, spec: MethodSpec, name: str) -> bool:
        """Whether the model `name` can run the method: not what `sl.explain` refuses before
        running, for a text model (its `check_method`: CAMs, image perturbations and reference
        maps), nor `leave_one_out` (words) for an image model, nor the attention methods for
        a model without attention layers. The form lists the methods some served model runs."""
        model = self._models[name]
        if isinstance(model, TextModel):
            try:
                model.extra["check_method"](spec.name, spec.family)
            except SaliencelabError:
                return False
            return True
        if spec.name == "leave_one_out":
            return False
        return spec.family != "attention" or self._attention[name]

    def choices(self, form: Form | None = None) -> Choices:
        """The form's options, with what `form` chose (defaults for a fresh page)."""
        names = list(self._models)
        specs = sorted(
            (s for s in registered_methods() if any(self.offers(s, n) for n in names)),
            key=lambda s: (s.family, s.name),
        )
        metrics = offered_metrics()
        has_text = any(isinstance(m, TextModel) for m in self._models.values())
        if form is None:
            first = self._models[names[0]]
            defaults = DEFAULT_TEXT_METHODS if isinstance(first, TextModel) else DEFAULT_METHODS
            chosen = [m for m in defaults if any(s.name == m for s in specs)]
            return Choices(
                names,
                sample_images(),
                specs,
                model=names[0],
                chosen_methods=chosen,
                metrics=metrics,
                has_text=has_text,
            )
        image_id = form.get("image_id")
        kept = self._images.get(image_id)
        return Choices(
            names,
            sample_images(),
            specs,
            model=form.get("model", names[0]),
            sample=form.get("sample"),
            chosen_methods=form.getall("methods"),
            target=(form.fields.get("target") or [""])[0],  # as typed: a continuation's space
            layer=form.get("layer"),
            options=form.get("options"),
            channels=bool(form.get("channels")),
            by=form.get("by", "activation"),
            metrics=metrics,
            chosen_metrics=form.getall("metrics"),
            image_id=image_id if kept is not None else "",
            image_name=kept[0] if kept is not None else "",
            text=form.get("text"),
            has_text=has_text,
        )

    def page(self) -> str:
        return render(self.choices())

    # -- the explain action -----------------------------------------------------------------

    def model(self, name: str) -> Model:
        """The served model `name`."""
        if name not in self._models:
            served = ", ".join(self._models)
            raise SaliencelabError(f"This server does not serve the model {name!r}; pick {served}.")
        return self._models[name]

    def _keep(self, name: str, image: Image.Image) -> str:
        image_id = secrets.token_urlsafe(12)
        with self._lock:
            self._images[image_id] = (name, image)
            while len(self._images) > self.kept_images:
                self._images.popitem(last=False)
        return image_id

    def image(self, form: Form) -> tuple[str, str, Image.Image]:
        """(image_id, name, image) of the form: an upload, else a sample photo, else a kept
        image."""
        upload = form.files.get("image")
        sample = form.get("sample")
        if upload is not None:
            name = upload.filename or "upload"
            image = image_from_bytes(upload.data, name, self.max_pixels, formats=UPLOAD_FORMATS)
            image = shrunk(image, MAX_KEPT_SIDE)
        elif sample:
            if sample not in sample_images():
                raise SaliencelabError(
                    f"{sample!r} is not a sample photo; pick one of {', '.join(sample_images())}."
                )
            name, image = sample, sample_image(sample)
        else:
            image_id = form.get("image_id")
            if not image_id:
                raise SaliencelabError("Choose an image: upload one, or pick a sample photo.")
            with self._lock:
                kept = self._images.get(image_id)
                if kept is not None:
                    self._images.move_to_end(image_id)
            if kept is None:
                raise SaliencelabError(
                    "That image is no longer kept by the server (it keeps the last "
                    f"{self.kept_images}); upload it again."
                )
            return (image_id, *kept)
        return self._keep(name, image), name, image

    def explain(self, form: Form) -> tuple[int, str]:
        """(HTTP status, page) for a submitted form: 200 with the results, 400 with the sentence
        saying what was wrong."""
        try:
            model = self.model(form.get("model", next(iter(self._models))))
            if isinstance(model, TextModel):
                result = self._explain_text(form, model, self._request(form))
            else:  # the image first: kept (and offered back) if the request has a mistake
                image_id, name, image = self.image(form)
                form.fields["image_id"] = [image_id]
                form.fields.pop("sample", None)
                result = self._explain_image(form, model, name, image, self._request(form))
        except SaliencelabError as e:
            return 400, render(self.choices(form), error=form_words(str(e)))
        return 200, render(self.choices(form), result)

    def _request(self, form: Form) -> Request:
        """The methods with their options, the metrics and the layer, checked before the model
        runs."""
        chosen = form.getall("methods")
        if not chosen:
            raise SaliencelabError("Tick at least one method.")
        options = parse_options(split_options(form.get("options")), flag="")
        layer = form.get("layer") or options.get("layer")  # Layer, else layer= in Options
        given = form.get("layer") or None
        specs = {spec.name: spec for spec in registered_methods()}
        if form.get("channels") and not any(
            specs[m].needs_layer for m in chosen if m in specs
        ):  # the layer is the channels' only: no method refuses it
            given = None
        requests = method_requests(chosen, layer=given, options=options)
        metrics = form.getall("metrics")
        offered = {name for name, _, _ in offered_metrics()}
        for metric in metrics:
            if metric not in offered:
                raise SaliencelabError(
                    f"The web app does not offer the metric {metric!r}; pick among "
                    f"{', '.join(sorted(offered))}."
                )
        return Request(requests, metrics, layer)

    def _explain_image(
        self,
        form: Form,
        model: Model,
        name: str,
        image: Image.Image,
        request: Request,
    ) -> Result:
        x = preprocessed(model, [image])
        target = parse_image_target(form.get("target"))
        ex = explain(model, x, methods=request.methods, target=target)
        shown = displayed(model, image) or drawable_size(image)
        overlays = [
            Overlay(overlay(shown, ex[m]), ex.target_label(ex[m], 0), ex[m])
            for m in request.methods
        ]
        scores = _scores(model, x, ex, request.metrics) if request.metrics else None
        channels = None
        if form.get("channels"):
            by = form.get("by", "activation").lower()
            layer = request.layer
            if layer is None and isinstance(target, LayerTarget):
                layer = target.name  # the target's layer, as the CAM methods take it
            channels = _channels(model, x, shown, image, layer, by, target)
        return Result(
            name, _headline(ex), _top(ex), overlays, ex.seconds, scores, shown=shown,
            channels=channels,
        )  # fmt: skip

    def _explain_text(
        self,
        form: Form,
        model: TextModel,
        request: Request,
    ) -> Result:
        text = form.get("text")
        if not text:
            raise SaliencelabError(f"{model.name} reads texts: type one in Text.")
        raw = (form.fields.get("target") or [""])[0]  # a continuation's leading space counts
        ex = explain(model, [text], methods=request.methods, target=text_target(model, raw))
        scores = None
        if request.metrics:
            scores = Scores(error="The metrics here score image maps; texts are not scored.")
        channels = None
        if form.get("channels"):
            channels = Channels(error="Channels are drawn for image models; texts have none here.")
        words = legend_html(ex) + text_table(ex, 0)
        explained = None
        if ex.probabilities is not None:  # a classifier: the class the words are scored for
            explained = ex.target_label(next(iter(ex.values())), 0)
        return Result(
            text, _headline(ex), _top(ex), [], ex.seconds, scores, words=words,
            explained=explained, channels=channels,
        )  # fmt: skip


def text_target(model: TextModel, text: str) -> Any:
    """What the Target field means for a text model: a class for a classifier (empty: the
    predicted one), the text to compare with for a sentence encoder (`similarity_to`), the
    continuation for a language model (`continuation`, taken as typed)."""
    if model.task == "classification":
        return parse_target(text.strip())
    if not text.strip():
        what = (
            "the text to compare with (its similarity to yours is explained)"
            if model.task == "embedding"
            else "the continuation whose probability is explained, e.g. ' mat'"
        )
        raise SaliencelabError(f"{model.name} needs a target: type {what} in Target.")
    if model.task == "embedding":
        return similarity_to(text.strip())
    return continuation(text)


def _top(ex: Explanation) -> list[tuple[int, str, float]]:
    """The most probable classes (index, name, probability) of the first input; none for a
    model whose outputs are no classes."""
    if ex.probabilities is None:
        return []
    probs = ex.probabilities[0].detach().float().cpu()
    values, indices = probs.topk(min(TOP_CLASSES, probs.numel()))
    pairs = zip(values.tolist(), indices.tolist(), strict=True)
    return [(i, ex.label(i), v) for v, i in pairs]


def _headline(ex: Explanation) -> str:
    """ "predicted: tabby (0.51)" for a classifier (whatever class was explained), else what
    was explained and its value."""
    text = ex.target_text(0)
    return f"predicted: {text}" if ex.probabilities is not None else text


def _channels(
    model: Model,
    x: torch.Tensor,
    shown: Image.Image,
    image: Image.Image,
    layer: str | None,
    by: str,
    target: Any,
) -> Channels:
    """The layer's top channels on the image (`sl.activations`) as its grid picture and table;
    a mistake (a layer without feature maps, ...) is the card's sentence, the maps stay."""
    try:
        acts = activations(
            model, x, layer, top=TOP_CHANNELS, by=by, target=target if by != "activation" else None
        )
    except SaliencelabError as e:
        return Channels(error=form_words(str(e)))
    if by == "contribution" and isinstance(target, LayerTarget) and target.name == acts.layer:
        return Channels(
            error=f"The target is a unit of {acts.layer} itself, so by contribution only its own "
            "channel counts (the others are 0); rank by activation, or give an earlier layer."
        )
    grid = acts.grid(shown, original_size=image.size)
    to = acts.target_label() if by == "contribution" else None
    return Channels(acts.layer, by, grid, acts.table(), acts.activations.shape[1], target=to)


def offered_metrics() -> list[tuple[str, str, str]]:
    """(name, family, direction) of the registered metrics that need no ground-truth masks
    (the app has none), by family."""
    classes = metric_classes()
    return sorted(
        ((name, c.family, c.direction) for name, c in classes.items() if "masks" not in c.needs),
        key=lambda m: (m[1], m[0]),
    )


def split_options(text: str) -> list[str]:
    """ "n_steps=16; smoothgrad.n_samples=8" → ["n_steps=16", "smoothgrad.n_samples=8"]
    (semicolons or new lines between pairs: a value may hold commas, as window=8,8)."""
    return [p.strip() for p in text.replace("\n", ";").split(";") if p.strip()]


def _scores(model: Model, x: torch.Tensor, ex: Explanation, metrics: list[str]) -> Scores:
    """`sl.evaluate` of the maps (and the reference maps) with `metrics`; a metric's mistake
    (e.g. a map it cannot score) is its sentence on the page, the maps stay."""
    try:
        report = evaluate(model, x, ex, metrics=metrics)
    except SaliencelabError as e:
        return Scores(error=form_words(str(e)))
    return Scores(report)


def _check_servable(name: str, model: Any) -> Model:
    """`model`, if it is an `sl.Model` that reads images or a text model; one sentence
    otherwise."""
    if not isinstance(model, Model):
        raise SaliencelabError(
            f"The model {name!r} is a {type(model).__name__}; give the web app sl.Model objects "
            "(sl.Model(module, preprocess=...)) or model names."
        )
    if model.preprocess is None:
        raise SaliencelabError(
            f"The model {name!r} has no preprocessing, so it cannot read images; give it one "
            "(sl.Model(module, preprocess=...), or --input-size on the command line)."
        )
    return model


# -- HTTP -----------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: A Host header: a name or an IPv4 address, or an IPv6 address in brackets; an optional port.
_HOST = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>\d{1,5}))?"
)


def host_of(header: str) -> str | None:
    """The host name (lower case, no trailing dot) of a `Host` header; None for a malformed
    one (user info, a path, a bad port)."""
    m = _HOST.fullmatch(header.strip())
    if m is None or (m["port"] is not None and int(m["port"]) > 65535):
        return None
    return (m["v6"] or m["name"]).lower().rstrip(".")


class Handler(http.server.BaseHTTPRequestHandler):
    """Moves bytes between the browser and `server.app`."""

    server: Server
    server_version = "saliencelab"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may stay silent (idle keep-alive, a body sent too slowly)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, page: str) -> None:
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        # No scripts, frames or outside resources on the page: say so to the browser.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'",
        )
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status: int, sentence: str, drain: bool = True) -> None:
        """Answer `status` with the page and `sentence`, and close the connection; a POST's
        body not read yet is read and dropped first (`drain`), up to `DRAIN_BYTES`."""
        self.close_connection = True
        self._send(status, render(self.server.app.choices(), error=sentence))
        length = self.headers.get("Content-Length", "")
        if drain and self.command == "POST" and re.fullmatch(r"[0-9]+", length):
            self._discard_body(int(length))

    def _checked(self, drain: bool = True) -> bool:
        """Whether the request may be answered (Host and Origin checks); refused otherwise.

        On a loopback address the Host must be a loopback name or address (DNS rebinding gives
        a page elsewhere another name for 127.0.0.1); on another address, an IP address, a
        loopback name or this machine's own name. A POST's Origin, when sent, must be this
        server (http://HOST as the request's Host).
        """
        hosts = self.headers.get_all("Host") or []
        host = host_of(hosts[0]) if len(hosts) == 1 else None
        allowed = host is not None and (
            _is_loopback(host)
            or (not self.server.loopback and (_is_ip(host) or host in self.server.own_names))
        )
        if not allowed:
            where = "localhost" if self.server.loopback else "this machine's names or addresses"
            self._refuse(403, f"This server answers only requests to {where}.", drain)
            return False
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None:
            parts = urlsplit(origin) if origin != "null" else None
            if parts is None or parts.scheme != "http" or parts.netloc.lower() != hosts[0].lower():
                self._refuse(403, "Forms may be sent to this server only from its own page.", drain)
                return False
        return True

    def _too_large(self) -> str | None:
        """The sentence refusing the announced body, if it is over the limit."""
        length = self.headers.get("Content-Length", "")
        limit = self.server.max_upload_bytes
        if re.fullmatch(r"[0-9]+", length) and int(length) > limit:
            return (
                f"The upload is {int(length) / 2**20:.1f} MiB, over this server's limit of "
                f"{limit / 2**20:.1f} MiB; send a smaller image (or start the server with a "
                "larger --max-upload-mb)."
            )
        return None

    def handle_expect_100(self) -> bool:
        """A client asking before it sends a body ("Expect: 100-continue") is told at once
        when the body would be refused, instead of being invited to send it."""
        if not self._checked(drain=False):
            return False
        refusal = self._too_large() if self.command == "POST" else None
        if refusal is not None:
            self._refuse(413, refusal, drain=False)  # the client waits: nothing was sent
            return False
        return super().handle_expect_100()

    def _discard_body(self, length: int) -> None:
        """Read and drop up to `DRAIN_BYTES` of a refused body, so that a browser still sending
        it sees the answer instead of a reset connection (a larger body is cut off)."""
        left = min(length, DRAIN_BYTES)
        try:
            self.connection.settimeout(2)
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        if not self._checked():
            return
        path = urlsplit(self.path).path
        if path in ("/", "/explain", "/index.html"):
            self._answer(lambda: (200, self.server.app.page()))
        else:
            self._refuse(404, f"There is no page {path!r} here; the app is at /.")

    def do_POST(self) -> None:  # noqa: N802
        if not self._checked():
            return
        path = urlsplit(self.path).path
        if path != "/explain":
            self._refuse(404, f"There is no action {path!r} here; forms go to /explain.")
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._refuse(411, "The request has no Content-Length; send the form from the page.")
            return
        if not re.fullmatch(r"[0-9]+", length) or self.headers.get("Transfer-Encoding"):
            self._refuse(400, "The request's length is not readable; send the form from the page.")
            return
        refusal = self._too_large()
        if refusal is not None:
            self._refuse(413, refusal)
            return
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            self.close_connection = True
            return  # the client gave up: nobody to answer

        def answer() -> tuple[int, str]:
            form = parse_form(self.headers.get("Content-Type", ""), body)
            return self.server.app.explain(form)

        self._answer(answer)

    def _answer(self, make: Callable[[], tuple[int, str]]) -> None:
        try:
            status, page = make()
        except SaliencelabError as e:
            status, page = 400, render(self.server.app.choices(), error=form_words(str(e)))
        except Exception as e:  # a bug, not the request: one sentence here, the traceback logged
            log.exception("The web app failed on %s %s", self.command, self.path)
            first = form_words(str(e))[:200]
            status = 500
            page = render(
                self.server.app.choices(),
                error=f"The server failed ({type(e).__name__}: {first}); the traceback is in "
                "the terminal that runs it.",
            )
        self._send(status, page)


class Server(http.server.ThreadingHTTPServer):
    """The HTTP server of an :class:`App` (`make_server`)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: App, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.loopback = _is_loopback(address[0])
        # this machine's names, for a server on another address (getfqdn may ask the DNS)
        names = () if self.loopback else (socket.gethostname(), socket.getfqdn())
        self.own_names = {n.lower().rstrip(".") for n in names}
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


def make_server(
    app: App | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> Server:
    """A started-but-not-serving server of `app` (default: `App()`, EfficientNet-Lite0) on
    `host:port` (`port=0`: a free port; `server.url` says which). Call `serve_forever()`, and
    `shutdown()` from another thread to stop it.

    Raises:
        SaliencelabError: the address is in use or cannot be bound.
    """
    try:
        return Server((host.strip("[]"), port), app or App(), max_upload_bytes)
    except OSError as e:
        raise SaliencelabError(
            f"Cannot serve on {host}:{port} ({e.strerror or e}); pick another --port (0 picks a "
            "free one) or --host."
        ) from None


def serve(
    models: Iterable[str] | Mapping[str, Model] = ("efficientnet_lite0",),
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = SERVE_MAX_PIXELS,
    on_start: Callable[[Server], None] | None = None,
) -> None:
    """Serve the web app of `models` on `host:port` until Ctrl-C; `on_start(server)` runs once
    it listens (`saliencelab serve` prints the address there).

    >>> serve(["efficientnet_lite0", "shapes_cnn"], port=8765)  # doctest: +SKIP
    """
    server = make_server(App(models, max_pixels=max_pixels), host, port, max_upload_bytes)
    try:
        if on_start is not None:
            on_start(server)
        if open_browser:
            webbrowser.open(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

"""The local web app (`saliencelab.serve`): the page, the explain action against the library's
own maps, the limits and checks that keep it safe, and `saliencelab serve`."""

from __future__ import annotations

import base64
import http.client
import io
import re
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import saliencelab as sl
from saliencelab.data.images import image_from_bytes
from saliencelab.models.model import displayed, preprocessed
from saliencelab.serve import App, make_server
from saliencelab.serve.forms import parse_form

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDARY = "----saliencelabTestBoundary7MA4YWxk"


def multipart(fields: list[tuple[str, str]], files: dict[str, tuple[str, bytes]] | None = None):
    """(body, content type) of a form as a browser sends it."""
    out = io.BytesIO()
    for name, value in fields:
        out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, (filename, data) in (files or {}).items():
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        )
        out.write(head.encode() + data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={BOUNDARY}"


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def shapes_photo(seed: int = 3) -> Image.Image:
    x = sl.data.shapes.make(1, seed=seed).images[0]
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def data_images(page: str) -> list[Image.Image]:
    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    return [Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in found]


def image_id(page: str) -> str:
    return re.search(r'name="image_id" value="([^"]+)"', page).group(1)


@pytest.fixture(scope="module")
def model():
    return sl.load_model("shapes_cnn")


@pytest.fixture(scope="module")
def server(model):
    srv = make_server(App({"shapes_cnn": model}, max_pixels=200_000), port=0)
    srv.max_upload_bytes = 2_000_000
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(server, method="GET", path="/", body=None, headers=None):
    """(status, page, headers) of a request to `server`, errors included."""
    req = urllib.request.Request(server.url.rstrip("/") + path, data=body, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def post(server, fields, files=None, headers=None):
    body, ctype = multipart(fields, files)
    return request(server, "POST", "/explain", body, {"Content-Type": ctype, **(headers or {})})


def error_of(page: str) -> str:
    return re.search(r'<div class="error-box">(.*?)</div>', page).group(1)


# -- the page --------------------------------------------------------------------------------------


def test_the_form_offers_models_methods_and_samples(server):
    status, page, headers = request(server)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert '<option value="shapes_cnn" selected>' in page
    cannot = {"attention_rollout", "grad_rollout", "leave_one_out"}  # no attention, no words
    for spec in sl.methods():
        assert (f'name="methods" value="{spec.name}"' in page) == (spec.name not in cannot)
    assert re.search(r'value="saliency" checked', page)
    assert not re.search(r'value="lime" checked', page)
    for name in sl.sample_images():
        assert f'<option value="{name}">' in page
    assert "<script" not in page  # no scripts: the CSP says so too


def test_unknown_paths_are_404_with_the_page(server):
    status, page, _ = request(server, path="/nothing")
    assert status == 404 and "There is no page &#x27;/nothing&#x27; here" in page


# -- explaining ------------------------------------------------------------------------------------


def test_an_upload_is_explained_as_the_library_explains_it(server, model):
    photo = shapes_photo()
    fields = [("model", "shapes_cnn"), ("methods", "saliency"), ("methods", "gradcam")]
    status, page, _ = post(server, fields, {"image": ("bed.png", png_bytes(photo))})
    assert status == 200, error_of(page)
    shown, *overlays = data_images(page)
    # The reference: the library's maps, drawn by the library, on the image as the model sees it.
    x = preprocessed(model, [photo])
    ex = sl.explain(model, x, methods=["saliency", "gradcam"])
    view = displayed(model, photo)
    assert np.array_equal(np.asarray(shown), np.asarray(view))
    for name, got in zip(["saliency", "gradcam"], overlays, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(sl.overlay(view, ex[name])))
    # The top classes, most probable first, with their probabilities.
    probs = model.module(x).softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()
    rows = re.findall(r'<tr><td>([^<]+)</td><td class="num">([0-9.]+)</td>', page)
    assert [label for label, _ in rows] == [model.labels[i] for i in order]
    assert [float(p) for _, p in rows] == pytest.approx(probs[order].tolist(), abs=6e-4)
    assert "bed.png" in page and image_id(page)


def test_one_click_explains_another_class_of_the_kept_image(server, model):
    photo = shapes_photo(seed=5)
    fields = [("model", "shapes_cnn"), ("methods", "gradcam")]
    _, first, _ = post(server, fields, {"image": ("a.png", png_bytes(photo))})
    kept = image_id(first)
    # Each class row carries a form with the kept image and the class index.
    assert f'name="target" value="{model.labels.index("disk")}"' in first
    status, page, _ = post(server, [*fields, ("image_id", kept), ("target", "disk")])
    assert status == 200, error_of(page)
    ex = sl.explain(model, preprocessed(model, [photo]), methods=["gradcam"], target="disk")
    overlay = data_images(page)[1]
    want = sl.overlay(displayed(model, photo), ex["gradcam"])
    assert np.array_equal(np.asarray(overlay), np.asarray(want))
    assert "<b>gradcam</b> · disk" in page
    assert image_id(page) == kept


def test_a_sample_photo(server):
    fields = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "saliency")]
    status, page, _ = post(server, fields)
    assert status == 200, error_of(page)
    assert "<h2>coffee</h2>" in page and len(data_images(page)) == 2


def test_options_reach_the_methods_and_scores_are_the_libraries(server, model):
    photo = shapes_photo(seed=11)
    fields = [
        ("model", "shapes_cnn"),
        ("methods", "saliency"),
        ("methods", "integrated_gradients"),
        ("options", "integrated_gradients.n_steps=8; baselines=0.5"),
        ("metrics", "deletion"),
        ("metrics", "sparseness"),
    ]
    status, page, _ = post(server, fields, {"image": ("s.png", png_bytes(photo))})
    assert status == 200, error_of(page)
    assert "<h2>s.png</h2>" in page and "8 passes" in page
    x = preprocessed(model, [photo])
    ex = sl.explain(
        model, x, methods={"saliency": {}, "integrated_gradients": {"n_steps": 8, "baselines": 0.5}}
    )
    got = data_images(page)[2]
    want = sl.overlay(displayed(model, photo), ex["integrated_gradients"])
    assert np.array_equal(np.asarray(got), np.asarray(want))
    # The scores table: sl.evaluate's values for the maps and the reference maps.
    rep = sl.evaluate(model, x, ex, metrics=["deletion", "sparseness"])
    rows = re.findall(r"<tr><td>(?:<b>)?([a-z_]+)(?:</b>)?(?: \(reference\))?</td>(.*?)</tr>", page)
    table = {
        name: [float(v) for v in re.findall(r"[0-9.]+(?=</?b?>?</td>|</td>)", cells)]
        for name, cells in rows
        if name in rep
    }
    assert (
        set(table)
        == set(rep.methods)
        == {"saliency", "integrated_gradients", "random", "center_gaussian", "sobel"}
    )
    for name, values in table.items():
        want = [rep[name]["deletion"].mean, rep[name]["sparseness"].mean]
        assert values == pytest.approx(want, abs=6e-4)
    assert "deletion ↓" in page and "sparseness ↑" in page


def test_a_metric_that_fails_leaves_the_maps(server, monkeypatch):
    from saliencelab.serve import app as serve_app

    def refuse(*args, **kwargs):
        raise sl.SaliencelabError("This metric cannot score\nthese maps.")

    monkeypatch.setattr(serve_app, "evaluate", refuse)
    fields = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "saliency")]
    status, page, _ = post(server, [*fields, ("metrics", "deletion")])
    assert status == 200 and len(data_images(page)) == 2
    assert '<p class="error-msg">This metric cannot score these maps.</p>' in page
    status, page, _ = post(server, [*fields, ("metrics", "pointing_game")])
    assert status == 400 and "does not offer the metric &#x27;pointing_game&#x27;" in page


def test_the_layers_top_channels_as_the_library_draws_them(server, model):
    photo = shapes_photo(seed=13)
    fields = [("model", "shapes_cnn"), ("methods", "saliency"), ("channels", "on")]
    status, page, _ = post(server, fields, {"image": ("c.png", png_bytes(photo))})
    assert status == 200, error_of(page)
    x = preprocessed(model, [photo])
    acts = sl.activations(model, x, top=8)
    grid = acts.grid(displayed(model, photo), original_size=photo.size)
    assert np.array_equal(np.asarray(data_images(page)[2]), np.asarray(grid))
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td class="num">(\d+)</td>', page)
    assert [int(c) for _, c in rows] == [r["channel"] for r in acts.table()]
    # "explain" on a channel: its mean activation explained with the methods ticked.
    c = acts.table()[1]["channel"]
    assert f'name="target" value="channel:{acts.layer}:{c}"' in page
    kept = image_id(page)
    target = f"channel:{acts.layer}:{c}"
    status, page, _ = post(server, [*fields[:2], ("image_id", kept), ("target", target)])
    assert status == 200, error_of(page)
    want = sl.explain(model, x, "saliency", target=sl.channel(acts.layer, c))
    got = data_images(page)[1]
    assert np.array_equal(
        np.asarray(got), np.asarray(sl.overlay(displayed(model, photo), want["saliency"]))
    )
    assert f"<b>saliency</b> · channel {c} of {acts.layer}" in page


def test_channels_by_contribution_and_a_layer_without_maps(server, model):
    photo = shapes_photo(seed=13)
    fields = [("model", "shapes_cnn"), ("methods", "saliency"), ("channels", "on")]
    upload = {"image": ("c.png", png_bytes(photo))}
    status, page, _ = post(server, [*fields, ("by", "contribution"), ("target", "cross")], upload)
    assert status == 200, error_of(page)
    acts = sl.activations(
        model, preprocessed(model, [photo]), top=8, by="contribution", target="cross"
    )
    rows = re.findall(r'<tr><td class="num">\d+</td><td class="num">(\d+)</td>', page)
    assert [int(c) for c in rows] == [r["channel"] for r in acts.table()]
    assert "mean activation</th>" in page  # the ranking value is the contribution
    status, page, _ = post(server, [*fields, ("layer", "fc")], upload)
    assert status == 200  # the maps stay; the channels card says why it is empty
    assert "not a spatial map" in re.search(r'<p class="error-msg">(.*?)</p>', page).group(1)


def test_channels_follow_a_layer_target_and_refuse_their_own_unit(server, model):
    fields = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "saliency")]
    fields += [("channels", "on"), ("target", "channel:features.10:3")]
    status, page, _ = post(server, fields)
    assert status == 200, error_of(page)
    assert "<h2>Channels of features.10</h2>" in page  # the target's layer, Layer left blank
    cam = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "gradcam")]
    status, page, _ = post(server, [*cam, ("channels", "on"), ("options", "layer=features.6")])
    assert status == 200 and "<h2>Channels of features.6</h2>" in page  # as the CAMs take it
    status, page, _ = post(server, [*fields, ("by", "contribution")])
    assert status == 200
    sentence = re.search(r'<p class="error-msg">(.*?)</p>', page).group(1)
    assert sentence.startswith("The target is a unit of features.10 itself, so by contribution")


def test_an_upload_is_kept_when_the_request_has_a_mistake(server):
    fields = [("model", "shapes_cnn"), ("methods", "saliency"), ("options", "n_stepz=3")]
    status, page, _ = post(server, fields, {"image": ("k.png", png_bytes(shapes_photo()))})
    assert status == 400 and "n_stepz" in error_of(page)
    assert "current image: <b>k.png</b>" in page and image_id(page)


def test_captions_count_forwards_too(server):
    fields = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "occlusion")]
    status, page, _ = post(server, fields)
    assert status == 200, error_of(page)
    assert re.search(r'<span class="cost">\d+ ms · \d+ forwards</span>', page)


def test_requests_on_one_model_from_two_threads(server, model):
    photo = png_bytes(shapes_photo(seed=7))
    pages: list[str] = []

    def one() -> None:
        fields = [("model", "shapes_cnn"), ("methods", "saliency")]
        pages.append(post(server, fields, {"image": ("t.png", photo)})[1])

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    maps = [np.asarray(data_images(p)[1]) for p in pages]
    assert len(maps) == 3 and all(np.array_equal(m, maps[0]) for m in maps)


def test_the_model_is_left_as_it_was(server, model):
    before = {n: p.requires_grad for n, p in model.module.named_parameters()}
    post(server, [("model", "shapes_cnn"), ("sample", "chelsea"), ("methods", "lrp")])
    post(server, [("model", "shapes_cnn"), ("sample", "chelsea"), ("methods", "nope")])
    assert {n: p.requires_grad for n, p in model.module.named_parameters()} == before
    assert not model.module.training
    assert not any(m._forward_hooks or m._backward_hooks for m in model.module.modules())


# -- mistakes: one sentence, the form kept ---------------------------------------------------------


@pytest.mark.parametrize(
    "fields, sentence",
    [
        ([("sample", "chelsea"), ("methods", "saliencyy")], "Unknown method &#x27;saliencyy&#x27;"),
        ([("sample", "chelsea")], "Tick at least one method."),
        ([("methods", "saliency")], "Choose an image: upload one, or pick a sample photo."),
        ([("sample", "kitten"), ("methods", "saliency")], "is not a sample photo"),
        ([("sample", "chelsea"), ("methods", "gradcam"), ("layer", "fc9")], "fc9"),
        (
            [("sample", "chelsea"), ("methods", "gradcam"), ("layer", "fc")],
            "(or leave Layer empty to use the last one).",
        ),
        (
            [("sample", "chelsea"), ("methods", "saliency"), ("target", "7")],
            "The target class 7 is out of range: the model has 4 classes (0 to 3); pass a class "
            "in that range, or leave Target empty to explain the predicted class.",
        ),
        ([("image_id", "gone"), ("methods", "saliency")], "no longer kept by the server"),
        (
            [("sample", "chelsea"), ("methods", "saliency"), ("options", "n_steps 8")],
            "The option &#x27;n_steps 8&#x27; is not of the form key=value; write e.g. n_steps=32",
        ),
        (
            [("sample", "chelsea"), ("methods", "saliency"), ("options", "n_steps=8")],
            "No requested method takes the option &#x27;n_steps&#x27;",
        ),
    ],
)
def test_a_wrong_request_is_one_sentence(server, fields, sentence):
    status, page, _ = post(server, [("model", "shapes_cnn"), *fields])
    assert status == 400
    error = error_of(page)
    assert sentence in error and "\n" not in error and "Traceback" not in page
    known = {spec.name for spec in sl.methods()}
    for name, value in fields:  # the form keeps the methods ticked
        if name == "methods" and value in known:
            assert f'value="{value}" checked' in page


def test_a_target_that_only_looks_like_a_number(server):
    for typo in ("+-1", "²", "1.5"):
        fields = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "saliency")]
        status, page, _ = post(server, [*fields, ("target", typo)])
        assert status == 400 and "The server failed" not in page, typo


def test_a_model_it_does_not_serve(server):
    status, page, _ = post(server, [("model", "resnet50"), ("sample", "chelsea")])
    assert status == 400
    assert "does not serve the model &#x27;resnet50&#x27;; pick shapes_cnn." in error_of(page)


def test_uploads_that_are_no_image_or_too_large(server):
    fields = [("model", "shapes_cnn"), ("methods", "saliency")]
    status, page, _ = post(server, fields, {"image": ("notes.png", b"not an image at all")})
    assert status == 400
    assert "&#x27;notes.png&#x27; is not an image Pillow can read" in error_of(page)
    big = png_bytes(Image.new("RGB", (600, 600)))  # 360,000 pixels over the server's 200,000
    status, page, _ = post(server, fields, {"image": ("big.png", big)})
    assert status == 400 and "over the limit of 200,000" in error_of(page)


def test_user_text_is_escaped(server):
    evil = "<script>alert(1)</script>"
    fields = [("model", "shapes_cnn"), ("methods", "saliency"), ("target", f"<b>{evil}")]
    status, page, _ = post(server, fields, {"image": (f"{evil}.png", png_bytes(shapes_photo()))})
    assert status == 400  # no such class
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    upload = {"image": (f"{evil}.png", png_bytes(shapes_photo()))}
    status, page, _ = post(server, fields[:2], upload)
    assert status == 200 and evil not in page


def test_a_bug_is_500_and_the_server_goes_on(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(App, "_explain_image", broken)
    status, page, _ = post(
        server, [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "saliency")]
    )
    assert status == 500
    assert error_of(page) == (
        "The server failed (RuntimeError: something broke); the traceback is in the terminal "
        "that runs it."
    )
    monkeypatch.undo()
    assert request(server)[0] == 200


# -- limits and origin checks (raw HTTP, as a hostile client would send it) ---------------------


def raw(server, head: str, body: bytes = b"") -> tuple[int, str]:
    """Send `head` (request line and headers) and `body` on a socket; (status, response)."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode("utf-8", errors="replace")
    return int(text.split(" ", 2)[1]), text


def test_an_oversized_upload_is_refused_before_it_is_read(server):
    # A gigabyte announced, nothing sent: the answer comes at once from the header alone.
    head = (
        "POST /explain HTTP/1.1\nHost: 127.0.0.1\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\nContent-Length: 1000000000\n"
    )
    status, text = raw(server, head)
    assert status == 413 and "over this server&#x27;s limit of 1.9 MiB" in text
    assert request(server)[0] == 200


def test_a_post_without_content_length_is_refused(server):
    status, text = raw(server, "POST /explain HTTP/1.1\nHost: localhost\n")
    assert status == 411 and "has no Content-Length" in text


@pytest.mark.parametrize(
    "header", ["Content-Length: ²", "Content-Length: -5", "Content-Length: 1e3",
               "Content-Length: 5\nTransfer-Encoding: chunked"]
)  # fmt: skip
def test_an_unreadable_length_is_refused(server, header):
    status, text = raw(server, f"POST /explain HTTP/1.1\nHost: localhost\n{header}\n")
    assert status == 400 and "length is not readable" in text


def test_a_browser_sending_an_oversized_upload_gets_the_answer(server):
    """The refused body is read and dropped, so a client still sending it sees the 413 page
    (closing at once made urllib report a broken pipe)."""
    fields = [("model", "shapes_cnn"), ("methods", "saliency")]
    status, page, _ = post(server, fields, {"image": ("big.png", bytes(30_000_000))})
    assert status == 413 and "over this server&#x27;s limit of 1.9 MiB" in page


def test_expect_100_continue(server):
    head = "POST /explain HTTP/1.1\nHost: localhost\nExpect: 100-continue\n"
    status, text = raw(server, head + "Content-Length: 9000000\n")
    assert status == 413 and "100 Continue" not in text  # told at once, not invited to send
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall((head + "Content-Length: 3\n\n").replace("\n", "\r\n").encode())
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")


def test_refusals_before_the_body_are_answered_not_reset(server):
    head = "POST /explain HTTP/1.1\nHost: evil.example\nExpect: 100-continue\n"
    status, text = raw(server, head + "Content-Length: 10\n")
    assert status == 403 and "100 Continue" not in text  # not invited to send
    fields = [("model", "shapes_cnn"), ("methods", "saliency")]
    upload = {"image": ("big.png", bytes(30_000_000))}  # refused for its origin, then its size
    status, page, _ = post(server, fields, upload, headers={"Origin": "https://evil.example"})
    assert status == 403 and "only from its own page" in page


def test_a_silent_client_is_dropped(server, monkeypatch):
    from saliencelab.serve.app import Handler

    monkeypatch.setattr(Handler, "timeout", 0.5)
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /explain HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nab")
        assert s.recv(100) == b""  # the server closed the connection: no thread held forever
    assert request(server)[0] == 200


def test_a_form_with_too_many_parts_is_refused(server):
    status, page, _ = post(server, [("methods", "saliency")] * 1001)
    assert status == 400 and "The form has 1,001 parts" in page


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:80", "192.168.1.9", "evil.com@localhost", "localhost#@evil.com",
     "localhost:evil", "localhost:99999", "localhost\nHost: localhost", ""],
)  # fmt: skip
def test_other_host_names_are_refused_on_loopback(server, host):
    status, text = raw(server, f"GET / HTTP/1.1\nHost: {host}\n")
    assert status == 403 and "answers only requests to localhost" in text


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST.", "127.0.0.1:8080", "[::1]:1", "127.9.9.9"]
)
def test_loopback_host_names_are_answered(server, host):
    assert raw(server, f"GET / HTTP/1.1\nHost: {host}\nConnection: close\n")[0] == 200


def test_on_another_address_names_of_other_machines_are_refused():
    srv = make_server(App({"shapes_cnn": None}), host="0.0.0.0", port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert not srv.loopback
        for host, status in [
            ("evil.example", 403),  # DNS rebinding: another name for this machine's address
            ("10.1.2.3:8765", 200),
            ("localhost", 200),
            (socket.gethostname(), 200),
        ]:
            got, text = raw(srv, f"GET / HTTP/1.1\nHost: {host}\nConnection: close\n")
            assert got == status, (host, text[:300])
    finally:
        srv.shutdown()
        srv.server_close()


def test_cross_site_posts_are_refused(server):
    port = server.server_address[1]
    fields = [("model", "shapes_cnn"), ("sample", "coffee"), ("methods", "saliency")]
    others = (
        "https://evil.example",
        f"http://127.0.0.1:{port + 1}",
        "null",
        f"ftp://127.0.0.1:{port}",
    )
    for origin in others:
        status, page, _ = post(server, fields, headers={"Origin": origin})
        assert status == 403 and "only from its own page" in page
    status, _, _ = post(server, fields, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200


def test_the_port_in_use_is_one_sentence(server):
    with pytest.raises(sl.SaliencelabError, match=r"Cannot serve on 127.0.0.1:\d+ .*--port"):
        make_server(App({"shapes_cnn": None}), port=server.server_address[1])


# -- parts ----------------------------------------------------------------------------------------


def test_kept_images_are_the_most_recent(model):
    app = App({"shapes_cnn": model}, kept_images=2)
    ids = [app._keep(f"img{i}", shapes_photo()) for i in range(3)]
    form = parse_form(*reversed(multipart([("image_id", ids[0]), ("methods", "saliency")])))
    status, page = app.explain(form)
    assert status == 400 and "keeps the last 2" in page
    form = parse_form(*reversed(multipart([("image_id", ids[2]), ("methods", "saliency")])))
    assert app.explain(form)[0] == 200


def test_models_are_loaded_by_name_when_the_app_is_made():
    app = App(["shapes_cnn"])
    assert app.model("shapes_cnn").labels == ["square", "disk", "triangle", "cross"]
    with pytest.raises(sl.SaliencelabError, match="needs at least one model"):
        App([])
    with pytest.raises(sl.SaliencelabError, match="is a Linear; give the web app sl.Model"):
        App({"m": torch.nn.Linear(2, 2)})
    bare = sl.Model(torch.nn.Linear(2, 2))
    with pytest.raises(sl.SaliencelabError, match="'bare' has no preprocessing, so it cannot"):
        App({"bare": bare})
    with pytest.raises(sl.SaliencelabError, match="resnet9000"):
        App(["resnet9000"])


# -- texts ----------------------------------------------------------------------------------------


def text_form(fields):
    return parse_form(*reversed(multipart(fields)))


def test_a_text_classifier_colours_the_words_as_the_library_does(classifier, model):
    from saliencelab.text.render import text_table

    app = App({"shapes_cnn": model, "bert": classifier})
    assert 'name="text"' in app.page() and 'name="text"' not in App({"s": model}).page()
    text = "the movie was great"
    fields = [("model", "bert"), ("text", text), ("methods", "integrated_gradients")]
    status, page = app.explain(text_form([*fields, ("options", "n_steps=8")]))
    assert status == 200, page
    ex = sl.explain(classifier, [text], methods={"integrated_gradients": {"n_steps": 8}})
    assert text_table(ex, 0) in page  # the same words, scores and colours
    probs = ex.logits.softmax(-1)[0]
    best = int(probs.argmax())
    assert f"predicted: {classifier.labels[best]} ({float(probs[best]):.2f})" in page
    assert f'name="text" value="{text}"' in page  # the explain buttons carry the text
    # Another class, by name.
    other = classifier.labels[1 - best]
    status, page = app.explain(text_form([*fields, ("target", other), ("options", "n_steps=8")]))
    want = sl.explain(
        classifier, [text], methods={"integrated_gradients": {"n_steps": 8}}, target=other
    )
    assert status == 200 and text_table(want, 0) in page
    status, page = app.explain(text_form(fields[:1] + fields[2:]))
    assert status == 400 and "reads texts: type one in Text." in page
    status, page = app.explain(text_form([*fields, ("channels", "on"), ("options", "n_steps=4")]))
    assert status == 200 and "Channels are drawn for image models" in page


def test_text_targets_as_typed_and_the_class_explained_named(classifier, gpt2_dir):
    app = App({"bert": classifier})
    page = app.page()  # a text model first: no CAM ticked (it cannot explain texts)
    assert 'value="saliency" checked' in page and 'value="integrated_gradients" checked' in page
    assert 'value="gradcam" checked' not in page
    other = classifier.labels[1]
    fields = [("model", "bert"), ("text", "a fine film"), ("methods", "saliency")]
    status, page = app.explain(text_form([*fields, ("target", f"  {other} ")]))
    assert status == 200, page
    assert f"explained: <b>{other}</b>" in page
    gpt2 = sl.load_model(f"hf:{gpt2_dir}")
    app = App({"gpt2": gpt2})
    fields = [("model", "gpt2"), ("text", "the cat sat on the"), ("methods", "saliency")]
    status, page = app.explain(text_form([*fields, ("target", " mat")]))
    assert status == 200, page
    assert 'name="target" size="24" placeholder="the predicted class" value=" mat"' in page
    ex = sl.explain(gpt2, ["the cat sat on the"], "saliency", target=sl.continuation(" mat"))
    from saliencelab.text.render import text_table

    assert text_table(ex, 0) in page


def test_a_sentence_encoder_explains_the_similarity_to_the_target_text(model):
    from saliencelab.text.render import text_table

    minilm = sl.load_model("minilm")
    app = App({"minilm": minilm})
    fields = [("model", "minilm"), ("text", "A man plays guitar"), ("methods", "saliency")]
    status, page = app.explain(text_form(fields))
    assert status == 400 and "minilm needs a target: type the text to compare with" in page
    status, page = app.explain(text_form([*fields, ("target", "Someone makes music")]))
    assert status == 200, page
    ex = sl.explain(
        minilm, ["A man plays guitar"], "saliency", target=sl.similarity_to("Someone makes music")
    )
    assert text_table(ex, 0) in page
    assert "similarity_to(&#x27;Someone makes music&#x27;)" in page


def test_multipart_forms_are_read_byte_for_byte():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes() + b"\r\n--x\r\n"
    body, ctype = multipart(
        [("methods", "saliency"), ("methods", "gradcam"), ("target", "chat tigré")],
        {"image": ("é.png", data), "empty": ("", b"")},
    )
    form = parse_form(ctype, body)
    assert form.getall("methods") == ["saliency", "gradcam"]
    assert form.get("target") == "chat tigré"
    assert form.files["image"].data == data and form.files["image"].filename == "é.png"
    assert "empty" not in form.files  # an empty file input is no upload
    odd = body.replace(
        b'name="target"\r\n', b'name="target"\r\nContent-Type: text/plain; charset=nope\r\n'
    )
    # an unknown charset is read as UTF-8; the boundary parameter's name in capitals too
    assert parse_form(ctype.replace("boundary=", "BOUNDARY="), odd).get("target") == "chat tigré"
    form = parse_form("application/x-www-form-urlencoded", b"methods=a&methods=b&target=+3+")
    assert form.getall("methods") == ["a", "b"] and form.get("target") == "3"
    with pytest.raises(sl.SaliencelabError, match="came as 'text/plain'"):
        parse_form("text/plain", b"x")
    with pytest.raises(sl.SaliencelabError, match="no boundary"):
        parse_form("multipart/form-data", body)


def test_uploads_are_read_in_common_formats_only_and_kept_small(model):
    from saliencelab.serve.app import UPLOAD_FORMATS

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # Pillow would open it (Ghostscript)
    with pytest.raises(sl.SaliencelabError, match="'x.eps' is not an image Pillow can read"):
        image_from_bytes(eps, "x.eps", formats=UPLOAD_FORMATS)
    app = App({"shapes_cnn": model})
    body, ctype = multipart([("methods", "saliency")], {"image": ("wide.png", png_bytes(
        Image.new("RGB", (5000, 40), (200, 30, 30))))})  # fmt: skip
    status, page = app.explain(parse_form(ctype, body))
    assert status == 200, page
    ((name, kept),) = app._images.values()
    assert name == "wide.png" and kept.size == (2048, 16)


def test_image_from_bytes_reads_as_load_image(tmp_path):
    photo = Image.new("RGBA", (9, 7), (10, 20, 30, 0))
    path = tmp_path / "a.png"
    photo.save(path)
    got = image_from_bytes(path.read_bytes(), "a.png")
    assert np.array_equal(np.asarray(got), np.asarray(sl.load_image(path)))
    with pytest.raises(sl.SaliencelabError, match=r"^'up.jpg' could not be decoded|^'up.jpg' is"):
        image_from_bytes(path.read_bytes()[:40], "up.jpg")


# -- the command ----------------------------------------------------------------------------------


def test_serve_command_prints_the_address_and_stops_on_ctrl_c(runner, monkeypatch):
    from saliencelab.cli import app
    from saliencelab.serve import app as serve_app

    seen = {}

    def interrupted(self, poll_interval=0.5):
        seen["url"] = self.url
        seen["models"] = list(self.app._models)
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_app.Server, "serve_forever", interrupted)
    result = runner.invoke(app, ["serve", "--model", "shapes_cnn", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert f"saliencelab web app on {seen['url']} serving shapes_cnn" in result.output
    assert result.output.rstrip().endswith("stopped")
    assert seen["models"] == ["shapes_cnn"]


def test_serve_command_mistakes_are_one_sentence(runner):
    from saliencelab.cli import app

    result = runner.invoke(app, ["serve", "--model", "resnet9000", "--port", "0"])
    assert result.exit_code == 2 and "resnet9000" in result.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", "shapes_cnn", "--port", str(port)])
    assert result.exit_code == 2
    assert f"Cannot serve on 127.0.0.1:{port}" in " ".join(result.output.split())


def test_http_client_sees_one_response_per_request(server):
    """Keep-alive: two requests on one connection both get their page (Content-Length set)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for _ in range(2):
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.read().endswith(b"</html>\n")
    conn.close()


def test_the_form_lists_the_methods_a_served_model_can_run():
    """A CNN was offered the attention rollouts and leave_one_out, a text model the CAMs and
    image perturbations: each a refusal after the click. The form lists a method when some
    served model runs it: `sl.explain`'s own refusals decide (a text model's `check_method`)."""
    minilm = sl.load_model("minilm")
    text_only = App({"minilm": minilm}).choices().methods
    names = {spec.name for spec in text_only}
    assert {"saliency", "integrated_gradients", "leave_one_out", "attention_rollout"} <= names
    assert not {"gradcam", "occlusion", "lime", "sobel", "random"} & names
    for spec in sl.methods():  # exactly those sl.explain does not refuse up front
        try:
            minilm.extra["check_method"](spec.name, spec.family)
        except sl.SaliencelabError:
            assert spec.name not in names
        else:
            assert spec.name in names
    vit = {s.name for s in App({"vit": sl.load_model("shapes_vit")}).choices().methods}
    assert {"attention_rollout", "grad_rollout", "gradcam"} <= vit and "leave_one_out" not in vit
    both = App({"cnn": sl.load_model("shapes_cnn"), "minilm": minilm}).choices().methods
    assert {s.name for s in both} == {s.name for s in sl.methods()}

"""report/: the self-contained HTML index."""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

import saliencelab as sl
from saliencelab.core.errors import SaliencelabError
from saliencelab.core.result import Attribution, Explanation
from saliencelab.report import ReportEntry, write_index

EVIL = '<script>alert("x")</script>'


def png(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def entry(tmp_path, name: str = "cat.jpg", **kw) -> ReportEntry:
    defaults = dict(
        name=name,
        image_path=png(tmp_path / "cat.png"),
        gallery_path=png(tmp_path / "cat_gallery.png"),
        overlays={"gradcam": png(tmp_path / "cat_gradcam.png"), "saliency": "cat_saliency.png"},
        predicted="Egyptian cat",
        probability=0.71,
        rows=[
            {"method": "gradcam", "passes": 1, "seconds": 0.012},
            {"method": "saliency", "passes": 1, "seconds": 0.02},
        ],
        maps_path="cat_maps.pt",
    )
    png(tmp_path / "cat_saliency.png")
    defaults.update(kw)
    return ReportEntry(**defaults)


def test_write_index_shows_everything_with_relative_paths(tmp_path):
    path = write_index(tmp_path, [entry(tmp_path)], title="My report")
    assert path == tmp_path / "index.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "<title>My report</title>" in text
    for needle in ["cat.jpg", "Egyptian cat", "0.71", "gradcam", "saliency", "0.012"]:
        assert needle in text
    assert 'src="cat_gallery.png"' in text
    assert 'src="cat_gradcam.png"' in text and 'src="cat_saliency.png"' in text
    assert 'href="cat_maps.pt"' in text and 'href="cat.png"' in text
    assert "<table>" in text and "passes" in text
    assert str(tmp_path) not in text  # no absolute paths


def test_self_contained_no_scripts_or_external_assets(tmp_path):
    text = write_index(tmp_path, [entry(tmp_path)]).read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "<style>" in text and "<link" not in text


def test_user_text_is_escaped(tmp_path):
    bad = entry(
        tmp_path,
        name=f"{EVIL}.jpg",
        predicted=EVIL,
        overlays={EVIL: png(tmp_path / "x.png")},
        rows=[{"method": EVIL, "passes": 1, "seconds": 0.1, "target": EVIL}],
        maps_path=tmp_path / 'we"ird <name>.pt',
    )
    failed = ReportEntry(name=EVIL, error=f"Could not read {EVIL}; pass an image file.")
    text = write_index(tmp_path, [bad, failed], title=EVIL).read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert 'href="we%22ird%20%3Cname%3E.pt"' in text


def test_error_entries_show_their_sentence(tmp_path):
    ok = entry(tmp_path)
    bad = ReportEntry(name="broken.jpg", error="The file broken.jpg is not an image; remove it.")
    text = write_index(tmp_path, [ok, bad]).read_text(encoding="utf-8")
    assert "The file broken.jpg is not an image; remove it." in text
    assert 'class="card error"' in text
    assert "1 failed" in text


def test_embed_inlines_images_as_data_uris(tmp_path):
    text = write_index(tmp_path, [entry(tmp_path)], embed=True).read_text(encoding="utf-8")
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 3  # gallery + two overlays
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    data = base64.b64decode(srcs[0].split(",", 1)[1])
    assert data.startswith(b"\x89PNG")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)


def test_embed_with_missing_file_shows_a_note(tmp_path):
    e = entry(tmp_path, gallery_path="nowhere.png")
    text = write_index(tmp_path, [e], embed=True).read_text(encoding="utf-8")
    assert "image not found: nowhere.png" in text


def test_paths_outside_and_relative_to_cwd(tmp_path, monkeypatch):
    out = tmp_path / "report"
    png(tmp_path / "shared" / "g.png")
    monkeypatch.chdir(tmp_path)
    e = entry(tmp_path, gallery_path="shared/g.png", overlays={}, image_path=None, maps_path=None)
    text = write_index("report", [e]).read_text(encoding="utf-8")
    assert 'src="../shared/g.png"' in text
    assert (out / "index.html").exists()


def test_from_explanation(tmp_path):
    maps = torch.rand(2, 8, 8)
    atts = {
        "gradcam": Attribution("gradcam", maps, maps[:, None], torch.tensor([1, 0]), passes=1.0),
        "saliency": Attribution("saliency", maps, maps[:, None], torch.tensor([1, 0]), passes=1.0),
    }
    logits = torch.tensor([[0.0, 3.0], [2.0, 0.0]])
    ex = Explanation(atts, torch.zeros(2, 3, 8, 8), logits, ["dog", "cat"])
    e = ReportEntry.from_explanation("two.png", ex, sample=1, maps_path="two.pt")
    assert e.predicted == "dog"
    assert e.probability == pytest.approx(torch.softmax(logits[1], 0)[0].item())
    assert [r["method"] for r in e.rows] == ["gradcam", "saliency"]
    # the rows the CLI's cards show: the target only where it is not the prediction
    assert all(list(r) == ["method", "passes", "forwards", "seconds"] for r in e.rows)
    text = write_index(tmp_path, [e]).read_text(encoding="utf-8")
    assert "dog" in text and "two.pt" in text
    with pytest.raises(SaliencelabError, match="out of range"):
        ReportEntry.from_explanation("x", ex, sample=5)


def test_entries_must_be_report_entries(tmp_path):
    with pytest.raises(SaliencelabError, match="ReportEntry"):
        write_index(tmp_path, [{"name": "x"}])


def test_every_method_and_image_is_listed_and_all_user_text_escaped(tmp_path):
    safe = html.escape(EVIL, quote=True)
    overlays = {m: png(tmp_path / f"o{i}.png") for i, m in enumerate(["gradcam", "ig", EVIL])}
    first = entry(
        tmp_path,
        name=f"{EVIL}.jpg",
        predicted=f"{EVIL} cat",
        overlays=overlays,
        rows=[{"method": "gradcam", "passes": 1, "seconds": 0.1, "target": EVIL}],
    )
    second = entry(tmp_path, name="dog.jpg", overlays={"smoothgrad": png(tmp_path / "s.png")})
    failed = ReportEntry(name="broken.jpg", error=f"Could not read {EVIL}; remove it.")
    text = write_index(tmp_path, [first, second, failed]).read_text(encoding="utf-8")
    assert "3 images · 5 methods · 1 failed" in text  # gradcam, ig, EVIL, smoothgrad, saliency
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert captions == ["gradcam", "ig", safe, "smoothgrad"]
    nav = re.search(r"<nav>(.*?)</nav>", text).group(1)
    assert re.findall(r'<a href="#entry-(\d)"[^>]*>(.*?)</a>', nav) == [
        ("0", f"{safe}.jpg"),
        ("1", "dog.jpg"),
        ("2", "broken.jpg"),
    ]
    assert f"<h2>{safe}.jpg</h2>" in text and f"<b>{safe} cat</b>" in text
    assert f"<td>{safe}</td>" in text  # the target cell
    assert f'alt="{safe}.jpg: {safe}"' in text
    assert f"Could not read {safe}; remove it." in text
    assert f'src="{quote("o2.png")}"' in text and 'href="cat_maps.pt"' in text
    assert '<a href="cat_maps.pt">raw maps (cat_maps.pt)</a>' in text
    assert '<a href="cat.png">original image</a>' in text
    assert "<script" not in text


def _tiny_model():
    import numpy as np
    from torch import nn

    import saliencelab as sl

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()

    def prep(images):
        images = images if isinstance(images, list) else [images]
        arrays = [
            np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float32) / 255 for im in images
        ]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    return sl.Model(net, preprocess=prep, name="tiny")


def test_overlays_of_a_model_without_display_are_drawn_at_most_1024_px(tmp_path):
    """A model without `display` had its overlays drawn on the photo itself: a 4000 x 3000 photo
    under a 16 x 16 map gave 3000 x 3000 overlays (5-6 MB each, 16 MB with --embed)."""
    from saliencelab.report.run import MAX_DRAWN_SIDE, explain_images

    big = tmp_path / "big.png"
    Image.new("RGB", (2400, 1800), (90, 120, 200)).save(big)
    result = explain_images(_tiny_model(), [big], "saliency", tmp_path / "out")
    assert result.ok
    overlay = Image.open(tmp_path / "out" / "big_saliency.png")
    assert overlay.size == (MAX_DRAWN_SIDE * 3 // 4, MAX_DRAWN_SIDE * 3 // 4) == (768, 768)
    # the gallery still says how large the original was
    assert result.rows[0]["image"] == str(big)


def test_a_report_that_cannot_be_written_is_one_sentence_and_keeps_the_old_page(
    tmp_path, monkeypatch
):
    """write_index wrote index.html in place (a failed write left half a page) and let
    IsADirectoryError / FileExistsError through with a traceback."""
    out = tmp_path / "out"
    page = write_index(out, [entry(tmp_path)])
    before = page.read_text(encoding="utf-8")
    real_replace = __import__("os").replace

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("saliencelab.report.html.os.replace", full_disk)
    with pytest.raises(SaliencelabError, match="No space left on device"):
        write_index(out, [entry(tmp_path, name="dog.jpg")])
    monkeypatch.setattr("saliencelab.report.html.os.replace", real_replace)
    assert page.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]  # no temporary file left

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "index.html").mkdir()
    with pytest.raises(SaliencelabError, match="index.html' is a folder, so the report cannot be"):
        write_index(tmp_path / "busy", [entry(tmp_path)])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaliencelabError, match="Cannot create the report folder"):
        write_index(tmp_path / "file" / "out", [entry(tmp_path)])


def test_an_embedded_page_does_not_link_the_original_photo(tmp_path):
    """With embed=True the page is one file to send on; its "original image" link pointed to
    a file beside the sender's report (e.g. "../photos/cat.png"), broken for the reader."""
    photo_path = png(tmp_path / "photos" / "cat.png")
    e = entry(tmp_path, image_path=photo_path)
    text = write_index(tmp_path / "out", [e], embed=True).read_text(encoding="utf-8")
    assert "original image" not in text and "photos/cat.png" not in text
    linked = write_index(tmp_path / "out", [e]).read_text(encoding="utf-8")
    assert 'href="../photos/cat.png">original image' in linked


def test_explain_images_reads_a_pil_image_as_load_image_reads_its_file(tmp_path):
    """A PIL image given to explain_images was read with convert('RGB'): transparency black and
    16-bit gray clipped to white, unlike the same picture read from its file."""
    from saliencelab.report.run import collect_entries

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[:8, :, 3] = 255
    gray16 = Image.fromarray((np.arange(256).reshape(16, 16) * 200).astype(np.uint16))
    for k, photo in enumerate([Image.fromarray(rgba), gray16]):
        path = tmp_path / f"p{k}.png"
        photo.save(path)
        (entry,) = collect_entries([photo])
        assert np.array_equal(np.asarray(entry.image), np.asarray(sl.load_image(path)))


# -- the scores table of an evaluation (the demo's evaluation page, the web app) -----------------


def _evaluation() -> sl.EvalReport:
    model = sl.load_model("shapes_cnn")
    x = model.preprocess(sl.data.shapes.make(6, seed=0))
    ex = sl.explain(model, x, methods=["saliency", "gradcam"])
    maps = {"<b>mine</b>": ex["gradcam"].maps, "saliency": ex["saliency"].maps}
    return sl.evaluate(model, x, maps, metrics=["sparseness", "entropy"])


def test_scores_table_shows_every_mean_ci_and_the_best_in_bold():
    from saliencelab.report.html import scores_table

    rep = _evaluation()
    page = scores_table(rep)
    assert "<b>mine</b>" not in page and "&lt;b&gt;mine&lt;/b&gt;" in page  # escaped
    assert "sparseness ↑" in page and "entropy ↓" in page
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", page)
    assert len(rows) == len(rep.methods) == 5  # two maps, three references
    for (label, cells), method in zip(rows, rep.methods, strict=True):
        assert html.unescape(re.sub("<.*?>", "", label)).startswith(method)
        assert ("(reference)" in label) == (method in rep.references)
        values = re.findall(r"<td[^>]*>(.*?)</td>", cells)
        for cell, metric in zip(values, rep.metrics, strict=True):
            r = rep[method][metric]
            lo, hi = r.ci
            assert cell.startswith(f"<b>{r.mean:.3f}</b>" if "<b>" in cell else f"{r.mean:.3f}")
            assert f"[{lo:.3f}, {hi:.3f}] n={r.n}" in cell
    for metric in rep.metrics:  # the bold cell of each column is the best by its direction
        means = {m: rep[m][metric].mean for m in rep.methods}
        pick = max if rep[rep.methods[0]][metric].direction == "higher" else min
        best = pick(means, key=means.get)
        column = rep.metrics.index(metric)
        row = rows[rep.methods.index(best)][1]
        assert re.findall(r"<td[^>]*>(.*?)</td>", row)[column].startswith("<b>")
    assert "n=" not in scores_table(rep, ci=False)


def test_scores_table_writes_n_a_for_a_metric_without_values():
    from saliencelab.report.html import scores_table

    model = sl.load_model("shapes_cnn")
    data = sl.data.shapes.make(2, seed=0)
    x = model.preprocess(data)
    ex = sl.explain(model, x, methods="gradcam")
    empty = torch.zeros_like(data.masks)  # no object: pointing game undefined everywhere
    with pytest.warns(UserWarning):
        rep = sl.evaluate(model, x, ex, metrics="pointing_game", masks=empty, references=False)
    assert '<td class="num">n/a<br><span class="ci">n=0</span></td>' in scores_table(rep)


def test_the_figures_page_shows_the_scores_first(tmp_path):
    from saliencelab.report.html import scores_table, write_figures_page

    rep = _evaluation()
    chart = tmp_path / "c.png"
    Image.new("RGB", (4, 4)).save(chart)
    page = write_figures_page(tmp_path, [("chart", chart)], report=rep).read_text()
    assert scores_table(rep) in page and page.index("Scores") < page.index("chart")
    assert "Scores" not in write_figures_page(tmp_path, [("chart", chart)]).read_text()


def test_scores_table_shows_n_also_where_there_is_no_ci():
    """One image (the demo on one photo): no CI, but n=1 still under the mean."""
    from saliencelab.report.html import scores_table

    model = sl.load_model("shapes_cnn")
    x = model.preprocess(sl.data.shapes.make(1, seed=0))
    rep = sl.evaluate(model, x, sl.explain(model, x, "saliency"), metrics="sparseness")
    page = scores_table(rep)
    assert page.count('<span class="ci">n=1</span>') == len(rep.methods)

"""The HTML verification report (`pol report`, `pol verify --html`, pol.verifier.html): one
self-contained page, the verdict first, every check, the plots as embedded PNGs; the JSON report
read back strictly."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from pol.cli import main
from pol.errors import ProofFormatError
from pol.proof import format as fmt
from pol.proof.writer import rehash_manifest
from pol.verifier import verify
from pol.verifier.html import (read_report_json, render_html, report_from_dict, write_html)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Everything the tests look at: the verdict's text, the images, the external references."""

    def __init__(self) -> None:
        super().__init__()
        self.verdict = ""
        self.images: list[str] = []
        self.external: list[str] = []
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self._in_verdict = False
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if a.get("id") == "verdict":
            self._in_verdict = True
        if tag == "img":
            self.images.append(a["src"])
        for key in ("src", "href"):
            if key in a and not a[key].startswith("data:"):
                self.external.append(a[key])
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "div":
            self._in_verdict = False
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_verdict:
            self.verdict += data
        if self._row is not None and data.strip():
            self._row.append(data.strip())


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


def pngs(page: Page) -> list[bytes]:
    out = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


@pytest.fixture(scope="module")
def proof(tmp_path_factory) -> Path:
    from pol.prover.trainer import train_task
    out = tmp_path_factory.mktemp("html") / "p"
    train_task("digits-mlp", out, epochs=2, k=15, overwrite=True)
    return out


@pytest.fixture(scope="module")
def report(proof):
    return verify(proof, q=1)  # hardened: top-1 and one random segment per epoch


def test_page_has_the_verdict_first_every_check_and_valid_pngs(proof, report, tmp_path):
    out = write_html(tmp_path / "r.html", report, proof)
    text = out.read_text()
    page = parse(text)
    assert page.verdict.strip() == "verdict: VALID"
    assert text.index('id="verdict"') < text.index("<h2>Checks</h2>")
    names = {row[0] for row in page.rows if row}
    assert {c.name for c in report.checks} <= names
    imgs = pngs(page)
    assert len(imgs) >= 2  # update magnitudes, KS per layer (replays exact: said in words)
    for png in imgs:
        assert png.startswith(PNG_MAGIC) and len(png) > 2000
    assert not page.external and not {"script", "link"} & page.tags
    assert "landed bitwise" in text  # every replay exact: said in words, not drawn


def test_chosen_segments_are_marked_and_ks_layers_listed(proof, report, tmp_path):
    from pol.verifier.html import facts_for
    facts = facts_for(report, proof)
    assert facts is not None and len(facts.updates) == 6  # T = 90, k = 15
    assert {s.why for s in report.segments} == {"top-q", "random"}
    assert facts.layers and all(0 <= r.pvalue <= 1 for r in facts.layers)
    page = parse(render_html(report, facts))
    layer_rows = [r for r in page.rows if r and r[0] in {x.name for x in facts.layers}]
    assert len(layer_rows) == len(facts.layers)


def test_an_invalid_proof_gives_an_invalid_page(proof, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(proof, bad)
    name = fmt.checkpoint_name(30)
    state = load_file(str(bad / name))
    key = next(k for k in state if k.startswith("model.") and k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 0.5
    save_file(state, str(bad / name))
    rehash_manifest(bad)
    rep = verify(bad, q=1, all_segments=True)
    assert not rep.valid
    page = parse(write_html(tmp_path / "bad.html", rep, bad).read_text())
    assert page.verdict.strip() == "verdict: INVALID"
    assert any("fail" in row for row in page.rows)
    assert len(pngs(page)) >= 2  # the replay errors are drawn now (not all exact)


def test_json_report_round_trips_and_is_read_strictly(report, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(report.to_json())
    back = read_report_json(path)
    assert back.to_dict() == report.to_dict()
    d = json.loads(report.to_json())
    for broken, why in [({**d, "extra": 1}, "keys"), ({**d, "schema": "pol-report/0"}, "schema"),
                        ({**d, "verdict": "invalid"}, "verdict"),
                        ({**d, "checks": [{**d["checks"][0], "status": "maybe"}]}, "status"),
                        ({**d, "segments": [{**d["segments"][0], "start": -1}]}, "start")]:
        with pytest.raises(ProofFormatError, match=why):
            report_from_dict(broken)
    dup = tmp_path / "dup.json"
    dup.write_text(report.to_json()[:-1] + ', "stats": {}}')
    with pytest.raises(ProofFormatError, match="duplicate"):
        read_report_json(dup)


def test_facts_of_another_proof_are_not_used(report, tmp_path):
    from pol.verifier.html import facts_for
    d = report.to_dict()
    d["root_digest"] = "0" * 64
    other = report_from_dict(d)
    assert facts_for(other) is None  # the report's own path, another digest: no facts
    text = render_html(other, None)
    assert "root digest differs" in text


def test_cli_report_and_verify_html(proof, report, tmp_path):
    js = tmp_path / "r.json"
    js.write_text(report.to_json())
    r = CliRunner().invoke(main, ["report", str(js), "--out", str(tmp_path / "a.html")])
    assert r.exit_code == 0, r.output
    assert parse((tmp_path / "a.html").read_text()).verdict.strip() == "verdict: VALID"
    r = CliRunner().invoke(main, ["verify", str(proof), "--policy", "paper", "--html",
                                  str(tmp_path / "b.html")])
    assert r.exit_code == 0, r.output
    page = parse((tmp_path / "b.html").read_text())
    assert page.verdict.strip() == "verdict: VALID" and pngs(page)
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nope.json"), "--out",
                                  str(tmp_path / "c.html")])
    assert r.exit_code == 2


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(b)), None)


def _chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One headless run: no sandbox (CI may run as root), a fresh profile under tmp_path, no GPU,
    no /dev/shm (small in containers)."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, timeout=timeout, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def _skip_unless_chromium_starts(tmp_path: Path) -> None:
    """A browser that is installed but cannot start (missing libraries, no usable display stack)
    is the machine's limit: skip. Once it renders about:blank, any failure on the page is ours."""
    try:
        r = _chromium(tmp_path, "--dump-dom", "about:blank", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{_browser()} cannot start: {e}")
    if r.returncode != 0 or "<html" not in r.stdout:
        pytest.skip(f"{_browser()} cannot start (exit {r.returncode}): {r.stderr.strip()[-300:]}")


def _rgb_near(img, rgb: tuple[int, int, int], tol: int = 8) -> int:
    """How many pixels of img (RGB) lie within tol of rgb in every channel."""
    from PIL import ImageChops
    solid = img.copy()
    solid.paste(rgb, (0, 0, *img.size))
    diff = ImageChops.difference(img, solid).split()
    near = [band.point(lambda x: 255 if x <= tol else 0).convert("1") for band in diff]
    return ImageChops.logical_and(ImageChops.logical_and(near[0], near[1]), near[2]).histogram()[-1]


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium on this machine (.ci/run "
                    "installs Debian's chromium where it can)")
def test_renders_in_headless_chromium(proof, report, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from PIL import ImageStat
    _skip_unless_chromium_starts(tmp_path)
    page = write_html(tmp_path / "r.html", report, proof)
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,800", page.as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = Image.open(shot)
    img.load()  # decodes every row: a truncated or corrupt PNG raises here
    img = img.convert("RGB")
    assert img.size == (1000, 800)
    gray = img.convert("L")
    assert gray.getextrema()[1] - gray.getextrema()[0] > 100  # dark text on a light page
    assert ImageStat.Stat(gray).stddev[0] > 10  # not one flat colour
    assert _rgb_near(img, (0xDF, 0xF3, 0xE3)) > 2000  # the VALID banner's background, drawn
    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = parse(r.stdout)
    assert dom.verdict.strip() == "verdict: VALID"
    assert len(dom.images) >= 2

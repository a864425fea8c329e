"""`idsedit ui`: the request checks and the edit runner directly, then the real app on a free localhost port driven
by a real headless Chromium (Debian's chromium + chromium-driver through selenium) and by gradio_client.

The browser comes from the system (no download at test time): the session fixture installs Debian's packages with
apt-get when they are missing and this runs as root, and skips with the reason only where that is impossible.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL

pytest.importorskip("gradio", reason='the web UI extra is not installed: pip install -e ".[ui]"')

from idsedit.errors import IdseditError, InputImageError  # noqa: E402
from idsedit.ui.jobs import (Done, EditRequest, EditRunner, Failed, Frame, MethodDone, Progress,  # noqa: E402
                             edit_config, painted_mask, render_examples)

SRC, TRG = "a red cube", "a blue cube"


# --------------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A rendered shapes-world image, a text file posing as an input, a half-white mask."""
    d = tmp_path_factory.mktemp("ui-inputs")
    ex = render_examples(d, size=64, n=1)[0]
    notes = d / "notes.txt"
    notes.write_text("this is not an image\n")
    mask = d / "left-half.png"
    m = np.zeros((64, 64), np.uint8)
    m[:, :32] = 255
    Image.fromarray(m).save(mask)
    return {"image": ex.path, "notes": notes, "mask": mask, "source": ex.source, "target": ex.target}


def test_request_checks_speak_the_clis_words(files):
    """Bad input gets the CLI's one-line errors, naming the file by its own name."""
    with pytest.raises(InputImageError) as e:
        EditRequest.check(files["notes"], SRC, TRG, display_name="notes.txt")
    msg = str(e.value)
    assert msg.startswith("notes.txt is not an image in a supported format") and "\n" not in msg
    with pytest.raises(IdseditError, match="the target prompt is empty"):
        EditRequest.check(files["image"], SRC, "   ")
    with pytest.raises(IdseditError, match="unknown method 'magic'"):
        EditRequest.check(files["image"], SRC, TRG, method="magic")
    with pytest.raises(IdseditError, match="compare mode needs two different methods"):
        EditRequest.check(files["image"], SRC, TRG, method="ids", compare_with="IDS-exact")
    with pytest.raises(IdseditError, match="steps must be >= 1"):
        EditRequest.check(files["image"], SRC, TRG, steps=0)
    with pytest.raises(IdseditError, match="steps must be a whole number"):
        EditRequest.check(files["image"], SRC, TRG, steps=2.5)
    with pytest.raises(IdseditError, match="no image"):
        EditRequest.check(None, SRC, TRG)
    req = EditRequest.check(files["image"], SRC, TRG, method="ids", compare_with="dds", steps=3.0,
                            mask_path=files["mask"])
    assert req.methods == ["ids", "dds"] and [c.steps for c in req.configs] == [3, 3]
    assert req.mask.size == req.image.size and req.mask.getpixel((0, 0)) == 255 and req.mask.getpixel((63, 0)) == 0


def test_input_and_prompt_warnings_reach_the_page(files, tiny_prior, tmp_path):
    """Warnings the CLI prints (transparency flattened, prompt too long) are collected, one line each, naming the
    upload by its own name."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (255, 0, 0, 255)
    path = tmp_path / "upload-dir" / "logo.png"
    path.parent.mkdir()
    Image.fromarray(rgba).save(path)
    req = EditRequest.check(path, SRC, TRG, display_name="logo.png")
    assert req.notes == ["logo.png has transparent pixels; they are composited on a white background"]
    assert req.image.getpixel((0, 0)) == (255, 255, 255) and req.image.getpixel((16, 16)) == (255, 0, 0)
    notes = EditRunner(tiny_prior, tmp_path / "out").prompt_notes("a red cube " * 40, TRG)
    assert len(notes) == 1 and notes[0].startswith("the source prompt has") and "limit of 77" in notes[0]


def test_settings_then_variant_overrides():
    """The page's settings reach the EditConfig; a variant's own overrides win (ids-jf stays Jacobian-free)."""
    from idsedit.ui.jobs import Settings

    s = Settings(steps=7, guidance=5.0, fpr_iters=2, fpr_lambda=0.5, fpr_mode="exact", seed=3)
    cfg = edit_config("ids-jf", s)
    assert (cfg.method, cfg.steps, cfg.seed) == ("ids", 7, 3)
    assert (cfg.distill.guidance, cfg.distill.fpr_iters, cfg.distill.fpr_lambda) == (5.0, 2, 0.5)
    assert cfg.distill.fpr_mode == "jacobian-free"
    assert edit_config("ids", s).distill.fpr_mode == "exact"
    assert edit_config("ids", Settings()).steps == 200          # None = the EditConfig default


def test_only_uploaded_files_are_read(tmp_path):
    from idsedit.ui.app import check_uploaded

    uploads = tmp_path / "out" / "cache"
    (uploads / "abc").mkdir(parents=True)
    check_uploaded(uploads / "abc" / "cat.png", uploads)
    check_uploaded(None, uploads)
    for bad in (tmp_path / "cat.png", uploads / ".." / "cat.png"):
        with pytest.raises(IdseditError, match="the image must be a file uploaded to this app"):
            check_uploaded(bad, uploads)


def test_painted_mask_is_the_union_of_strokes():
    a = np.zeros((8, 8, 4), np.uint8)
    a[2:4, 2:4] = (255, 0, 255, 255)
    b = np.zeros((8, 8, 4), np.uint8)
    b[6, 6] = (255, 0, 255, 10)
    m = np.asarray(painted_mask([Image.fromarray(a), Image.fromarray(b)]))
    assert m.sum() == 255 * 5 and m[2, 2] == m[3, 3] == m[6, 6] == 255 and m[0, 0] == 0
    assert painted_mask([Image.fromarray(np.zeros((8, 8, 4), np.uint8))]) is None
    assert painted_mask(None) is None


# --------------------------------------------------------------------------------------------------- runner
def _drain(events):
    out = list(events)
    assert isinstance(out[-1], (Done, Failed)), out[-1]
    return out


def test_runner_edits_in_a_thread_and_writes_only_under_out(tiny_prior, files, tmp_path):
    runner = EditRunner(tiny_prior, tmp_path / "out", frames=3)
    req = EditRequest.check(files["image"], SRC, TRG, method="ids", compare_with="dds", steps=3, seed=1)
    events = _drain(runner.run(req, "s1"))
    done = events[-1]
    assert isinstance(done, Done) and not done.cancelled
    prog = [e for e in events if isinstance(e, Progress)]
    assert [p.done for p in prog] == [1, 2, 3, 4, 5, 6] and prog[-1].total == 6
    assert [(f.method, f.step) for f in events if isinstance(f, Frame)] == [("ids", 1), ("ids", 2), ("ids", 3),
                                                                           ("dds", 1), ("dds", 2), ("dds", 3)]
    ids, dds = done.results
    assert isinstance(ids, MethodDone) and (ids.method, dds.method) == ("ids", "dds")
    assert [(s, k) for s, k, _ in ids.residuals] == [(s, k) for s in (1, 2, 3) for k in range(3)]
    assert dds.residuals == []
    rec = json.loads(ids.files["record"].read_text())
    assert rec["method"] == "ids" and rec["config"]["steps"] == 3 and rec["steps_done"] == 3
    assert rec["source"] == SRC and not rec["cancelled"] and len(rec["fpr_residuals"]) == 9
    assert rec["fpr_residuals"][0]["residual"] == pytest.approx(ids.residuals[0][2])
    assert rec["unet_calls"]["backward"] == 9                  # exact FPR: 3 backward passes per step
    # the same seed gives both methods the same first draw, so their first-step FPR-free parts agree in shape
    assert Image.open(ids.files["edited"]).size == req.image.size
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(tmp_path / "out") for p in written)
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]
    assert runner.estimate(req) is not None and runner.estimate(req) > 0


def test_runner_cancel_stops_promptly_and_frees_the_model(tiny_prior, files, tmp_path):
    runner = EditRunner(tiny_prior, tmp_path / "out", frames=1)
    req = EditRequest.check(files["image"], SRC, TRG, method="dds", steps=10_000)
    seen = []
    for ev in runner.run(req, "s2"):
        seen.append(ev)
        if isinstance(ev, Progress) and ev.step == 2:
            assert runner.cancel("s2")
        if isinstance(ev, (Done, Failed)):
            break
    done = seen[-1]
    assert isinstance(done, Done) and done.cancelled
    md = done.results[0]
    assert md.cancelled and md.result.cancelled and 2 <= md.steps_done <= 4   # the core's should_stop, checked
    assert md.result.steps_done == md.steps_done                               # before every step
    assert json.loads(md.files["record"].read_text())["cancelled"] is True
    assert not runner.cancel("s2")                              # nothing left running for that session
    again = _drain(runner.run(EditRequest.check(files["image"], SRC, TRG, method="dds", steps=2), "s2"))
    assert isinstance(again[-1], Done) and again[-1].results[0].steps_done == 2


def test_runner_stops_when_nobody_takes_its_events(tiny_prior, files, tmp_path):
    """A consumer that stops pulling events (a client gone, a Gradio cancel) ends the run after abandon_s."""
    runner = EditRunner(tiny_prior, tmp_path / "out", frames=1, abandon_s=0.5)
    req = EditRequest.check(files["image"], SRC, TRG, method="dds", steps=10_000)
    events = runner.run(req, "s3")
    while not (isinstance(ev := next(events), Progress) and ev.step >= 2):
        pass
    stop, deadline = runner._stops["s3"], time.time() + 60
    while not stop.is_set() and time.time() < deadline:  # hold the generator at its yield: the run must end anyway
        time.sleep(0.05)
    rest = _drain(events)
    done = rest[-1]
    assert isinstance(done, Done) and done.cancelled and done.results[0].cancelled
    assert done.results[0].steps_done < 10_000


def test_cli_says_how_to_install_gradio(monkeypatch, capsys):
    import importlib.util

    from idsedit import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert cli.main(["ui", "--port", "7999"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'error: the web UI needs gradio: pip install -e ".[ui]"'


# --------------------------------------------------------------------------------------------------- browser
def _install_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, installing Debian's packages as root when missing; else the reason."""
    def found():
        b = shutil.which("chromium") or shutil.which("chromium-browser")
        return (b, shutil.which("chromedriver")) if b and shutil.which("chromedriver") else None

    if found():
        return found()
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        return "no chromium/chromedriver and cannot install them (needs root and apt-get): " \
               "apt-get install chromium chromium-driver"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            return f"installing chromium failed ({' '.join(cmd)}): {r.stderr.strip().splitlines()[-1:]}"
    return found() or "apt-get installed chromium but the binaries are not on PATH"


@pytest.fixture(scope="session")
def browser_paths():
    got = _install_browser()
    if isinstance(got, str):
        pytest.skip(got)
    return got


def _client(url: str, download_to):
    """A gradio_client for the app at ``url``: generous timeouts (the machine may be loaded), no analytics,
    downloads into ``download_to`` (its default is /tmp/gradio)."""
    from gradio_client import Client

    return Client(url.rstrip("/") + "/", verbose=False, httpx_kwargs={"timeout": 120}, download_files=str(download_to),
                  analytics_enabled=False)


@pytest.fixture(scope="module")
def new_client(server, tmp_path_factory):
    """Factory of gradio_client connections (each its own session) to the test server."""
    where = tmp_path_factory.mktemp("client-downloads")
    return lambda: _client(server["url"], where)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    """A folder holding one tiny fitted scene (a red cube, 8 views of 16x16, a 16^3 grid, 4 fit steps)."""
    from idsedit.scene.fit import FitConfig, fit_scene
    from idsedit.shapes import ObjectParams, SceneParams, write_multiview

    root = tmp_path_factory.mktemp("ui-scenes")
    p = SceneParams(objects=(ObjectParams("cube", "red", (0.0, 0.0), 0.8),), floor_color="gray", background="white")
    write_multiview(p, root / "data", n_views=8, size=16)
    tiny = dict(n_voxels=16 ** 3, n_voxels_init=8 ** 3, batch_rays=256, density_rank=4, app_rank=4, holdout_every=4,
                upsample_at=(2,), occupancy_start=3, occupancy_every=2, checkpoint_every=100)
    fit_scene(root / "data", root / "scenes" / "red-cube", FitConfig(steps=4, **tiny), progress=False)
    return root / "scenes"


@pytest.fixture(scope="module")
def server(tiny_prior, scenes_root, tmp_path_factory):
    """The real app over the tiny test model on a free localhost port, with its own output folder."""
    from idsedit.ui import create, launch

    out = tmp_path_factory.mktemp("ui-server") / "out"
    app, runner = create(tiny_prior, out, scenes=scenes_root)
    runner.abandon_s = 3.0                             # a cancelled or abandoned API job frees the model quickly
    url = launch(app, host="127.0.0.1", port=_free_port(), block=False)
    yield {"url": url.rstrip("/"), "out": out, "runner": runner}
    app.close()


@pytest.fixture(scope="module")
def driver(browser_paths, tmp_path_factory):
    pytest.importorskip("selenium", reason='selenium is part of the ui extra: pip install -e ".[ui]"')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1700"):
        opts.add_argument(a)
    opts.binary_location = browser_paths[0]
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(browser_paths[1]), options=opts)
    d.downloads = downloads
    yield d
    d.quit()


def _page(driver, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))


def _css(driver, sel):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, sel)


def _status(driver) -> str:
    return _css(driver, "#status").text.strip()


def _wait(driver, cond, timeout=60, what=""):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d))
    except Exception:
        raise AssertionError(f"timed out waiting for {what}; status: {_status(driver)!r}") from None


def _fill(driver, image, source=SRC, target=TRG, steps=3):
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label=Clear]"):
        button.click()                                # a file is there already: remove it first
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), 10, "the upload box")
    _css(driver, "#upload input[type=file]").send_keys(str(image))
    for sel, text in (("#source textarea", source), ("#target textarea", target), ("#steps input", str(steps))):
        box = _css(driver, sel)
        box.clear()
        box.send_keys(text)


def test_browser_edit_shows_result_and_downloads_record(server, driver, files):
    from selenium.webdriver.common.by import By

    _page(driver, server["url"])
    _fill(driver, files["image"])
    _wait(driver, lambda d: "ready" in _status(d), 20, "the upload preview")
    assert _status(driver).startswith(f"{files['image'].name}: 64x64")
    _css(driver, "#run").click()
    _wait(driver, lambda d: _status(d).startswith("done"), 60, "the edit")
    assert "ids: 3 steps" in _status(driver)
    src = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#out_a img"), 10, "the edited image")[0]
    assert "/gradio_api/file=" in src.get_attribute("src")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", src) >= 256
    links = {a.text.split("\n")[0]: a for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")}
    names = [a.get_attribute("href").rsplit("/", 1)[-1] for a in links.values()]
    stem = files["image"].stem
    assert sorted(names) == sorted([f"{stem}.ids.png", f"{stem}.ids.compare.png", f"{stem}.ids.json"])
    record_link = next(a for a in links.values() if a.get_attribute("href").endswith(".json"))
    driver.execute_script("arguments[0].click()", record_link)
    path = driver.downloads / f"{stem}.ids.json"
    _wait(driver, lambda d: path.is_file() and path.stat().st_size > 0, 20, "the record download")
    rec = json.loads(path.read_text())
    assert (rec["method"], rec["source"], rec["target"], rec["steps_done"]) == ("ids", SRC, TRG, 3)
    assert len(rec["fpr_residuals"]) == 9 and rec["written_by"] == "idsedit ui"
    assert (server["out"] / "runs").is_dir() and list((server["out"] / "runs").rglob(f"{stem}.ids.json"))


def test_browser_bad_file_shows_one_line_and_app_keeps_working(server, driver, files):
    from selenium.webdriver.common.by import By

    _page(driver, server["url"])
    _fill(driver, files["notes"])
    _wait(driver, lambda d: _status(d).startswith("error:"), 20, "the upload error")
    assert _status(driver).startswith("error: notes.txt is not an image in a supported format")
    _css(driver, "#run").click()                      # Run anyway: the same one line, no traceback
    # each toast's text read once: reading it twice (filter, then value) raced with the toast's own updates
    toast = _wait(driver, lambda d: [x for x in (t.text for t in d.find_elements(By.CSS_SELECTOR,
                                                                            "[data-testid=toast-text]"))
                                     if x.strip()], 20, "the error toast")[0]
    assert toast.startswith("notes.txt is not an image in a supported format")
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "notes.txt is not an image" in _status(driver) and "Traceback" not in page
    _fill(driver, files["image"], steps=2)
    _wait(driver, lambda d: "ready" in _status(d), 20, "the good upload")
    _css(driver, "#run").click()
    _wait(driver, lambda d: _status(d).startswith("done"), 60, "the edit after the error")
    assert "ids: 2 steps" in _status(driver)


def test_browser_painted_mask_limits_the_edit(server, driver, files):
    """Strokes painted over the left part of the image: the right part of the result is the input, exactly."""
    import urllib.request

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _page(driver, server["url"])
    _fill(driver, files["image"], steps=2)
    _wait(driver, lambda d: "ready" in _status(d), 20, "the upload preview")
    _css(driver, "#editor button[aria-label=Brush]").click()
    canvas = driver.find_elements(By.CSS_SELECTOR, "#editor canvas")[-1]
    shown = driver.execute_script("return arguments[0].getBoundingClientRect().height", canvas)
    strokes = ActionChains(driver).move_to_element_with_offset(canvas, -int(shown * 0.3), -int(shown * 0.3))
    strokes = strokes.click_and_hold()
    for _ in range(6):
        strokes = strokes.move_by_offset(0, int(shown * 0.1))
    strokes.release().perform()
    _choose_option(driver, "method", "dds")
    _css(driver, "#run").click()
    _wait(driver, lambda d: _status(d).startswith("done"), 60, "the masked edit")
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")]
    rec = json.loads(urllib.request.urlopen(next(h for h in links if h.endswith(".json"))).read())
    assert rec["mask"] is True and rec["method"] == "dds"
    edited = np.asarray(Image.open(urllib.request.urlopen(next(h for h in links if h.endswith(".dds.png"))))
                        .convert("RGB"))
    source_px = np.asarray(Image.open(files["image"]).convert("RGB"))
    assert np.array_equal(edited[:, 48:], source_px[:, 48:])           # unpainted: untouched
    assert not np.array_equal(edited[:, :24], source_px[:, :24])       # painted: edited


def _choose_option(driver, elem_id: str, value: str) -> None:
    """Pick the option whose text starts with ``value:`` in a Gradio dropdown."""
    from selenium.webdriver.common.by import By

    _css(driver, f"#{elem_id} input").click()
    option = _wait(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "li.item")
                                      if o.text.replace("\u2713", "").strip().startswith(value + ":")], 10,
                   f"the option {value}")[0]
    option.click()


def test_browser_cancel_stops_and_next_run_works(server, driver, files):
    _page(driver, server["url"])
    _fill(driver, files["image"], steps=20000)
    _wait(driver, lambda d: "ready" in _status(d), 20, "the upload preview")
    _css(driver, "#run").click()
    _wait(driver, lambda d: "left" in _status(d) or "about" in _status(d), 30, "the run to start")
    time.sleep(0.5)
    _css(driver, "#cancel").click()
    _wait(driver, lambda d: _status(d).startswith("cancelled"), 20, "the cancel")
    assert "cancelled after" in _status(driver)
    steps = _css(driver, "#steps input")
    steps.clear()
    steps.send_keys("2")
    _css(driver, "#run").click()
    _wait(driver, lambda d: _status(d).startswith("done"), 60, "the edit after cancelling")


def test_gradio_client_calls_the_same_endpoint(server, files, new_client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = new_client()
    status, _live, source, edited, compare, plot, paths = client.predict(
        handle_file(str(files["image"])), SRC, TRG, "ids", "dds", 3, 7.5, 2, 1.0, "exact", 0, None, None,
        api_name="/edit")
    assert status.startswith("done; ids: 3 steps; dds: 3 steps")
    assert edited["label"] == "Edited: ids" and compare["label"] == "Edited: dds" and compare["visible"] is True
    assert Image.open(edited["value"]).size == Image.open(compare["value"]).size == Image.open(source).size
    assert {row[2] for row in plot["data"]} == {"ids, k=1", "ids, k=2"}
    recs = [json.loads(Path(p).read_text()) for p in paths if p.endswith(".json")]
    assert [r["method"] for r in recs] == ["ids", "dds"] and recs[0]["config"]["distill"]["fpr_iters"] == 2
    # a painted mask (the image editor's paint layer: strokes over the left half) keeps the right half as it was
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[:, :24] = (255, 0, 255, 255)
    layer_path = files["mask"].parent / "strokes.png"
    Image.fromarray(layer).save(layer_path)
    painted = {"background": handle_file(str(files["image"])), "layers": [handle_file(str(layer_path))],
               "composite": None}
    status, *_, paths = client.predict(handle_file(str(files["image"])), SRC, TRG, "dds", "none", 3, 7.5, 3, 1.0,
                                       "exact", 0, None, painted, api_name="/edit")
    assert status.startswith("done; dds: 3 steps")
    rec = json.loads(Path(next(p for p in paths if p.endswith(".json"))).read_text())
    assert rec["mask"] is True
    edited = np.asarray(Image.open(next(p for p in paths if p.endswith(".dds.png"))).convert("RGB"))
    source_px = np.asarray(Image.open(files["image"]).convert("RGB"))
    assert np.array_equal(edited[:, 32:], source_px[:, 32:]) and not np.array_equal(edited[:, :16], source_px[:, :16])
    with pytest.raises(AppError, match="notes.txt is not an image in a supported format"):
        client.predict(handle_file(str(files["notes"])), SRC, TRG, "ids", "none", 3, 7.5, 3, 1.0, "exact", 0,
                       None, None, api_name="/edit")


def test_gradio_client_job_cancel_frees_the_model(server, files, new_client):
    """gradio_client's job.cancel() (or a client that goes away) ends the run: the event yields at least every
    HEARTBEAT_S, Gradio closes it there, and closing it stops the edit before its next step."""
    from gradio_client import handle_file

    client = new_client()
    job = client.submit(handle_file(str(files["image"])), SRC, TRG, "dds", "none", 20000, 7.5, 3, 1.0, "exact", 0,
                        None, None, api_name="/edit")
    deadline = time.time() + 30
    while not server["runner"].running() and time.time() < deadline:
        time.sleep(0.05)
    assert server["runner"].running()
    job.cancel()
    deadline = time.time() + 60
    while server["runner"].running() and time.time() < deadline:
        time.sleep(0.05)
    assert server["runner"].running() == []
    status = client.predict(handle_file(str(files["image"])), SRC, TRG, "dds", "none", 2, 7.5, 3, 1.0, "exact", 0,
                            None, None, api_name="/edit")[0]
    assert status.startswith("done; dds: 2 steps")


def test_one_run_at_a_time_with_queue_position(server, driver, files, new_client):
    """While an API client's run holds the model, a browser's run waits in the queue and the page shows its
    position; a second API client sees its rank. Cancel withdraws the waiting browser request (it ends without
    running when its turn comes) and the page keeps working."""
    from gradio_client import handle_file
    from selenium.webdriver.common.by import By

    a, b = new_client(), new_client()
    args = (SRC, TRG, "dds", "none")
    job_a = a.submit(handle_file(str(files["image"])), *args, 20000, 7.5, 3, 1.0, "exact", 0, None, None,
                     api_name="/edit")
    deadline = time.time() + 30
    while not server["runner"].running() and time.time() < deadline:
        time.sleep(0.05)
    assert server["runner"].running()
    _page(driver, server["url"])
    _fill(driver, files["image"], steps=2)
    _wait(driver, lambda d: "ready" in _status(d), 20, "the upload preview")
    _css(driver, "#run").click()
    _wait(driver, lambda d: "queue: 1/" in _css(d, "#live").text, 20, "the queue position in the page")
    job_b = b.submit(handle_file(str(files["image"])), *args, 2, 7.5, 3, 1.0, "exact", 0, None, None,
                     api_name="/edit")
    rank = None
    while time.time() < deadline and rank is None:
        rank = job_b.status().rank
        time.sleep(0.05)
    assert rank is not None and rank >= 1 and not job_b.done()     # behind the browser's request
    _css(driver, "#cancel").click()                                 # the browser withdraws its waiting request
    _wait(driver, lambda d: _status(d).startswith("cancelled: the request leaves the queue"), 10, "the withdrawal")
    a.predict(api_name="/cancel")
    assert job_a.result(timeout=30)[0].startswith("cancelled; dds: cancelled after")
    _wait(driver, lambda d: _status(d) == "cancelled while waiting in the queue", 30, "the withdrawn request")
    assert job_b.result(timeout=60)[0].startswith("done; dds: 2 steps")
    _css(driver, "#run").click()                                    # and the page still edits
    _wait(driver, lambda d: _status(d).startswith("done; ids: 2 steps"), 60, "a run after the withdrawal")


def test_cli_serves_on_localhost_and_stops(tmp_path):
    """`idsedit ui --model <tiny> --port P --out DIR` serves the page on 127.0.0.1 only and writes only in DIR."""
    import signal
    import sys
    import urllib.request

    from gradio_client import handle_file

    port = _free_port()
    out = tmp_path / "ui-out"
    home, tmp = tmp_path / "home", tmp_path / "tmp"            # where a library might write behind our back
    home.mkdir()
    tmp.mkdir()
    image = tmp_path / "cube.png"
    render_examples(tmp_path / "render", size=64, n=1)[0].path.rename(image)
    shutil.rmtree(tmp_path / "render")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HOME=str(home), TMPDIR=str(tmp),
               XDG_CACHE_HOME=str(home / ".cache"))
    proc = subprocess.Popen([sys.executable, "-m", "idsedit", "ui", "--model", str(TINY_MODEL), "--port", str(port),
                             "--out", str(out), "--device", "cpu"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C as a terminal
    try:
        deadline, page = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert page is not None and "idsedit" in page, proc.stdout.read() if proc.poll() is not None else ""
        listening = _listeners(port)
        assert listening and all(addr == "127.0.0.1" for addr in listening)
        status = _client(f"http://127.0.0.1:{port}", tmp_path / "client").predict(
            handle_file(str(image)), SRC, TRG, "ids", "none", 2, 7.5, 1, 1.0, "exact", 0, None, None,
            api_name="/edit")[0]
        assert status.startswith("done; ids: 2 steps")
        proc.send_signal(signal.SIGINT)                              # Ctrl-C: the server closes, exit code 0
        log, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, log
    assert f"idsedit ui: http://127.0.0.1:{port}/" in log and "Traceback" not in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client", "cube.png", "home", "tmp", "ui-out"]
    assert [str(p) for p in home.rglob("*")] == []
    # `import torch` itself creates an empty $TMPDIR/torchinductor_<user> (any torch program does); nothing else
    assert [p for p in tmp.rglob("*") if not (p.is_dir() and p.name.startswith("torchinductor_"))] == []
    assert [p for p in tmp.rglob("*") if p.is_file()] == []
    assert (out / "examples").is_dir() and (out / "cache").is_dir() and list((out / "runs").rglob("*.ids.json"))


def _listeners(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp, IPv4)."""
    addrs = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        ip_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            addrs.append(socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1]))
    return addrs


def test_cli_port_in_use_is_one_line_before_loading(tmp_path, capsys, monkeypatch):
    import idsedit.prior
    from idsedit import cli

    loads = []
    monkeypatch.setattr(idsedit.prior, "load_prior", lambda *a, **k: loads.append(a))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code = cli.main(["ui", "--port", str(port), "--out", str(tmp_path / "o")])
    assert code == 1 and loads == []                              # refused before any model loads
    assert capsys.readouterr().err.strip() == f"error: port {port} on 127.0.0.1 is in use: choose another --port"
    assert not (tmp_path / "o").exists()


def test_browser_scene_tab_edits_and_plays_the_orbit(server, driver, scenes_root):
    """Scene tab: pick the fitted scene, a 2-step edit, the source | edited orbit MP4 plays in the page."""
    from selenium.webdriver.common.by import By

    _page(driver, server["url"])
    next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == "Scene").click()
    _css(driver, "#scene_dir input").click()
    _wait(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "li.item") if "red-cube" in o.text], 10,
          "the scene in the list")[0].click()
    for sel, text in (("#scene_source textarea", SRC), ("#scene_target textarea", TRG), ("#scene_steps input", "2"),
                      ("#scene_frames input", "4")):
        box = _css(driver, sel)
        box.clear()
        box.send_keys(text)
    _css(driver, "#scene_run").click()
    status = lambda d: _css(d, "#scene_status").text.strip()  # noqa: E731
    _wait(driver, lambda d: status(d).startswith(("done", "error")), 90, "the scene edit")
    assert status(driver).startswith("done; ids: 2 steps")
    ready = _wait(driver, lambda d: d.execute_script(
        "const v = document.querySelector('#scene_video video'); "
        "return v && v.readyState >= 2 && v.videoWidth > 0 ? [v.videoWidth, v.videoHeight, v.duration] : null"),
        20, "the orbit video")
    assert ready[0] > ready[1] > 0 and ready[2] > 0                  # source | edited side by side, playable
    runs = list((server["out"] / "scenes").glob("*-red-cube.ids"))
    assert runs and (runs[-1] / "scene" / "report.json").is_file() and (runs[-1] / "orbit" / "orbit.mp4").is_file()
    report = json.loads((runs[-1] / "scene" / "report.json").read_text())
    assert (report["method"], report["steps"], report["target"]) == ("ids", 2, TRG)


def test_gradio_client_scene_errors_are_one_line(server, scenes_root, tmp_path, new_client):
    from gradio_client.exceptions import AppError

    client = new_client()
    with pytest.raises(AppError, match=r"is not a folder: choose a scene folder made by `idsedit scene fit`"):
        client.predict(str(scenes_root / "nowhere"), SRC, TRG, "ids", 2, 0, 4, 7.5, 3, 1.0, "exact",
                       api_name="/edit_scene")
    with pytest.raises(AppError, match=r"is outside .*: this app edits scenes under its --scenes folder only"):
        client.predict(str(tmp_path), SRC, TRG, "ids", 2, 0, 4, 7.5, 3, 1.0, "exact", api_name="/edit_scene")
    with pytest.raises(AppError, match="the target prompt is empty"):
        client.predict(str(scenes_root / "red-cube"), SRC, " ", "ids", 2, 0, 4, 7.5, 3, 1.0, "exact",
                       api_name="/edit_scene")


@pytest.mark.parametrize("variant", ["sds", "dds", "pds", "cds", "ids", "ids-jf", "ids+cut"])
def test_cost_model_equals_the_measured_unet_work_of_a_step(tiny_prior, variant):
    """forward_equivalents_per_step (the UI's pre-run estimate) equals what one real step pushes through the UNet
    (samples + 2 x backward samples, counted by idsedit eval's hook)."""
    import torch

    from idsedit.edit2d import edit_latents
    from idsedit.evaluate.runner import count_unet
    from idsedit.ui.jobs import forward_equivalents_per_step
    from idsedit.variants import variant_config

    cfg = variant_config(variant, steps=1, seed=0)
    z = torch.zeros(1, 4, 8, 8)
    cond_src, cond_trg = tiny_prior.encode_text(SRC), tiny_prior.encode_text(TRG)
    with count_unet(tiny_prior.unet) as cost:
        edit_latents(tiny_prior, z, cond_src, cond_trg, cfg)
    assert cost.forward_equivalents == forward_equivalents_per_step(cfg.method, cfg.distill)


def test_first_run_gets_an_estimate_before_it_starts(tiny_prior, files, tmp_path):
    runner = EditRunner(tiny_prior, tmp_path / "out", frames=0)
    req = EditRequest.check(files["image"], SRC, TRG, method="ids", compare_with="dds", steps=200, seed=1)
    est = runner.estimate(req)                           # nothing has run on this server yet
    per_sample = runner.unet_seconds_per_sample(runner.latent_size(req.image.size))
    assert est == pytest.approx(per_sample * 200 * (22 + 4))

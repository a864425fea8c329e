"""Screenshot of the web app after a real edit (docs/ui-screenshot.png), taken with headless Chromium.

    python -m idsedit.ui.screenshot docs/ui-screenshot.png            # bundled prior, example 0, IDS vs DDS
    python -m idsedit.ui.screenshot shot.png --example 2 --steps 100 --model /path/to/model

Starts the app on a free localhost port, clicks a shapes-world example in the gallery (its captions fill the
prompts), picks the methods, runs the edit in the page and saves a screenshot once it is done. Needs the ui extra
and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def take(out_png: Path, *, model=None, example: int = 0, method: str = "ids", compare: str = "dds",
         steps: int = 200, width: int = 1400, timeout_s: float = 900) -> str:
    """Run one edit in the page and save the screenshot; returns the status line shown."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ..prior import load_prior
    from . import create, launch

    work = Path(tempfile.mkdtemp(prefix="idsedit-ui-shot-"))
    prior = load_prior(model)
    app, _ = create(prior, work / "out")
    url = launch(app, port=_free_port(), block=False)
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},1200", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    try:
        wait = WebDriverWait(driver, timeout_s, poll_frequency=0.25)
        driver.get(url)
        thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item"))
        thumbs[example].click()
        status = lambda d: d.find_element(By.CSS_SELECTOR, "#status").text.strip()  # noqa: E731
        wait.until(lambda d: "ready" in status(d))
        for elem_id, value in (("method", method), ("compare", compare)):
            _choose(driver, elem_id, value)
        box = driver.find_element(By.CSS_SELECTOR, "#steps input")
        box.clear()
        box.send_keys(str(steps))
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(lambda d: status(d).startswith(("done", "cancelled", "error")))
        time.sleep(2.0)                                   # the plot draws after the data arrives
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height + 40)
        time.sleep(1.0)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out_png))
        return status(driver)
    finally:
        driver.quit()
        app.close()
        shutil.rmtree(work, ignore_errors=True)


def _choose(driver, elem_id: str, value: str) -> None:
    """Pick ``value`` (the start of an option's text) in a Gradio dropdown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    time.sleep(0.3)
    for option in driver.find_elements(By.CSS_SELECTOR, "li.item"):
        text = option.text.replace("\u2713", "").strip().lower()       # the selected option shows a check mark
        if text.startswith(value.lower() + ":") or text.startswith(value.lower() + " ("):
            option.click()
            time.sleep(0.3)
            return
    box.send_keys(Keys.ESCAPE)
    raise RuntimeError(f"no option {value!r} in #{elem_id}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--model", default=None)
    p.add_argument("--example", type=int, default=0)
    p.add_argument("--method", default="ids")
    p.add_argument("--compare", default="dds")
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args(argv)
    print(take(a.out, model=a.model, example=a.example, method=a.method, compare=a.compare, steps=a.steps))


if __name__ == "__main__":
    main()

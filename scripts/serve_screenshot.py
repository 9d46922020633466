"""Screenshots of `lexsearch serve` for the docs, taken with Debian's headless Chromium through selenium.

    lexsearch demo /tmp/lexsearch-demo        # builds the 'demo' collection (~5 min)
    python scripts/serve_screenshot.py --collection demo --query "green triangle" --out docs/serve

writes docs/serve-results.png (the result grid) and docs/serve-detail.png (a result opened, with the heat
map of its top matching word).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def _all_images_loaded(driver) -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll('img')].filter(i => i.offsetParent && i.src)"
        ".every(i => i.complete && i.naturalWidth > 0);"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", default="demo")
    ap.add_argument("--query", default="green triangle")
    ap.add_argument("--out", default="docs/serve", help="prefix of the two PNGs")
    ap.add_argument("--size", default="1280,860", help="window width,height in CSS pixels")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from lexsearch.index.store import Collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService
    from lexsearch.serve.server import Server

    with Collection.open(args.collection, readonly=True) as col, tempfile.TemporaryDirectory() as profile:
        service = SearchService(col, load_encoder(col, device="cpu"))
        service.warm_up()
        server = Server(service, "127.0.0.1", 0)
        server.start_in_thread()
        options = Options()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in FLAGS + [f"--window-size={args.size}", f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        wait = WebDriverWait(driver, 60)
        try:
            driver.get(server.url + "/")
            box = wait.until(lambda d: d.find_element(By.ID, "q"))
            box.send_keys(args.query, Keys.ENTER)
            cards = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
            wait.until(_all_images_loaded)
            driver.execute_script("document.activeElement.blur()")
            time.sleep(0.3)
            driver.save_screenshot(f"{args.out}-results.png")
            cards[0].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#d-words button.chip"))
            wait.until(_all_images_loaded)
            driver.execute_script("document.activeElement.blur()")
            time.sleep(0.3)
            driver.save_screenshot(f"{args.out}-detail.png")
        finally:
            driver.quit()
            server.stop()
    print(f"wrote {args.out}-results.png and {args.out}-detail.png")


if __name__ == "__main__":
    main()

"""The page in a real browser: Debian's headless Chromium driven through selenium (skipped without them).

Types a query, sees result cards with word chips, opens one with the keyboard, sees the heat map, picks
another word, comes back; the honest "no image matches"; a bookmarked /?q= search; "more like this".
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from lexsearch.collection.embedded import EmbeddedCollection  # noqa: E402
from lexsearch.index.store import Collection  # noqa: E402
from lexsearch.search import load_encoder  # noqa: E402
from lexsearch.serve import SearchService  # noqa: E402
from lexsearch.serve.server import Server  # noqa: E402

# The flags a sandboxed CI container needs, and no traffic of the browser's own (updates, sync, ...).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def served(small_collection):
    _, col_path = small_collection
    with EmbeddedCollection.open(col_path, readonly=True) as col:  # as `lexsearch serve` opens it
        service = SearchService(col, load_encoder(col, device="cpu"))
        service.warm_up()
        server = Server(service, "127.0.0.1", 0)
        server.start_in_thread()
        try:
            yield server
        finally:
            server.stop()


def _wait(driver, condition, timeout=60):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _loaded_width(driver, selector):
    return driver.execute_script(
        "const i = document.querySelector(arguments[0]); return i && i.complete ? i.naturalWidth : 0;",
        selector,
    )


def test_search_open_a_result_and_see_the_heat_map(browser, served):
    browser.get(served.url + "/")
    box = _wait(browser, lambda d: d.find_element(By.ID, "q"))
    _wait(browser, lambda d: "images in the collection" in d.find_element(By.ID, "status").text)
    box.send_keys("a red circle", Keys.ENTER)
    cards = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
    assert "?q=a+red+circle" in browser.current_url  # the search is bookmarkable
    chips = cards[0].find_elements(By.CSS_SELECTOR, ".chip")
    assert chips and all(c.text for c in chips)
    sizes = {
        c.value_of_css_property("font-size")
        for card in cards
        for c in card.find_elements(By.CSS_SELECTOR, ".chip")
    }
    assert len(sizes) > 1  # chips are sized by their contribution
    _wait(browser, lambda d: _loaded_width(d, "#grid .card img") > 0)  # thumbnails load by id

    cards[0].send_keys(Keys.ENTER)  # the keyboard opens a result
    dialog = _wait(browser, lambda d: d.find_element(By.ID, "detail"))
    _wait(browser, lambda d: dialog.get_attribute("open") is not None)
    img = browser.find_element(By.ID, "d-img")
    assert "/api/heatmap/" in img.get_attribute("src")
    _wait(browser, lambda d: _loaded_width(d, "#d-img") >= 512)  # the heat map of the top word, readable size
    pressed = browser.find_elements(By.CSS_SELECTOR, "#d-match button.chip[aria-pressed=true]")
    assert len(pressed) == 1

    own = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#d-words button.chip"))
    word = own[-1].get_attribute("data-word")
    own[-1].click()  # another word: its own heat map
    _wait(
        browser,
        lambda d: (
            "word=" in img.get_attribute("src")
            and img.get_attribute("src").endswith("word=" + word.replace("#", "%23"))
        ),
    )
    _wait(browser, lambda d: _loaded_width(d, "#d-img") >= 512)

    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    if len(cards) > 1:
        _wait(
            browser,
            lambda d: (
                d.find_element(By.ID, "d-title").text == cards[1].find_element(By.CSS_SELECTOR, ".name").text
            ),
        )
    browser.find_element(By.ID, "d-similar").click()  # more like this: the image as the query
    _wait(
        browser,
        lambda d: (
            "like=" in d.current_url and "Images like this image" in d.find_element(By.ID, "status").text
        ),
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#grid .card")


def test_no_match_and_bookmarked_search(browser, served):
    browser.get(served.url + "/?q=%E6%97%A5%E6%9C%AC%E8%AA%9E")  # words the model does not know
    _wait(browser, lambda d: "No image matches" in d.find_element(By.ID, "status").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#grid .card")

    browser.get(served.url + "/?q=square")  # a bookmark runs its search on load
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
    assert browser.find_element(By.ID, "q").get_attribute("value") == "square"
    browser.find_element(By.TAG_NAME, "body").send_keys("/")  # '/' jumps to the search box
    assert browser.switch_to.active_element.get_attribute("id") == "q"

    first = browser.find_element(By.CSS_SELECTOR, "#grid .card")
    first.send_keys(Keys.ENTER)
    dialog = browser.find_element(By.ID, "detail")
    _wait(browser, lambda d: dialog.get_attribute("open") is not None)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)  # Esc closes, and the focus goes back to the card
    _wait(browser, lambda d: dialog.get_attribute("open") is None)
    assert browser.switch_to.active_element.get_attribute("data-index") == "0"


def test_the_page_shows_what_the_query_means(browser, served):
    """The row under the status holds the query vector's strongest words (/api/explain?text=, the JSON of
    `lexsearch explain --text`), the rest on demand; a search by image has no such row."""
    import json
    import urllib.request

    with urllib.request.urlopen(served.url + "/api/explain?text=a%20red%20circle") as resp:
        words = [w["word"] for w in json.load(resp)["words"]]
    assert len(words) > 8
    browser.get(served.url + "/?q=a+red+circle")
    row = _wait(browser, lambda d: d.find_element(By.ID, "means"))
    _wait(browser, lambda d: row.is_displayed() and d.find_elements(By.CSS_SELECTOR, "#means .chip"))
    shown = [c.get_attribute("data-word") for c in row.find_elements(By.CSS_SELECTOR, ".chip")]
    assert row.text.startswith("Your query means:") and shown == words[:8]
    more = row.find_element(By.CSS_SELECTOR, "button.all")
    assert more.text == f"+{len(words) - 8} more"
    more.click()
    shown = [c.get_attribute("data-word") for c in row.find_elements(By.CSS_SELECTOR, ".chip")]
    assert shown == words and not row.find_elements(By.CSS_SELECTOR, "button.all")

    cards = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
    cards[0].click()
    _wait(browser, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is not None)
    browser.find_element(By.ID, "d-similar").click()  # a search by image: no query text to explain
    _wait(browser, lambda d: "Images like this image" in d.find_element(By.ID, "status").text)
    assert not browser.find_element(By.ID, "means").is_displayed()


# ------------------------------------------------------------------------------------- phone, "Show more"
PHONE = {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True}


def _sideways(driver) -> list[int]:
    """(document width, layout viewport width): a page wider than the phone scrolls sideways (a mobile
    browser then also widens the layout viewport past the screen, zooming out)."""
    return driver.execute_script(
        "return [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )


def test_no_sideways_scroll_at_phone_width(browser, served, tmp_path):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    pages = [
        ("start", "/", "images in the collection"),
        ("results", "/?q=a+red+circle", "Images matching"),
        (
            "no-match",
            "/?q=" + "zebra" * 60,
            "No image matches",
        ),  # one long unbroken word, shown in the status
        ("error", "/?q=-red", "Search failed"),
    ]
    for name, target, text in pages:
        browser.get(served.url + target)
        _wait(browser, lambda d, text=text: text in d.find_element(By.ID, "status").text)
        browser.save_screenshot(str(tmp_path / f"phone-{name}.png"))
        assert _sideways(browser) == [375, 375, 375], name
    browser.get(served.url + "/?q=a+red+circle")
    cards = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
    # The query's own words, every one of them shown: still no wider than the phone.
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#means button.all"))[0].click()
    browser.save_screenshot(str(tmp_path / "phone-means.png"))
    assert _sideways(browser) == [375, 375, 375], "means"
    browser.find_element(By.CSS_SELECTOR, "#filters-box summary").click()  # the filter bar, open
    _wait(browser, lambda d: d.find_element(By.ID, "f-orientation").is_displayed())
    browser.save_screenshot(str(tmp_path / "phone-filters.png"))
    assert _sideways(browser) == [375, 375, 375], "filters"
    right = browser.execute_script(
        "return Math.max(...[...document.querySelectorAll('#filters label, #filters button')]"
        ".map((e) => e.getBoundingClientRect().right))"
    )
    assert right <= 375  # every control on the screen, none cut off by the header
    browser.find_element(By.CSS_SELECTOR, "#filters-box summary").click()
    cards[0].click()
    dialog = browser.find_element(By.ID, "detail")
    _wait(browser, lambda d: dialog.get_attribute("open") is not None)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#d-words button.chip"))
    assert _sideways(browser) == [375, 375, 375]
    assert browser.execute_script("const e = arguments[0]; return e.scrollWidth <= e.clientWidth", dialog)


@pytest.fixture
def paged(small_collection):
    """A server whose answers can be held back (``gate``), and that answers the queries "many" (30 results)
    and "page" (exactly one page, 24) with the collection's results repeated (it holds 6 images, less than
    one page of the grid) and "noted" with a note, to see the page's side of each."""
    import threading

    _, col_path = small_collection
    gate = threading.Event()
    gate.set()
    with Collection.open(col_path, readonly=True) as col:
        service = SearchService(col, load_encoder(col, device="cpu"))
        real = service.search

        def search(q, top=10, **options):
            gate.wait(60)
            sizes = {"many": 30, "page": 24}
            if q not in (*sizes, "noted"):
                return real(q, top, **options)
            rows = real("a red circle", 6)
            if q == "noted":
                rows.notes = ["note: a line about the query as a whole"]
                return rows
            return [dict(rows[k % len(rows)], rank=k + 1) for k in range(min(top, sizes[q]))]

        service.search = search
        server = Server(service, "127.0.0.1", 0)
        server.start_in_thread()
        try:
            yield server, gate
        finally:
            gate.set()
            server.stop()


def _more_shown(driver) -> bool:
    return driver.find_element(By.ID, "more").is_displayed()


def test_show_more_only_when_there_is_more(browser, paged):
    server, gate = paged
    gate.clear()  # the first page is on its way
    browser.get(server.url + "/?q=many")
    _wait(browser, lambda d: "Searching" in d.find_element(By.ID, "status").text)
    assert not _more_shown(browser)
    gate.set()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 24)
    assert _more_shown(browser) and "24+ shown" in browser.find_element(By.ID, "status").text

    gate.clear()
    # Scrolled into view, the button loads the next page by itself (infinite scroll).
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "more"))
    _wait(browser, lambda d: "Loading more" in d.find_element(By.ID, "status").text)
    assert not _more_shown(browser)  # not while the next page loads
    gate.set()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 30)
    assert not _more_shown(browser) and "30 shown" in browser.find_element(By.ID, "status").text

    browser.get(server.url + "/?q=page")  # exactly one page: nothing more to show
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 24)
    _wait(browser, lambda d: "24 shown" in d.find_element(By.ID, "status").text)
    assert not _more_shown(browser)

    browser.get(server.url + "/?q=many")
    _wait(browser, _more_shown)
    for query, text in (("-red", "Search failed"), ("zebra", "No image matches")):  # an error, no match
        box = browser.find_element(By.ID, "q")
        box.clear()
        box.send_keys(query, Keys.ENTER)
        _wait(browser, lambda d, text=text: text in d.find_element(By.ID, "status").text)
        assert not _more_shown(browser), query
        assert not browser.find_elements(By.CSS_SELECTOR, "#grid .card")


def test_a_search_shows_its_notes(browser, paged):
    server, _ = paged
    browser.get(server.url + "/?q=noted")
    notes = _wait(browser, lambda d: [n.text for n in d.find_elements(By.CSS_SELECTOR, "#notes li")])
    assert notes == ["note: a line about the query as a whole"]
    browser.get(server.url + "/?q=a+red+circle")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
    assert not browser.find_element(By.ID, "notes").is_displayed()


def test_the_sort_toggle_orders_by_date_and_the_address_keeps_it(browser, served):
    browser.get(served.url + "/?q=a+red+circle")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card"))
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "sort")).select_by_value("date")
    _wait(
        browser, lambda d: "sort%3Adate" in d.current_url and d.find_elements(By.CSS_SELECTOR, "#grid .taken")
    )
    assert browser.find_element(By.ID, "q").get_attribute("value") == "a red circle sort:date"
    dates = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#grid .taken")]
    assert dates == sorted(dates, reverse=True) and all(len(d) == 10 for d in dates)
    browser.get(served.url + "/?q=a+red+circle+sort%3Adate-asc")  # a bookmark keeps the order
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .taken"))
    assert browser.find_element(By.ID, "sort").get_attribute("value") == "date-asc"
    Select(browser.find_element(By.ID, "sort")).select_by_value("score")
    _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#grid .taken"))
    assert browser.find_element(By.ID, "q").get_attribute("value") == "a red circle"


# ------------------------------------------------------------------------------------------ photo filters
@pytest.fixture(scope="module")
def photo_collection(_tiny_model_master, tmp_path_factory):
    """The photo folder (two camera makes over several years, portrait, landscape and square shots),
    indexed once for the module."""
    from click.testing import CliRunner
    from photofolder import make_photo_folder

    from lexsearch.cli import cli

    root = tmp_path_factory.mktemp("photo-filters")
    model = root / "model"
    shutil.copytree(_tiny_model_master, model)
    make_photo_folder(root / "photos")
    col = root / "col"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEXSEARCH_HOME", str(root / "home"))
        res = CliRunner().invoke(
            cli, ["index", str(root / "photos"), "--model", str(model), "--collection", str(col), "--quiet"]
        )
    assert res.exit_code == 0, res.output
    return col


@pytest.fixture
def served_photos(photo_collection):
    with EmbeddedCollection.open(photo_collection, readonly=True) as col:
        service = SearchService(col, load_encoder(col, device="cpu"))
        server = Server(service, "127.0.0.1", 0)
        server.start_in_thread()
        try:
            yield server
        finally:
            server.stop()


def _names(photos) -> set[str]:
    return {p.rel.rsplit("/", 1)[-1] for p in photos}


def _shown(driver) -> set[str]:
    return {n.text for n in driver.find_elements(By.CSS_SELECTOR, "#grid .card .name")}


def _replace(field, text):
    """Select everything in a field, type over it and press Enter (the filter bar's Apply)."""
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    field.send_keys(*((text,) if text else ()), Keys.ENTER)


def test_filters_narrow_the_results_and_a_bookmark_keeps_them(browser, served_photos, tmp_path):
    """A search, then a camera typed and an orientation picked in the filter bar: only the matching photos
    stay, the query text and the address hold both words, and a reload keeps them and the controls."""
    from photofolder import PHOTOS
    from selenium.webdriver.support.ui import Select

    browser.get(served_photos.url + "/")
    box = _wait(browser, lambda d: d.find_element(By.ID, "q"))
    box.send_keys("red", Keys.ENTER)
    _wait(browser, lambda d: _shown(d) == _names(PHOTOS))  # "red" matches every photo of the folder
    bar = browser.find_element(By.ID, "filters-box")
    assert bar.get_attribute("open") is None
    camera = browser.find_element(By.ID, "f-camera")
    assert not camera.is_displayed()  # folded away until wanted
    bar.find_element(By.TAG_NAME, "summary").click()
    _replace(camera, "Google Pixel")  # a value with a space: quoted in the query
    pixels = _names(p for p in PHOTOS if p.camera and "google pixel" in p.camera.lower())
    _wait(browser, lambda d: _shown(d) == pixels)
    assert box.get_attribute("value") == 'red camera:"Google Pixel"'
    assert "camera%3A%22Google+Pixel%22" in browser.current_url

    Select(browser.find_element(By.ID, "f-orientation")).select_by_value("portrait")
    portraits = _names(p for p in PHOTOS if p.orientation == "portrait" and p.camera and "Pixel" in p.camera)
    assert portraits and portraits < pixels
    _wait(browser, lambda d: _shown(d) == portraits)
    assert box.get_attribute("value") == 'red camera:"Google Pixel" orientation:portrait'
    assert "orientation%3Aportrait" in browser.current_url
    assert browser.find_element(By.CSS_SELECTOR, "#filters-box summary").text == "Filters (2)"

    browser.refresh()  # the bookmarked address: same results, the controls filled from the query text
    _wait(browser, lambda d: _shown(d) == portraits)
    assert browser.find_element(By.ID, "filters-box").get_attribute("open") is not None
    assert browser.find_element(By.ID, "f-camera").get_attribute("value") == "Google Pixel"
    assert browser.find_element(By.ID, "f-orientation").get_attribute("value") == "portrait"
    assert browser.find_element(By.ID, "f-after").get_attribute("value") == ""
    browser.save_screenshot(str(tmp_path / "filters.png"))


def test_clearing_a_filter_removes_its_word(browser, served_photos):
    """A bookmark with a date and a folder filter; emptying the date control drops after: from the query
    (and the results grow), a date that is not one is refused in place, Back brings the filter back, and
    Clear removes every filter word."""
    from photofolder import PHOTOS

    in_home = [p for p in PHOTOS if p.rel.startswith("home/")]
    browser.get(served_photos.url + "/?q=red+after%3A2022+in%3Ahome")
    recent = _names(p for p in in_home if p.taken >= "2022")
    assert recent and recent < _names(in_home)
    _wait(browser, lambda d: _shown(d) == recent)
    after = browser.find_element(By.ID, "f-after")
    assert after.is_displayed() and after.get_attribute("value") == "2022"  # the bar opens with its filters
    assert browser.find_element(By.ID, "f-in").get_attribute("value") == "home"

    _replace(after, "")
    _wait(browser, lambda d: _shown(d) == _names(in_home))
    box = browser.find_element(By.ID, "q")
    assert box.get_attribute("value") == "red in:home"
    assert "after" not in browser.current_url

    _replace(after, "soon")  # not a date: the control says so and the query stays as it was
    assert browser.execute_script("return !arguments[0].validity.valid", after)
    assert box.get_attribute("value") == "red in:home"

    browser.back()  # the address before: its filter back in the text and the control
    _wait(browser, lambda d: _shown(d) == recent)
    assert box.get_attribute("value") == "red after:2022 in:home"
    assert after.get_attribute("value") == "2022"

    browser.find_element(By.ID, "f-clear").click()
    _wait(browser, lambda d: _shown(d) == _names(PHOTOS))
    assert box.get_attribute("value") == "red"
    assert browser.find_element(By.CSS_SELECTOR, "#filters-box summary").text == "Filters"

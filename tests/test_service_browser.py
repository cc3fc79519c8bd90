"""The web page in a real headless Chromium against a real `fastgda serve` process.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them); the screenshots are kept in
pytest's temporary folder, or in ``$FASTGDA_TEST_ARTIFACTS`` when it names one.
"""

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from _live_server import live_server  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = "browser-test-token"
PROMPT = "a large cyan circle in the center on a black background"


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    flags = ("--model", str(served["model"]), "--token", TOKEN, "--max-k", "60")
    with live_server(served["attributor"], log, *flags) as (url, _):
        yield url


def gallery_ids(driver, list_id: str, k: int) -> list[int]:
    """Wait until the gallery shows k results with their thumbnails loaded; return their ids in order."""

    def ready(d):
        cards = d.find_elements(By.CSS_SELECTOR, f"#{list_id} li")
        loaded = d.execute_script(
            f"return [...document.querySelectorAll('#{list_id} img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        return len(cards) == k and loaded

    WebDriverWait(driver, 60).until(ready)
    return [
        int(li.get_attribute("data-id"))
        for li in driver.find_elements(By.CSS_SELECTOR, f"#{list_id} li")
    ]


def test_the_page_uploads_generates_compares_and_shows_details(server, browser, served, artifacts):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    browser.get(server)
    token = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "token"))
    WebDriverWait(browser, 30).until(lambda d: token.is_displayed())
    info = browser.find_element(By.ID, "server-info")
    token.send_keys(
        "wrong-token", Keys.ENTER
    )  # a wrong token says so, not "cannot reach the server"
    WebDriverWait(browser, 30).until(lambda d: "refused the access token" in info.text)
    token.clear()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "token-button").click()
    WebDriverWait(browser, 30).until(lambda d: "training images indexed" in info.text)
    assert "refused" not in info.text and browser.find_element(By.ID, "status").text == ""

    # Upload an image with its prompt; the gallery must show the API's answer.
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("6")
    browser.find_element(By.ID, "upload-image").send_keys(str(served["query_image"].resolve()))
    browser.find_element(By.ID, "upload-prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "compare").click()
    browser.find_element(By.ID, "upload-button").click()
    shown = gallery_ids(browser, "gallery", 6)
    shown_baseline = gallery_ids(browser, "baseline-gallery", 6)
    # Each card says which number is the score and which the share; both galleries explain their numbers.
    card = browser.find_element(By.CSS_SELECTOR, "#gallery li").text
    assert "score" in card and "share" in card and f"training image {shown[0]}" in card
    assert "add up to 100%" in browser.find_element(By.CSS_SELECTOR, "#results .legend").text
    legend = browser.find_element(By.ID, "baseline-legend").text
    assert (
        "another scale" in legend and "untuned" not in browser.find_element(By.ID, "baseline").text
    )
    files = {"image": ("q.png", served["query_image"].read_bytes(), "image/png")}
    api = httpx.post(
        f"{server}/v1/attribute",
        files=files,
        data={"prompt": PROMPT, "k": "6", "baseline": "true"},
        headers=auth,
        timeout=60,
    ).json()
    assert shown == [r["id"] for r in api["results"]]
    assert shown_baseline == [r["id"] for r in api["baseline"]["results"]]

    # Keyboard: the first result opens its detail view with Enter and closes with Escape.
    first = browser.find_element(By.CSS_SELECTOR, "#gallery li button")
    first.send_keys(Keys.ENTER)
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "detail").is_displayed())
    assert browser.find_element(By.ID, "detail-id").text == str(shown[0])
    browser.save_screenshot(str(artifacts / "service-detail.png"))
    browser.find_element(By.ID, "detail").send_keys(Keys.ESCAPE)
    WebDriverWait(browser, 10).until(lambda d: not d.find_element(By.ID, "detail").is_displayed())

    # Generate from a prompt with the served model (seeded): same answer as the API.
    browser.find_element(By.ID, "generate-seed").clear()
    browser.find_element(By.ID, "generate-seed").send_keys("7")
    browser.find_element(By.ID, "generate-button").click()
    WebDriverWait(browser, 60).until(
        lambda d: (
            d.find_element(By.ID, "query-image").get_attribute("src").startswith("data:image/png")
        )
    )
    generated = gallery_ids(browser, "gallery", 6)
    answer = httpx.post(
        f"{server}/v1/generate-and-attribute",
        json={"prompt": browser.find_element(By.ID, "generate-prompt").get_attribute("value"), "seed": 7, "k": 6},
        headers=auth,
        timeout=60,
    ).json()  # fmt: skip
    assert generated == [r["id"] for r in answer["results"]]
    assert browser.find_element(By.ID, "query-image").get_attribute("src") == answer["image"]
    browser.save_screenshot(str(artifacts / "service-page.png"))
    assert (artifacts / "service-page.png").stat().st_size > 10_000

    # k above the server's limit is capped with a note, not silently.
    k.clear()
    k.send_keys("500")
    browser.find_element(By.ID, "generate-button").click()
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery li")) == 60
    )
    assert "at most 60" in browser.find_element(By.ID, "k-note").text

    # After an error the previous answer is gone, so nothing on screen reads as the failed request's.
    bad = served["query_image"].parent.parent / "not-an-image.png"
    bad.write_bytes(b"#!/bin/sh\necho not an image\n")
    browser.find_element(By.ID, "upload-image").send_keys(str(bad.resolve()))
    browser.find_element(By.ID, "upload-button").click()
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 30).until(lambda d: "415" in status.text)
    assert not browser.find_element(By.ID, "results").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#gallery li") == []
    browser.save_screenshot(str(artifacts / "service-error.png"))
    # Everything above ran under the page's content security policy: no inline script, nothing blocked.
    assert not _policy_violations(browser)


def _policy_violations(browser) -> list[str]:
    """The console's content security policy messages since the last call."""
    return [
        e["message"]
        for e in browser.get_log("browser")
        if "Content Security Policy" in e["message"]
    ]


def test_api_docs_render_without_a_cdn(server, browser, artifacts):
    """/docs serves Swagger UI from the installed package, so it renders on a machine with no network."""
    html = httpx.get(f"{server}/docs", timeout=10).text
    assert "/docs-assets/swagger-ui-bundle.js" in html and "cdn.jsdelivr" not in html
    browser.get(f"{server}/docs")
    operations = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    assert "/v1/attribute" in [o.text.strip() for o in operations]
    browser.save_screenshot(str(artifacts / "service-docs.png"))
    assert not _policy_violations(browser)  # its inline script runs by its hash

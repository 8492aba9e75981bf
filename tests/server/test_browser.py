"""The playground and the API docs in a real headless browser (Debian's chromium, driven by
selenium through /usr/bin/chromedriver: nothing is downloaded), against a real server process
on the tiny model.

`PLAYGROUND_SCREENSHOT=docs/playground.png` also saves the page with an answer shown;
`PLAYGROUND_MODEL_DIR=artifacts/model` serves another model directory than the tiny one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.procs import ServedProcess, server_command
from server.stats import quantile

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "apt-get install -y chromium chromium-driver (make install tries)",
)

pytest.importorskip("selenium", reason="selenium is in the dev extra (make install)")
from selenium import webdriver  # noqa: E402  # after the skip: the reason is the browser, not the package
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MAX_TEXT_CHARS = 300
WAIT_S = 15
REVIEW = "A wonderful, moving film. The cast is superb and the ending stayed with me for days."


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/v1/predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as resp:
        return json.loads(resp.read())


def start_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download one) is never run.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


# A robustness.json as python -m exporter.robustness writes it, cut to what GET /v1/model reads
# (core.modeldir.robustness_summary): one row flagged, one empty.
ROBUSTNESS = {
    "flag_points": 5.0,
    "whole": {"name": "all test reviews", "size": 2000, "onnx": {"accuracy": 0.9, "ci95": [0.886, 0.912]}},
    "slices": [
        {"name": "short", "size": 0, "onnx": {"accuracy": None, "ci95": None, "gap_points": None, "flagged": False}},
        {"name": "negation", "size": 300, "onnx": {"accuracy": 0.91, "ci95": [0.87, 0.94], "gap_points": 1.0}},
        {
            "name": "late_contrast",
            "size": 80,
            "onnx": {"accuracy": 0.8, "ci95": [0.7, 0.87], "gap_points": -10.0, "flagged": True},
        },
    ],
}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    # A copy, so that the robustness report written into it stays out of the shared tiny model.
    model_dir = tmp_path_factory.mktemp("browser-model") / "model"
    shutil.copytree(Path(os.environ.get("PLAYGROUND_MODEL_DIR") or tiny_model_dir), model_dir)
    # The screenshot in docs/ shows only what the served model's directory holds: no made-up figures.
    if not (model_dir / "robustness.json").exists() and not os.environ.get("PLAYGROUND_SCREENSHOT"):
        (model_dir / "robustness.json").write_text(json.dumps(ROBUSTNESS))
    cmd = server_command(model_dir, "--max-text-chars", str(MAX_TEXT_CHARS), "--intra-op-threads", "1")
    with ServedProcess(cmd, tmp_path_factory.mktemp("browser") / "server.log", ready_timeout_s=90) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S).until(condition, message)


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def classify(driver, text: str) -> None:
    """Type `text` into the box (replacing what is there) and press Classify; wait for the answer."""
    box = driver.find_element(By.ID, "review")
    box.clear()
    box.send_keys(text)
    driver.execute_script("document.getElementById('request-meta').hidden = true")
    driver.find_element(By.ID, "classify").click()
    wait(driver, lambda d: d.find_element(By.ID, "request-meta").is_displayed(), "no answer shown")


def page_results(driver) -> list[tuple[str, str]]:
    return [
        (item.find_element(By.CLASS_NAME, "label").text, item.find_element(By.CLASS_NAME, "score").text)
        for item in driver.find_elements(By.CSS_SELECTOR, "#results .result")
    ]


def severe_console_lines(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_a_typed_review_is_answered_with_label_score_latency_and_request_id(server, browser):
    browser.get(server.url + "/")
    classify(browser, REVIEW)
    status, expected = post(server.url, {"text": REVIEW})
    assert status == 200
    assert page_results(browser) == [(expected["label"], f"{expected['score']:.3f}")]
    bar = browser.find_element(By.CSS_SELECTOR, "#results .result .bar")
    assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(expected["score"])
    fill = browser.find_element(By.CSS_SELECTOR, "#results .result .fill")
    assert fill.value_of_css_property("width") != "0px"
    assert text_of(browser, "#status") == "200" and float(text_of(browser, "#latency")) > 0
    # The request id is the one the server gave this request (X-Request-ID), as its access log says.
    request_id = text_of(browser, "#request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    assert not browser.find_element(By.ID, "error").is_displayed()

    # The model view is filled from GET /v1/model, the live view counts the request.
    info = get(server.url, "/v1/model")
    wait(browser, lambda d: text_of(d, 'dd[data-fact="name"]') == info["model_name"], "model view not filled")
    assert text_of(browser, 'dd[data-fact="version"]') == info["model_version"]
    assert info["quantization"] in text_of(browser, 'dd[data-fact="quantization"]')
    assert f"at most {info['truncation']['max_length']} word pieces" in text_of(browser, 'dd[data-fact="truncation"]')
    assert f"{100 * info['parity']['label_agreement']:.2f}%" in text_of(browser, 'dd[data-fact="parity"]')
    # An export whose parity ran on random text (no data/imdb, as on a fresh clone) has no accuracy.
    accuracy = info["parity"].get("onnx_accuracy")
    expected = "n/a" if accuracy is None else f"ONNX {100 * accuracy:.2f}%"
    assert expected in text_of(browser, 'dd[data-fact="accuracy"]')
    wait(browser, lambda d: text_of(d, "#live-total") not in ("", "–"), "live view never polled")
    access = [json.loads(line) for line in server.log_path.read_text().splitlines() if '"access"' in line]
    assert any(a["request_id"] == request_id and a["path"] == "/v1/predict" for a in access)
    assert not any(a["path"] == "/v1/stats" for a in access)  # polls, like scrapes, are not logged
    assert not severe_console_lines(browser)
    if os.environ.get("PLAYGROUND_SCREENSHOT"):
        wait(browser, lambda d: text_of(d, "#live-rate").endswith("/s"), "no interval in the live view yet")
        browser.save_screenshot(os.environ["PLAYGROUND_SCREENSHOT"])


def test_the_model_view_shows_the_robustness_summary(server, browser):
    if os.environ.get("PLAYGROUND_SCREENSHOT"):
        pytest.skip("screenshot mode: the served model directory has no robustness report")
    browser.get(server.url + "/")
    summary = get(server.url, "/v1/model")["robustness"]
    wait(browser, lambda d: d.find_element(By.ID, "model-robustness").is_displayed(), "no robustness table")
    rows = browser.find_elements(By.CSS_SELECTOR, "#robustness-rows tr")
    assert [r.get_attribute("data-slice") for r in rows] == [s["name"] for s in summary["slices"]]
    for row, s in zip(rows, summary["slices"]):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
        assert cells[:2] == [s["name"], str(s["size"])]
        if s["accuracy"] is None:
            assert cells[2:4] == ["n/a", "n/a"]
        else:
            assert cells[2] == f"{100 * s['accuracy']:.1f}%" and cells[3].startswith(f"{100 * s['ci95'][0]:.1f}%")
        assert ("flagged" in row.get_attribute("class")) == s["flagged"] == cells[4].endswith("⚠")
    assert any(s["flagged"] for s in summary["slices"]) or "PLAYGROUND_MODEL_DIR" in os.environ
    assert f"{summary['samples']} test reviews" in text_of(browser, "#robustness-note")


def test_several_lines_are_one_request_answered_in_order(server, browser):
    browser.get(server.url + "/")
    browser.find_element(By.ID, "all-examples").click()
    lines = browser.find_element(By.ID, "review").get_attribute("value").split("\n")
    assert len(lines) == 4
    browser.find_element(By.ID, "classify").click()
    wait(browser, lambda d: len(page_results(d)) == 4, "not every line answered")
    status, expected = post(server.url, {"texts": lines})
    assert status == 200
    assert page_results(browser) == [(p["label"], f"{p['score']:.3f}") for p in expected["predictions"]]


def test_the_live_view_counts_requests_and_computes_rates(server, browser):
    browser.get(server.url + "/")
    for i in range(3):
        assert post(server.url, {"text": f"review number {i}"})[0] == 200
    total = get(server.url, "/v1/stats")["requests"]["total"]
    wait(browser, lambda d: text_of(d, "#live-total").isdigit() and int(text_of(d, "#live-total")) >= total, "count")
    wait(browser, lambda d: text_of(d, "#live-rate").endswith(" /s"), "no rate between two polls")
    assert text_of(browser, "#live-p95-total").endswith(" ms")
    assert float(text_of(browser, "#live-batch-total")) >= 1


def test_api_errors_are_shown_as_the_api_words_them(server, browser):
    browser.get(server.url + "/")
    too_long = "a" * (MAX_TEXT_CHARS + 1)
    classify(browser, too_long)
    status, expected = post(server.url, {"text": too_long})
    assert status == 422 and expected["error"]["code"] == "text_too_long"
    wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed(), "no error shown")
    assert text_of(browser, "#error-code") == "text_too_long"
    assert text_of(browser, "#error-message") == expected["error"]["message"]
    assert text_of(browser, "#status") == "422" and not page_results(browser)

    classify(browser, "   ")  # blank: sent as it is, refused by the API, not by the page
    assert text_of(browser, "#error-code") == "empty_text"
    assert text_of(browser, "#error-message") == post(server.url, {"text": "   "})[1]["error"]["message"]
    # Refusals appear in the live view (sentiment_rejected_total).
    wait(browser, lambda d: "too_large" in text_of(d, "#live-refused-total"), "refusals not shown")


def test_the_page_computes_quantiles_as_the_server_does(server, browser):
    """The live view's recent p95 is the page's own arithmetic on bucket counts: the same as
    server/stats.py's (and Prometheus' histogram_quantile) on the same numbers."""
    browser.get(server.url + "/")
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1]
    for cumulative, count in (([0, 3, 9, 10, 10], 10), ([1, 1, 1, 1, 1], 4), ([0, 0, 0, 0, 0], 0)):
        for q in (0.5, 0.95):
            script = "return window.Playground.quantile(...arguments)"
            got = browser.execute_script(script, q, bounds, cumulative, count)
            expected = quantile(q, bounds, cumulative, count)
            assert got == (None if expected is None else pytest.approx(expected)), (q, cumulative)


def test_the_page_takes_a_recent_p95_from_two_polls(server, browser):
    """Between two polls: the rate, and the p95 of the requests in between (bucket differences)."""
    browser.get(server.url + "/")
    empty = get(server.url, "/v1/stats")
    empty["requests"]["total"] = empty["latency_seconds"]["count"] = 0  # as before the first request
    empty["latency_seconds"]["buckets"] = {"le": [], "cumulative": []}
    empty["batches"] = {"count": 0, "texts": 0, "mean_size": None}
    empty["rejected"]["total"] = 0
    assert post(server.url, {"text": "a first review"})[0] == 200
    first = get(server.url, "/v1/stats")
    for i in range(4):
        assert post(server.url, {"text": f"one more review {i}"})[0] == 200
    second = get(server.url, "/v1/stats")
    for prev, cur in ((empty, first), (first, second)):
        got = browser.execute_script("return window.Playground.windowed(...arguments)", prev, cur, 2.0)
        bounds, now = cur["latency_seconds"]["buckets"]["le"], cur["latency_seconds"]["buckets"]["cumulative"]
        before = prev["latency_seconds"]["buckets"]["cumulative"] or [0] * len(now)
        n = cur["latency_seconds"]["count"] - prev["latency_seconds"]["count"]
        expected = quantile(0.95, bounds, [a - b for a, b in zip(now, before)], n)
        assert got["p95"] == pytest.approx(expected)
        assert got["rate"] == pytest.approx((cur["requests"]["total"] - prev["requests"]["total"]) / 2.0)
        batches = cur["batches"]["count"] - prev["batches"]["count"]
        assert batches > 0 and expected is not None
        assert got["batch"] == pytest.approx((cur["batches"]["texts"] - prev["batches"]["texts"]) / batches)
    assert second["requests"]["total"] - first["requests"]["total"] == 4


def test_the_api_docs_show_the_predict_operation(server, browser):
    browser.get_log("browser")  # drained: the earlier tests' refused requests are logged there
    browser.get(server.url + "/docs")
    operation = wait(
        browser,
        lambda d: d.find_elements(By.ID, "operations-default-predict"),
        "Swagger UI did not render the predict operation",
    )[0]
    assert "/v1/predict" in operation.text and "POST" in operation.text
    assert "/v1/stats" in text_of(browser, "#swagger-ui")
    assert not severe_console_lines(browser)


def test_a_401_asks_for_the_key_and_later_requests_send_it(tiny_model_dir, tmp_path):
    key = "playground-test-key"
    (tmp_path / "keys").write_text(key + "\n")
    cmd = server_command(tiny_model_dir, "--api-key-file", str(tmp_path / "keys"), "--intra-op-threads", "1")
    with ServedProcess(cmd, tmp_path / "server.log", ready_timeout_s=90) as served:
        driver = start_browser()
        try:
            driver.get(served.url + "/")
            assert not driver.find_element(By.ID, "key-form").is_displayed()
            # The tiny model has no robustness report: no table.
            wait(driver, lambda d: text_of(d, 'dd[data-fact="name"]') != "", "model view not filled")
            assert not driver.find_element(By.ID, "model-robustness").is_displayed()
            classify(driver, REVIEW)
            status, refused = post(served.url, {"text": REVIEW})
            assert status == 401 and refused["error"]["code"] == "unauthorized"
            assert text_of(driver, "#status") == "401" and text_of(driver, "#error-code") == "unauthorized"
            assert text_of(driver, "#error-message") == refused["error"]["message"]
            wait(driver, lambda d: d.find_element(By.ID, "key-form").is_displayed(), "no key field on a 401")

            # A wrong key: refused in the API's words, and not kept.
            driver.find_element(By.ID, "api-key").send_keys("not-the-key")
            driver.find_element(By.ID, "use-key").click()
            wait(driver, lambda d: "refused this tab's API key" in text_of(d, "#key-hint"), "wrong key not said")
            assert text_of(driver, "#error-code") == "unauthorized"
            assert driver.execute_script("return sessionStorage.getItem('sentiment-api-key')") is None

            driver.find_element(By.ID, "api-key").send_keys(key)
            driver.find_element(By.ID, "use-key").click()
            wait(driver, lambda d: len(page_results(d)) == 1, "the retry with the key was not answered")
            assert text_of(driver, "#status") == "200" and not driver.find_element(By.ID, "error").is_displayed()
            assert driver.execute_script("return sessionStorage.getItem('sentiment-api-key')") == key
            driver.refresh()  # the same tab keeps it: later requests send it without asking
            assert driver.find_element(By.ID, "key-status").is_displayed()
            classify(driver, "Another review, sent with the kept key.")
            assert text_of(driver, "#status") == "200" and not driver.find_element(By.ID, "key-form").is_displayed()
            driver.find_element(By.ID, "forget-key").click()
            classify(driver, "And one without it.")
            assert text_of(driver, "#status") == "401"
        finally:
            driver.quit()

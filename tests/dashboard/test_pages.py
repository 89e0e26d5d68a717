"""The dashboard in a real headless Chromium over a catalog made by the real code: each page shows the
catalog's rows, the live parts follow changes made in the catalog without a reload, the cancel button
cancels through `catalog.jobs.request_cancel`, and hostile text stays text."""

from __future__ import annotations

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.dashboard.conftest import HOSTILE, alive, screenshot

WAIT_S = 60
"""How long a condition may take to show (a poll bound, not a deadline on the product)."""


def wait_for(driver, condition, what: str):
    """Poll `condition`; an element htmx swapped out between finding and reading it is polled again."""
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(lambda d: condition(d), message=what)


def text_of(driver, css: str) -> str:
    """The element's text, found again when a live refresh replaced it while it was read."""
    for _ in range(20):
        try:
            return driver.find_element(By.CSS_SELECTOR, css).text
        except StaleElementReferenceException:
            continue
    return driver.find_element(By.CSS_SELECTOR, css).text


def click(driver, css: str) -> None:
    """Click the element, found again when a live refresh replaced it before the click landed."""
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, f"a click on {css}")


def no_script_ran(driver) -> None:
    assert driver.execute_script("return window.__pwned === undefined"), "hostile text was run as code"
    scripts = [e.get_attribute("src") for e in driver.find_elements(By.TAG_NAME, "script")]
    assert all(src and src.endswith("/static/htmx.min.js") for src in scripts), scripts


def test_pool_shows_workers_gpus_the_job_on_each_and_who_submitted_it(board, browser):
    alive(board, usage={1: {"utilization": 87, "memory_used_bytes": 61 << 30}})
    browser.get(board.url + "/pool")
    rows = browser.find_elements(By.CSS_SELECTOR, "#pool-table tbody tr")
    assert len(rows) == 2  # one row per GPU
    first, second = (r.text for r in rows)
    assert "ft-7@gpu-host-1" in first and "alive" in first and "gpu, cpu" in first
    assert "NVIDIA H200" in first and "h200-141gb" in first and "141.0 GiB" in first and "free" in first
    assert f"job {board.running_job} train" in second and "bob" in second
    assert "87%" in second and "61.0 GiB / 141.0 GiB" in second and "%" not in first
    assert "12/50 steps (24%)" in second and "loss=2.5" in second
    assert text_of(browser, "#pool-summary") == "1 worker(s), 1 of 2 live GPU(s) busy"
    screenshot(browser, "pool")


def test_queue_filters_and_refreshes_itself_when_a_job_changes_in_the_catalog(board, browser):
    from catalog.jobs import claim_job, release_job

    browser.get(board.url + "/queue")
    ids = [r.get_attribute("id") for r in browser.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")]
    assert ids[:2] == [f"job-{board.running_job}", f"job-{board.queued_job}"] and len(ids) == 4
    queued = text_of(browser, f"#job-{board.queued_job}")
    assert "alice" in queued and "queued" in queued and "0/3" in queued
    assert "waiting for a free slot on queue 'gpu' (priority 5)" in queued or "no live worker" in queued
    screenshot(browser, "queue")

    browser.get(board.url + "/queue?user=alice&status=queued&kind=train")
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")
    assert [r.get_attribute("id") for r in rows] == [f"job-{board.queued_job}"]
    browser.execute_script("window.__same_page = true")
    owner = "ft-7@gpu-host-1:slot0"
    assert claim_job(board.catalog, board.queued_job, owner, lease_seconds=3600) is not None
    try:
        wait_for(
            browser, lambda d: "no jobs match" in text_of(d, "#queue-table"), "the queued filter to empty"
        )
        browser.get(board.url + "/queue?user=alice")
        browser.execute_script("window.__same_page = true")
        cell = f"#job-{board.queued_job} .status"
        assert text_of(browser, cell) == "running"
        release_job(board.catalog, board.queued_job, owner)
        wait_for(browser, lambda d: text_of(d, cell) == "queued", "the status to refresh to queued")
        assert browser.execute_script("return window.__same_page === true"), "the page was reloaded"
    finally:
        release_job(board.catalog, board.queued_job, owner)


def test_job_page_has_spec_curves_log_tail_and_escapes_the_log(board, browser):
    browser.get(board.url + f"/jobs/{board.trained_job}")
    assert text_of(browser, "#job-status") == "succeeded"
    assert '"name": "f-lora"' in text_of(browser, "#spec")
    series = {e.get_attribute("data-series"): int(e.get_attribute("data-points"))
              for e in browser.find_elements(By.CSS_SELECTOR, "#charts polyline.series")}  # fmt: skip
    assert series["loss"] == 3 and series["learning rate"] == 3
    assert f"job {board.trained_job} (train) attempt 1/3" in text_of(browser, "#log")
    assert not browser.find_elements(By.ID, "cancel")  # a finished job has no cancel button
    screenshot(browser, "job")

    browser.get(board.url + f"/jobs/{board.running_job}")
    assert HOSTILE in text_of(browser, "#log") and "step 12 loss 2.5" in text_of(browser, "#log")
    no_script_ran(browser)
    with open(board.settings.logs / f"job-{board.running_job}.log", "a", encoding="utf-8") as f:
        f.write("step 13 loss 2.4\n")
    wait_for(browser, lambda d: "step 13 loss 2.4" in text_of(d, "#log"), "the log tail to refresh")


def test_the_cancel_button_cancels_the_job_in_the_catalog(board, browser):
    from catalog.jobs import get_job, submit_job

    job, _ = submit_job(board.catalog, "convert", {"dataset": "faults"}, "carol", queue="cpu")
    browser.get(board.url + f"/jobs/{job.id}")
    assert text_of(browser, "#job-status") == "queued"
    click(browser, "#cancel button")
    wait_for(browser, lambda d: text_of(d, "#job-status") == "cancelled", "the job page to show cancelled")
    with board.catalog.session() as s:
        row = get_job(s, job.id)
        assert (row.status, row.cancel_requested) == ("cancelled", True)

    browser.get(board.url + f"/jobs/{board.running_job}")  # running: asked to stop at its next step
    click(browser, "#cancel button")
    wait_for(browser, lambda d: "(cancel requested)" in text_of(d, "#job-status"), "cancel requested")
    with board.catalog.session() as s:
        row = get_job(s, board.running_job)
        assert (row.status, row.cancel_requested) == ("running", True)
        row.cancel_requested = False  # the other tests' running job stays as it was


def test_adapters_registry_lineage_and_the_compare_table(board, browser):
    from catalog.adapters import get_adapter

    with board.catalog.session() as s:
        a = get_adapter(s, board.adapter)
        sha256, job_id = a.sha256, a.job_id
    browser.get(board.url + "/adapters")
    row = text_of(browser, '#adapters-table tr[data-adapter="f-lora"]')
    assert "lora" in row and "tiny" in row and "faults:1" in row and "plain:1" in row and sha256[:12] in row
    screenshot(browser, "adapters")

    browser.find_element(By.CSS_SELECTOR, 'input[name="adapter"][value="f-lora"]').click()
    browser.find_element(By.CSS_SELECTOR, 'input[name="base"]').click()
    browser.find_element(By.CSS_SELECTOR, "#compare-form button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "compare-table"), "the compare table")
    heads = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#compare-table thead th")]
    assert heads == ["", "tiny", "f-lora"]
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody th")]
    assert labels[:2] == ["method", "peak training memory"] and "f1" in labels and labels[-1] == "samples"
    samples = browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")[-1].text
    assert samples == "samples 4 4"
    screenshot(browser, "compare")

    browser.get(board.url + "/adapters/f-lora")
    lineage = text_of(browser, "#lineage")
    for expected in ("lora", "tiny", "faults:1", "plain:1", sha256, f"job {job_id}"):
        assert expected in lineage
    assert '"rank": 4' in text_of(browser, "#hyperparameters")
    assert "triple-f1" in text_of(browser, "#evaluations")


def test_datasets_models_and_templates_pages_escape_hostile_rows(board, browser):
    browser.get(board.url + "/datasets")
    assert "train 24, test 50" in text_of(browser, '#datasets-table tr[data-dataset="faults:1"]')
    hostile = text_of(browser, '#datasets-table tr[data-dataset="hostile:1"]')
    assert "train 1, test 1" in hostile and "mallory" in hostile
    browser.get(board.url + "/datasets/hostile/1")
    inputs = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "td.row-input")]
    assert HOSTILE in inputs and "plain row" in inputs
    assert "1 invalid row(s)" in browser.page_source and "hostile.jsonl:3" in text_of(browser, "#report")
    no_script_ran(browser)
    screenshot(browser, "dataset")

    browser.get(board.url + "/models")
    assert "LlamaForCausalLM" in text_of(browser, '#models-table tr[data-model="tiny"]')
    browser.get(board.url + "/templates")
    assert "{instruction}" in text_of(browser, '#templates-table tr[data-template="plain:1"]')


@pytest.mark.parametrize("path", ["/jobs/999999", "/adapters/no-such-adapter", "/datasets/faults/9", "/nope"])
def test_unknown_ids_give_a_404_page(board, browser, path):
    browser.get(board.url + path)
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text
    assert text_of(browser, "#error")

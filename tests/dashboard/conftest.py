"""Fixtures of the dashboard tests: one catalog built by the real code (a dataset from tests/data with a
hostile row, the tiny model, an adapter trained 3 steps, jobs submitted, a worker with fake GPUs),
the app served by uvicorn on a free loopback port, and a real headless Chromium driven by Selenium.

Without chromium and chromedriver the browser tests are skipped, unless FT_REQUIRE_SERVICES=1 (CI),
which turns their absence into a failure. FT_DASHBOARD_SCREENSHOTS=DIR saves the pages' screenshots."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FAULTS_TRAIN, _need_service, free_port

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
"""Text a user could put in a dataset row, a job's log or an adapter's spec; it must show as text."""
OWNER_PREFIX = "ft-7@gpu-host-1"


@dataclass
class Board:
    """The catalog behind the served dashboard, and the ids the tests look for."""

    catalog: object
    store: object
    settings: object
    url: str
    trained_job: int
    queued_job: int
    running_job: int
    worker_id: int
    adapter: str


def _row(text: str) -> str:
    row = json.loads(FAULTS_TRAIN.read_text(encoding="utf-8").splitlines()[0])
    row["input"] = text
    return json.dumps(row, ensure_ascii=False) + "\n"


@pytest.fixture(scope="session")
def board(tmp_path_factory, tiny_model_dir):
    from catalog.db import Catalog
    from catalog.jobs import claim_job, submit_job
    from catalog.migrate import upgrade
    from catalog.settings import Settings
    from catalog.store import ArtifactStore
    from catalog.workers import claim_gpu, register_worker
    from dashboard.app import create_app, start_in_thread
    from datasets_prep.register import add_dataset
    from datasets_prep.templates import seed_builtin_templates
    from tests.worker.eval_helpers import evaluate, register_faults, train
    from worker.resolve import resolve_train_spec

    tmp = tmp_path_factory.mktemp("dashboard")
    settings = Settings.from_env({"FT_HOME": str(tmp / "ft-home"), "FT_USER": "tester"})
    settings.ensure_dirs()
    catalog = Catalog(settings)
    upgrade(catalog.engine)
    seed_builtin_templates(catalog, settings.user)
    store = ArtifactStore(settings.artifacts)

    register_faults(catalog, store, tiny_model_dir, tmp)
    train(catalog, settings, store, "f-lora", "lora", {"rank": 4})
    evaluate(catalog, settings, store, adapters=["f-lora"], bases=["tiny"])
    with catalog.session() as s:
        from catalog.adapters import get_adapter

        trained_job = get_adapter(s, "f-lora").job_id

    hostile = tmp / "hostile.jsonl"
    bad = json.dumps({"instruction": HOSTILE, "input": HOSTILE}, ensure_ascii=False) + "\n"
    hostile.write_text(_row(HOSTILE) + _row("plain row") + bad, encoding="utf-8")
    add_dataset(catalog, store, "hostile", hostile, "triples", user="mallory", splits={"test": 1},
                skip_invalid=True)  # fmt: skip

    def submit(name: str, user: str, priority: int) -> int:
        with catalog.session() as s:
            spec = resolve_train_spec(
                s, name=name, method="lora", model="tiny", dataset="faults", template="plain",
                method_flags={"rank": 4}, train_flags={"max_steps": 50}, max_len=192,
            ).to_json()  # fmt: skip
        job, _ = submit_job(catalog, "train", spec, user, adapter_name=name, queue="gpu", priority=priority,
                            logs_dir=str(settings.logs))  # fmt: skip
        return job.id

    queued_job = submit("alice-lora", "alice", 5)
    running_job = submit("bob-lora", "bob", 1)
    owner = f"{OWNER_PREFIX}:slot0"
    assert claim_job(catalog, running_job, owner, lease_seconds=3600) is not None
    gpus = [
        {"index": i, "model": "NVIDIA H200", "class": "h200-141gb", "memory_bytes": 141 << 30} for i in (0, 1)
    ]
    with catalog.session() as s:
        worker_id = register_worker(s, OWNER_PREFIX, "gpu-host-1", 7, ["gpu", "cpu"], gpus).id
        assert claim_gpu(s, worker_id, running_job, 1) == 1
    from catalog.jobs import heartbeat

    heartbeat(catalog, running_job, owner, 3600, {"stage": "train", "step": 12, "total": 50, "loss": 2.5})
    log = Path(settings.logs) / f"job-{running_job}.log"
    log.write_text(f"step 12 loss 2.5\n{HOSTILE}\n", encoding="utf-8")

    port = free_port()
    app = create_app(catalog, store, refresh_seconds=0.5)
    server, thread = start_in_thread(app, "127.0.0.1", port)
    yield Board(catalog, store, settings, f"http://127.0.0.1:{port}", trained_job, queued_job, running_job,
                worker_id, "f-lora")  # fmt: skip
    server.should_exit = True
    thread.join(timeout=30)
    catalog.dispose()


def alive(board: Board, usage: dict | None = None) -> None:
    """Heartbeat the fake worker, so that it is shown alive however long the tests before took (with
    `usage`, the NVML readings a worker with real GPUs would send)."""
    from catalog.workers import heartbeat

    with board.catalog.session() as s:
        heartbeat(s, board.worker_id, usage=usage)


def fetch(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, headers, body) of one plain HTTP request (redirects not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(request, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium (Debian's chromium + chromium-driver) through Selenium."""
    found = _chromium()
    if found is None:
        _need_service("chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    """Save the page as docs-style PNG when FT_DASHBOARD_SCREENSHOTS names a folder."""
    folder = os.environ.get("FT_DASHBOARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"dashboard-{name}.png"))

"""The dashboard's guards over real HTTP: the token off loopback (refused without one; header, login
link and cookie with one, in a real `ft dashboard` process), the Host check, the cancel form's secret,
the adapter zip streamed from the store, and the token login in the browser."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile

import pytest
from click.testing import CliRunner

from tests.conftest import REPO, free_port
from tests.dashboard.conftest import fetch

TOKEN = "s3cret-token-for-tests"


def test_a_host_beyond_loopback_needs_a_token(monkeypatch):
    from cli.main import cli

    monkeypatch.delenv("FT_DASHBOARD_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: --host 0.0.0.0 is reachable from other machines: set FT_DASHBOARD_TOKEN to require a token, "
        "or leave --host at 127.0.0.1"
    ]


@pytest.fixture(scope="module")
def served_with_token(board):
    """`ft dashboard --host 0.0.0.0` as a real process over the board's catalog, FT_DASHBOARD_TOKEN set."""
    port = free_port()
    env = {
        **os.environ,
        "FT_HOME": str(board.settings.home),
        "FT_USER": "tester",
        "FT_DASHBOARD_TOKEN": TOKEN,
    }
    for var in ("FT_DATABASE_URL", "FT_BROKER_URL", "FT_ARTIFACTS"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "dashboard", "--host", "0.0.0.0", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            pytest.fail(f"ft dashboard exited {proc.returncode}: {proc.stdout.read()}")
        try:
            fetch(url + "/pool")
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_the_token_is_required_on_0_0_0_0(served_with_token):
    url = served_with_token
    status, _, body = fetch(url + "/pool")
    assert status == 401 and b"token is required" in body
    assert fetch(url + "/pool", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert fetch(url + "/pool?token=wrong")[0] == 401
    assert fetch(url + "/static/htmx.min.js")[0] == 401
    status, _, body = fetch(url + "/pool", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and b"ft-7@gpu-host-1" in body

    status, headers, _ = fetch(url + f"/queue?user=alice&token={TOKEN}")
    assert status == 303 and headers["Location"] == "/queue?user=alice"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    status, _, body = fetch(url + "/queue?user=alice", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"alice" in body


def test_the_token_login_link_in_the_browser(served_with_token, browser):
    from selenium.webdriver.common.by import By

    browser.get(served_with_token + "/pool")
    assert "token is required" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(served_with_token + f"/pool?token={TOKEN}")
    assert browser.current_url == served_with_token + "/pool"
    assert "ft-7@gpu-host-1" in browser.find_element(By.ID, "pool-table").text
    browser.get(served_with_token + "/adapters")  # the cookie carries on
    assert "f-lora" in browser.find_element(By.ID, "adapters-table").text
    browser.delete_all_cookies()


def test_loopback_only_answers_loopback_host_names(board):
    assert fetch(board.url + "/pool", headers={"Host": "evil.example:8765"})[0] == 421
    assert fetch(board.url + "/pool", headers={"Host": "localhost:8765"})[0] == 200
    status, headers, _ = fetch(board.url + "/pool")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]


def test_cancel_needs_the_form_secret_of_this_server(board):
    from catalog.jobs import get_job

    status, _, body = fetch(board.url + f"/jobs/{board.queued_job}/cancel", data=b"form_secret=guess")
    assert status == 403 and b"another site" in body
    assert fetch(board.url + f"/jobs/{board.queued_job}/cancel", data=b"")[0] == 403
    with board.catalog.session() as s:
        assert get_job(s, board.queued_job).cancel_requested is False
    assert fetch(board.url + f"/jobs/{board.queued_job}/cancel")[0] == 405  # a GET never cancels


def test_download_streams_the_adapters_stored_files_as_a_zip(board):
    from catalog.adapters import get_adapter

    with board.catalog.session() as s:
        a = get_adapter(s, board.adapter)
        root = board.store.path(a.artifact_uri)
    status, headers, body = fetch(board.url + "/adapters/f-lora/download")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert headers["Content-Disposition"] == 'attachment; filename="f-lora.zip"'
    manifest = json.loads((root / "MANIFEST.json").read_text())
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert sorted(names) == sorted(
            [f"f-lora/{e['path']}" for e in manifest["files"]] + ["f-lora/MANIFEST.json"]
        )
        for entry in manifest["files"]:
            assert hashlib.sha256(zf.read(f"f-lora/{entry['path']}")).hexdigest() == entry["sha256"]
    # Names are catalog names, never paths: what looks like one is an unknown adapter (or no route).
    assert fetch(board.url + "/adapters/..%2F..%2Fcatalog.db/download")[0] == 404
    assert fetch(board.url + "/adapters/%2E%2E/download")[0] == 404


def test_a_finished_jobs_live_part_tells_htmx_to_stop_polling(board):
    assert fetch(board.url + f"/jobs/{board.trained_job}/live")[0] == 286
    assert fetch(board.url + f"/jobs/{board.running_job}/live")[0] == 200


def test_bad_filters_are_one_clear_line(board):
    status, _, body = fetch(board.url + "/queue?status=bogus")
    assert status == 400 and b"?status= must be one of queued, running, succeeded, failed, cancelled" in body
    status, _, body = fetch(board.url + "/compare?dataset=faults")
    assert status == 400 and b"choose at least one adapter" in body
    status, _, body = fetch(board.url + "/compare?adapter=f-lora&dataset=faults:nosplit")
    assert status == 404 and b"has no split" in body

"""The dashboard over 10,000 jobs and 1,000 adapters (made by `create_job` and `register_adapter`): the
queue and the registry are paged, and a page costs a bounded number of SQL statements whatever the
size of the catalog (counted on the engine; request times are printed, not asserted)."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import event

from tests.conftest import FAULTS_TEST, free_port
from tests.dashboard.conftest import fetch

JOBS, ADAPTERS = 10_000, 1_000


@pytest.fixture(scope="module")
def big(tmp_path_factory, tiny_model_dir):
    from catalog.adapters import register_adapter
    from catalog.db import Catalog
    from catalog.jobs import create_job
    from catalog.migrate import upgrade
    from catalog.models import Adapter
    from catalog.settings import Settings
    from catalog.store import ArtifactStore
    from dashboard.app import create_app, start_in_thread
    from datasets_prep.register import add_dataset
    from datasets_prep.templates import seed_builtin_templates
    from worker.models.registration import register_path

    tmp = tmp_path_factory.mktemp("dashboard-scale")
    settings = Settings.from_env({"FT_HOME": str(tmp / "ft-home"), "FT_USER": "tester"})
    settings.ensure_dirs()
    catalog = Catalog(settings)
    upgrade(catalog.engine)
    seed_builtin_templates(catalog, settings.user)
    store = ArtifactStore(settings.artifacts)
    dataset = add_dataset(
        catalog, store, "faults", FAULTS_TEST, "triples", user="tester", splits={"test": 10}
    )
    with catalog.session() as s:
        model = register_path(s, "tiny", tiny_model_dir, "tester")
        from catalog.templates import get_template

        template_id, model_id = get_template(s, "plain").id, model.id
    dataset_id = dataset.dataset.id
    with catalog.session() as s:
        for i in range(JOBS):
            create_job(s, ("convert", "train", "eval")[i % 3], {"n": i}, f"user{i % 7}", priority=i % 10)
    with catalog.session() as s:
        for i in range(ADAPTERS):
            register_adapter(s, Adapter(
                name=f"adapter-{i:04d}", method="lora", base_model_id=model_id, dataset_id=dataset_id,
                template_id=template_id, hyperparameters={"rank": 8}, artifact_uri=f"adapters/{i:064x}",
                sha256=f"{i:064x}", size_bytes=1000 + i, trainable_params=10, total_params=100,
                created_by="tester",
            ))  # fmt: skip
    port = free_port()
    server, thread = start_in_thread(create_app(catalog, store), "127.0.0.1", port)
    yield catalog, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    catalog.dispose()


def timed(catalog, url: str) -> tuple[int, str, int, float]:
    """(status, body, SQL statements, seconds) of one request."""
    statements = []

    def count(*_args):
        statements.append(1)

    event.listen(catalog.engine, "before_cursor_execute", count)
    try:
        start = time.perf_counter()
        status, _, body = fetch(url)
        seconds = time.perf_counter() - start
    finally:
        event.remove(catalog.engine, "before_cursor_execute", count)
    return status, body.decode(), len(statements), seconds


@pytest.mark.slow
def test_queue_and_registry_are_paged_at_a_bounded_cost(big):
    catalog, url = big
    fetch(url + "/queue")  # warm: templates compiled, connections open
    report = []
    for path in ("/queue", "/queue?user=user3&kind=train", "/adapters", "/adapters?page=10", "/pool"):
        status, body, statements, seconds = timed(catalog, url + path)
        report.append(f"{path}: {seconds * 1000:.0f} ms, {statements} SQL statements")
        assert status == 200, body
        assert statements <= 12, report[-1]
        if path == "/queue":
            ids = [int(i) for i in re.findall(r'<tr id="job-(\d+)"', body)]
            assert ids == list(range(JOBS, JOBS - 100, -1))
            older = re.search(r'id="older" href="([^"]+)"', body).group(1).replace("&amp;", "&")
            assert older == f"/queue?before={JOBS - 99}"
            _, page2, statements, _ = timed(catalog, url + older)
            assert re.findall(r'<tr id="job-(\d+)"', page2)[:2] == [str(JOBS - 100), str(JOBS - 101)]
            assert statements <= 12
        if path.startswith("/adapters"):
            names = re.findall(r'<tr data-adapter="([^"]+)"', body)
            first, last, page = ("0999", "0900", 1) if path == "/adapters" else ("0099", "0000", 10)
            assert len(names) == 100 and (names[0], names[-1]) == (f"adapter-{first}", f"adapter-{last}")
            assert f"page {page} of 10" in body
    print("\n".join(report))

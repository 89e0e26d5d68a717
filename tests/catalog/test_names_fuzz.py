"""Item 12 of issue 14: names that become paths, fuzzed with Hypothesis. Whatever text a user gives
as a name (dataset, adapter, model, template, split, artifact kind) or whatever store uri a damaged
catalog row holds, it is refused with InvalidInput or it stays inside the artifact store."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from catalog.errors import InvalidInput
from catalog.names import check_name
from catalog.store import MANIFEST, ArtifactStore

SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
HOSTILE = ["..", ".", "../x", "a/../../b", "/etc", "a\x00b", "a\\b", "x\n", "~root", ".hidden", "-rf", "é"]
pieces = st.sampled_from(["..", ".", "/", "\\", "\x00", "\n", "~", "a", "-", "_", "%2e", "é", " ", "\u202e"])
names = st.one_of(st.text(max_size=140), st.lists(pieces, max_size=12).map("".join))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
@example(name="x\n")  # `$` in a regex matches before a final newline: the check uses fullmatch
def test_a_name_is_refused_or_is_one_safe_component_inside_the_store(tmp_path, name):
    try:
        checked = check_name(name, "dataset name")
    except InvalidInput as exc:
        assert "dataset name" in str(exc) and "\n" not in str(exc)
        return
    assert SAFE.fullmatch(checked) and ".." not in checked
    root = tmp_path.resolve()
    assert (root / checked).resolve().parent == root


def test_hostile_names_are_refused():
    for name in HOSTILE:
        try:
            check_name(name)
        except InvalidInput:
            continue
        raise AssertionError(f"{name!r} was accepted")


uris = st.one_of(st.text(max_size=80), st.lists(st.one_of(pieces, names), max_size=5).map("/".join))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uri=uris)
def test_a_store_uri_is_refused_or_resolves_inside_the_store(tmp_path, uri):
    store = ArtifactStore(tmp_path / "artifacts")
    try:
        path = store.path(uri)
    except InvalidInput:
        return
    assert store.root.resolve() in path.parents


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=names)
def test_committing_under_any_kind_stays_inside_the_store_or_is_refused(tmp_path, kind):
    store = ArtifactStore(tmp_path / "artifacts")
    with store.staging() as staged:
        (staged / "f.txt").write_text("x")
        try:
            artifact = store.commit(staged, kind)
        except InvalidInput:
            return
    assert store.root.resolve() in store.path(artifact.uri).parents and store.verify(artifact.uri) == []


def test_a_tampered_manifest_cannot_make_verify_read_outside_the_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    secret = tmp_path / "secret.txt"
    secret.write_text("not the store's")
    with store.staging() as staged:
        (staged / "f.txt").write_text("x")
        artifact = store.commit(staged, "adapters")
    manifest = store.path(artifact.uri) / MANIFEST
    files = json.loads(manifest.read_text())["files"]
    files.append({"path": "../../../secret.txt", "sha256": "0" * 64, "size": 15})
    manifest.write_text(json.dumps({"files": files}))
    assert store.verify(artifact.uri) == ["../../../secret.txt: outside the artifact"]

"""Jinja bodies are trial-rendered at `ft templates add` in a child process with memory and CPU limits
(datasets_prep/template_guard.py): the payloads of issue #14 are refused with one line naming the
template and nothing registered, `'a' * 10**10` no longer takes the machine (shown by running `ft`
itself under a 2 GiB address-space limit), ordinary bodies still render, and a body registered
before the guard is rendered with the same bounds in workers."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from catalog.errors import InvalidInput
from datasets_prep.rows import Row
from datasets_prep.template_guard import MAX_PROMPT_CHARS, trial_render
from datasets_prep.templates import body_sha256, render_prompt
from tests.conftest import REPO

REFUSED = {  # body: what the one-line error says
    "{{ 'a' * 10**10 }}": "repeating a sequence 10,000,000,000 times",
    "{{ 'a' * 10**8 }}": "repeating a sequence 100,000,000 times",
    "{{ [1, 2] * 10**7 }}": "repeating a sequence 10,000,000 times",
    "{{ 9 ** 999999 }}": "9 ** 999999 is too large a number",
    "{{ ''.__class__.__mro__ }}": "unsafe attribute",
    "{{ x.__globals__ if false }}{{ input }}": "unsafe attribute '__globals__'",  # a branch not taken
    "{{ cycler|attr('__init__') }}": "unsafe attribute '__init__'",
    "{{ input['_private'] }}": "unsafe attribute '_private'",
    "{% for i in range(10**9) %}x{% endfor %}": "Range too big",
    "{{ 'a'|center(10**9) }}": "needed more than 512 MiB of memory",
    "{% for i in range(99999) %}{{ input }}{% endfor %}": f"longer than {MAX_PROMPT_CHARS:,} characters",
    "{{ input|no_such_filter }}": "No filter named 'no_such_filter'",
    "{{ (input|length) // 0 }}": "ZeroDivisionError",
}


@pytest.fixture
def ftc(ft):
    ft("init")
    return ft


def names(ft) -> list[str]:
    return [t["name"] for t in json.loads(ft("templates", "list", "--json").output)]


@pytest.mark.parametrize("body", list(REFUSED))
def test_hostile_bodies_are_refused_at_add_with_one_line(ftc, body):
    result = ftc("templates", "add", "j", "--kind", "jinja", "--body", body, ok=False)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: template 'j' refused: "), result.output
    assert REFUSED[body] in lines[0]
    assert "j" not in names(ftc)


def test_a_cpu_bound_body_is_stopped_by_the_cpu_limit():
    spin = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    assert trial_render(spin, cpu_seconds=1) == "its trial render used more than 1 s of CPU"


def test_the_issue_payload_stays_small_under_a_memory_limit(ft_env, tmp_path):
    """`ft` itself under RLIMIT_AS 2 GiB: before the guard Jinja's constant folding took 19.5 GB."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ft = [sys.executable, "-m", "cli.main"]
    subprocess.run([*ft, "init"], env=env, cwd=REPO, check=True, capture_output=True)
    done = subprocess.run(
        [*ft, "templates", "add", "j", "--kind", "jinja", "--body", "{{ 'a' * 10**10 }}"],
        env=env, cwd=REPO, capture_output=True, text=True, preexec_fn=limit, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: template 'j' refused: its trial render was stopped: repeating a sequence "
        "10,000,000,000 times exceeds 1,048,576 items"
    ]


def test_ordinary_bodies_are_accepted_and_render_every_branch(ftc):
    body = (
        "{% if system %}{{ system }}\n{% endif %}"
        "{% for q, a in history %}Q: {{ q }}\nA: {{ a }}\n{% endfor %}"
        "{% if input %}{{ instruction }}\n{{ input|trim }}{% else %}{{ instruction|upper }}{% endif %}\n"
        "{{ '-' * 3 }}{{ 2 ** 10 }}"
    )
    assert ftc("templates", "add", "ok", "--kind", "jinja", "--body", body).output.strip() == (
        "Added template ok:1 (jinja)"
    )
    row = Row("Say hi.", "", "hi", system="Be brief.", history=[("a?", "b")])
    assert render_prompt("jinja", body, row) == "Be brief.\nQ: a?\nA: b\nSAY HI.\n---1024"


def test_a_body_registered_before_the_guard_is_bounded_when_rendered(catalog):
    """What a worker meets in a catalog written by an older ft: one line, at bounded memory."""
    from catalog.templates import insert_template

    bodies = ["{{ 'a' * 10**8 }}", "{% for i in range(99999) %}{{ input }}{% endfor %}", "{{ ''.__class__ }}"]
    with catalog.session() as s:
        for n, body in enumerate(bodies):
            insert_template(s, f"old{n}", "jinja", body, body_sha256("jinja", body), "tester", None, False)
    row = Row("instruction", "a long input " * 10, "out")
    for body, message in zip(bodies, ["repeating a sequence", "longer than", "'__class__'"], strict=True):
        with pytest.raises(InvalidInput, match=message) as err:
            render_prompt("jinja", body, row)
        assert "\n" not in str(err.value)

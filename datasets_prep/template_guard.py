"""Keeping a Jinja template body from taking a machine: checked at `ft templates add`, bounded when rendered.

The sandbox alone is not enough: Jinja folds constant expressions while compiling, so
`{{ 'a' * 10**10 }}` allocated 19.5 GB in `ft templates add` before any render, and a filter such as
`center(10**9)` is folded the same way. So:

- `BoundedSandbox` never folds constants (`optimized=False`), refuses `*` and `**` whose result would be
  huge, and raises at once on an unsafe attribute (`__class__`, `__globals__`, any `_name`) instead of
  returning an undefined that prints as nothing;
- `render_bounded` stops a render past `MAX_PROMPT_CHARS` (workers render every row with it);
- `trial_render` compiles and renders a new body on sample rows in a child process limited in memory
  (RLIMIT_AS) and CPU time (RLIMIT_CPU), so whatever the sandbox misses fails there, and a body that
  names an `_attribute` anywhere (also in a branch the samples do not take) is refused outright.

Run as `python -m datasets_prep.template_guard` it is that child: the body on stdin, a JSON verdict out.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from catalog.errors import InvalidInput

MAX_PROMPT_CHARS = 1 << 20
"""The longest prompt a template may render (characters): far above any real prompt."""
TRIAL_MEMORY_BYTES = 512 << 20
"""RLIMIT_AS of the trial-render child."""
TRIAL_CPU_SECONDS = 5
"""RLIMIT_CPU of the trial-render child."""
_MAX_POWER_BITS = 4096
TRIAL_ROWS: tuple[dict[str, Any], ...] = (
    {"instruction": "Extract the fault triples.", "input": "the left headlight flickers", "system": "",
     "history": []},
    {"instruction": "Say hello.", "input": "", "system": "You are terse.", "history": [["hi", "hello"]]},
)  # fmt: skip
"""Sample values of every field, with and without input/system/history, so both sides of the usual
`{% if input %}` branches are rendered."""


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox without constant folding, with bounded `*` / `**` and unsafe attributes
    raising SecurityError on access."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any):
        super().__init__(optimized=False, **options)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_PROMPT_CHARS:
                        raise SecurityError(
                            f"repeating a sequence {times:,} times exceeds {MAX_PROMPT_CHARS:,} items"
                        )
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if max(abs(left).bit_length(), 1) * right > _MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large a number")
        return super().call_binop(context, operator, left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} is not allowed")


def render_bounded(template: Any, limit: int = MAX_PROMPT_CHARS, **values: Any) -> str:
    """Render chunk by chunk, stopping once the output passes `limit` characters."""
    parts, size = [], 0
    for chunk in template.generate(**values):
        size += len(chunk)
        if size > limit:
            raise SecurityError(f"the prompt is longer than {limit:,} characters")
        parts.append(chunk)
    return "".join(parts)


def unsafe_names(env: ImmutableSandboxedEnvironment, body: str) -> list[str]:
    """Attributes and keys starting with '_' that the body names anywhere (parsing only, no folding)."""
    found = []
    for node in env.parse(body).find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            names = [node.attr]
        elif isinstance(node, nodes.Getitem):
            names = [node.arg.value] if isinstance(node.arg, nodes.Const) else []
        else:  # `x|attr('__class__')`
            names = [a.value for a in node.args if isinstance(a, nodes.Const)] if node.name == "attr" else []
        found += [n for n in names if isinstance(n, str) and n.startswith("_")]
    return found


def check_template(name: str, body: str) -> None:
    """Refuse, with one line naming template `name`, a Jinja body that names an `_attribute` or whose
    trial render fails or passes the limits."""
    env = BoundedSandbox(keep_trailing_newline=True)
    try:
        unsafe = unsafe_names(env, body)
    except TemplateError as exc:
        raise InvalidInput(f"template {name!r}: the body is not valid Jinja2: {exc}") from exc
    if unsafe:
        raise InvalidInput(f"template {name!r} refused: it uses the unsafe attribute {unsafe[0]!r}")
    problem = trial_render(body)
    if problem:
        raise InvalidInput(f"template {name!r} refused: {problem}")


def trial_render(
    body: str, *, memory_bytes: int = TRIAL_MEMORY_BYTES, cpu_seconds: int = TRIAL_CPU_SECONDS
) -> str | None:
    """Why `body` is refused (one line), or None: compiled and rendered on TRIAL_ROWS in a child process
    under the given limits."""
    root = str(Path(__file__).resolve().parent.parent)  # where `datasets_prep` imports from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "datasets_prep.template_guard", str(memory_bytes), str(cpu_seconds)]
    try:
        done = subprocess.run(
            cmd, input=body, capture_output=True, text=True, env=env, timeout=cpu_seconds * 4 + 10
        )
    except subprocess.TimeoutExpired:
        return f"its trial render did not end within {cpu_seconds * 4 + 10} s"
    try:
        verdict = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        how = (
            f"was killed by signal {-done.returncode}" if done.returncode < 0 else f"exited {done.returncode}"
        )
        return f"its trial render {how} (limits: {memory_bytes >> 20} MiB, {cpu_seconds} s of CPU)"
    return verdict.get("error")


def _child(memory_bytes: int, cpu_seconds: int) -> dict[str, Any]:
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))  # SIGXCPU, then SIGKILL

    def out_of_time(signum: int, frame: Any) -> None:
        _answer({"error": f"its trial render used more than {cpu_seconds} s of CPU"})
        os._exit(0)

    signal.signal(signal.SIGXCPU, out_of_time)
    body = sys.stdin.read()
    env = BoundedSandbox(keep_trailing_newline=True)
    try:
        template = env.from_string(body)
        for row in TRIAL_ROWS:
            render_bounded(template, **row)
    except SecurityError as exc:
        return {"error": f"its trial render was stopped: {exc}"}
    except TemplateError as exc:
        return {"error": f"its trial render failed: {type(exc).__name__}: {exc}"}
    except MemoryError:
        return {"error": f"its trial render needed more than {memory_bytes >> 20} MiB of memory"}
    except RecursionError:
        return {"error": "its trial render recursed too deeply"}
    except Exception as exc:  # a failing filter or operation on the sample rows
        return {"error": f"its trial render failed: {type(exc).__name__}: {exc}"}
    return {"ok": True}


def _answer(verdict: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _answer(_child(int(sys.argv[1]), int(sys.argv[2])))

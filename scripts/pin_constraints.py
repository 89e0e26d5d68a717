"""Write scripts/constraints.txt: the exact versions of ft's dependencies (and theirs) installed here.

`scripts/setup.sh` installs with these constraints, so every machine (and CI) gets the releases the
suite last passed with; `FT_NEWEST=1 bash scripts/setup.sh` ignores them and takes today's newest.
After the suite passes on newer releases (`bash scripts/check_newest.sh`), pin them:

    python scripts/pin_constraints.py            # rewrites scripts/constraints.txt
    python scripts/pin_constraints.py --check    # exit 1 if the installed versions differ from it

torch (and its CUDA packages) are left out: setup.sh keeps whatever torch a machine has (a CUDA build
on a GPU machine) and installs the CPU build 2.13.0 only where there is none.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints.txt"
ROOTS = ("ft",)
EXTRAS = {"ft": {"test", "postgres"}}
UNPINNED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|ft)$")
"""torch and what comes with a CUDA build of it are the machine's choice; ft is this checkout."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure() -> dict[str, str]:
    """name -> installed version of every distribution ft needs, directly or not (its extras included)."""
    found: dict[str, str] = {}
    todo = [(root, EXTRAS.get(root, set())) for root in ROOTS]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = canonical(dist.metadata["Name"])
        if key in found and not extras:
            continue
        found[key] = dist.version
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            wanted = canonical(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0])
            marker = marker.strip()
            if "extra ==" in marker:
                extra = re.search(r"extra == ['\"]([^'\"]+)['\"]", marker)
                if not extra or extra.group(1) not in extras:
                    continue
                marker = re.sub(r"(and\s+)?extra == ['\"][^'\"]+['\"]", "", marker).strip()
            if marker and not _marker_holds(marker):
                continue
            inner = set(re.findall(r"\[([^\]]+)\]", spec))
            todo.append((wanted, {e.strip() for group in inner for e in group.split(",")}))
    return {k: v for k, v in found.items() if not UNPINNED.match(k)}


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate()
    except Exception:  # an unparsable marker: pin it anyway, a constraint on an absent package is harmless
        return True


def render(pins: dict[str, str]) -> str:
    lines = [
        "# The releases ft's suite passed with; scripts/setup.sh installs with them (FT_NEWEST=1: without).",
        "# Regenerate with `python scripts/pin_constraints.py` after `bash scripts/check_newest.sh` passes.",
        *(f"{name}=={version}" for name, version in sorted(pins.items())),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    ap.add_argument("--out", type=Path, default=CONSTRAINTS)
    args = ap.parse_args(argv)
    text = render(closure())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            sys.stderr.write(f"{args.out} differs from the installed versions; rerun without --check\n")
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({text.count(chr(10)) - 2} pins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

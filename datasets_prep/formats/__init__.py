"""The registry of source formats, by `--format` name, and `auto`, which picks one by keys.

Each format lives in its own module (a `Format`: name, row shape, the keys it claims, and a
converter to canonical rows). `auto` looks at the keys of the first JSON object of a file and
takes the one format that claims them (and `describe` says which keys matched); when none or several
do, it says so and asks for --format. `columns` is not in the registry: it is built from the
`--prompt-key`/`--response-key` flags (`columns.make`), and `auto` never picks it.
"""

from __future__ import annotations

from collections.abc import Iterable

from catalog.errors import InvalidInput
from datasets_prep.formats import adgen, alpaca, columns, sharegpt, triples
from datasets_prep.formats.base import Format

AUTO = "auto"
FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format to the registry; a name can be registered once."""
    if fmt.name in FORMATS or fmt.name == AUTO:
        raise ValueError(f"format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


for _module in (triples, adgen, alpaca, sharegpt):
    register(_module.FORMAT)


def names() -> list[str]:
    """The registered formats and `auto`, last."""
    return [*FORMATS, AUTO]


def choices() -> list[str]:
    """The `--format` choices: the registered formats, `columns`, then `auto`."""
    return [*FORMATS, columns.NAME, AUTO]


def options() -> str:
    """The `--format` options, as error messages name them."""
    return f"--format {'|'.join(FORMATS)}, or --format {columns.NAME} --prompt-key K --response-key K"


def describe(fmt: Format, keys: Iterable[str], where: str) -> str:
    """The one line `auto` prints about its choice: the format, the keys seen, the shape they fit."""
    shown = ", ".join(sorted(keys))
    return (
        f"--format auto: read {where} as {fmt.name}: its keys ({shown}) fit {fmt.shape}; "
        f"else pass {options()}"
    )


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidInput(f"unknown format {name!r} (--format {'|'.join(names())})") from None


def detect(keys: Iterable[str], where: str) -> Format:
    """The one format that claims an object with `keys`; `where` (FILE:LINE) goes into errors."""
    keys = frozenset(keys)
    shown = ", ".join(sorted(keys)) or "no keys"
    found = [fmt for fmt in FORMATS.values() if fmt.claims(keys)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidInput(
            f"--format auto: cannot tell the format of {where} from its keys ({shown}); pass {options()}"
        )
    fitting = " or ".join(f"--format {fmt.name}" for fmt in found)
    raise InvalidInput(
        f"--format auto: the keys of {where} ({shown}) fit {', '.join(f.name for f in found)}; pass {fitting}"
    )

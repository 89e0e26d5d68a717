"""`ft datasets add|list|show|rm`: register raw files as validated, split, versioned datasets.

Thin: each command parses its options, calls one function of `datasets_prep.register`, prints.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import click

from catalog.datasets import get_dataset, list_datasets, remove_dataset
from catalog.errors import InvalidInput
from catalog.models import Dataset
from cli.context import AppContext, pass_app
from cli.output import print_json, print_table, when
from datasets_prep.canonical import load_split
from datasets_prep.formats import AUTO, choices
from datasets_prep.register import add_dataset
from datasets_prep.split import parse_split
from datasets_prep.validate import MAX_SHOWN, Report

ROW_WIDTH = 96


@click.group()
def datasets() -> None:
    """Register raw files as versioned datasets: validated, converted to canonical rows, split.

    \b
    Example:
        ft datasets add faults train.jsonl --format triples --test test.jsonl
        ft datasets list --json
    """


@datasets.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(choices()), default=AUTO, show_default=True,
    help="Source format (auto: picked from the first row's keys, and said on stderr).",
)  # fmt: skip
@click.option("--prompt-key", metavar="KEY", help="--format columns: the field holding the prompt.")
@click.option("--response-key", metavar="KEY", help="--format columns: the field holding the response.")
@click.option(
    "--test",
    "test_file",
    type=click.Path(path_type=Path),
    help="A separate file (same format) used as the test split.",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    metavar="NAME=N|FRACTION",
    help="Hold out a split: a row count (test=50) or a fraction (test=0.1). Repeatable; the rest is train.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split selection.")
@click.option("--skip-invalid", is_flag=True, help="Register the valid rows; store the report of the others.")
@click.option("--json", "as_json", is_flag=True, help="Print the registered version as JSON.")
@pass_app
def add(
    app: AppContext,
    name: str,
    file: Path,
    fmt: str,
    test_file: Path | None,
    splits: tuple[str, ...],
    seed: int,
    skip_invalid: bool,
    as_json: bool,
    prompt_key: str | None,
    response_key: str | None,
) -> None:
    """Validate FILE, convert its rows and register them as the next version of NAME.

    Every bad row is reported as FILE:LINE: CODE: message, errors first and counted per code; by
    default any error refuses the file and nothing is registered. Warnings keep the row:
    duplicate-row, and test-in-train (a --test row whose prompt is a training row's). An output may
    be a list of references (the first is trained on, all are scored). Identical content to NAME's
    latest version makes no new version.

    \b
    Example:
        ft datasets add faults fault_triples_train.jsonl --format triples --test fault_triples_test.jsonl
        ft datasets add adgen adgen_dev.jsonl --format adgen --split test=100 --seed 0
        ft datasets add chats sharegpt.json --split test=0.05 --split val=0.05 --skip-invalid
        ft datasets add d2q train.json --test test.json --format columns \
            --prompt-key text --response-key answer
    """
    wanted: dict[str, int | float] = {}
    for text in splits:
        split, value = parse_split(text)
        if split in wanted:
            raise InvalidInput(f"--split {split} is given twice")
        wanted[split] = value
    result = add_dataset(
        app.catalog,
        app.store,
        name,
        file,
        fmt,
        test_path=test_file,
        splits=wanted,
        seed=seed,
        skip_invalid=skip_invalid,
        prompt_key=prompt_key,
        response_key=response_key,
        user=app.settings.user,
    )
    ds = result.dataset
    if result.format_note:
        click.echo(result.format_note, err=True)
    if as_json:
        print_json({**dataset_json(ds), "created": result.created, "report": result.report})
        return
    if result.created:
        click.echo(f"Registered {ds.ref} ({ds.source_format}): {_rows(ds)}")
    else:
        click.echo(f"{ds.ref} already holds this content: {_rows(ds)}; no new version")
    click.echo(f"sha256: {ds.sha256}")
    if result.report:
        _echo_report(ds, result.shown)


@datasets.command("list")
@click.option("--all", "all_versions", is_flag=True, help="Every version, not only the latest of each name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with full sha256s).")
@pass_app
def list_(app: AppContext, all_versions: bool, as_json: bool) -> None:
    """List registered datasets (the latest version of each name, unless --all).

    \b
    Example:
        ft datasets list
        ft datasets list --all --json
    """
    with app.catalog.session() as s:
        found = list_datasets(s, all_versions=all_versions)
    if as_json:
        print_json([dataset_json(ds) for ds in found])
        return
    print_table(
        ["name", "version", "format", "rows", "splits", "invalid", "sha256", "created", "by"],
        [
            [
                ds.name,
                ds.version,
                ds.source_format,
                ds.total_rows,
                _splits(ds),
                ds.invalid_count,
                ds.sha256[:12],
                when(ds.created_at),
                ds.created_by,
            ]
            for ds in found
        ],
        empty="(no datasets; add one with `ft datasets add NAME FILE`)",
    )


@datasets.command("show")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--rows", "n_rows", type=click.IntRange(min=0), default=3, show_default=True,
              help="Rows to show from each split.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON (rows untruncated, the whole report).")
@pass_app
def show(app: AppContext, ref: str, n_rows: int, as_json: bool) -> None:
    """Show one dataset version: counts, splits, source and sha256s, a few rows, the report.

    \b
    Example:
        ft datasets show faults
        ft datasets show adgen:2 --rows 5 --json
    """
    with app.catalog.session() as s:
        ds = get_dataset(s, ref)
    rows = {
        split: [row.to_json() for row in itertools.islice(load_split(app.store, ds, split), n_rows)]
        for split in ds.split_counts
    }
    if as_json:
        print_json({**dataset_json(ds), "rows": rows, "report": ds.report})
        return
    test_file = ds.split_spec.get("test_file")
    fields = [
        ("dataset", f"{ds.ref} ({ds.source_format})"),
        ("rows", _rows(ds)),
        ("split", _split_how(ds)),
        ("sha256", ds.sha256),
        ("artifact", ds.artifact_uri),
        ("source", f"{ds.source_path} (sha256 {ds.source_sha256})"),
    ]
    if test_file:
        fields.append(("test file", f"{test_file['path']} (sha256 {test_file['sha256']})"))
    fields.append(("invalid rows", str(ds.invalid_count)))
    fields.append(("created", f"{when(ds.created_at)} by {ds.created_by}"))
    for label, value in fields:
        click.echo(f"{label + ':':<14}{value}")
    for split, shown in rows.items():
        if shown:
            click.echo(f"\n{split} (first {len(shown)} of {ds.split_counts[split]}):")
        for i, row in enumerate(shown, start=1):
            for j, (key, value) in enumerate(row.items()):
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                click.echo(f"{f'  {i}.' if j == 0 else '':<6}{key}: {_clip(text)}")
    if ds.report:
        _echo_report(ds, Report.from_lines(ds.report).shown(MAX_SHOWN), blank=True)


@datasets.command("rm")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def rm(app: AppContext, ref: str, yes: bool) -> None:
    """Remove one dataset version (NAME alone: its latest) and its stored rows.

    Refused while a conversion, adapter or evaluation refers to the version.

    \b
    Example:
        ft datasets rm adgen:1
        ft datasets rm faults --yes
    """
    with app.catalog.session() as s:
        ds = get_dataset(s, ref)
    if not yes:
        click.confirm(f"Remove dataset {ds.ref} ({_rows(ds)})?", abort=True)
    removed = remove_dataset(app.catalog, app.store, ds.ref)
    click.echo(f"Removed {removed.ref}")


def dataset_json(ds: Dataset) -> dict[str, Any]:
    return {
        "name": ds.name,
        "version": ds.version,
        "ref": ds.ref,
        "format": ds.source_format,
        "rows": ds.total_rows,
        "splits": ds.split_counts,
        "sha256": ds.sha256,
        "artifact_uri": ds.artifact_uri,
        "source_path": ds.source_path,
        "source_sha256": ds.source_sha256,
        "split_spec": ds.split_spec,
        "invalid_count": ds.invalid_count,
        "created_by": ds.created_by,
        "created_at": ds.created_at,
    }


def _splits(ds: Dataset) -> str:
    return " ".join(f"{split}={count}" for split, count in ds.split_counts.items())


def _rows(ds: Dataset) -> str:
    return f"{ds.total_rows} rows ({', '.join(f'{k} {v}' for k, v in ds.split_counts.items())})"


def _split_how(ds: Dataset) -> str:
    spec = ds.split_spec
    parts = [f"{k}={v}" for k, v in (spec.get("splits") or {}).items()]
    how = f"seed {spec.get('seed')}, " + " ".join(parts) if parts else "no held-out split"
    return how + ("; test from a separate file" if spec.get("test_file") else "")


def _clip(text: str) -> str:
    """One line of at most ROW_WIDTH columns (CJK characters take two)."""
    text = text.replace("\n", "\\n")
    width = 0
    for i, ch in enumerate(text):
        width += 2 if ord(ch) > 0x2E80 else 1
        if width > ROW_WIDTH:
            return text[:i] + "…"
    return text


def _echo_report(ds: Dataset, shown: list[str], blank: bool = False) -> None:
    """`shown`: the report as `Report.shown` orders it (errors per code first, then warnings)."""
    skipped = f" ({ds.invalid_count} invalid rows skipped)" if ds.invalid_count else ""
    click.echo(("\n" if blank else "") + f"Report{skipped}:")
    for line in shown:
        click.echo(line)

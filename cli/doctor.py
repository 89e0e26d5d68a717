"""`ft doctor [--repair] [--json]`: re-verify artifacts, list and remove leftovers (catalog/doctor.py)."""

from __future__ import annotations

from pathlib import Path

import click

from catalog.doctor import DEFAULT_MIN_AGE_SECONDS, DoctorReport
from catalog.errors import ArtifactDamaged
from cli.context import AppContext, pass_app
from cli.output import human_bytes, print_json, print_table


@click.command()
@click.option("--repair", is_flag=True, help="Remove the leftovers (never a referenced artifact).")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=DEFAULT_MIN_AGE_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Keep unreferenced artifacts and stagings younger than this: a write may be in progress.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@pass_app
def doctor(app: AppContext, ctx: click.Context, repair: bool, min_age: float, as_json: bool) -> None:
    """Re-hash every registered artifact (ignoring the verification cache) and list the damaged ones,
    unreferenced artifacts, stagings of interrupted writes and files of finished jobs, with their
    sizes. --repair removes those leftovers; the files of a queued or running job are never touched,
    and a failed job retried afterwards starts from step 0. Exits 1 when an artifact is damaged.

    \b
    Example:
        ft doctor
        ft doctor --repair
        ft doctor --json --min-age 0
    """
    from catalog.doctor import run_doctor

    report = run_doctor(app.catalog, app.store, repair=repair, min_age_seconds=min_age)
    if as_json:
        print_json(report.to_json())
        if not report.ok:
            ctx.exit(1)
        return
    _print(report, app.store.root)
    if not report.ok:
        raise ArtifactDamaged(
            f"{len(report.damaged)} damaged artifact(s): restore their files or re-create them "
            "(`ft adapters rm`, `ft datasets rm`) and run `ft doctor` again"
        )


def _print(report: DoctorReport, root: Path) -> None:
    click.echo(f"Checked {report.checked} artifact(s): {len(report.damaged) or 'none'} damaged")
    for d in report.damaged:
        click.echo(f"  DAMAGED {d.uri} ({', '.join(d.used_by)}): {d.problems[0]}")
        for problem in d.problems[1:]:
            click.echo(f"          {problem}")
    removed = {x.path for x in report.removed}
    if not report.leftovers:
        click.echo("No leftovers in the artifact store.")
        return
    total = sum(x.size_bytes for x in report.leftovers)
    click.echo(f"Leftovers ({len(report.leftovers)}, {human_bytes(total)}):")
    print_table(
        ["what", "path", "size", "why", "action" if report.repaired else "note"],
        [
            [
                x.what,
                x.path.relative_to(root).as_posix(),
                human_bytes(x.size_bytes),
                x.reason,
                "removed" if x.path in removed else ("" if x.removable else "kept: younger than --min-age"),
            ]
            for x in report.leftovers
        ],
    )
    if not report.repaired and any(x.removable for x in report.leftovers):
        click.echo("Run `ft doctor --repair` to remove them.")

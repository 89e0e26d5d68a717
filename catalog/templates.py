"""Table access of prompt templates: look up, list, insert a version. Bodies are validated and
rendered by datasets_prep.templates; rows are immutable (a changed body is a new version)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from catalog.lookup import get_versioned, latest_version, latest_versions, names
from catalog.models import PromptTemplate
from catalog.names import check_name


def get_template(session: Session, ref: str) -> PromptTemplate:
    """`name` (latest version) or `name:version`; NotFound lists what exists."""
    return get_versioned(session, PromptTemplate, ref, what="template", listing="templates")


def latest_template(session: Session, name: str) -> PromptTemplate | None:
    return latest_version(session, PromptTemplate, name)


def list_template_names(session: Session) -> Sequence[str]:
    return names(session, PromptTemplate)


def list_templates(session: Session, all_versions: bool = False) -> Sequence[PromptTemplate]:
    return latest_versions(session, PromptTemplate, all_versions)


def insert_template(
    session: Session,
    name: str,
    kind: str,
    body: str,
    sha256: str,
    user: str,
    description: str | None = None,
    builtin: bool = False,
) -> tuple[PromptTemplate, bool]:
    """Insert `body` as `name`'s next version; an identical latest body (same sha256) is returned
    instead, with False."""
    check_name(name, "template name")
    latest = latest_template(session, name)
    if latest is not None and latest.sha256 == sha256:
        return latest, False
    tpl = PromptTemplate(
        name=name,
        version=(latest.version + 1) if latest else 1,
        kind=kind,
        body=body,
        description=description,
        builtin=builtin,
        sha256=sha256,
        created_by=user,
    )
    session.add(tpl)
    session.flush()
    return tpl, True

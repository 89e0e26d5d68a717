"""The object every command receives: settings from the environment and a lazily opened catalog."""

from __future__ import annotations

from functools import cached_property

import click

from catalog.db import Catalog
from catalog.migrate import require_current
from catalog.settings import Settings
from catalog.store import ArtifactStore


class AppContext:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()

    @cached_property
    def raw_catalog(self) -> Catalog:
        """The catalog without the revision check (for `ft init`)."""
        return Catalog(self.settings)

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog, refusing to work on one that is missing or at another revision."""
        cat = self.raw_catalog
        require_current(cat.engine)
        self.settings.ensure_dirs()
        return cat

    @cached_property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifacts)


pass_app = click.make_pass_decorator(AppContext, ensure=True)

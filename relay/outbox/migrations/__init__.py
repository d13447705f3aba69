"""Versioned schema migrations, one folder of numbered SQL files per backend.

A file `NNNN_name.sql` is version NNNN. Each is applied once, in order, in its own
transaction, and recorded in `schema_migrations`, so an upgrade is just a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    folder = resources.files(__package__) / dialect
    migrations = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            migrations.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(migrations, key=lambda m: m.version)

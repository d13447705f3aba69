"""Fixtures for the tests every outbox backend must pass alike."""

from collections.abc import Iterator

import pytest

from relay.outbox import Backend, open_backend
from tests.helpers import fresh_schema


@pytest.fixture(params=["sqlite", "postgres"])
def outbox_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.db'}"
    else:  # a fresh schema per test on the server .ci/run starts; skipped without one
        with fresh_schema(request.getfixturevalue("postgres_url")) as url:
            yield url


@pytest.fixture
def backend(outbox_url) -> Iterator[Backend]:
    store = open_backend(outbox_url)
    try:
        store.migrate()
        yield store
    finally:
        store.close()

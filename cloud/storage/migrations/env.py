"""Alembic environment: migrations run on a connection handed in by cloud.storage.store."""

from __future__ import annotations

from alembic import context

from cloud.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cloud.storage.store.Store.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

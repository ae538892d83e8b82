"""Alembic environment: run by :meth:`rlhfkit.feedback.store.Store.upgrade` on its own
connection (``config.attributes["connection"]``); batch mode so SQLite can alter tables."""

from __future__ import annotations

from alembic import context

from rlhfkit.feedback.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

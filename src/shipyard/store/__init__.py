"""Persistence: SQLAlchemy 2 async models, Alembic migrations run at start. SQLite by default,
PostgreSQL when a URL says so."""

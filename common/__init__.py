"""Shared, import-light parts of inferq: settings, Celery factory, contract, schema, errors."""

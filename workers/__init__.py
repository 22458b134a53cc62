"""inferq workers: ``celery -A workers.app worker`` (or ``inferq worker``)."""

"""inferq workers: ``celery -A inferq.workers.app worker`` (or ``inferq worker``)."""

# SPDX-License-Identifier: Apache-2.0
"""The Celery peer of the dispatch benchmark: one no-op task, Redis broker and result backend."""
import os

from celery import Celery

URL = os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/1")
app = Celery("celery_peer", broker=URL, backend=URL)
app.conf.update(worker_prefetch_multiplier=4, task_acks_late=False, result_expires=3600,
                broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop():
    return None

"""Gunicorn settings of the baseline: the service's (gunicorn.conf.py), without its hooks."""

import os

bind = os.environ["APP_BIND"]
workers = int(os.environ["APP_WORKERS"])
threads = int(os.environ["APP_THREADS"])
worker_class = "gthread"
keepalive = 5
timeout = 30
accesslog = None
control_socket_disable = True

"""Prefect orchestration around `pipeline` (which never imports Prefect).

Prefect reads its settings at import time, so the defaults this project relies on are set
here, before anything imports prefect.
"""
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ulmfit")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# A server started for this project (`prefect server start`) listens on this machine only unless
# the user sets PREFECT_SERVER_API_HOST. Prefect's temporary per-run server always binds 127.0.0.1.
os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")

"""Prefect orchestration around `pipeline` (which never imports Prefect).

Prefect reads its settings at import time, so the defaults this project relies on are set
here, before anything imports prefect.
"""
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ulmfit")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The stages' "ulmfit" log lines go to the API inside a flow run; called outside one (a notebook, a
# benchmark, with PREFECT_API_URL set) they stay local instead of warning on every line.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# A server started for this project (`prefect server start`) listens on this machine only unless
# the user sets PREFECT_SERVER_API_HOST. Prefect's temporary per-run server always binds 127.0.0.1.
os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")

# A run without PREFECT_API_URL starts a temporary server; Prefect gives it 20 s, which a busy
# 2-core machine can exceed.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Prefect attaches its API log handler to the "ulmfit" logger (EXTRA_LOGGERS) but leaves its level
# alone; without this, a flow run started by `ulmfit serve` would drop the INFO epoch lines.
import logging  # noqa: E402

if logging.getLogger("ulmfit").level == logging.NOTSET:
    logging.getLogger("ulmfit").setLevel(logging.INFO)

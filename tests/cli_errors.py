"""The CLI's error contract, shared by the tests that check it."""
from __future__ import annotations

from flows.cli import main


def one_error(capsys, argv) -> str:
    """Exit status 2, exactly one `ulmfit: error:` line, and no traceback (Prefect's included)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ulmfit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]

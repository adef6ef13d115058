"""What the tests of the shipping commands (export, model cards) check of a refused command."""

from __future__ import annotations

import pytest

from kdistill.cli import main


def one_line_error(capsys, argv: list[str], after_work: bool = False) -> str:
    """The error line of a command that exits 2. One that fails `after_work` (training or an
    export done) has drawn progress bars on stderr before it: its error is the last line."""
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and (after_work or len(lines) == 1), err
    assert lines[-1].startswith("kdistill: error: "), err
    return lines[-1]

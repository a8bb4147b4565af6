"""A shutdown timeout is read only when the server stops: one that is not a time is refused at startup (in one line
by `neurallayers serve`), not when SIGTERM comes."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_shutdown_timeout_that_is_not_a_time_is_refused_before_loading(tmp_path, capsys, value):
    from neurallayers.__main__ import main

    # the folder holds no model: the check comes first, not at SIGTERM (where NaN crashed the drain and -1 failed
    # every request in flight with a bare 500)
    code = main(["serve", str(tmp_path), "--port", "0", "--shutdown-timeout", value])
    err = capsys.readouterr().err
    assert code == 2 and "--shutdown-timeout" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_create_app_refuses_a_shutdown_timeout_that_is_not_a_time(value):
    from neurallayers.serve.app import create_app

    with pytest.raises(ValueError, match="shutdown_timeout"):
        create_app(("model", "tokenizer"), shutdown_timeout=value)  # refused before the model is looked at

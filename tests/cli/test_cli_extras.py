"""A verb whose optional extra is only partly installed says which extra to install, in one line."""

from __future__ import annotations

import sys

import pytest

from neurallayers.__main__ import main


@pytest.mark.parametrize("library", ["prometheus_client", "fastapi"])
def test_serve_without_a_library_of_the_serve_extra_is_one_line(library, tmp_path, capsys, monkeypatch):
    # the `ui` extra (Gradio) installs fastapi and uvicorn but not prometheus_client: `serve` bound its port, loaded
    # the model and then died in create_app with a ModuleNotFoundError traceback
    monkeypatch.setitem(sys.modules, library, None)  # import fails as if it were not installed
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"serving needs the 'serve' extra ({library} is missing): pip install -U 'neurallayers[serve]'" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("library", ["gradio", "matplotlib"])
def test_ui_without_a_library_of_the_ui_extra_is_one_line_before_loading(library, tmp_path, capsys, monkeypatch):
    # Gradio does not bring matplotlib: `ui` loaded the model and served, and the attention view then failed with a
    # ModuleNotFoundError traceback in the server log
    from neurallayers.cli import ui

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.setattr(ui, "load_model", loaded)
    monkeypatch.setattr(ui, "_check_address", lambda host, port: None)  # no port taken
    assert main(["ui", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"the web playground needs {library}: pip install 'neurallayers[ui]'" in err, err

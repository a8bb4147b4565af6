"""The web playground (`neurallayers ui`): a Gradio app to generate from a model and look at its attention."""

from neurallayers.ui.app import build_app, launch

__all__ = ["build_app", "launch"]

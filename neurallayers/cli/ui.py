"""`neurallayers ui`: a web playground (Gradio) for a model, served on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

from neurallayers.cli.common import (
    UserError,
    add_device_dtype,
    add_model_path,
    bind_socket,
    load_model,
    non_empty,
    positive_int,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_path(parser)
    parser.add_argument("--host", default="127.0.0.1", type=non_empty,
                        help="address to listen on; 0.0.0.0 opens the playground to your whole network")
    parser.add_argument("--port", type=positive_int, default=7860, help="(default 7860)")
    add_device_dtype(parser)


def _check_address(host: str, port: int) -> None:
    """Bind host:port once before Gradio does: Gradio reports every bind failure (an unknown host, an address of
    another machine) as a port in use."""
    bind_socket(host, port).close()


def run(args: argparse.Namespace) -> int:
    if args.port > 65535:
        raise UserError(f"--port {args.port}: must be in 1..65535")
    _check_address(args.host, args.port)
    try:
        import gradio  # noqa: F401 - fail before loading the model when the extra is missing
        import matplotlib  # noqa: F401 - the attention view's figures: Gradio does not bring it

        from neurallayers.ui import build_app, launch
    except ImportError as e:
        raise UserError(f"the web playground needs {e.name or 'Gradio'}: pip install 'neurallayers[ui]'") from None
    from neurallayers.api import generation_defaults

    model, tokenizer = load_model(args.path, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    # the folder's recommended sampling settings, as `generate` and `serve` take them for knobs left unset
    app = build_app(model, tokenizer, name=Path(args.path).resolve().name, defaults=generation_defaults(args.path))
    try:
        launch(app, host=args.host, port=args.port)
    except OSError as e:
        if "empty port" in str(e):  # Gradio's words for a port that is taken
            raise UserError(f"port {args.port} on {args.host} is in use; choose another --port") from None
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e}") from None
    return 0

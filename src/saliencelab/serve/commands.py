"""The `saliencelab serve` command: the local web app (`serve/app.py`) until Ctrl-C.

    saliencelab serve [--model efficientnet_lite0 --model shapes_cnn] [--port 8765] [--open]

Added to the app by `register(app)` (cli.py calls it). The models are loaded before the server
starts, so a wrong one is one sentence (exit code 2) rather than an error page later.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli_common import (
    DEFAULT_MODEL,
    DebugOption,
    DeviceOption,
    InputSizeOption,
    NormalizeOption,
    TrustPickleOption,
    WeightsOption,
    load_model,
    out_console,
    session,
)
from ..core.errors import SaliencelabError
from .app import MAX_UPLOAD_BYTES, SERVE_MAX_PIXELS, Server, serve


def serve_command(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="A model to offer (repeatable; the first is the page's default): a name from "
            "`saliencelab models` or a spec, as for `explain --model`.",
            show_default=DEFAULT_MODEL,
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="The address to listen on; the default serves this machine only. Another "
            "address lets anyone who can reach it use the app.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="The port (0: a free one).")
    ] = 8765,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default web browser.")
    ] = False,
    max_upload_mb: Annotated[
        float,
        typer.Option("--max-upload-mb", min=0.001, help="Refuse uploads larger than this."),
    ] = MAX_UPLOAD_BYTES / 2**20,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels",
            min=1,
            help="Refuse uploaded images with more pixels than this (read from the header).",
        ),
    ] = SERVE_MAX_PIXELS,
    device: DeviceOption = "auto",
    input_size: InputSizeOption = None,
    normalize: NormalizeOption = None,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    debug: DebugOption = False,
) -> None:
    """Serve the local web app: pick an image and methods in the browser, see the maps."""
    with session(debug) as err:
        specs = list(dict.fromkeys(model or [DEFAULT_MODEL]))
        if weights is not None and len(specs) > 1:
            raise SaliencelabError(
                "--weights goes with one --model; serve the models with other weights one by one."
            )
        models = {
            spec: load_model(spec, device, input_size, normalize, weights, trust_pickle)
            for spec in specs
        }

        def started(server: Server) -> None:
            out_console().print(
                f"saliencelab web app on [bold]{server.url}[/bold] serving {', '.join(specs)} "
                "(Ctrl-C to stop)"
            )
            if not server.loopback:
                err.print(
                    f"[yellow]Listening on {host}: anyone who can reach this machine on port "
                    f"{server.server_address[1]} can use the app.[/yellow]"
                )

        serve(
            models,
            host,
            port,
            open_browser=open_browser,
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_pixels=max_pixels,
            on_start=started,
        )
        out_console().print("stopped")


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the app."""
    app.command("serve")(serve_command)

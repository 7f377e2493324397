"""ChexReason demo: upload a chest X-ray and compare base, SFT and GRPO side by side.

    python app.py                                # the bundled tiny set on http://127.0.0.1:7860
    python app.py --models path/to/set.yaml      # another model set (or CHEXREASON_MODELS=path/to/set.yaml)
    python app.py --host 0.0.0.0 --port 8080

On Hugging Face Spaces this file is the app_file; `demo` is built at import, models loaded once.
"""

from __future__ import annotations

import argparse
import os
import sys

# No analytics or telemetry requests leave the machine. (Offline mode is not forced: a user's model
# sets may name Hub ids.)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from chexreason.app import DEFAULT_MODELS, build_demo, configure_logging, launch_options
from chexreason.modeling import ModelSetError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=os.environ.get("CHEXREASON_MODELS", DEFAULT_MODELS),
        help="model-set YAML file or bare name (default: $CHEXREASON_MODELS, else the bundled 'tiny')",
    )
    # Gradio's own variables first: a Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0 to be reachable.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to bind (default: $GRADIO_SERVER_NAME, else localhost only)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    return parser.parse_args(argv)


def _build_or_exit(models: str):
    try:
        return build_demo(models)
    except (ModelSetError, OSError, ValueError, KeyError) as err:
        sys.exit(f"app.py: cannot load model set {models!r}: {err}")


# Run as a script, --models picks the set; imported (tests, Spaces' reloader), the environment does. Either
# way the set is loaded once.
ARGS = parse_args() if __name__ == "__main__" else parse_args([])
configure_logging()
demo = _build_or_exit(ARGS.models)

if __name__ == "__main__":
    demo.launch(server_name=ARGS.host, server_port=ARGS.port, **launch_options())

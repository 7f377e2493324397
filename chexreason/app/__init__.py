"""The ChexReason web app: upload a chest X-ray and compare a model set's checkpoints side by side."""

from chexreason.app.ui import DEFAULT_MODELS, build_demo, configure_logging, launch_options

__all__ = ["DEFAULT_MODELS", "build_demo", "configure_logging", "launch_options"]

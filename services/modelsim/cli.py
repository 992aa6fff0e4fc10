"""The `llmflow-modelsim` command: the OpenAI-compatible model SIMULATOR on its own port.

A separate entry point from `llmflow`: the simulator is a stand-in for a model endpoint,
not part of the pipeline. Also runs as `python -m llmflow.services.modelsim`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llmflow.logs import setup_logging
from llmflow.services.modelsim.config import SimulatorConfig

# Simulator settings exposed as flags, with the type argparse converts them to.
SIMULATOR_FLAGS: dict[str, type] = {
    "latency_ms": float,
    "jitter_ms": float,
    "rate_429": float,
    "retry_after_s": float,
    "rate_500": float,
    "rate_slow": float,
    "rate_invalid": float,
    "slow_ms": float,
    "seed": int,
    "rpm_limit": int,
    "require_api_key": str,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmflow-modelsim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    for name, kind in SIMULATOR_FLAGS.items():
        field = SimulatorConfig.model_fields[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            help=f"{field.description or ''} (default {field.default})",
        )
    return parser


def config_from(args: argparse.Namespace) -> SimulatorConfig:
    """The flags given on the command line over the simulator's defaults."""
    given = {name: getattr(args, name) for name in SIMULATOR_FLAGS}
    return SimulatorConfig(**{k: v for k, v in given.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    from llmflow.services.modelsim.server import run

    setup_logging()
    logging.getLogger("llmflow.services.modelsim").setLevel(logging.INFO)  # "listening on"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(args)
    except ValidationError as exc:
        parser.error(str(exc))
    run(config, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

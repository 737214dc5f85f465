"""Run inside vLLM's own venv: print the flags of ``vllm bench serve`` as JSON.

``{"version": ..., "flags": {"--flag": takes_value}}``, read from the parser vLLM
itself builds for the command. Imports nothing from the project (another venv).
"""

import argparse
import contextlib
import io
import json
import sys
from importlib.metadata import version


def main() -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        from vllm.benchmarks.serve import add_cli_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        parser = FlexibleArgumentParser(prog="vllm bench serve")
        add_cli_args(parser)
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            flags[option] = action.nargs != 0
    json.dump({"version": version("vllm"), "flags": flags}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

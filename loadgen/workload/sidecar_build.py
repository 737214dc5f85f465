"""The sidecar's build (:func:`loadgen.workload.sidecar.build_apart`), in its own module because
it runs the workload package's ``build_prompts``, which is what calls it: a session set built in a
fresh process that loads the tokenizer, so the client never does.

``python -m loadgen.workload.sidecar_build``: a :class:`WorkloadSpec` (JSON) on stdin; the set
(or the one-line error) pickled on stdout.
"""

from __future__ import annotations

import pickle
import sys

import orjson

from loadgen.workload import build_prompts, last_build
from loadgen.workload.errors import WorkloadError
from loadgen.workload.spec import SessionSpec, WorkloadSpec


def main() -> None:
    fields = orjson.loads(sys.stdin.buffer.read())
    if fields.get("session") is not None:
        fields["session"] = SessionSpec(**fields["session"])
    try:
        prompts = build_prompts(WorkloadSpec(**fields), use_cache=False)
        out: tuple = ("ok", prompts, last_build.checked or 0)
    except WorkloadError as exc:
        out = ("error", str(exc))
    sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()

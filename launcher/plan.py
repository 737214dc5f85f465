"""Turn (engine, version, preset, options) into the exact command that starts a server.

A plan is computed, never executed, here: the lifecycle code runs ``Plan.argv`` (or
``Plan.docker_argv``) and waits on ``Plan.readiness``. Everything that differs
between engines and releases is data (``launcher/engines/data``), so a preset
written for one release renders for another by renaming, re-spelling or dropping
flags with a warning, and a flag the target release does not know is an error
here rather than after an hour of loading weights.
"""

from __future__ import annotations

import difflib
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypedDict

from launcher import __version__ as launcher_version
from launcher.engines import sglang as sglang_engine
from launcher.engines import sim as sim_engine
from launcher.engines import vllm as vllm_engine
from launcher.engines.base import ReadinessSpec, engine_data, entry_argv, readiness_for, translate
from launcher.engines.errors import PlanError
from launcher.engines.flags import FlagSet, ParsedOpt, listed, load_flagset, parse_args, render_opt
from launcher.engines.versions import ENGINES, detect_version, known_versions, resolve_version, version_key
from launcher.paths import project_root
from launcher.redact import SECRET, is_secret_env, secret_values

__all__ = [
    "Plan",
    "PlanError",
    "Preset",
    "EnginePreset",
    "ReadinessSpec",
    "build_plan",
    "detect_version",
    "known_versions",
    "list_presets",
    "load_preset",
]

_ENGINE_MODULES = {"vllm": vllm_engine, "sglang": sglang_engine, "sim": sim_engine}
class _Managed(TypedDict):
    model: tuple[str, ...]
    host: str
    port: str
    served: str


# Flags the plan sets itself from its own arguments; a preset may not fight over them.
_MANAGED: dict[str, _Managed] = {
    "vllm": {"model": ("--model", "model_tag"), "host": "--host", "port": "--port", "served": "--served-model-name"},
    "sglang": {"model": ("--model-path",), "host": "--host", "port": "--port", "served": "--served-model-name"},
}


# ---------------------------------------------------------------- presets


@dataclass
class DockerSpec:
    """How the field report ran an engine in Docker: image, container name, ``docker run`` options."""

    image: str | None = None
    name: str | None = None
    options: list[str] = field(default_factory=list)


@dataclass
class EnginePreset:
    """One engine's part of a preset: flags as written for ``version``, environment, Docker."""

    version: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    docker: DockerSpec | None = None
    engine_bin: str | None = None
    python: str | None = None
    multinode_mode: str | None = None  # how this engine spans nodes when the preset has "nodes" > 1


@dataclass
class Preset:
    """A named deployment as data; users copy the JSON file and pass its path."""

    name: str
    description: str
    model: str | None
    engines: dict[str, EnginePreset]
    served_model_name: str | None = None
    host: str | None = None
    hardware: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    nodes: int = 1  # machines the deployment spans; hardware describes one of them


def _presets_dir():
    return resources.files("launcher").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the presets shipped with the launcher."""
    return sorted(p.name[: -len(".json")] for p in _presets_dir().iterdir() if p.name.endswith(".json"))



def expand_path(text: str | None) -> str | None:
    """Fill a preset's placeholders: {project}, {vllm_venv}, ~ and $VARS."""
    if text is None:
        return None
    venv = os.environ.get("LOADGEN_VLLM_VENV") or str(project_root() / ".venv-vllm")
    text = text.replace("{project}", str(project_root())).replace("{vllm_venv}", venv)
    return os.path.expanduser(os.path.expandvars(text))


def _preset_from_dict(d: dict, where: str) -> Preset:
    if not isinstance(d, dict) or not isinstance(d.get("engines"), dict) or not d["engines"]:
        raise PlanError(f"preset {where} has no 'engines' section; copy a shipped preset (loadgen-launch plan --help) and edit it")
    engines: dict[str, EnginePreset] = {}
    for eng, sec in d["engines"].items():
        if eng not in ENGINES:
            raise PlanError(f"preset {where} names unknown engine {eng!r}; use one of {', '.join(ENGINES)}")
        if not isinstance(sec, dict) or "version" not in sec:
            raise PlanError(f"preset {where}: engine {eng!r} needs a 'version' (the release its flags are written for)")
        args = sec.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise PlanError(f"preset {where}: engines.{eng}.args must be a list of strings")
        dk = sec.get("docker")
        docker = DockerSpec(dk.get("image"), dk.get("name"), list(dk.get("options", []))) if isinstance(dk, dict) else None
        engines[eng] = EnginePreset(
            version=str(sec["version"]),
            args=list(args),
            env={str(k): str(v) for k, v in sec.get("env", {}).items()},
            docker=docker,
            engine_bin=sec.get("engine_bin"),
            python=sec.get("python"),
            multinode_mode=sec.get("multinode_mode"),
        )
    return Preset(
        name=str(d.get("name") or where),
        description=str(d.get("description", "")),
        model=d.get("model"),
        engines=engines,
        served_model_name=d.get("served_model_name"),
        host=d.get("host"),
        hardware=dict(d.get("hardware", {})),
        path=None,
        nodes=_preset_nodes(d.get("nodes", 1), where),
    )


def _preset_nodes(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PlanError(f"preset {where}: 'nodes' must be a whole number >= 1, got {value!r}")
    return value


def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name, or a user's copy by path; PlanError names what is wrong."""
    candidate = Path(os.path.expanduser(name_or_path))
    if candidate.suffix == ".json" or os.sep in name_or_path or candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8")
        except OSError as exc:
            raise PlanError(f"cannot read preset file {name_or_path}: {exc.strerror or exc}") from None
        where = str(candidate)
    else:
        names = list_presets()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise PlanError(f"unknown preset {name_or_path!r}; {hint}known: {', '.join(names)} (or give a path to a .json file)")
        text = _presets_dir().joinpath(name_or_path + ".json").read_text(encoding="utf-8")
        where = name_or_path
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"preset {where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    preset = _preset_from_dict(data, where)
    preset.path = str(candidate) if where == str(candidate) else None
    return preset


# ---------------------------------------------------------------- plans


@dataclass
class Plan:
    """Everything needed to start, probe and stop one server, computed without running anything."""

    engine: str
    version: str
    argv: list[str]
    env: dict[str, str]
    docker_argv: list[str] | None
    warnings: list[str]
    port: int
    host: str
    readiness: ReadinessSpec
    data_version: str | None = None  # the known release whose facts were used (may differ from version)
    preset: str | None = None
    model: str | None = None
    served_model_name: str | None = None
    docker_name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # final engine flags: canonical name → value
    image: str | None = None
    docker_options: list[str] = field(default_factory=list)
    container_argv: list[str] | None = None  # the engine command as run inside the image
    # Files holding secrets that the launcher writes (mode 0600) before the start and removes at the stop:
    # path -> content. Never printed or stored (see secret_values).
    secret_files: dict[str, str] = field(default_factory=dict, repr=False)

    def secret_values(self) -> list[str]:
        """Every secret the engine is given (flags, environment, secret files): masked wherever its output goes."""
        return secret_values(self.argv, self.env, [v for c in self.secret_files.values() for v in _yaml_values(c)])

    def shell(self) -> str:
        """The native command as one line a user can paste (environment prefix included)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        cmd = shlex.join(self.argv)
        return f"{prefix} {cmd}" if prefix else cmd

    def docker_shell(self) -> str | None:
        return shlex.join(self.docker_argv) if self.docker_argv else None

    @property
    def docker_stop_argv(self) -> list[str] | None:
        """Stopping a container is ``docker stop NAME``, not a signal to the docker client."""
        return ["docker", "stop", self.docker_name] if self.docker_argv and self.docker_name else None

    def describe(self) -> str:
        """The text ``loadgen-launch plan`` prints: both commands, readiness, warnings."""
        lines = [f"# {self.engine} {self.version}" + (f" (flags checked against {self.data_version})" if self.data_version and self.data_version != self.version else "")]
        if self.preset:
            lines.append(f"# preset: {self.preset}")
        lines += ["", "native:", "  " + self.shell()]
        if self.docker_argv:
            lines += ["", "docker:", "  " + (self.docker_shell() or ""), f"  stop: {shlex.join(self.docker_stop_argv or [])}"]
        r = self.readiness
        ready = f"GET {r.health_path} → {r.expected_status}"
        if r.ready_log:
            ready += f", or log line /{r.ready_log[0]}/"
        lines += ["", f"ready when: {ready}"]
        if not r.health_meaningful:
            lines.append("  (/health answers 200 before the model can serve on this release; it is not used)")
        for path in self.secret_files:
            lines += ["", f"secret file: {path} (api-key: {SECRET}; loadgen-launch serve writes it with mode 0600 "
                          "and removes it when the server stops)"]
        if self.warnings:
            lines += ["", "warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["secret_files"] = {path: SECRET for path in self.secret_files}
        d["shell"] = self.shell()
        d["docker_shell"] = self.docker_shell()
        return d


def _yaml_values(content: str) -> list[str]:
    """The values of a key file as :func:`build_plan` writes it (``name: "json string"`` lines)."""
    return [json.loads(value) for line in content.splitlines() if (value := line.partition(": ")[2])]


def _gpu_list(gpus: str | None) -> list[str] | None:
    if gpus is None or gpus.strip().lower() in ("", "all"):
        return None
    items = [g.strip() for g in gpus.split(",") if g.strip()]
    if not all(g.isdigit() for g in items):
        raise PlanError(f"--gpus {gpus!r}: give device numbers like 0,1,2,3 or 'all'")
    return items


def _section_for(preset: Preset | None, engine: str) -> tuple[str | None, EnginePreset | None, list[str]]:
    """The preset section to use for an engine: its own, else another engine's translated across."""
    if preset is None:
        return None, None, []
    if engine in preset.engines:
        return engine, preset.engines[engine], []
    others = [e for e in ("vllm", "sglang") if e in preset.engines and engine != "sim"]
    if not others:
        raise PlanError(f"preset {preset.name} has no section for {engine} (it has: {', '.join(preset.engines)})")
    src = others[0]
    note = f"preset {preset.name} has no {engine} section; translated its {src} flags (check the result)"
    return src, preset.engines[src], [note]


def _extra_error(exc: PlanError, engine: str, target: FlagSet, extra: Sequence[str]) -> PlanError:
    """Say why an extra flag is unknown when it is a flag of another release of the same engine."""
    rules = engine_data(engine).get("translations", {})
    for tok in extra:
        if not tok.startswith("--"):
            continue
        key = target.normalise(tok.partition("=")[0]).replace("_", "-")
        if target.lookup(key) is not None:
            continue
        for v in reversed(known_versions(engine)):
            if v != target.version and load_flagset(engine, v).lookup(key):
                rule = rules.get(key, {})
                hint = f": {rule['why']}" if rule.get("why") else (f": now {rule['renamed_to']}" if rule.get("renamed_to") else "")
                if "ambiguous" in str(exc):
                    return PlanError(f"{exc}; {key} itself was a flag of {engine} {v}{hint}")
                return PlanError(f"{tok} is not a flag of {target.label} (it is one of {engine} {v}){hint}")
    return PlanError(f"{exc} (extra engine flags)")


def _sim_plan(host: str, port: int, extra_args: Sequence[str], python: str | None, preset: Preset | None, section: EnginePreset | None) -> Plan:
    args = [*(section.args if section else []), *extra_args]
    sim_engine.check_args(args)
    return Plan(
        engine="sim",
        version=launcher_version,
        argv=sim_engine.argv(host, port, args, python),
        env=dict(section.env) if section else {},
        docker_argv=None,
        warnings=[],
        port=port,
        host=host,
        readiness=readiness_for("sim", None),
        data_version=None,
        preset=preset.name if preset else None,
    )


API_KEY_ENV = {"vllm": "VLLM_API_KEY"}  # engines that read their --api-key from the environment
CONFIG_FILE_FLAG = "--config"  # SGLang releases with this flag read flags from a YAML file


def key_config_path(engine: str, port: int) -> Path:
    """Where ``serve`` writes an engine's key file: beside the state folder, absolute (Docker mounts it)."""
    from launcher.process import state_dir

    return (state_dir().parent / "secrets" / f"{engine}-{port}.yaml").absolute()


def _key_channel(engine: str, target: Any, resolved: Any, final: dict, key_by_file: bool) -> str | None:
    """How a single ``--api-key`` reaches the engine off its command line: "env", "file", or None (it stays a flag).

    A YAML file is used only when the release's own flag data has ``--config`` and the
    release asked for is not older than that data (a borrowed newer release's flags
    would promise a file an older SGLang rejects), and the user gave no ``--config``
    of their own (SGLang reads one file only).
    """
    if engine in API_KEY_ENV:
        return "env"
    if (key_by_file and target.lookup(CONFIG_FILE_FLAG) is not None and CONFIG_FILE_FLAG not in final
            and version_key(resolved.requested) >= version_key(resolved.data)):
        return "file"
    return None


def build_plan(
    engine: str,
    *,
    version: str | None = None,
    preset: str | None = None,
    model: str | None = None,
    port: int = 8000,
    host: str | None = None,
    gpus: str | None = None,
    docker_image: str | None = None,
    python: str | None = None,
    engine_bin: str | None = None,
    extra_args: Sequence[str] = (),
    served_model_name: str | None = None,
    environ: dict[str, str] | None = None,
    host_facts: tuple[str, str] | None = None,
    key_by_file: bool = True,
) -> Plan:
    """The command (native and, with an image, Docker) that starts ``engine`` as asked.

    Version: the one given, else the one installed where ``python``/``engine_bin``
    point, else the preset's, else the newest we know (with a warning). A release
    we hold no data for borrows the nearest known release's flags, and says so.
    ``environ``/``host_facts`` exist so tests can pin the host; by default the
    real environment and ``hostname -I`` are read. ``host=None``: the preset's,
    else 127.0.0.1 for sim (an emulator need not listen on every interface) and
    0.0.0.0 for the real engines. ``key_by_file=False``: never move ``--api-key``
    into a local file (a multi-node command runs on other machines).
    """
    if engine not in ENGINES:
        raise PlanError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not (0 < int(port) < 65536):
        raise PlanError(f"port {port} is out of range; give 1-65535")
    environ = dict(os.environ if environ is None else environ)
    pre = load_preset(preset) if preset else None
    src_engine, section, warnings = _section_for(pre, engine)
    if host is None:
        host = pre.host if pre and pre.host else "127.0.0.1" if engine == "sim" else "0.0.0.0"
    if engine == "sim":
        return _sim_plan(host, port, extra_args, python, pre, section if src_engine == "sim" else None)

    # An environment given by hand (--python or --engine-bin) replaces the preset's whole entry point.
    own = section is not None and src_engine == engine and not (python or engine_bin)
    python = python or (expand_path(section.python) if own else None)  # type: ignore[union-attr]
    engine_bin = engine_bin or (expand_path(section.engine_bin) if own else None)  # type: ignore[union-attr]
    if version is None and (python or engine_bin):
        version = detect_version(engine, python=python, engine_bin=engine_bin)
        if version is None and not (section is not None and src_engine == engine):
            warnings.append(f"could not detect the {engine} version at {python or engine_bin}")
    if version is None and section is not None and src_engine == engine:
        version = section.version
    if version is None:
        version = known_versions(engine)[-1]
        warnings.append(f"no --engine-version given or detected; assuming {engine} {version}")
    resolved = resolve_version(engine, version)
    if resolved.note:
        warnings.append(resolved.note)
    target = load_flagset(engine, resolved.data)

    opts: list[ParsedOpt] = []
    if section is not None and src_engine is not None:
        src_resolved = resolve_version(src_engine, section.version)
        source = load_flagset(src_engine, src_resolved.data)
        try:
            parsed = parse_args(source, section.args)
        except PlanError as exc:
            raise PlanError(f"preset {pre.name if pre else ''}: {exc}") from None
        tr = translate(parsed, source, target, origin=f"preset {pre.name if pre else ''}".strip())
        opts += tr.opts
        warnings += tr.warnings
    try:
        opts += parse_args(target, list(extra_args))
    except PlanError as exc:
        raise _extra_error(exc, engine, target, list(extra_args)) from None

    managed = _MANAGED[engine]
    final: dict[str, ParsedOpt] = {}
    for o in opts:
        if o.flag.kind == "append" and o.flag.name in final:
            prev = final[o.flag.name]
            final[o.flag.name] = ParsedOpt(o.flag, [*listed(prev.value), *listed(o.value)], o.spelled)
        else:
            final.pop(o.flag.name, None)
            final[o.flag.name] = o
    for name in managed["model"]:
        if name in final:
            model = str(final.pop(name).value)
    if managed["host"] in final:
        host = str(final.pop(managed["host"]).value)
    if managed["port"] in final:
        port = int(str(final.pop(managed["port"]).value))
    if managed["served"] in final:
        v = final.pop(managed["served"]).value
        served_model_name = " ".join(v) if isinstance(v, list) else str(v)

    # The key goes by environment (vLLM) or by a mode-0600 YAML file (SGLang with --config), never on
    # the command line where the release allows: a command line is world-readable (ps,
    # /proc/PID/cmdline) and engines echo their arguments to their logs. (Several keys, or an
    # older SGLang: they stay flags, masked wherever the launcher shows them.)
    given = final.get("--api-key")
    keys = (given.value if isinstance(given.value, list) else [given.value]) if given is not None else []
    channel = _key_channel(engine, target, resolved, final, key_by_file) if len(keys) == 1 else None
    api_key = str(keys[0]) if channel else None
    secret_files: dict[str, str] = {}
    if keys and channel is None and engine != "sim":
        warnings.append(f"{target.label} takes --api-key only on its command line (visible in ps); "
                        "the launcher shows it as *** and masks it in the server log")
    if api_key is not None:
        final.pop("--api-key")
        if channel == "file":
            secret_files[str(key_config_path(engine, port))] = f"api-key: {json.dumps(api_key)}\n"

    model = model or (expand_path(pre.model) if pre else None)
    if not model:
        raise PlanError(f"no model for {engine}: pass --model PATH (or a preset that names one)")
    served_model_name = served_model_name or (pre.served_model_name if pre else None)

    gpu_ids = _gpu_list(gpus)
    tp_flag = next((f for f in ("--tensor-parallel-size", "--tp-size") if f in final), None)
    if gpu_ids is not None and tp_flag is not None:
        tp = int(str(final[tp_flag].value))
        if tp > len(gpu_ids):
            raise PlanError(f"tensor parallel size {tp} needs {tp} GPUs but --gpus lists {len(gpu_ids)}; add GPUs or lower {tp_flag}")

    def engine_argv(py: str | None, binary: str | None) -> list[str]:
        argv = entry_argv(engine, resolved.data, model=model, python=py, engine_bin=binary)
        argv += [managed["host"], host, managed["port"], str(port)]
        if served_model_name:
            argv += [managed["served"], served_model_name]
        for o in final.values():
            argv += render_opt(o.flag, o.value, target, o.spelled)
        for path in secret_files:
            argv += [CONFIG_FILE_FLAG, path]  # two words: SGLang merges the file only for `--config PATH`
        return argv

    native = engine_argv(python, engine_bin)
    # Re-parse what we rendered: a command the target release would reject is our bug, caught here, not at launch.
    head = entry_argv(engine, resolved.data, model=model, python=python, engine_bin=engine_bin)
    model_flag = head[-2:] if len(head) >= 2 and head[-2].startswith("--") else []
    parse_args(target, model_flag + native[len(head) :])

    env: dict[str, str] = {}
    if section is not None and src_engine == engine:
        env.update({k: expand_path(v) or "" for k, v in section.env.items()})
    host_env = _ENGINE_MODULES[engine].extra_env({**environ, **env}, host_facts)
    if host_env:
        warnings.append(
            "dual-stack host (global IPv6 address): setting "
            + ", ".join(f"{k}={v}" for k, v in host_env.items())
            + " so the engine does not pick an IPv6 address"
        )
    env.update(host_env)
    if gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    if api_key is not None and channel == "env":
        env[API_KEY_ENV[engine]] = api_key

    docker = section.docker if section is not None and src_engine == engine else None
    image = docker_image
    if image is None and docker is not None and docker.image:
        if resolve_version(engine, section.version).requested == resolved.requested:  # type: ignore[union-attr]
            image = docker.image
        else:
            warnings.append(
                f"the preset's image {docker.image} holds {engine} {section.version}, not {resolved.requested}; "  # type: ignore[union-attr]
                "pass --docker IMAGE for a Docker command"
            )
    docker_argv = None
    docker_name = None
    options: list[str] = []
    container_argv: list[str] | None = None
    if image:
        docker_name = (docker.name if docker and docker.name else None) or f"loadgen-{engine}-{port}"
        options = list(docker.options) if docker else ["--net=host", "--ipc=host", "--gpus", "all", "--entrypoint", ""]
        if gpu_ids is not None:
            options = _replace_gpus(options, gpu_ids)
        options += [x for path in secret_files for x in ("-v", f"{path}:{path}:ro")]
        container_argv = engine_argv(None, None)
        docker_argv = docker_run_argv(docker_name, options, env, image, container_argv)

    return Plan(
        engine=engine,
        version=resolved.requested,
        argv=native,
        env=env,
        docker_argv=docker_argv,
        warnings=warnings,
        port=port,
        host=host,
        readiness=readiness_for(engine, resolved.data),
        data_version=resolved.data,
        preset=pre.name if pre else None,
        model=model,
        served_model_name=served_model_name,
        docker_name=docker_name,
        options={name: o.value for name, o in final.items()},
        image=image,
        docker_options=options,
        container_argv=container_argv,
        secret_files=secret_files,
    )


def docker_run_argv(name: str, options: Sequence[str], env: dict[str, str], image: str, argv: Sequence[str]) -> list[str]:
    """``docker run --rm --name NAME OPTIONS -e K=V IMAGE ARGV``; GPU selection is Docker's, not the env's.

    A secret variable is passed as ``-e NAME``: Docker takes its value from the
    client's environment (which the launcher sets), so it is never on a command line."""
    docker_env = [x for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"
                  for x in ("-e", k if is_secret_env(k) else f"{k}={v}")]
    return ["docker", "run", "--rm", "--name", name, *options, *docker_env, image, *argv]


def _replace_gpus(options: list[str], gpu_ids: list[str]) -> list[str]:
    """Swap ``--gpus all`` for the chosen devices (Docker's quoting: '"device=0,1"')."""
    want = f'"device={",".join(gpu_ids)}"'
    out: list[str] = []
    skip = False
    for i, tok in enumerate(options):
        if skip:
            skip = False
            continue
        if tok == "--gpus" and i + 1 < len(options):
            out += ["--gpus", want]
            skip = True
        elif tok.startswith("--gpus="):
            out.append(f"--gpus={want}")
        else:
            out.append(tok)
    if "--gpus" not in out and not any(t.startswith("--gpus=") for t in out):
        out += ["--gpus", want]
    return out

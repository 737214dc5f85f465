"""Run inside an engine's own venv: feed argv lists to the engine's real argument parser.

Usage (inside that venv): ``python _real_parser_probe.py sglang|vllm < argvs.json``
where stdin is a JSON list of argv lists; prints one JSON list of results
``{"ok": bool, "error": str | None, "args": {dest: value}}``.

SGLang's ``server_args`` module imports torch, triton and other GPU-only packages
at the top, but building and running its parser needs none of them. Packages that
are not installed are therefore replaced by inert stand-ins, so the parser itself
(the flag names, types, choices and argparse rules) is the engine's real code.
This file must not import anything from the project: it runs in another venv.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import importlib.abc
import importlib.machinery
import io
import json
import sys
import types

# Dunder names Python's own machinery probes; a stand-in must not pretend to have them.
_PROTOCOL = set(dir(type)) | set(dir(types.ModuleType)) | {
    "__wrapped__", "__signature__", "__path__", "__file__", "__all__", "__origin__", "__args__",
    "__parameters__", "__func__", "__self__", "__get__", "__set__", "__delete__", "__set_name__",
    "__fspath__", "__await__", "__aiter__", "__length_hint__", "__mro_entries__", "__class_getitem__",
    "__getitem__", "__enter__", "__exit__", "__copy__", "__deepcopy__", "__getstate__", "__iter__",
    "__next__", "__len__", "__bool__", "__index__", "__int__", "__float__", "__dataclass_fields__",
    "__dataclass_params__", "__call__", "__isabstractmethod__", "__objclass__", "__code__", "__defaults__",
}


# Accelerator back-ends whose mere presence makes engines probe for devices: absent here.
_ABSENT = {"npu", "xpu", "hpu", "musa", "mlu", "mps"}


def _is_protocol(name: str) -> bool:
    return name in _PROTOCOL or name in _ABSENT or name.startswith(("_pytest", "_ipython"))


class _Inert(abc.ABCMeta):
    """A class whose every attribute, call, item and operation yields another inert value."""

    def __new__(mcs, name, bases, namespace, **kwargs):
        return super().__new__(mcs, name, bases, namespace)

    def __init__(cls, name, bases, namespace, **kwargs):
        super().__init__(name, bases, namespace)

    def __getattr__(cls, name: str):
        if _is_protocol(name):
            raise AttributeError(name)
        return _inert(name)

    @property
    def register(cls):
        # ABCMeta's own register() would shadow the stand-in attribute of that name.
        return _inert("register")

    def __call__(cls, *args, **kwargs):
        # Used as a decorator: give the decorated function back unchanged.
        if len(args) == 1 and callable(args[0]) and not kwargs and not isinstance(args[0], _Inert):
            return args[0]
        return _inert("call")

    def __getitem__(cls, item):
        return _inert("item")

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False

    def __len__(cls):
        return 0

    def __int__(cls):
        return 0

    def __float__(cls):
        return 0.0

    def __index__(cls):
        return 0

    def __str__(cls):
        return "0.0.0"

    def __or__(cls, other):
        return cls

    __ror__ = __or__

    def __lt__(cls, other):
        return False

    __le__ = __gt__ = __ge__ = __lt__

    def __eq__(cls, other):
        return cls is other

    def __hash__(cls):
        return id(cls)

    def __enter__(cls):
        return cls

    def __exit__(cls, *exc):
        return False

    def __mro_entries__(cls, bases):
        return (_InertBase,)


class _InertBase:
    """What a class deriving from a stand-in derives from instead: accepts any keywords and arguments."""

    def __init_subclass__(cls, **kwargs):
        return None

    def __init__(self, *args, **kwargs):
        return None

    def __getattr__(self, name: str):
        if _is_protocol(name):
            raise AttributeError(name)
        return _inert(name)


def _inert(name: str) -> _Inert:
    return _Inert(str(name), (_InertBase,), {})


class _InertModule(types.ModuleType):
    __version__ = "0.0.0"

    def __getattr__(self, name: str):
        if _is_protocol(name):
            raise AttributeError(name)
        value = _inert(name)
        setattr(self, name, value)
        return value


class _InertFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: anything the venv lacks becomes an inert module."""

    def __init__(self, keep_real: tuple[str, ...]) -> None:
        self.keep_real = keep_real
        self.stubbed: list[str] = []

    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        if top in self.keep_real or top in sys.stdlib_module_names:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _InertModule(spec.name)
        module.__path__ = []
        self.stubbed.append(spec.name)
        return module

    def exec_module(self, module):
        return None


def _sglang_parser() -> argparse.ArgumentParser:
    import os

    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")  # newer releases pick a platform at import time
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    return parser


def _vllm_parser() -> argparse.ArgumentParser:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # older layouts
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _type_name(action) -> str:
    t = action.type
    name = getattr(t, "__name__", "") or type(t).__name__ if t is not None else ""
    name = str(name)
    if t is int or name == "int":
        return "int"
    if t is float or name == "float":
        return "float"
    if "human_readable_int_or_auto" in name:
        return "human_int_or_auto"
    if "human_readable_int" in name:
        return "human_int"
    if any(k in name for k in ("loads", "json", "parse_dataclass", "union_dict", "from_cli")):
        return "json"
    return "str"


def _kind(action) -> str:
    cls = type(action).__name__
    if not action.option_strings:
        return "positional"
    if "BooleanOptional" in cls:
        return "bool_optional"
    if cls == "EnableDisableAction":
        return "enable_disable"
    if cls == "StoreBoolean":
        return "store_boolean"
    if "Append" in cls:
        return "append"
    if action.nargs == 0:
        return "flag"
    return "value"


def dump_flags(parser: argparse.ArgumentParser) -> dict:
    """Every option of a real parser in the launcher's flag-data format."""
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        kind = _kind(action)
        longs = [o for o in action.option_strings if o.startswith("--")]
        name = (longs or action.option_strings or [action.dest])[0]
        entry: dict = {"kind": kind}
        aliases = [o for o in action.option_strings if o != name]
        if aliases:
            entry["aliases"] = aliases
        if kind in ("value", "append", "positional", "store_boolean"):
            entry["type"] = _type_name(action)
        if action.nargs not in (None, 0):
            entry["nargs"] = action.nargs
        if action.choices and kind != "enable_disable":
            entry["choices"] = [str(c) for c in action.choices if c is not None]
        d = action.default
        if isinstance(d, (bool, int, float)) or (isinstance(d, str) and len(d) < 40):
            entry["default"] = d
        if "Deprecated" in type(action).__name__:
            entry["deprecated"] = True
        flags[name] = entry
    return flags


def main() -> int:
    engine = sys.argv[1]
    # This file sits beside modules named vllm.py and sglang.py; never let them shadow the engine.
    here = __file__.rsplit("/", 1)[0]
    sys.path[:] = [p for p in sys.path if p not in ("", ".", here)]
    finder = _InertFinder(keep_real=(engine, "argparse", "json", "encodings"))
    if engine == "sglang":
        # Only SGLang's side venv lacks packages on purpose; vLLM's venv is complete, and
        # stand-ins there would defeat its own "try: import x / except ImportError" probes.
        sys.meta_path.append(finder)
    build = {"sglang": _sglang_parser, "vllm": _vllm_parser}[engine]
    with contextlib.redirect_stdout(io.StringIO()):
        parser = build()
    parser.exit_on_error = False
    if len(sys.argv) > 2 and sys.argv[2] == "dump":
        from importlib.metadata import version

        json.dump({"version": version(engine), "flags": dump_flags(parser)}, sys.stdout)
        return 0
    results: list[dict[str, object]] = []
    for argv in json.load(sys.stdin):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                ns = parser.parse_args(argv)
            results.append({"ok": True, "error": None, "args": {k: _jsonable(v) for k, v in vars(ns).items()}})
        except SystemExit:
            lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
            results.append({"ok": False, "error": lines[-1] if lines else "parser exited", "args": {}})
        except Exception as exc:  # noqa: BLE001 - report any parser failure as a result
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}", "args": {}})
    json.dump({"results": results, "stubbed": sorted({s.split('.')[0] for s in finder.stubbed})}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

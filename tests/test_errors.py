"""One error hierarchy per package: every exception a package defines derives from its base,
and the base's module draws them all (loadgen/errors.py, launcher/errors.py, analysis/errors.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys

import pytest

from analysis.errors import AnalysisError
from launcher.errors import LauncherError
from loadgen.errors import LoadgenError

BASES: dict[str, tuple[type[Exception], ...]] = {
    "loadgen": (LoadgenError,),
    "launcher": (LauncherError,),
    "analysis": (AnalysisError,),
    "orchestrator": (LoadgenError, LauncherError, AnalysisError),  # the top raises the others' errors
}


def defined_exceptions(package: str) -> list[type[Exception]]:
    """Every ``Exception`` subclass defined in a module of ``package`` (``__main__`` modules,
    which run a program when imported, left out)."""
    found = []
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_exception_derives_from_its_package_base(package):
    found = defined_exceptions(package)
    stray = [f"{e.__module__}.{e.__qualname__}" for e in found if not issubclass(e, BASES[package])]
    assert not stray, f"derive these from {' or '.join(b.__qualname__ for b in BASES[package])}: {stray}"


@pytest.mark.parametrize("package", ["loadgen", "launcher", "analysis"])
def test_the_errors_module_draws_every_public_exception(package):
    (base,) = BASES[package]
    drawing = sys.modules[base.__module__].__doc__ or ""
    public = [e for e in defined_exceptions(package) if e is not base and not e.__name__.startswith("_")]
    assert public
    missing = sorted(e.__name__ for e in public if e.__name__ not in drawing)
    assert not missing, f"{base.__module__}'s docstring does not draw {missing}"


@pytest.mark.parametrize("package", ["loadgen", "launcher", "analysis"])
def test_the_drawing_names_each_error_where_it_is_defined(package):
    """Each line ``Name (…)  path.py: …`` of the drawing names the module that defines Name, so a
    moved module cannot leave the drawing pointing at a file that is gone."""
    (base,) = BASES[package]
    drawing = sys.modules[base.__module__].__doc__ or ""
    where = {e.__name__: e.__module__ for e in defined_exceptions(package)}
    lines = [m.groups() for m in re.finditer(r"── (\w+)\b[^\n]*?\s([\w/]+)\.py:", drawing)]
    assert lines
    wrong = [(name, path) for name, path in lines
             if name in where and where[name] != f"{package}.{path.replace('/', '.')}"]
    assert not wrong, f"the drawing names the wrong module for {wrong}"

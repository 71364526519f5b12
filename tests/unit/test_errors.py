"""The domain-error family: one base class, one CLI exit path (issue 10)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from radreview.studies.errors import RadreviewError

#: GUI-free packages walked (viewer._qt needs a display and holds no domain errors, only the
#: worker wrapper ``JobFailed``).
_PACKAGES = ["radreview.studies", "radreview.inference", "radreview.explain", "radreview.review", "radreview.viewer"]
_SKIP_PREFIXES = ("radreview.viewer._qt", "radreview.viewer.render", "radreview.viewer.xvfb")


def _modules():
    for name in _PACKAGES:
        pkg = importlib.import_module(name)
        yield pkg
        for m in pkgutil.walk_packages(pkg.__path__, name + "."):
            if m.name.startswith(_SKIP_PREFIXES) or m.name.endswith(".__main__"):
                continue
            yield importlib.import_module(m.name)


def _exception_classes():
    seen = {}
    for mod in _modules():
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, Exception) and not issubclass(cls, Warning) and cls.__module__ == mod.__name__:
                seen[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return seen


def test_every_domain_error_is_a_radreview_error():
    classes = _exception_classes()
    # the walk found the known families (so an empty walk cannot pass)
    for known in ("radreview.studies.loader.LoadError", "radreview.inference.package.PackageError",
                  "radreview.review.findings.SignOffRefused", "radreview.review.store.StoreMissing",
                  "radreview.explain.gradcam.ExplanationRefused", "radreview.viewer.cli.CliError"):
        assert known in classes, known
    bad = sorted(n for n, c in classes.items() if not issubclass(c, RadreviewError))
    assert bad == [], f"domain errors not deriving from RadreviewError: {bad}"


def test_standard_bases_are_kept():
    from radreview.inference.package import PackageError
    from radreview.review.store import StoreMissing, StudyLocked
    from radreview.studies.loader import LoadError

    assert issubclass(PackageError, ValueError) and issubclass(LoadError, RuntimeError)
    assert issubclass(StoreMissing, FileNotFoundError) and issubclass(StudyLocked, RuntimeError)
    with pytest.raises(ValueError):
        raise PackageError("still caught by except ValueError")


def test_cli_prints_a_domain_error_on_one_line(tmp_path, capsys):
    from radreview.viewer.cli import main

    missing = tmp_path / "nope.sqlite"
    rc = main(["audit", "verify", "--db", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("radreview: error: ") and str(missing) in err
    assert "Traceback" not in err and "full traceback" not in err


def test_cli_maps_an_uncaught_radreview_error_to_exit_2(tmp_path, capsys, monkeypatch):
    """A domain error a command does not wrap in CliError (here StoreMissing from ``review
    --db``) still takes the one-line exit-2 path, and writes no traceback log."""
    from radreview.viewer.cli import main

    monkeypatch.setenv("RADREVIEW_LOG_DIR", str(tmp_path / "logs"))
    missing = tmp_path / "absent.sqlite"
    rc = main(["review", str(tmp_path), "--db", str(missing)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("radreview: error: ") and "no such review database" in err
    assert not (tmp_path / "logs").exists()

"""The registry mechanism: registration, lookup with suggestions, lazy population."""

from __future__ import annotations

import sys

import pytest

from harness.errors import UserError
from harness.registry import Registry


def test_register_get_and_suggest():
    reg: Registry = Registry("widget")

    @reg.register("sprocket")
    def sprocket() -> None:
        """Turns things."""

    assert reg.get("sprocket") is sprocket
    assert reg.names() == ["sprocket"]
    with pytest.raises(UserError, match=r"unknown widget 'sprockt'.*Did you mean 'sprocket'"):
        reg.get("sprockt")


def test_duplicate_name_is_an_error():
    reg: Registry = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 2)


def test_populated_lazily_from_named_module(tmp_path, monkeypatch):
    (tmp_path / "plugin_mod_for_test.py").write_text(
        "from tests_registry_target import REG\n@REG.register('x')\ndef x():\n    '''An x.'''\n"
    )
    (tmp_path / "tests_registry_target.py").write_text(
        "from harness.registry import Registry\nREG = Registry('thing', populated_by=('plugin_mod_for_test',))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tests_registry_target

    assert "plugin_mod_for_test" not in sys.modules
    assert tests_registry_target.REG.names() == ["x"]
    assert "plugin_mod_for_test" in sys.modules

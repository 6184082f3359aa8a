"""Every case-study script in `examples/` imports and parses its command line (the analyses
themselves are tested in the other modules of this folder; a full run takes minutes)."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import EXAMPLES

SCRIPTS = sorted(EXAMPLES.glob("case_study_*.py"))


def test_the_four_case_studies_are_here():
    assert [p.stem for p in SCRIPTS] == ["case_study_addition", "case_study_attention",
                                         "case_study_multilingual", "case_study_two_hop"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports_and_explains_itself(script, capsys):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--work" in out and "--no-screenshots" in out

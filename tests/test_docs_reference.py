"""The committed config reference is generated from the module declarations."""

from pathlib import Path

from shapepipe.docs import config_reference

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "config_reference.md"


def test_config_reference_is_up_to_date():
    assert REFERENCE.read_text() == config_reference(), (
        "docs/config_reference.md is stale: regenerate it with `python -m shapepipe.docs`"
    )

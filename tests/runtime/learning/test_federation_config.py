"""The [federation] section of the learning config: off and private by default, consent per tier,
one-line errors for bad values."""

from pathlib import Path

import pytest

from runtime.learning.config import parse_learning_config
from runtime.learning.federation_config import FederationConfig
from ruvdllm.errors import RuvdllmError


def test_by_default_nothing_is_shared():
    config = parse_learning_config("", "learning.toml").federation
    assert config == FederationConfig() and not config.enabled and config.consented() == ()
    assert config.bank_path(Path("/data")) == Path("/data/bank")


def test_consent_is_given_per_tier():
    text = "[federation]\nenabled = true\nconsent_public = true\nconsent_group = true\nmerge_weight = 1\n"
    config = parse_learning_config(text, "learning.toml").federation
    assert config.consented() == ("group", "public")  # narrowest first; private has no switch
    assert config.merge_weight == 1.0 and isinstance(config.merge_weight, float)


@pytest.mark.parametrize(
    "line, message",
    [
        ("consent_private = true", r"\[federation\] has unknown consent_private"),
        ("merge_weight = 1.5", r"federation.merge_weight 1.5: must be in \[0, 1\]"),
        ("timeout_s = 0", "federation.timeout_s 0.0: must be > 0"),
        ("retry_max_s = 1", "federation.retry_max_s 1.0: below retry_min_s 60.0"),
        ('policy = "v 1"', "federation.policy 'v 1'"),
        ('consent_public = "yes"', "federation.consent_public = 'yes': expected bool"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_file(line, message):
    with pytest.raises(RuvdllmError, match=message) as info:
        parse_learning_config(f"[federation]\n{line}\n", "my.toml")
    assert str(info.value).startswith("my.toml: ") and "\n" not in str(info.value)

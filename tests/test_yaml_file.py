"""mlcnc.yaml_file.load_yaml: duplicate keys and aliases are refused with the line."""

from __future__ import annotations

import pytest
import yaml

from mlcnc.yaml_file import YAMLRefused, load_yaml


def test_reads_plain_yaml():
    assert load_yaml("a: 1\nb:\n  c: [1, 2]\n") == {"a": 1, "b": {"c": [1, 2]}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim:\n  lr: 1\noptim:\n  lr: 2\n", "line 3: duplicate key 'optim' (first at line 1)"),
        ("optim:\n  lr: 1\n  lr: 2\n", "line 3: duplicate key 'lr' (first at line 2)"),
        ("a: [{x: 1, x: 2}]\n", "duplicate key 'x'"),
        ("a: &a [1]\nb: *a\n", "line 2: YAML alias *a is not allowed"),
        ("a: &a {x: 1}\nb:\n  <<: *a\n", "YAML alias *a is not allowed"),
    ],
)
def test_refuses_duplicates_and_aliases(text, message):
    with pytest.raises(
        YAMLRefused, match=message.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")
    ):
        load_yaml(text)


def test_a_billion_laughs_fails_at_the_first_alias():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(YAMLRefused) as refused:
        load_yaml("\n".join(lines))
    assert len(str(refused.value)) < 200


def test_not_yaml_is_pyyamls_error():
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [unclosed\n")

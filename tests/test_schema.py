"""`codegen schema` agrees with what a build accepts, for editors and validators."""

import json
import re

import jsonschema
import pytest
import yaml

from codegen.cli import main
from codegen.ir import ACTIVATIONS
from codegen.rules import RULE_NAMES

from conftest import ROOT, SPECS


@pytest.fixture(scope="module")
def validator():
    from codegen.spec import json_schema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, text):
    return [e.message for e in validator.iter_errors(yaml.safe_load(text))]


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_validates(validator, path):
    assert errors(validator, path.read_text()) == []


def test_rule_and_activation_names_are_enumerated(validator):
    spec = (SPECS / "gdpa.yaml").read_text()
    assert errors(validator, spec + "rules:\n  invariant_load: false\n") == []
    assert errors(validator, spec + "rules:\n  invariant_loads: false\n")
    assert errors(validator, spec.replace("activation: fast_gelu", "activation: fast_gelo"))
    schema = validator.schema
    assert schema["properties"]["rules"]["propertyNames"]["enum"] == list(RULE_NAMES)
    assert list(ACTIVATIONS) in [a.get("enum") for a in schema["properties"]["params"]["additionalProperties"]["anyOf"]]


def test_an_integral_float_is_an_integer_for_both(validator, tmp_path, capsys):
    text = (SPECS / "bmm.yaml").read_text().replace("m: {block: 128}", "m: {block: 128.0}")
    assert errors(validator, text) == []
    spec = tmp_path / "bmm.yaml"
    spec.write_text(text)
    assert main(["build", str(spec), "-o", str(tmp_path / "out")]) == 0
    assert errors(validator, text.replace("128.0", "128.5"))


def _readme_specs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    # complete specs only: the README also shows fragments
    return [b for b in blocks if re.search(r"^name: ", b, re.M) and re.search(r"^compute:", b, re.M)]


def test_the_readme_uses_yaml_1_2_booleans():
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r":\s*(on|off|yes|no)\s*(#.*)?$", readme, re.M)


def test_the_readme_specs_validate_and_build(validator, tmp_path, capsys):
    specs = _readme_specs()
    assert specs, "the README shows at least one complete spec"
    for i, text in enumerate(specs):
        assert errors(validator, text) == [], text
        path = tmp_path / f"readme{i}.yaml"
        path.write_text(text)
        assert main(["build", str(path), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err


def test_schema_command_is_the_same_schema(validator, capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == validator.schema


def test_the_committed_schema_file_is_current(validator):
    assert json.loads((ROOT / "schema" / "spec.schema.json").read_text()) == validator.schema

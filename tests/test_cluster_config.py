"""cluster.yaml passes Ray's own schema validation (offline); a broken copy does not."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_is_valid():
    config = prepare_config(load())
    validate_config(config)
    assert config["head_node_type"] == "head"
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert any("pip install" in c and "$HOME/study[postgres]" in c for c in config["setup_commands"])


@pytest.mark.parametrize("breakage", [
    lambda c: c.update(max_workers="eight"),
    lambda c: c.update(unknown_top_level_key=1),
    lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"),
    lambda c: c["provider"].pop("type"),
])
def test_broken_copy_fails_validation(breakage):
    config = copy.deepcopy(load())
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        validate_config(prepare_config(config))

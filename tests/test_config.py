"""Configuration: one base for the shared fields, `Literal` choices checked the same way from
flags, YAML files and Python, and listed by `--help`."""

import argparse
import dataclasses

import pytest


def test_shared_fields_come_from_one_base():
    from baselines.train import VectorTrainConfig
    from crl_bench.bench_config import BenchConfig
    from harness.config import ModelConfig, RunConfig
    from rl.crl.config import CRLConfig
    from rl.rlvr.config import RLVRConfig

    shared = {f.name for f in dataclasses.fields(RunConfig)}
    assert shared == {"model", "device", "dtype", "seed", "results_dir", "runs_dir"}
    for cls in (BenchConfig, VectorTrainConfig, RLVRConfig, CRLConfig):
        assert issubclass(cls, RunConfig) and issubclass(cls, ModelConfig)
        assert shared <= {f.name for f in dataclasses.fields(cls)}


def test_literal_choices_are_listed_by_help_and_checked_everywhere(tmp_path):
    from harness.config import add_arguments, from_args
    from rl.crl.config import CRLConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser, CRLConfig)
    actions = {a.dest: a for a in parser._actions}
    assert actions["setting"].choices == ("one-token", "multi-layer", "generation")
    assert actions["algorithm"].choices == ("ppo", "grpo")
    assert actions["dtype"].choices == ("auto", "float32", "bfloat16", "float16")
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices
        parser.parse_args(["--algorithm", "pathwise"])
    config_file = tmp_path / "crl.yaml"
    config_file.write_text("algorithm: pathwise\n")  # retired: a YAML file cannot bring it back either
    with pytest.raises(ValueError, match="--algorithm must be one of ppo, grpo, got 'pathwise'"):
        from_args(CRLConfig, parser.parse_args(["--config", str(config_file)]))
    with pytest.raises(ValueError, match="--dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"):
        CRLConfig(dtype="fp8")
    assert CRLConfig(task="arith_gen", setting="generation", policy="gated").resolved_policy == "gated"


def test_cli_reference_in_docs_is_current():
    """docs/cli.md is generated from the parser; regenerate it with
    `python -m crl_bench.cli_reference > docs/cli.md` when a flag changes."""
    from pathlib import Path

    from crl_bench.cli_reference import reference

    text = reference()
    assert "## `crl-bench train crl`" in text and "`--setting` {one-token,multi-layer,generation}" in text
    assert "--explore-floor" not in text and "pathwise" not in text  # retired experiments are gone
    docs = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert docs.read_text() == text, "docs/cli.md is stale: python -m crl_bench.cli_reference > docs/cli.md"

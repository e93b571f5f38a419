from __future__ import annotations

import dataclasses

import pytest
from conftest import run_script

from secure_ai_mnist import common, config


def test_every_config_field_has_a_flag():
    parser = config.build_arg_parser()
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(config.Config)} <= flags


def test_quick_defaults_and_explicit_flags_win():
    cfg = config.parse_config(["--quick", "--epochs", "2"])
    assert (cfg.train_limit, cfg.test_limit, cfg.epochs) == (6000, 500, 2)
    assert str(cfg.output_dir) == "secure_ai_outputs/quick"
    assert str(config.parse_config(["--quick", "--output-dir", "elsewhere"]).output_dir) == "elsewhere"
    assert config.parse_config([]).train_limit == 0 and str(config.parse_config([]).output_dir) == "secure_ai_outputs"


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"fgsm_eps": 0.0}, {"fgsm_eps": 1.5}, {"target_class": 10}, {"trigger_size": 0},
     {"trigger_size": 20, "trigger_margin": 10}, {"poison_count": -1}, {"train_limit": 50, "poison_count": 100},
     {"autoattack_iters": 0}, {"autoattack_restarts": 0}, {"autoattack_targets": 0}, {"autoattack_targets": 10}, {"square_queries": -1}],
)
def test_invalid_values_rejected_before_work(kwargs):
    with pytest.raises(common.ConfigError):
        config.Config(**kwargs)


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--fgsm-eps", "abc"], ["--no-such-flag"]])
def test_cli_bad_flag_is_one_line_exit_2(args, tmp_path):
    proc = run_script(*args, "--output-dir", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "no output may be written for invalid flags"


def test_help_explains_every_flag():
    proc = run_script("--help")
    assert proc.returncode == 0
    for flag in ("--output-dir", "--data-dir", "--quick", "--poison-count", "--fgsm-eps", "--seed"):
        assert flag in proc.stdout

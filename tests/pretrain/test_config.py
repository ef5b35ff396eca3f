from pathlib import Path

import pytest

from pretrain.cli import build_parser, main
from pretrain.ground.errors import ConfigError
from pretrain.methods import method_hparams
from pretrain.train.config import PretrainConfig
from pretrain.train.options import config_from_args


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"epochs": "ten"}, "epochs must be an integer"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"optimizer": "adam"}, "optimizer must be one of"),
    ({"image_size": 8}, "at least 16 pixels"),
    ({"device": "tpu"}, "device must be"),
    ({"weight_decay": -0.1}, "weight_decay must be zero or positive"),
    ({"batch_sise": 4}, "did you mean 'batch_size'"),
    ({"method_args": [1]}, "method_args must be a mapping"),
])
def test_bad_values_are_clear_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_dict(values)


def test_unknown_method_and_method_option() -> None:
    with pytest.raises(ConfigError, match="method must be one of"):
        method_hparams("simclr3")
    with pytest.raises(ConfigError, match="no option 'temp'"):
        method_hparams("simclr", {"temp": 0.1})
    assert method_hparams("simclr", {"temperature": 0.3})["temperature"] == 0.3


def test_yaml_file_then_command_line_overrides(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 7\nbatch_size: 64\nbackbone: test_resnet\n"
                      "method_args: {temperature: 0.3, out_dim: 64}\n")
    args = build_parser().parse_args(["pretrain", "--config", str(config), "--epochs", "9",
                                      "--method-arg", "temperature=0.1"])
    cfg, resume = config_from_args(args)
    assert (cfg.epochs, cfg.batch_size, cfg.backbone, resume) == (9, 64, "test_resnet", False)
    assert cfg.method_args == {"temperature": 0.1, "out_dim": 64}


def test_bad_yaml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [unclosed\n")
    assert main(["pretrain", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_cli_reports_bad_values_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["pretrain", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sslforge: error: batch_size must be a positive integer") and err.count("\n") == 1
    assert main(["pretrain", "--method-arg", "temperature"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err

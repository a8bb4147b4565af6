"""`neurallayers info` reads train.mask_prob from a run's config.yaml: the run's own, or a checkpoint's run's, and
never another folder's."""

from pathlib import Path

import yaml

from neurallayers.__main__ import main
from neurallayers.cli.info import _flops


def test_an_hf_folder_two_levels_under_another_tools_config_yaml_is_described(tmp_path: Path, capsys):
    """info read any folder's grandparent config.yaml as its run's: a project's own config.yaml (model: resnet50)
    made `info project/models/bert` fail with "config section 'model' must be a mapping"."""
    from neurallayers import ModelConfig, build_model
    from neurallayers.interop import save_hf

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "resnet50", "train": {"epochs": 3}}))
    folder = tmp_path / "models" / "bert"
    save_hf(build_model(ModelConfig.from_name("bert-tiny")), None, folder)
    assert main(["info", str(folder)]) == 0
    assert "encoder, learned positions" in capsys.readouterr().out


def test_a_checkpoint_is_counted_at_its_runs_mask_prob(tmp_path: Path, capsys):
    from neurallayers import ModelConfig
    from neurallayers.training.config import RunConfig

    model = ModelConfig.from_name("bert-tiny").replace(vocab_size=2048, head="mlm")
    run = RunConfig.from_dict({"model": model.to_dict(), "train": {"mask_prob": 0.3}})
    run.to_yaml(tmp_path / "config.yaml")
    step = tmp_path / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    body = model.replace(head="none").flops_per_token()
    expected = 3 * (body + 0.3 * (model.flops_per_token() - body))
    assert main(["info", str(step)]) == 0
    out = capsys.readouterr().out
    assert f"training {_flops(expected)} (context 512; the masked-LM head at 30% of the tokens)" in out


def test_the_mask_prob_is_printed_as_the_share_counted(tmp_path: Path, capsys):
    """A mask_prob of 0.125 printed as "12%" (0.004 as "0%") beside FLOPs counted at 12.5%."""
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: bert-tiny\ndata:\n  tokenizer: bpe\n  vocab_size: 2048\n"
                    "train:\n  mask_prob: 0.125\n")
    assert main(["info", str(path)]) == 0
    assert "(context 512; the masked-LM head at 12.5% of the tokens)" in capsys.readouterr().out

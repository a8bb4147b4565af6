import math
from pathlib import Path

import pytest

from neurallayers import ModelConfig
from neurallayers.training import DataConfig, RunConfig, TrainConfig, apply_overrides


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("max_steps", 0, "max_steps"),
        ("lr", -1.0, "lr"),
        ("min_lr", 1.0, "min_lr"),
        ("schedule", "cosin", "schedule"),
        ("precision", "fp8", "'bf16'"),
        ("nan_policy", "ignore", "nan_policy"),
        ("max_consecutive_skips", 0, "must be >= 1 or None"),
        ("device", "tpu", "device"),
        ("device", "cuda:x", "'cuda:N'"),
        ("device", 1, "device"),
        ("beta2", 1.0, "beta2"),
        ("grad_clip", -0.5, "grad_clip"),
        ("early_stopping_patience", 0, "early_stopping_patience"),
        ("max_minutes", 0.0, "max_minutes"),
        ("batch_size", 2.5, "batch_size"),
        ("compile", "yes", "compile"),
        ("sample_prompts", "hi", "sample_prompts"),
        ("loggers", ["tensorbord"], "loggers"),
        ("distributed", "deepspeed", "distributed"),
        ("init_from", " ", "must be a run or model folder"),
        ("init_from", 3, "init_from"),
    ],
)
def test_train_config_errors_name_the_field(field, value, needle):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}") as e:
        TrainConfig(**{field: value})
    assert needle in str(e.value)


def test_one_gpu_of_several_is_a_device():
    """`--train.device cuda:1`: one process on the second GPU (resolve_device takes it; the config refused it)."""
    assert TrainConfig(device="cuda:1").device == "cuda:1"
    d = apply_overrides({"model": {"preset": "tiny"}}, ["--train.device", "cuda:0"])
    assert RunConfig.from_dict(d).train.device == "cuda:0"


def test_data_config_errors():
    with pytest.raises(ValueError, match="DataConfig.val_fraction"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="DataConfig.vocab_size"):
        DataConfig(vocab_size=100)


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALLAYERS_CACHE", str(tmp_path))
    assert DataConfig().resolved_cache_dir == tmp_path
    assert DataConfig(cache_dir=str(tmp_path / "x")).resolved_cache_dir == tmp_path / "x"


def test_schedules_at_key_steps():
    base = dict(max_steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    cos = TrainConfig(schedule="cosine", **base)
    assert cos.lr_at(0) == pytest.approx(0.1)  # warmup: (step+1)/warmup
    assert cos.lr_at(9) == pytest.approx(1.0)
    assert cos.lr_at(10) == pytest.approx(1.0)
    assert cos.lr_at(60) == pytest.approx(0.55)  # half way: the mean of lr and min_lr
    assert cos.lr_at(110) == pytest.approx(0.1)
    assert cos.lr_at(500) == pytest.approx(0.1)
    lin = TrainConfig(schedule="linear", **base)
    assert lin.lr_at(60) == pytest.approx(0.55)
    assert lin.lr_at(35) == pytest.approx(1.0 - 0.9 * 0.25)
    const = TrainConfig(schedule="constant", **base)
    assert const.lr_at(5) == pytest.approx(0.6)
    assert const.lr_at(100) == 1.0
    inv = TrainConfig(schedule="inverse_sqrt", **base)
    assert inv.lr_at(39) == pytest.approx(math.sqrt(10 / 40))
    assert inv.lr_at(10_000) == pytest.approx(0.1)  # floored at min_lr


def test_overrides_parse_values():
    d = apply_overrides({"model": {"preset": "tiny"}}, ["--train.lr", "3e-4", "--model.n_layer=4",
                                                         "--train.compile", "true", "--data.source", "x.txt",
                                                         "--train.sample_prompts", "[a, b]",
                                                         "--train.early_stopping_patience=null"])
    assert d["model"] == {"preset": "tiny", "n_layer": 4}
    run = RunConfig.from_dict(d)
    assert run.train.lr == 3e-4 and isinstance(run.train.lr, float)
    assert run.model.n_layer == 4 and run.model.n_embd == 64  # preset kept, one field overridden
    assert run.train.compile is True and run.train.sample_prompts == ["a", "b"]
    assert run.data.source == "x.txt" and run.train.early_stopping_patience is None


def test_text_fields_keep_the_text_yaml_would_read_as_another_type():
    """`--data.source 2024` (a file of that name), `--model.name yes` or `--train.init_from 123`: YAML read an int or
    a bool and the field refused it ("expected str"); a str | None field still takes null as None."""
    d = apply_overrides({}, ["--data.source", "2024", "--model.name", "yes", "--train.init_from", "123",
                             "--data.text_field", "1.5", "--data.cache_dir", "null", "--model.preset", "tiny",
                             "--data.tokenizer", "'char'"])
    assert d["data"] == {"source": "2024", "text_field": "1.5", "cache_dir": None, "tokenizer": "char"}
    assert d["model"] == {"name": "yes", "preset": "tiny"} and d["train"] == {"init_from": "123"}
    del d["train"]  # init_from and a preset both name the model
    # what YAML cannot read at all: a glob is an alias to it, "@" a reserved indicator
    d2 = apply_overrides({}, ["--data.source", "*.txt", "--train.init_from", "@runs/a", "--data.text_field", "%x"])
    assert d2 == {"data": {"source": "*.txt", "text_field": "%x"}, "train": {"init_from": "@runs/a"}}
    run = RunConfig.from_dict(d)
    assert run.data.source == "2024" and run.model.name == "yes" and run.data.cache_dir is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trian.lr", "1"], "did you mean 'train'"),
        (["--train.lrr", "1"], "did you mean 'lr'"),
        (["--train.Lr", "1"], "did you mean 'lr'"),  # case alone: too far for difflib
        (["--model.n_layers=2"], "did you mean 'n_layer'"),
        (["--train.lr"], "no value"),
        (["train.lr=1"], "--section.field"),
        (["--model", "tiny"], r"to choose a preset: --preset NAME or --model.preset NAME"),
        (["--train", "5"], r"set one field of the train section: --train.FIELD VALUE"),
        (["--max-steps", "5"], r"did you mean --train.max_steps\?"),
        (["--block_size=64"], r"did you mean --model.block_size\?"),
        # a dot in the value read as the section's: "unknown config section 'lr' in '--lr=0.001'"
        (["--lr=0.001"], r"did you mean --train.lr\?"),
        (["--model=gpt2.yaml"], r"to choose a preset: --preset NAME"),
    ],
)
def test_override_errors(args, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides({}, args)


def test_unknown_keys_suggest_the_closest(tmp_path):
    with pytest.raises(ValueError, match="train has no field 'warmup' .*did you mean 'warmup_steps'"):
        RunConfig.from_dict({"model": {"preset": "tiny"}, "train": {"warmup": 3}})
    with pytest.raises(ValueError, match="unknown config section 'dta'.*did you mean 'data'"):
        RunConfig.from_dict({"model": {"preset": "tiny"}, "dta": {}})
    with pytest.raises(ValueError, match="model has no field 'n_embed'.*did you mean 'n_embd'"):
        RunConfig.from_dict({"model": {"preset": "tiny", "n_embed": 3}})
    with pytest.raises(ValueError, match="'model' section"):
        RunConfig.from_dict({"train": {}})


def test_yaml_round_trip_and_string_floats(tmp_path):
    run = RunConfig(model=ModelConfig.from_name("tiny"), train=TrainConfig(lr=3e-4, sample_prompts=["x"]))
    path = run.to_yaml(tmp_path / "config.yaml")
    assert RunConfig.from_yaml(path) == run
    (tmp_path / "c2.yaml").write_text("model: {preset: demo, n_layer: 2}\ntrain:\n  lr: 3e-4\n  min_lr: 1e-5\n")
    run2 = RunConfig.from_yaml(tmp_path / "c2.yaml")
    assert run2.train.lr == 3e-4 and run2.model.n_layer == 2 and run2.model.norm == "rmsnorm"
    (tmp_path / "bad.yaml").write_text("model: {preset: tiny}\ntrain: {lr: abc}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: train.lr=.abc.: expected float"):  # the key as the file writes it
        RunConfig.from_yaml(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """The example configs the README names load as run configs (a typo in one would be the user's first error)."""
    cfg = RunConfig.from_yaml(path)
    assert cfg.model.n_layer > 0 and cfg.train.max_steps > 0 and cfg.data.source


def test_nested_overrides_set_one_key_of_a_mapping_field():
    """`--model.rope_scaling.factor 4` changes one key and keeps the others: the section's, else the preset's."""
    d = apply_overrides({"model": {"preset": "llama-small", "rope_scaling": {"type": "linear", "factor": 2.0}}},
                        ["--model.rope_scaling.factor", "4", "--model.extra.note.author=me"])
    assert d["model"]["rope_scaling"] == {"type": "linear", "factor": 4}
    assert d["model"]["extra"] == {"note": {"author": "me"}}
    run = RunConfig.from_dict(d)
    assert run.model.rope_scaling == {"type": "linear", "factor": 4.0} and run.model.extra["note"]["author"] == "me"
    # no rope_scaling yet: the override starts from the field's default (None -> a new mapping)
    d = apply_overrides({"model": {"preset": "llama-small"}}, ["--model.rope_scaling.type", "dynamic",
                                                               "--model.rope_scaling.factor", "2",
                                                               "--model.rope_scaling.original_max_position_embeddings",
                                                               "512"])
    assert RunConfig.from_dict(d).model.rope_scaling == {"type": "dynamic", "factor": 2.0,
                                                         "original_max_position_embeddings": 512}
    base = {"model": {"preset": "llama-small"}}
    assert apply_overrides(base, ["--model.rope_scaling.factor", "2"]) != base  # the input is left alone
    assert base == {"model": {"preset": "llama-small"}}


@pytest.mark.parametrize(("args", "needle"), [
    (["--model.n_layer.x", "1"], r"model.n_layer is not a mapping; give --model.n_layer VALUE"),
    (["--train.lr.x", "1"], "train.lr is not a mapping"),
    (["--model.rope_scalling.factor", "1"], "did you mean 'rope_scaling'"),
    (["--model.extra=5", "--model.extra.a", "1"], "model.extra is 5, not a mapping"),
    (["--model.extra.a=1", "--model.extra.a.b", "1"], "model.extra.a is 1, not a mapping"),
])
def test_nested_override_errors(args, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides({"model": {"preset": "tiny"}}, args)


def test_a_field_of_another_section_is_named_there():
    with pytest.raises(ValueError, match=r"model has no field 'gradient_checkpointing' \(it is a train field: "
                                         r"--train.gradient_checkpointing\)"):
        apply_overrides({}, ["--model.gradient_checkpointing", "true"])
    with pytest.raises(ValueError, match=r"train has no field 'n_layer' \(it is a model field: put it under model:\)"):
        RunConfig.from_dict({"model": {"preset": "tiny"}, "train": {"n_layer": 2}})


def test_a_run_config_needs_a_model_or_init_from():
    with pytest.raises(ValueError, match="needs a 'model' section .* or train.init_from"):
        RunConfig.from_dict({"train": {"lr": 1e-3}})


@pytest.mark.parametrize("override, note", [(["--data.vocab_size", "None"], "(YAML writes None as null)"),
                                            (["--train.compile", "1"], "(true or false)"),
                                            (["--model.bias", "yes please"], "(true or false)")])
def test_a_value_typed_as_python_writes_it_says_how_yaml_does(override, note) -> None:
    """`--data.vocab_size None` said "expected int or None", contradicting what was typed: YAML reads None as text."""
    with pytest.raises(ValueError) as e:
        RunConfig.from_dict(apply_overrides({"model": {"preset": "tiny"}}, override))
    assert note in str(e.value)


@pytest.mark.parametrize("field", ["lr", "weight_decay", "eps", "grad_clip", "max_minutes"])
def test_an_int_past_floats_range_is_named_not_an_overflow_error(field):
    """`lr: 1000...0` (an int YAML reads exactly) raised OverflowError from math.isfinite, naming nothing."""
    with pytest.raises(ValueError, match=rf"^TrainConfig.{field}=1000+: expected float.* \(this int is past float's "
                                         r"range\)$"):
        TrainConfig(**{field: 10**400})


def test_numpy_scalars_train_and_save(tmp_path):
    """np.int64 was refused as "expected int"; an np.float64 lr passed and then failed YAML's dump of config.yaml."""
    import numpy as np

    run = RunConfig(model=ModelConfig.from_name("tiny"),
                    train=TrainConfig(max_steps=np.int64(5), lr=np.float64(3e-4), beta2=np.float32(0.5),
                                      compile=np.bool_(True)),
                    data=DataConfig(val_fraction=np.float64(0.2), vocab_size=np.int64(300)))
    assert (run.train.max_steps, run.train.lr, run.train.beta2, run.data.vocab_size) == (5, 3e-4, 0.5, 300)
    assert type(run.train.lr) is float and run.train.compile is True
    assert RunConfig.from_yaml(run.to_yaml(tmp_path / "config.yaml")) == run


@pytest.mark.parametrize("data, needle", [
    ({"model": {"preset": "tiny"}, 1: {}}, "unknown config section 1; valid sections"),
    ({"model": {"preset": "tiny"}, "train": {1: 2}}, "train has no field 1; valid fields"),
    ({"model": {"preset": "tiny", 2: 3}}, "model has no field 2; valid fields"),
    # `preset:` left empty trained ModelConfig's defaults (GPT-2's 124M shape) with the other fields, silently
    ({"model": {"preset": None, "n_layer": 2}}, "a preset is named by a string, got None"),
])
def test_run_config_keys_that_are_not_names_are_named(data, needle):
    """A YAML key such as `1:` was a TypeError from difflib."""
    with pytest.raises(ValueError, match=needle):
        RunConfig.from_dict(data)


def test_overrides_of_text_fields_keep_the_text_typed():
    """YAML 1.1 read `[yes, 2024]` as [True, 2024], a date-looking item as a date, and ` #1.txt` as a comment: the
    Python API's overrides (nl.train(overrides=...)) take text fields as typed, as the CLI does."""
    from neurallayers.training.config import apply_overrides

    out = apply_overrides({}, ["--train.sample_prompts", "[yes, 2024, 2024-01-01, 'on', \"a, b\"]",
                               "--data.source", "notes #1.txt", "--train.init_from", "null", "--train.lr", "3e-4",
                               "--train.compile", "yes"])
    assert out["train"]["sample_prompts"] == ["yes", "2024", "2024-01-01", "on", "a, b"]
    assert out["data"]["source"] == "notes #1.txt" and out["train"]["init_from"] is None
    assert out["train"]["lr"] == "3e-4" and out["train"]["compile"] is True  # typed fields keep YAML's reading


def test_number_overrides_read_the_decimal_typed():
    """YAML 1.1 read `--train.seed 010` as 8 (octal) and `--train.max_steps 1:30` as 90 (base 60)."""
    from neurallayers.training.config import RunConfig, apply_overrides

    out = apply_overrides({}, ["--train.seed", "010", "--train.max_steps", "08", "--train.lr", "1e-3",
                               "--model.n_layer", "+2"])
    assert out["train"]["seed"] == 10 and out["train"]["max_steps"] == 8 and out["model"]["n_layer"] == 2
    with pytest.raises(ValueError, match=r"TrainConfig.max_steps='1:30'"):
        RunConfig.from_dict(apply_overrides({}, ["--model.preset", "tiny", "--train.max_steps", "1:30"]))


@pytest.mark.parametrize(("value", "names"), [
    ("tensorboard,mlflow", ["tensorboard", "mlflow"]), ("tensorboard", ["tensorboard"]),
    (" tensorboard , wandb ", ["tensorboard", "wandb"]), ("[mlflow, wandb]", ["mlflow", "wandb"]), ("", []),
    ("[]", []), ("none", []),  # transformers' --report_to none
])
def test_loggers_override_takes_a_comma_list(value, names):
    """`--train.loggers tensorboard,mlflow` (transformers' `--report_to`, litgpt's `--logger_name`: one name or a comma
    list) was refused: "expected a list of str"; only the YAML list `[tensorboard, mlflow]` passed."""
    out = apply_overrides({}, ["--train.loggers", value])
    assert out["train"]["loggers"] == names
    assert RunConfig.from_dict(apply_overrides({"model": {"preset": "tiny"}}, ["--train.loggers", value])
                               ).train.loggers == names


def test_a_misspelt_logger_in_a_comma_list_is_named():
    with pytest.raises(ValueError, match=r"loggers.*unknown \['tensorbord'\]; allowed: tensorboard, mlflow, wandb"):
        RunConfig.from_dict(apply_overrides({"model": {"preset": "tiny"}}, ["--train.loggers", "mlflow,tensorbord"]))


@pytest.mark.parametrize("args, message", [
    (["--train.max_steps", 3], r"^overrides\[1\]=3: each item must be a str, as typed on the command line \('3'\)$"),
    (["--train.lr", 3e-4], r"^overrides\[1\]=0\.0003: .*\('0\.0003'\)$"),
    (["--train.compile", True], r"^overrides\[1\]=True: .*\('true'\)$"),
    (["--train.max_minutes", None], r"^overrides\[1\]=None: .*\('null'\)$"),
    ([Path("--train.max_steps=3")], r"^overrides\[0\]=PosixPath\(.*\): each item must be a str"),
    ({"--train.max_steps": "3"}, r"^overrides=\{.*\}: give a list of str, e.g. \['--train.lr', '3e-4'\]$"),
    ("--train.max_steps 3", r"^overrides='--train.max_steps 3': give a list, e.g. \['--train.max_steps', '3'\]$"),
])
def test_overrides_of_another_type_are_named_in_one_line(args, message):
    """`nl.train(cfg, out, overrides=["--train.max_steps", 3])` (a value as Python writes it) was "AttributeError: 'int'
    object has no attribute 'read'" from deep in YAML's reader, a dict a KeyError and a string read letter by letter."""
    with pytest.raises(ValueError, match=message):
        apply_overrides({}, args)


def test_overrides_in_a_tuple_apply_as_in_a_list():
    want = apply_overrides({}, ["--train.max_steps", "3", "--model.n_layer=2"])
    assert apply_overrides({}, ("--train.max_steps", "3", "--model.n_layer=2")) == want
    assert want == {"train": {"max_steps": 3}, "model": {"n_layer": 2}}


def test_sections_given_as_config_objects_are_read_as_their_fields():
    """nl.train({"model": ModelConfig.from_name("tiny"), "train": TrainConfig(...)}, out): the objects the API builds
    were refused as "config section 'model' must be a mapping, got ModelConfig"."""
    model, train = ModelConfig.from_name("tiny").replace(n_layer=1), TrainConfig(lr=3e-4, max_steps=7)
    want = RunConfig.from_dict({"model": model.to_dict(), "train": {"lr": 3e-4, "max_steps": 7}})
    got = RunConfig.from_dict({"model": model, "train": train, "data": DataConfig()})
    assert got == want and got.model == model and got.train == train
    assert RunConfig.from_dict(apply_overrides({"model": model}, ["--model.n_layer", "3"])).model.n_layer == 3
    with pytest.raises(ValueError, match=r"^config section 'train' is a DataConfig: give a TrainConfig or a mapping of "
                                         r"its fields$"):
        RunConfig.from_dict({"model": model, "train": DataConfig()})


@pytest.mark.parametrize("section, value, message", [
    ("model", {"preset": "tiny"}, r"^RunConfig.model=\{'preset': 'tiny'\}: expected a ModelConfig \(a mapping of its "
                                  r"fields: RunConfig.from_dict\(\{'model': \.\.\.\}\)\)$"),
    ("train", None, r"^RunConfig.train=None: expected a TrainConfig$"),
    ("data", TrainConfig(), r"^RunConfig.data=TrainConfig\(.*\): expected a DataConfig$"),
])
def test_a_run_config_built_with_a_section_of_another_type_is_named(section, value, message):
    """RunConfig(model={"preset": "tiny"}) built, then failed in training as "AttributeError: 'dict' object has no
    attribute 'causal'"."""
    sections = {"model": ModelConfig.from_name("tiny"), section: value}
    with pytest.raises(ValueError, match=message):
        RunConfig(**sections)

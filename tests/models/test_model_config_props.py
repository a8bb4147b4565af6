"""ModelConfig as data, by property: random valid configs come back exactly from YAML, from a run directory and from
`--model.field value` overrides in every spelling a field type takes; a bad value names its field and what it may be;
an unknown key names the closest field."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from neurallayers.api import folder_model_config
from neurallayers.config import ModelConfig
from neurallayers.training.config import RunConfig, apply_overrides

FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), max_size=8)  # what YAML can read
FLOATS = st.floats(1e-12, 0.5, allow_subnormal=False)
YAML_DATA = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=3), max_leaves=6)


@st.composite
def valid_configs(draw) -> ModelConfig:
    """Valid configs over every field: decoders and encoders, derived fields left to derivation or given."""
    causal = draw(st.booleans())
    n_head = draw(st.sampled_from([1, 2, 4]))
    position = draw(st.sampled_from(["learned", "sinusoidal", "rope", "none"] + (["alibi"] if causal else [])))
    placement = draw(st.sampled_from(["pre", "post"]))
    fields = dict(
        name=draw(TEXT), causal=causal, vocab_size=draw(st.integers(1, 300)),
        block_size=draw(st.integers(1, 64)), n_layer=draw(st.integers(1, 4)), n_head=n_head, n_embd=4 * n_head,
        n_kv_head=draw(st.sampled_from([None, n_head, 1])), head_dim=draw(st.sampled_from([None, 4, 6])),
        intermediate_size=draw(st.one_of(st.none(), st.integers(1, 64))),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])), norm_eps=draw(FLOATS), norm_placement=placement,
        mlp=draw(st.sampled_from(["gelu", "swiglu", "geglu"])), gelu_approx=draw(st.sampled_from(["tanh", "none"])),
        position=position, rope_theta=draw(st.floats(1.0, 1e6)), bias=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()), layer_scale=draw(st.one_of(st.none(), FLOATS)),
        drop_path=draw(FLOATS), dropout=draw(FLOATS), attn_dropout=draw(FLOATS),
        attention=draw(st.sampled_from(["sdpa", "eager"])), init_std=draw(FLOATS),
        scale_residual_init=draw(st.booleans()),
        extra=draw(st.dictionaries(st.text(max_size=5), YAML_DATA, max_size=3)),
    )
    if position == "rope":
        fields["rope_scaling"] = draw(st.sampled_from([None, {"type": "linear", "factor": 2.0},
                                                        {"type": "dynamic", "factor": 3.5,
                                                         "original_max_position_embeddings": 4}]))
    if causal:
        fields["sliding_window"] = draw(st.one_of(st.none(), st.integers(1, 64)))
        if placement == "post":
            fields["final_norm"] = draw(st.sampled_from([None, True, False]))
    else:
        fields.update(type_vocab_size=draw(st.integers(0, 3)), pooler=draw(st.booleans()),
                      num_labels=draw(st.integers(1, 5)), head=draw(st.sampled_from(
                          ["none", "mlm", "sequence_classification", "token_classification"])),
                      pad_token_id=draw(st.one_of(st.none(), st.integers(0, fields["vocab_size"] - 1))))
    return ModelConfig(**fields)


@PROPS
@given(cfg=valid_configs())
def test_random_valid_configs_round_trip_through_yaml_and_a_run_directory(tmp_path_factory, cfg):
    folder = tmp_path_factory.mktemp("run")
    cfg.save(folder / "model.yaml")
    RunConfig(model=cfg).to_yaml(folder / "config.yaml")
    for back in (ModelConfig.from_file(folder / "model.yaml"), ModelConfig.from_checkpoint(folder),
                 RunConfig.from_yaml(folder / "config.yaml").model, folder_model_config(folder)):
        assert back == cfg and back.to_dict() == cfg.to_dict()
        assert back.replace(n_embd=8 * cfg.n_head) == cfg.replace(n_embd=8 * cfg.n_head)  # derives the same fields


_TRUE, _FALSE = ["true", "True", "TRUE", "yes", "on"], ["false", "False", "no", "off"]


def _spellings(value: object) -> list[str]:
    """How a person types `value` after --model.field: YAML 1.1's bool and null words, floats as Python and YAML write
    them (YAML reads `1e-05` as a string, the config makes it a float), mappings in YAML's flow style."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if value is None:
        return ["null", "~", "Null"]
    if isinstance(value, float):
        return [repr(value), yaml.safe_dump(value).splitlines()[0]]
    if isinstance(value, str):  # JSON's string is YAML's double-quoted one: every character, typed as text
        plain = value.isidentifier() and yaml.safe_load(value) == value
        return [json.dumps(value, ensure_ascii=False)] + ([value] if plain else [])
    return [yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()]


@PROPS
@given(cfg=valid_configs(), pick=st.randoms(use_true_random=False))
def test_overrides_of_every_field_in_every_spelling_give_the_config_back(cfg, pick):
    args = []
    for name, value in cfg.to_dict().items():
        args += [f"--model.{name}", pick.choice(_spellings(value))]
    back = RunConfig.from_dict(apply_overrides({}, args)).model
    assert back == cfg and back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(("field", "text", "want"), [
    ("norm_eps", "1e-5", 1e-5), ("norm_eps", "1E-5", 1e-5), ("rope_theta", "5e5", 5e5), ("layer_scale", "1e-4", 1e-4),
    ("dropout", ".1", 0.1), ("sliding_window", "null", None), ("layer_scale", "~", None), ("n_layer", "+3", 3),
])
def test_overrides_of_numbers_and_none_as_typed(field, text, want):
    model = RunConfig.from_dict(apply_overrides({}, ["--model.preset", "tiny", f"--model.{field}", text])).model
    assert getattr(model, field) == want and type(getattr(model, field)) is type(want)


def _single_bad_values(draw) -> tuple[str, object]:
    field = draw(st.sampled_from(FIELDS))
    value = draw(st.one_of(st.none(), st.booleans(), st.integers(-3, 2**70), st.floats(), st.text(max_size=4),
                           st.sampled_from(["None", "1e-5", "rope", [1], {"type": "linear"}, ("a",), {1, 2}])))
    return field, value


@PROPS
@given(data=st.data())
def test_an_invalid_value_names_its_field_and_what_is_allowed(data):
    field, value = _single_bad_values(data.draw)
    try:
        ModelConfig(**{field: value})
    except ValueError as e:
        message = str(e)
    else:
        return
    # the field, or the one it must agree with naming it: "ModelConfig.n_embd=768: must be divisible by n_head=5"
    assert re.match(rf"ModelConfig\.{field}\b", message) or re.search(rf"\b{field}=", message), message
    assert re.search(r"\b(must|expected|needs|leave|the most)\b", message), message  # what the field may hold


@pytest.mark.parametrize(("fields", "allowed"), [
    (dict(pooler=True), "a decoder needs False"),
    (dict(type_vocab_size=2), "a decoder needs 0"),
    (dict(vocab_size=10, pad_token_id=10), "in [0, vocab_size=10), or None"),
])
def test_errors_that_named_no_allowed_value_name_it(fields, allowed):
    """"pooler=True: is an encoder's (causal=False)" and "pad_token_id=10: must be a valid token id" said what was
    wrong, not what the field may be."""
    with pytest.raises(ValueError) as err:
        ModelConfig(**fields)
    assert allowed in str(err.value)


@PROPS
@given(field=st.sampled_from([f for f in FIELDS if len(f) >= 5]), at=st.integers(0, 100),
       edit=st.sampled_from(["drop", "double", "upper"]))
def test_an_unknown_key_names_the_closest_field(field, at, edit):
    i = at % len(field)
    key = {"drop": field[:i] + field[i + 1:], "double": field[:i] + field[i] + field[i:],
           "upper": field[:i] + field[i].upper() + field[i + 1:]}[edit]
    assume(key not in FIELDS)
    for call in (lambda: ModelConfig.from_dict({key: 1}), lambda: RunConfig.from_dict({"model": {key: 1}}),
                 lambda: apply_overrides({}, [f"--model.{key}", "1"])):
        with pytest.raises(ValueError) as err:
            call()
        assert f"no field '{key}' (did you mean '" in str(err.value), str(err.value)


def test_extra_holds_what_config_yaml_gives_back(tmp_path):
    """A tuple in `extra` came back from config.yaml a list: resuming the run failed with "the model config differs
    from the saved one". NaN never equals itself after the round trip, and an object YAML cannot write."""
    cfg = ModelConfig.from_name("tiny").replace(extra={"source": ("a", ("b", 1))})
    assert cfg.extra == {"source": ["a", ["b", 1]]}
    RunConfig(model=cfg).to_yaml(tmp_path / "config.yaml")
    assert ModelConfig.from_checkpoint(tmp_path) == cfg
    for bad, why in (({"score": float("nan")}, "extra['score']=nan must be YAML data"),
                     ({"x": [object()]}, "extra['x'][0]=<object object at"),
                     ({("a", "b"): 1}, "the keys of extra must be str, int or float, not ('a', 'b')")):
        with pytest.raises(ValueError, match=r"^ModelConfig\.extra=") as err:
            ModelConfig(extra=bad)
        assert why in str(err.value)

"""ModelConfig under random and adversarial values (hypothesis): every field either builds a valid config or is one
ValueError naming a field; every valid config round-trips through YAML; typos at any level name the right field;
YAML's spellings of numbers, booleans and null read as documented."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from neurallayers.config import ModelConfig
from neurallayers.presets import PRESETS

FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
ROPE_KEYS = ["type", "rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["1e-4", "128", "inf", "nan", "-1", "yes", "rope", "post", "rmsnorm", "swiglu", "linear", "llama3",
                     "dynamic"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.one_of(st.sampled_from(ROPE_KEYS), st.text(max_size=6), st.integers()), SCALARS,
                                   max_size=5))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def _finite(v: object) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _check_valid(cfg: ModelConfig, tmp_path) -> None:
    """What a config that built must hold: finite numbers, and the same config back from a dict and from YAML."""
    for name in ("norm_eps", "init_std", "rope_theta", "dropout", "attn_dropout", "drop_path"):
        assert _finite(getattr(cfg, name)), name
    assert cfg.layer_scale is None or _finite(cfg.layer_scale)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save(tmp_path / "fuzz.yaml")
    back = ModelConfig.from_file(tmp_path / "fuzz.yaml")
    assert back == cfg and back.to_dict() == cfg.to_dict()


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4), rope=st.booleans())
def test_any_values_build_a_valid_config_or_name_a_field(tmp_path_factory, fields, rope):
    if rope:
        fields = {"position": "rope", **fields}
    try:
        cfg = ModelConfig(**fields)
    except ValueError as e:
        field = str(e).removeprefix("ModelConfig.").split("=")[0].split(".")[0]
        assert str(e).startswith("ModelConfig.") and field in FIELDS, str(e)
        assert "\n" not in str(e)
        return
    _check_valid(cfg, tmp_path_factory.mktemp("cfg"))


ARCH = st.fixed_dictionaries({
    "causal": st.booleans(), "n_layer": st.integers(1, 4), "n_head": st.sampled_from([1, 2, 4, 8]),
    "kv_div": st.sampled_from([1, 2, 4, 8]), "head": st.sampled_from([8, 16]),
    "norm": st.sampled_from(["layernorm", "rmsnorm"]), "norm_placement": st.sampled_from(["pre", "post"]),
    "mlp": st.sampled_from(["gelu", "swiglu", "geglu"]),
    "position": st.sampled_from(["learned", "sinusoidal", "rope", "alibi", "none"]), "bias": st.booleans(),
    "tie_embeddings": st.booleans(), "layer_scale": st.one_of(st.none(), st.floats(1e-6, 10)),
    "norm_eps": st.floats(1e-12, 1e-2), "final_norm": st.one_of(st.none(), st.booleans()),
    "scaling": st.sampled_from([None, {"type": "linear", "factor": 2.0}, {"type": "dynamic", "factor": 4.0,
                                "original_max_position_embeddings": 8}]),
})


@FUZZ
@given(arch=ARCH)
def test_random_valid_configs_round_trip_through_yaml(tmp_path_factory, arch):
    assume(arch["causal"] or arch["position"] != "alibi")  # an encoder has no ALiBi
    n_head = arch["n_head"]
    fields = dict(causal=arch["causal"], vocab_size=97, block_size=32, n_layer=arch["n_layer"], n_head=n_head,
                  n_kv_head=max(1, n_head // arch["kv_div"]), n_embd=n_head * arch["head"], norm=arch["norm"],
                  norm_placement=arch["norm_placement"], mlp=arch["mlp"], position=arch["position"],
                  bias=arch["bias"], tie_embeddings=arch["tie_embeddings"], layer_scale=arch["layer_scale"],
                  norm_eps=arch["norm_eps"])
    if arch["causal"] and arch["norm_placement"] == "post":  # the one stack with a choice (GPT-1 has no final norm)
        fields["final_norm"] = arch["final_norm"]
    if arch["position"] == "rope":
        fields["rope_scaling"] = arch["scaling"]
    if not arch["causal"]:
        fields.update(type_vocab_size=2, pooler=True, head="mlm")
    _check_valid(ModelConfig(**fields), tmp_path_factory.mktemp("cfg"))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_a_run_config(tmp_path, name):
    from neurallayers.training.config import RunConfig

    cfg = ModelConfig.from_name(name)
    RunConfig(model=cfg).to_yaml(tmp_path / "config.yaml")
    assert RunConfig.from_yaml(tmp_path / "config.yaml").model == cfg == ModelConfig.from_checkpoint(tmp_path)


def _typo(name: str) -> str:
    """The name with two inner letters swapped, the commonest slip of a typist."""
    i = len(name) // 2
    return name[:i - 1] + name[i] + name[i - 1] + name[i + 1:]


@pytest.mark.parametrize("field", [f for f in FIELDS if len(f) >= 5])
def test_a_typo_of_any_field_names_it_at_top_level_and_in_a_run_config(field):
    from neurallayers.training.config import RunConfig

    typo = _typo(field)
    assert typo != field
    with pytest.raises(ValueError, match=rf"no field '{typo}' \(did you mean '{field}'\?\)"):
        ModelConfig.from_dict({typo: 1})
    with pytest.raises(ValueError, match=rf"no field '{typo}' \(did you mean '{field}'\?\)"):
        ModelConfig.from_name("tiny").replace(**{typo: 1})
    with pytest.raises(ValueError, match=rf"'{typo}'.*did you mean '{field}'"):
        RunConfig.from_dict({"model": {"preset": "tiny", typo: 1}})


@pytest.mark.parametrize("key", ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"])
def test_a_typo_inside_rope_scaling_names_the_key(key):
    scaling = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    scaling[_typo(key)] = scaling.pop(key)
    with pytest.raises(ValueError, match=rf"did you mean '{key}' for '{_typo(key)}'\?"):
        ModelConfig(position="rope", rope_scaling=scaling)


@pytest.mark.parametrize(("text", "field", "want"), [
    ("norm_eps: 1e-4", "norm_eps", 1e-4),  # YAML 1.1 reads these as strings: floats by the field's type
    ("norm_eps: '1e-4'", "norm_eps", 1e-4),
    ("rope_theta: 5e5", "rope_theta", 5e5),
    ("layer_scale: 1e-1", "layer_scale", 0.1),
    ("layer_scale: null", "layer_scale", None),
    ("bias: no", "bias", False),
    ("tie_embeddings: yes", "tie_embeddings", True),
    ("n_kv_head: null", "n_kv_head", 2),  # null: derived
    ("final_norm: null", "has_final_norm", True),
    ("norm_placement: post\nfinal_norm: false", "final_norm", False),
])
def test_yaml_spellings_that_read(tmp_path, text, field, want):
    (tmp_path / "m.yaml").write_text(f"preset: tiny\n{text}\n")
    got = getattr(ModelConfig.from_file(tmp_path / "m.yaml"), field)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("text", "message"), [
    ("n_layer: '128'", "ModelConfig.n_layer='128': expected int"),  # an int is never guessed from a string
    ("block_size: 1e3", "ModelConfig.block_size='1e3': expected int"),
    ("bias: 'no'", "ModelConfig.bias='no': expected bool (true or false)"),
    ("n_layer: null", "ModelConfig.n_layer=None: expected int"),
    ("norm_eps: null", "ModelConfig.norm_eps=None: expected float"),
    ("norm_eps: .inf", "ModelConfig.norm_eps=inf: must be > 0 and finite"),
    ("norm_eps: 'inf'", "ModelConfig.norm_eps=inf: must be > 0 and finite"),
    ("dropout: .nan", "ModelConfig.dropout=nan: must be in [0, 1)"),
    ("extra: null", "ModelConfig.extra=None: expected dict"),
])
def test_yaml_spellings_that_are_refused_name_the_field(tmp_path, text, message):
    (tmp_path / "m.yaml").write_text(f"preset: tiny\n{text}\n")
    with pytest.raises(ValueError) as err:
        ModelConfig.from_file(tmp_path / "m.yaml")
    assert str(err.value) == message


def test_yaml_text_round_trip_of_a_float_field_keeps_its_value():
    cfg = ModelConfig.from_name("tiny").replace(norm_eps=1e-12, init_std=0.02)
    assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg

"""Stage configs: precedence, ``--set`` parsing, type checks, validation (rlhfkit.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from rlhfkit.config import (
    SFTConfig,
    TrainConfig,
    build_config,
    from_dict,
    parse_overrides,
    read_yaml,
    to_yaml,
)
from rlhfkit.errors import EX_CONFIG, EX_NOINPUT, ConfigError, InputNotFoundError

# The three keys SFTConfig.validate() insists on.
REQUIRED = {"model": "tiny", "data": "sft.jsonl", "out": "runs/a"}


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def sft(overrides: list[str] | None = None, **cli) -> SFTConfig:
    return build_config(SFTConfig, cli={**REQUIRED, **cli}, overrides=overrides)


# ---------------------------------------------------------------- precedence


def test_defaults_when_nothing_is_given() -> None:
    cfg = sft()
    assert cfg.learning_rate == 2e-5
    assert cfg.batch_size == 8
    assert cfg.scheduler == "cosine"
    assert cfg.template == "auto"
    assert cfg.lora_target_modules == ["all-linear"]
    assert cfg.eval_data is None
    assert cfg.packing is False


def test_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {**REQUIRED, "batch_size": 4, "learning_rate": 1e-4})
    cfg = build_config(SFTConfig, yaml_path=path)
    assert cfg.batch_size == 4
    assert cfg.learning_rate == 1e-4
    assert cfg.epochs == 1.0  # untouched default


def test_precedence_defaults_yaml_cli_set(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "c.yaml",
        {**REQUIRED, "batch_size": 4, "learning_rate": 1e-4, "seed": 7, "epochs": 3},
    )
    cfg = build_config(
        SFTConfig,
        yaml_path=path,
        cli={"batch_size": 16, "learning_rate": 5e-4, "seed": None},
        overrides=["learning_rate=0.01"],
    )
    assert cfg.epochs == 3.0  # YAML beats the default
    assert cfg.batch_size == 16  # CLI beats YAML
    assert cfg.seed == 7  # a CLI option left as None is "not given": YAML stays
    assert cfg.learning_rate == 0.01  # --set beats the CLI
    assert cfg.max_length == 1024  # default where nobody set it


def test_later_set_wins_over_earlier_set() -> None:
    cfg = sft(["seed=1", "seed=2"])
    assert cfg.seed == 2


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n", encoding="utf-8")
    assert read_yaml(path) == {}
    cfg = build_config(SFTConfig, yaml_path=path, cli=REQUIRED)
    assert cfg.batch_size == 8


# ---------------------------------------------------------------- --set parsing


def test_parse_overrides_yaml_scalars() -> None:
    got = parse_overrides(
        ["batch_size=4", "warmup_ratio=0.1", "packing=true", "cpu=no", "name=abc", "x=null"]
    )
    assert got == {
        "batch_size": 4,
        "warmup_ratio": 0.1,
        "packing": True,
        "cpu": False,
        "name": "abc",
        "x": None,
    }


def test_parse_overrides_strips_key_and_keeps_equals_in_value() -> None:
    assert parse_overrides([" template =a=b"]) == {"template": "a=b"}
    assert parse_overrides(["template="]) == {"template": ""}
    assert parse_overrides(None) == {}


@pytest.mark.parametrize("pair", ["learning_rate", "=3", " =3"])
def test_parse_overrides_needs_key_equals_value(pair: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([pair])


def test_parse_overrides_bad_yaml() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["lora_target_modules=[a, b"])


def test_parse_overrides_keeps_non_yaml_text() -> None:
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert parse_overrides([f"template={jinja}"]) == {"template": jinja}
    assert sft(["out=2024-01-01"]).out == "2024-01-01"


def test_set_scientific_string_coerces_to_float() -> None:
    # PyYAML (YAML 1.1) reads "1e-3" as a string; the float field coerces it.
    assert parse_overrides(["learning_rate=1e-3"]) == {"learning_rate": "1e-3"}
    cfg = sft(["learning_rate=1e-3"])
    assert cfg.learning_rate == 0.001
    assert isinstance(cfg.learning_rate, float)


def test_set_int_into_float_and_integral_float_into_int() -> None:
    cfg = sft(["epochs=2", "batch_size=4.0", "seed='13'"])
    assert cfg.epochs == 2.0 and isinstance(cfg.epochs, float)
    assert cfg.batch_size == 4 and isinstance(cfg.batch_size, int)
    assert cfg.seed == 13


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("false", False), ("yes", True), ("no", False), ("'1'", True), ("'0'", False)],
)
def test_set_bools(raw: str, expected: bool) -> None:
    assert sft([f"packing={raw}"]).packing is expected


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("0", False)])
def test_set_bool_as_unquoted_digit(raw: str, expected: bool) -> None:
    assert sft([f"packing={raw}"]).packing is expected


def test_set_list_as_comma_string() -> None:
    cfg = sft(["lora_target_modules=q_proj, v_proj,,o_proj "])
    assert cfg.lora_target_modules == ["q_proj", "v_proj", "o_proj"]


def test_set_list_as_yaml_list() -> None:
    assert sft(["lora_target_modules=[q_proj, k_proj]"]).lora_target_modules == [
        "q_proj",
        "k_proj",
    ]


def test_optional_field_accepts_null_and_string() -> None:
    assert sft(["eval_data=null"]).eval_data is None
    assert sft(["eval_data=dev.jsonl"]).eval_data == "dev.jsonl"


def test_number_into_string_field() -> None:
    assert sft(["split=2024"]).split == "2024"


# ---------------------------------------------------------------- unknown keys, wrong types


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as info:
        sft(["learnig_rate=1e-3"])
    assert str(info.value) == (
        "unknown key 'learnig_rate' for SFTConfig; did you mean 'learning_rate'?"
    )
    assert info.value.exit_code == EX_CONFIG


def test_unknown_key_without_a_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        sft(["zzzzzz=1"])
    assert str(info.value) == "unknown key 'zzzzzz' for SFTConfig"


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {**REQUIRED, "batch_szie": 4})
    with pytest.raises(
        ConfigError, match=r"unknown key 'batch_szie' for SFTConfig; did you mean 'batch_size'\?"
    ):
        build_config(SFTConfig, yaml_path=path)


def test_nested_style_key_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train\.learning_rate'"):
        sft(["train.learning_rate=0.1"])


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("batch_size=abc", "key 'batch_size': expected an integer, got 'abc'"),
        ("batch_size=2.5", "key 'batch_size': expected an integer, got 2.5"),
        ("batch_size=true", "key 'batch_size': expected an integer, got True"),
        ("learning_rate=fast", "key 'learning_rate': expected a number, got 'fast'"),
        ("learning_rate=true", "key 'learning_rate': expected a number, got True"),
        ("packing=maybe", "key 'packing': expected true or false, got 'maybe'"),
        ("packing=2", "key 'packing': expected true or false, got 2"),
        ("model=[a, b]", "key 'model': expected a string, got ['a', 'b']"),
        ("model=true", "key 'model': expected a string, got True"),
        ("lora_target_modules=3", "key 'lora_target_modules': expected a list, got 3"),
        ("eval_data=[1]", "key 'eval_data': expected a string, got [1]"),
        ("max_length=null", "key 'max_length': expected an integer, got None"),
    ],
)
def test_wrong_type_names_the_key(pair: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        sft([pair])
    assert str(info.value) == message


def test_wrong_type_in_list_item_names_the_key() -> None:
    with pytest.raises(ConfigError, match="key 'lora_target_modules': expected a string, got True"):
        sft(["lora_target_modules=[q_proj, true]"])


def test_from_dict_without_validation() -> None:
    cfg = from_dict(TrainConfig, {"out": "x", "batch_size": "3"})
    assert cfg == TrainConfig(out="x", batch_size=3)


# ---------------------------------------------------------------- validate()


@pytest.mark.parametrize(
    ("pair", "key"),
    [
        ("batch_size=0", "batch_size"),
        ("grad_accum=0", "grad_accum"),
        ("log_every=0", "log_every"),
        ("keep_checkpoints=0", "keep_checkpoints"),
        ("learning_rate=0", "learning_rate"),
        ("learning_rate=-1", "learning_rate"),
        ("warmup_ratio=1", "warmup_ratio"),
        ("warmup_ratio=-0.1", "warmup_ratio"),
        ("precision=fp8", "precision"),
        ("max_length=1", "max_length"),
        ("lora_r=-1", "lora_r"),
        ("eval_fraction=1", "eval_fraction"),
    ],
)
def test_validate_rejects_bad_values(pair: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^key '{key}': "):
        sft([pair])


@pytest.mark.parametrize(
    ("pair", "key"),
    [("learning_rate=.nan", "learning_rate"), ("epochs=.nan", "epochs"), ("epochs=.inf", "epochs")],
)
def test_validate_rejects_non_finite_numbers(pair: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        sft([pair])


def test_validate_batch_size_zero_message() -> None:
    with pytest.raises(ConfigError) as info:
        sft(["batch_size=0"])
    assert str(info.value) == "key 'batch_size': expected an integer >= 1, got 0"


def test_validate_bad_scheduler_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        sft(["scheduler=step"])
    assert str(info.value) == (
        "key 'scheduler': expected one of cosine, linear, constant, got 'step'"
    )


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_validate_accepts_each_scheduler(scheduler: str) -> None:
    assert sft([f"scheduler={scheduler}"]).scheduler == scheduler


def test_validate_epochs_zero_needs_max_steps() -> None:
    with pytest.raises(ConfigError, match="key 'epochs'"):
        sft(["epochs=0"])
    assert sft(["epochs=0", "max_steps=5"]).max_steps == 5


@pytest.mark.parametrize("key", ["model", "data", "out"])
def test_validate_missing_required_key(key: str) -> None:
    cli = {k: v for k, v in REQUIRED.items() if k != key}
    with pytest.raises(ConfigError, match=f"^key '{key}': expected .*got nothing"):
        build_config(SFTConfig, cli=cli)


def test_train_config_validate_needs_out() -> None:
    with pytest.raises(ConfigError, match="key 'out'"):
        build_config(TrainConfig)
    assert build_config(TrainConfig, cli={"out": "o"}).out == "o"


# ---------------------------------------------------------------- read_yaml


def test_read_yaml_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputNotFoundError, match="no such file") as info:
        read_yaml(missing)
    assert info.value.exit_code == EX_NOINPUT
    with pytest.raises(InputNotFoundError):
        build_config(SFTConfig, yaml_path=missing, cli=REQUIRED)


def test_read_yaml_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        read_yaml(tmp_path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int"), ("hi\n", "str")]
)
def test_read_yaml_non_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"expected a mapping of key: value, got {kind}"):
        read_yaml(path)


def test_read_yaml_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)


# ---------------------------------------------------------------- to_yaml


def test_to_yaml_round_trip(tmp_path: Path) -> None:
    cfg = sft(
        [
            "learning_rate=3e-4",
            "lora_target_modules=q_proj,v_proj",
            "packing=true",
            "eval_data=dev.jsonl",
            "scheduler=linear",
        ]
    )
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg), encoding="utf-8")
    again = build_config(SFTConfig, yaml_path=path)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_to_yaml_round_trip_defaults_with_null(tmp_path: Path) -> None:
    cfg = sft()
    text = to_yaml(cfg)
    assert "eval_data: null" in text
    assert list(yaml.safe_load(text)) == [f.name for f in dataclasses.fields(SFTConfig)]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    assert build_config(SFTConfig, yaml_path=path) == cfg

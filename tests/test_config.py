"""Typed config: YAML + overrides, validated once, every mistake names its key and exits 2."""
from pathlib import Path

import pytest

from srmir.cli import main
from srmir.config import Config, load_config
from srmir.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["demo", "tiny", "h100_8x_8b", "h100_2node_8b"])
def test_shipped_configs_load(name, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # ds_configs/ paths are relative to the repo root
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert (cfg.rollout.prompts_per_step * cfg.grpo.group_size) % cfg.train.micro_batch_size == 0


def test_overrides_are_typed():
    cfg = load_config(None, ["grpo.beta=0.1", "rewards.weights=[1, 2]", "train.zero_stage=3",
                             "model.reference=null", "rewards.strategy=categorized", "train.lr=3e-6"])
    assert cfg.grpo.beta == 0.1 and cfg.rewards.weights == [1.0, 2.0] and cfg.train.zero_stage == 3
    assert cfg.model.reference is None and cfg.rewards.strategy == "categorized"
    assert cfg.train.lr == 3e-6


def test_lora_sections_switch_on_with_a_field_and_nest_in_overrides():
    assert load_config(None, []).model.lora is None  # off by default: full fine-tuning
    cfg = load_config(None, ["model.lora.rank=8", "model.lora.target_modules=[q_proj, v_proj]",
                             "rewards.lora={}", "train.report_to=[tensorboard, mlflow]"])
    assert cfg.model.lora.rank == 8 and cfg.model.lora.alpha == 32.0 and cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.rewards.lora.rank == 16 and cfg.train.report_to == ["tensorboard", "mlflow"]
    assert load_config(None, ["model.lora.rank=8", "model.lora=null"]).model.lora is None


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import srmir.config as mod

    tree = ast.parse(inspect.getsource(mod))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config") and n.name != "Config"):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), \
                    f"{cls.name}.{node.target.id} has no docstring"


@pytest.mark.parametrize("override, key", [
    ("grpo.bogus=1", "grpo.bogus"),
    ("nosection.x=1", "nosection"),
    ("grpo.beta=abc", "grpo.beta"),
    ("grpo.group_size=1", "grpo.group_size"),
    ("train.micro_batch_size=5", "train.micro_batch_size"),   # 4 prompts × 8 = 32 not divisible by 5
    ("train.zero_stage=4", "train.zero_stage"),
    ("model.gradient_checkpointing=1", "model.gradient_checkpointing"),  # 1 is not a bool
    ("rollout.temperature=0", "rollout.temperature"),
    ("rewards.weights=[-1, 1]", "rewards.weights"),
    ("train.deepspeed=/nonexistent.json", "train.deepspeed"),
    ("eval.judges=[refusal, oracle]", "eval.judges"),
    ("rewards.augment=[answer_only, mirror]", "rewards.augment"),
    ("train.pack_max_len=0", "train.pack_max_len"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.lora.rnak=8", "model.lora.rnak"),
    ("rewards.lora.dropout=1", "rewards.lora.dropout"),
    ("train.export_merged=true", "train.export_merged"),  # without model.lora there is nothing to merge
    ("train.report_to=[neptune]", "train.report_to"),
    ("rewards.benign_refusal_penalty=-1", "rewards.benign_refusal_penalty"),
    ("rewards.benign_refusal_penalty=nan", "rewards.benign_refusal_penalty"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(key), str(e.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("grpo:\n  beta: 0.1\n  group_size: [1, 2\n")
    with pytest.raises(UserError, match=r"bad\.yaml:\d+"):
        load_config(p)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="section.field"):
        load_config(None, ["beta=0.1"])


def test_cli_exit_2_one_line(tmp_path, capsys):
    p = tmp_path / "cfg.yaml"
    p.write_text("grpo:\n  group_size: 3\ntrain:\n  micro_batch_size: 5\n")
    # any config-driven subcommand validates at load; use the loader's own error path via a stage
    from srmir.cli import run_main

    rc = run_main(lambda: load_config(p))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.micro_batch_size" in err[0]


def test_srmir_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "COMMAND" in out


def test_k1_as_a_loss_term_warns():
    import warnings

    with pytest.warns(UserWarning, match="zero expected gradient"):
        load_config(None, ["grpo.kl_estimator=k1", "grpo.beta=0.04"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["grpo.kl_estimator=k1", "grpo.beta=0"])  # β = 0: k1 only reports the KL
        load_config(None, ["grpo.kl_estimator=k3"])

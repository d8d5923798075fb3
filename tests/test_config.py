"""Config validation, presets and overrides."""
import pytest

from pipeline.config import available_presets, load_config, parse_override, stage_config
from pipeline.errors import ConfigError


def test_presets_load():
    assert {"smoke", "cpu", "full"} <= set(available_presets())
    for name in available_presets():
        cfg = load_config(name)
        assert cfg.preset == name


def test_full_preset_is_the_paper_setting():
    cfg = load_config("full")
    sizes = cfg.model.awd_lstm
    assert (sizes.emb_sz, sizes.n_hid, sizes.n_layers) == (400, 1152, 3)
    assert cfg.pretrain.corpus == "wikitext-103" and cfg.pretrain.bptt == 70 and cfg.pretrain.bs == 64
    assert cfg.adapt.lr_decay == 2.6 and cfg.classify.lr_decay == 2.6


def test_override_types_are_parsed():
    cfg = load_config("smoke", ["classify.n_labels=80", "classify.lrs=[0.01, 0.005]",
                                "classify.epochs_per_phase=[1,2]", "adapt.corpus=my.csv", "pretrain.max_docs=null"])
    assert cfg.classify.n_labels == 80 and cfg.classify.lrs == [0.01, 0.005]
    assert cfg.adapt.corpus == "my.csv" and cfg.pretrain.max_docs is None


@pytest.mark.parametrize("override, fragment", [
    ("classify.n_lables=10", "n_lables"),            # unknown key
    ("nosuchsection.x=1", "nosuchsection"),           # unknown section
    ("classify.n_labels=many", "n_labels"),           # wrong type
    ("pretrain.lr=-0.1", "pretrain.lr"),              # negative learning rate
    ("classify.lrs=[0.1]", "same length"),            # phases and lrs disagree
    ("device=tpu", "device"),
    ("classify.bs=0", "classify.bs"),
])
def test_bad_overrides_rejected(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("smoke", [override])


def test_unknown_preset_and_malformed_override():
    with pytest.raises(ConfigError, match="available"):
        load_config("nope")
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("classify.n_labels")


def test_config_is_frozen():
    cfg = load_config("smoke")
    with pytest.raises(Exception):
        cfg.classify.bs = 3


def test_stage_config_excludes_worker_count():
    a = load_config("smoke", ["tokenizer.n_workers=0"])
    b = load_config("smoke", ["tokenizer.n_workers=2"])
    assert stage_config(a, "pretrain") == stage_config(b, "pretrain")
    assert stage_config(a, "classify") != stage_config(load_config("smoke", ["classify.bs=8"]), "classify")


@pytest.mark.parametrize("override, fragment", [
    ("classify.bs=true", "classify.bs"),              # was read as 1
    ("compile=1", "compile"),                          # a number is not a boolean
    ("classify.n_labels=500.0", "classify.n_labels"),  # nor a float an integer
    ("tokenizer.lang=5", "tokenizer.lang"),
    ("pretrain.lr=Infinity", "finite"),               # was accepted, and shown as null by --show-config
    ("adapt.lr=NaN", "finite"),
    ("classify.lrs=[0.01,-Infinity]", "finite"),
    ("classify.wd=1e999", "finite"),                  # JSON reads 1e999 as infinity
    ("classify.lrs=[1e308,1e308]", "learning rates > 0 and <= 10"),  # overflowed float32 in the optimizer
    ("pretrain.lr=11", "less than or equal to 10"),
])
def test_strict_types_and_finite_numbers(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("smoke", [override])


def test_show_config_never_prints_null_for_a_number(capsys):
    from flows.cli import main

    assert main(["run", "--preset", "smoke", "--set", "pretrain.lr=Infinity", "--show-config"]) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["run", "--preset", "smoke", "--set", "pretrain.lr=0.5", "--show-config"]) == 0
    assert '"lr": 0.5' in capsys.readouterr().out


def test_a_preset_that_extends_another_holds_only_what_it_changes(tmp_path, monkeypatch):
    from pipeline import config

    long, cpu = load_config("cpu-long"), load_config("cpu")
    assert long.adapt.max_docs == 4 * cpu.adapt.max_docs == 32000 and long.preset == "cpu-long"
    assert long.model_dump(exclude={"preset", "adapt"}) == cpu.model_dump(exclude={"preset", "adapt"})
    assert long.adapt.model_dump(exclude={"max_docs"}) == cpu.adapt.model_dump(exclude={"max_docs"})
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    monkeypatch.setattr(config, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"preset 'a': `extends` goes round in a circle \(a -> b -> a\)"):
        load_config("a")

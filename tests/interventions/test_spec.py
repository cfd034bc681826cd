"""--intervention SPEC parsing: every built-in, defaults, plugins, and every kind of bad spec."""

from __future__ import annotations

import pytest

from checkpoints_cache.errors import UserError
from resume.interventions.anytime import Anytime
from resume.interventions.base import Control
from resume.interventions.bimix import BiMix
from resume.interventions.gstack import Gstack
from resume.interventions.lawa import LAWA
from resume.interventions.spec import REGISTRY, parse_intervention

from .conftest import context


def test_registry_is_data_naming_every_builtin():
    assert REGISTRY == {"none": Control, "lawa": LAWA, "anytime": Anytime, "gstack": Gstack, "bimix": BiMix}


BIMIX = {"entropy": "conditional", "sample_rows": 0, "source": None, "domain_column": None, "text_column": None,
         "token_column": None, "tokenizer": None, "split": "train", "subset": None, "repeat": "epoch", "seed": None}


@pytest.mark.parametrize(
    "spec, cls, params",
    [
        ("none", Control, {}),
        ("  none ", Control, {}),
        ("lawa", LAWA, {"k": 5, "every": None, "mode": "replace", "window": "run", "store": "disk"}),
        ("lawa:k=10,every=1000,mode=replace", LAWA,
         {"k": 10, "every": 1000, "mode": "replace", "window": "run", "store": "disk"}),
        ("lawa:every=1e3,mode=eval,window=branch,store=host", LAWA,
         {"k": 5, "every": 1000, "mode": "eval", "window": "branch", "store": "host"}),
        ("anytime:schedule=constant,ema=25", Anytime,
         {"schedule": "constant", "lr": None, "warmup": None, "alpha": None, "ema": 25.0, "rewarm": None, "wd": None,
          "ema_device": "auto"}),
        ("anytime:schedule=invsqrt,alpha=51200,ema=25,lr=3e-3,warmup=5000,rewarm=0,wd=0", Anytime,
         {"schedule": "invsqrt", "lr": 3e-3, "warmup": 5000, "alpha": 51200.0, "ema": 25.0, "rewarm": 0, "wd": 0.0,
          "ema_device": "auto"}),
        ("gstack:g=4", Gstack, {"g": 4, "noise": 0.0, "noise_var": "small", "seed": None, "decay": "all", "lr": None,
                                "min_lr": None, "warmup": None}),
        ("bimix:entropy=conditional", BiMix, {**BIMIX, "entropy": "conditional"}),
        ("BiMix:entropy=shannon,sample_rows=8", BiMix, {**BIMIX, "entropy": "shannon", "sample_rows": 8}),
        ("bimix:source=corpus.parquet,domain_column=d,token_column=ids,repeat=error", BiMix,
         {**BIMIX, "source": "corpus.parquet", "domain_column": "d", "token_column": "ids", "repeat": "error"}),
    ],
)
def test_valid_specs_give_typed_full_params(spec, cls, params):
    iv = parse_intervention(spec)
    assert type(iv) is cls
    assert iv.describe() == {"name": cls.name, "params": params}


def test_parent_dependent_defaults_are_resolved_in_setup_and_described():
    ctx = context(branch_step=100, end_step=300, grid=[0, 100, 200, 300], lr=6e-4, min_lr=6e-5, warmup_iters=1430)
    lawa = parse_intervention("lawa")
    lawa.setup(ctx)
    assert lawa.describe()["params"]["every"] == 100  # the parent's checkpoint spacing
    anytime = parse_intervention("anytime:schedule=invsqrt")
    anytime.setup(ctx)
    assert anytime.describe()["params"] == {
        "schedule": "invsqrt", "lr": 6e-4, "warmup": 1430, "alpha": pytest.approx(51200 / 5000 * 1430), "ema": 25.0,
        "rewarm": 20, "wd": 0.1, "ema_device": "auto",
    }
    gstack = parse_intervention("gstack")
    gstack.setup(ctx)
    # warmup = min(parent warmup 1430, ceil(200 / 10)) = 20
    assert gstack.describe()["params"] == {"g": 4, "noise": 0.0, "noise_var": "small", "seed": 1234, "decay": "all",
                                           "lr": 6e-4, "min_lr": 6e-5, "warmup": 20}


@pytest.mark.parametrize(
    "spec, must_name",
    [
        ("", "empty intervention spec"),
        ("lawa:k=0", "k=0"),
        ("lawa:k=-3", "k=-3"),
        ("lawa:k=2.5", "k=2.5"),
        ("lawa:k=five", "k=five"),
        ("lawa:every=0", "every=0"),
        ("lawa:mode=average", "mode=average"),
        ("lawa:window=5", "window=5"),
        ("lawa:store=gpu", "store=gpu"),
        ("lawa:snapshots=5", "unknown key 'snapshots'"),
        ("lawa:k", "'k' is not key=value"),
        ("lawa:k=", "'k=' is not key=value"),
        ("lawa:k=2,k=3", "key 'k' given twice"),
        ("anytime:schedule=cosine", "schedule=cosine"),
        ("anytime:lr=0", "lr=0"),
        ("anytime:lr=nan", "lr=nan"),
        ("anytime:alpha=-1", "alpha=-1"),
        ("anytime:ema=-0.5", "ema=-0.5"),
        ("anytime:warmup=-1", "warmup=-1"),
        ("anytime:ema_device=gpu", "ema_device=gpu"),
        ("gstack:g=0", "g=0"),
        ("gstack:noise=2", "noise=2"),
        ("bimix:entropy=joint", "entropy=joint"),
        ("bimix:sample_rows=-1", "sample_rows=-1"),
        ("bimix:repeat=never", "repeat=never"),
        ("bimix:domain_column=d", "give source=PATH_OR_DATASET"),
        ("bimix:source=x.parquet,token_column=t", "needs domain_column"),
        ("anytime:rewarm=-1", "rewarm=-1"),
        ("anytime:wd=-0.1", "wd=-0.1"),
        ("gstack:decay=none", "decay=none"),
        ("gstack:noise_var=wide", "noise_var=wide"),
        ("none:k=1", "unknown key 'k' for intervention none"),
        ("swa:k=5", "unknown intervention 'swa'"),
        ("missing.py:Foo", "does not exist"),
        ("plugin.py", "names no class"),
    ],
)
def test_bad_specs_are_one_line_errors_naming_the_value(spec, must_name):
    with pytest.raises(UserError) as e:
        parse_intervention(spec)
    msg = str(e.value)
    assert must_name in msg
    assert "\n" not in msg


def test_bad_value_message_lists_every_accepted_key_with_type_and_range():
    with pytest.raises(UserError) as e:
        parse_intervention("lawa:k=0")
    assert str(e.value) == (
        "bad value k=0 for intervention lawa: out of range (int >= 1); accepted keys for lawa: "
        "k (int >= 1, default 5), every (int >= 1, default: from the parent run), mode (replace|eval, default replace), "
        "window (run|branch, default run), store (disk|host, default disk)"
    )


def test_constructing_directly_validates_too():
    with pytest.raises(UserError, match="k=0"):
        LAWA(k=0)
    assert LAWA(k=3, every=7).params == {"k": 3, "every": 7, "mode": "replace", "window": "run", "store": "disk"}


PLUGIN = '''
from resume.interventions.base import Intervention
from resume.interventions.params import DeclaredIntervention, Param

class HalfLR(Intervention):
    name = "half-lr"
    def lr(self, n, parent_lr):
        return parent_lr / 2

class Scaled(DeclaredIntervention):
    name = "scaled"
    PARAMS = (Param("factor", float, 0.5, "LR factor", min=0.0, max=1.0),)
    def lr(self, n, parent_lr):
        return parent_lr * self.params["factor"]

class NotOne:
    pass

class Unnamed(Intervention):
    pass
'''


def test_plugins_load_from_a_file(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(PLUGIN)
    iv = parse_intervention(f"{f}:HalfLR")
    assert iv.name == "half-lr" and iv.lr(5, 1e-3) == 5e-4
    scaled = parse_intervention(f"{f}:Scaled:factor=0.25")
    assert scaled.lr(5, 1e-3) == 2.5e-4
    assert scaled.describe() == {"name": "scaled", "params": {"factor": 0.25}}
    # a plugin without its own name is recorded under its class name, never as the control "none"
    assert parse_intervention(f"{f}:Unnamed").describe() == {"name": "Unnamed", "params": {}}


@pytest.mark.parametrize(
    "cls_spec, must_name",
    [
        ("Missing", "defines no class 'Missing'; Intervention subclasses in it: HalfLR, Scaled, Unnamed"),
        ("NotOne", "'NotOne' in"),
        ("HalfLR:x=1", "unknown key 'x' for intervention half-lr"),
        ("Scaled:factor=3", "factor=3"),
        ("Bad-Name", "bad class name"),
    ],
)
def test_bad_plugin_specs(tmp_path, cls_spec, must_name):
    f = tmp_path / "mine.py"
    f.write_text(PLUGIN)
    with pytest.raises(UserError) as e:
        parse_intervention(f"{f}:{cls_spec}")
    assert must_name in str(e.value) and "\n" not in str(e.value)


def test_plugin_that_fails_to_import_is_one_line(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import not_a_module_anywhere\n")
    with pytest.raises(UserError) as e:
        parse_intervention(f"{f}:X")
    assert "ModuleNotFoundError" in str(e.value) and "\n" not in str(e.value)

"""--parent-loss: the user's training-loss CSV (step,loss or a W&B export)."""

from __future__ import annotations

import pytest

from checkpoints_cache.errors import UserError
from resume.compare.parent_loss import read_loss_curve


def test_plain_and_wandb_exports(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("step,loss\n20,2.5\n10,3.0\n30,\n")
    df = read_loss_curve(plain)
    assert df.step.tolist() == [10, 20] and df.loss.tolist() == [3.0, 2.5]
    wandb = tmp_path / "wandb.csv"
    wandb.write_text('"Step","v2-160M - train/lm_loss","v2-160M - train/lm_loss__MIN","v2-160M - train/lm_loss__MAX"\n'
                     "1,10.9,10.9,10.9\n2,10.1,10.1,10.1\n")
    assert read_loss_curve(wandb).loss.tolist() == [10.9, 10.1]


@pytest.mark.parametrize("text, expect", [
    ("iteration_x,value\n1,2\n", "no step column"),
    ("step,train_loss,val_loss\n1,2,3\n", "2 loss columns"),
    ("step,loss\n1.5,2\n", "non-integer"),
])
def test_bad_csv_one_line(tmp_path, text, expect):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        read_loss_curve(f)
    assert expect in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        read_loss_curve(tmp_path / "missing.csv")

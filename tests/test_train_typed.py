"""Issue 11: the demo and bench/training.py call training with a typed TrainConfig, not `cdul-rt train` text.

The demo's recipe (cdul_rt.train.synth_world.RECIPE) as a config must train exactly as the `cdul-rt train` command
with the same options did before (the demo used to build that command's arguments and re-parse them).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cdul_rt.errors import CdulError


def test_train_flags_become_typed_config_fields_once():
    """bench/training.py --extra: `cdul-rt train` flags parsed by the command's own options, only those given."""
    from cdul_rt.cli.train import config_changes

    assert config_changes([]) == {}
    assert config_changes(["--eta", "0.2", "--no-psi", "--no-hflip", "--epochs", "3"]) == \
        {"eta": 0.2, "use_psi": False, "hflip": False, "epochs": 3}
    with pytest.raises(CdulError, match="--gt, --resume"):
        config_changes(["--resume", "--gt", "."])
    with pytest.raises(CdulError, match="--eta"):
        config_changes(["--eta", "lots"])


def test_the_recipe_config_keeps_an_epoch_of_alignment_and_takes_changes():
    from cdul_rt.train.synth_world import RECIPE, recipe_config

    short, full = recipe_config(2), recipe_config(8, seed=4, alignment=False)
    assert (short.epochs, short.warmup_epochs, short.progress) == (2, 1, False)
    assert (full.epochs, full.warmup_epochs, full.seed, full.alignment) == (8, RECIPE.warmup_epochs, 4, False)
    assert recipe_config(8, warmup_epochs=5, progress=True).warmup_epochs == 5
    assert (short.arch, short.weights, short.image_size, short.lr) == (RECIPE.arch, "synth", 128, RECIPE.lr)


@pytest.mark.slow
def test_the_demo_recipe_as_a_config_trains_as_the_train_command(tmp_path):
    from cdul_rt.cli import main
    from cdul_rt.train.synth_world import make_world, recipe_config, run_train, world_inputs

    world = make_world(tmp_path / "world", 8, 8, seed=5)
    typed = run_train(recipe_config(2, seed=3, threads=1), world_inputs(world, tmp_path / "typed"))
    args = [str(world.train / "images"), str(world.labels), "--out", str(tmp_path / "cli"), "--arch", "tiny-resnet",
            "--weights", "synth", "--image-size", "128", "--batch-size", "16", "--lr", "1e-4", "--warmup-epochs",
            "1", "--epochs", "2", "--seed", "3", "--gt", str(world.train / "labels.jsonl"),
            "--val-images", str(world.val / "images"), "--val-gt", str(world.val / "labels.jsonl"),
            "--val-labels", str(world.val_labels), "--quiet", "--threads", "1"]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output
    cli = [json.loads(x) for x in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]

    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert [r.get("phase") for r in typed] == [None, "warmup", "align"] and "map_pred_val" in typed[-1]
    assert numbers(typed) == numbers(cli)
    configs = [json.loads((tmp_path / run / "config.json").read_text()) for run in ("typed", "cli")]
    assert configs[0] == configs[1]
    assert (tmp_path / "typed" / "refined_labels.jsonl").read_bytes().replace(b"typed", b"cli") == \
        (tmp_path / "cli" / "refined_labels.jsonl").read_bytes()

"""Presets and vocabularies: every listed preset resolves, names get did-you-mean errors, files and lists parse."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cdul_rt.cli import main
from cdul_rt.errors import CdulError
from cdul_rt.presets import RANDOM, list_presets, resolve_model
from cdul_rt.vocab import load_vocabulary


def test_builtin_vocabularies_have_the_published_sizes():
    assert len(load_vocabulary("coco")) == 80
    assert len(load_vocabulary("voc")) == 20
    assert len(load_vocabulary("nuswide")) == 81
    voc = load_vocabulary("voc")
    assert "diningtable" in voc.classes  # labels match VOC annotations...
    assert voc.prompts()[voc.classes.index("diningtable")] == "a photo of the dining table"  # ...prompts read well


def test_vocabulary_from_file_and_comma_list(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# my classes\nred car = a red car\n\ntruck\n")
    v = load_vocabulary(str(f))
    assert v.classes == ("red car", "truck") and v.prompts("{}") == ["a red car", "truck"]
    assert load_vocabulary(" cat, dog ,bird").classes == ("cat", "dog", "bird")
    with pytest.raises(CdulError, match="more than once"):
        load_vocabulary("cat,dog,cat")
    with pytest.raises(CdulError, match="not found"):
        load_vocabulary("missing/classes.txt")


def test_every_listed_preset_resolves():
    presets = list_presets()
    assert any(p.key == "ViT-B-32.openai" and p.note == "default" for p in presets)
    assert any(p.key == "RN50x64.openai" for p in presets)
    for p in presets:
        spec = resolve_model(p.arch, p.tag if p.source == "open_clip" else None)
        assert spec.arch == p.arch


def test_model_name_forms(tiny_config):
    assert resolve_model("ViT-B-32").pretrained == "openai"
    assert resolve_model("ViT-B-32.laion2b_s34b_b79k").pretrained == "laion2b_s34b_b79k"
    assert resolve_model("ViT-B-32", RANDOM).pretrained == RANDOM
    spec = resolve_model(str(tiny_config), RANDOM)
    assert spec.config_path == tiny_config and spec.arch == tiny_config.stem
    with pytest.raises(CdulError, match="--weights FILE"):
        resolve_model(str(tiny_config))  # a custom config has no tags
    with pytest.raises(CdulError, match="did you mean"):
        resolve_model("ViT-B-32", "opneai")
    with pytest.raises(CdulError, match="not found"):
        resolve_model("ViT-B-32", weights="/nonexistent.pt")


def test_local_weights_file_loads_and_is_hashed(tmp_path, tiny_config):
    torch = pytest.importorskip("torch")
    from cdul_rt.models import load_clip

    random_bundle = load_clip(resolve_model(str(tiny_config), RANDOM))
    weights = tmp_path / "w.pt"
    sd = {k: v + 0.01 for k, v in random_bundle.model.state_dict().items()}
    torch.save(sd, weights)
    loaded = load_clip(resolve_model(str(tiny_config), weights=weights))
    assert len(loaded.weights_hash) == 64 and loaded.weights_hash != random_bundle.weights_hash
    p = next(iter(loaded.model.state_dict()))
    assert torch.allclose(loaded.model.state_dict()[p], sd[p])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CdulError, match="cannot load"):
        load_clip(resolve_model(str(tiny_config), weights=bad))


def test_models_and_classes_commands():
    r = CliRunner().invoke(main, ["models", "--filter", "RN50x64"])
    assert r.exit_code == 0 and "RN50x64.openai" in r.output and "paper" in r.output
    r = CliRunner().invoke(main, ["classes", "voc"])
    assert r.exit_code == 0 and r.output.splitlines()[0] == "aeroplane" and len(r.output.splitlines()) == 20
    r = CliRunner().invoke(main, ["classes", "vco"])
    assert r.exit_code == 2 and "did you mean 'voc'" in r.output


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from cdul_rt.cli import main; sys.argv=['cdul-rt','--help']\n" \
           "try:\n    main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'\n" \
           "assert 'open_clip' not in sys.modules\nprint('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr

"""The class text embeddings and their disk cache: what the key separates, when the cache is read, what is returned."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")  # imported at collection, so mutmut's fork server has it loaded already

from cdul_rt.models import load_clip  # noqa: E402
from cdul_rt.presets import resolve_model  # noqa: E402
from cdul_rt.textcache import encode_text_torch, text_cache_key, text_embeddings  # noqa: E402
from cdul_rt.vocab import DEFAULT_TEMPLATE, Vocabulary, load_vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_config):
    return load_clip(resolve_model(str(tiny_config), "none"))


def test_the_key_separates_model_classes_prompt_words_and_template():
    vocab = Vocabulary("v", ("cat", "dog"), ("cat", "dog"))
    base = text_cache_key("m", vocab, DEFAULT_TEMPLATE)
    assert base == text_cache_key("m", Vocabulary("other name", ("cat", "dog"), ("cat", "dog")), DEFAULT_TEMPLATE)
    others = [text_cache_key("m2", vocab, DEFAULT_TEMPLATE),
              text_cache_key("m", Vocabulary("v", ("cat", "bird"), ("cat", "dog")), DEFAULT_TEMPLATE),
              text_cache_key("m", Vocabulary("v", ("cat", "dog"), ("cat", "puppy")), DEFAULT_TEMPLATE),
              text_cache_key("m", Vocabulary("v", ("dog", "cat"), ("dog", "cat")), DEFAULT_TEMPLATE),
              text_cache_key("m", vocab, "a drawing of a {}")]
    assert len({base, *others}) == 6


def test_encoding_gives_one_unit_float32_row_per_prompt_whatever_the_batch_size(bundle):
    prompts = [f"a photo of the {c}" for c in ("cat", "dog", "car", "tree", "boat")]
    emb = encode_text_torch(bundle, prompts)
    assert emb.dtype == np.float32 and emb.shape[0] == len(prompts)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with torch.inference_mode():
        raw = bundle.model.encode_text(bundle.tokenizer(prompts)).float().numpy()
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(encode_text_torch(bundle, prompts, batch_size=2), emb, atol=1e-6)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # the prompts really differ


def test_the_cache_is_read_by_default_bypassed_on_request_and_refreshed(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path))
    vocab = load_vocabulary("cat,dog,car")
    fresh = text_embeddings(bundle, vocab, DEFAULT_TEMPLATE, "m")
    np.testing.assert_allclose(fresh, encode_text_torch(bundle, vocab.prompts(DEFAULT_TEMPLATE)), atol=1e-6)
    path = tmp_path / "text" / f"{text_cache_key('m', vocab, DEFAULT_TEMPLATE)}.npy"
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    planted = np.full_like(fresh, 0.25)
    np.save(path, planted)
    np.testing.assert_array_equal(text_embeddings(bundle, vocab, DEFAULT_TEMPLATE, "m"), planted)  # default: read
    np.testing.assert_allclose(text_embeddings(bundle, vocab, DEFAULT_TEMPLATE, "m", use_cache=False), fresh,
                               atol=1e-6)
    np.testing.assert_allclose(np.load(path), fresh, atol=1e-6)  # ... and the stale file was replaced
    np.save(path, planted[:2])  # a cache of another length is not trusted
    np.testing.assert_allclose(text_embeddings(bundle, vocab, DEFAULT_TEMPLATE, "m"), fresh, atol=1e-6)


def test_another_template_does_not_reuse_the_cached_embeddings(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CDUL_RT_CACHE", str(tmp_path))
    vocab = load_vocabulary("cat,dog,car")
    first = text_embeddings(bundle, vocab, DEFAULT_TEMPLATE, "m")
    other = text_embeddings(bundle, vocab, "a drawing of a {}", "m")
    np.testing.assert_allclose(other, encode_text_torch(bundle, vocab.prompts("a drawing of a {}")), atol=1e-6)
    assert np.abs(first - other).max() > 1e-3

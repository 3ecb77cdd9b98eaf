"""Hub model ids resolve from the local Hugging Face cache; the network is never touched here."""

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.errors import TunesmithError
from tunesmith.models import load_model, resolve_model_path
from tunesmith.models.hub import MODEL_FILES, is_hub_id

REPO = "tunesmith-test/tiny-chat"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)


def _place_in_cache(cache, smol_tokenizer):
    """A tiny saved model in the hub's own layout: models--owner--name/snapshots/<rev>/ and refs/main."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(snapshot)
    smol_tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.mark.parametrize("variable, below", [("HF_HUB_CACHE", ""), ("HF_HOME", "hub")])
def test_hub_id_loads_from_the_local_cache(no_network, smol_tokenizer, tmp_path, monkeypatch, variable, below):
    snapshot = _place_in_cache(tmp_path / below, smol_tokenizer)
    monkeypatch.setenv(variable, str(tmp_path))
    assert resolve_model_path(REPO) == str(snapshot)
    loaded = load_model(REPO)
    assert loaded.path == str(snapshot) and loaded.model.config.hidden_size == 16
    assert loaded.tokenizer.tokenize("a\n\n3") == ["a", "ĊĊ", "3"]


def test_hub_id_missing_offline_fails_in_one_line(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TunesmithError) as error:
        resolve_model_path("Qwen/Qwen3-0.6B")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"model 'Qwen/Qwen3-0.6B' is not a local folder and not in the Hugging Face cache {tmp_path},"
    )
    assert "`hf download Qwen/Qwen3-0.6B`" in message and "models--Qwen--Qwen3-0.6B" in message


def _fake_hub(monkeypatch, cached_snapshot, download):
    """snapshot_download as the hub answers it: the cache, or (online) `download(**kwargs)`."""
    calls = []

    def snapshot_download(repo_id, *, cache_dir, local_files_only=False, allow_patterns=None):
        calls.append({"local_files_only": local_files_only, "allow_patterns": allow_patterns})
        if local_files_only:
            if cached_snapshot is None:
                raise LocalEntryNotFoundError("not in the cache")
            return str(cached_snapshot)
        return download()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return calls


def test_online_cache_miss_downloads_the_model_files_once(smol_tokenizer, tmp_path, monkeypatch):
    snapshot = _place_in_cache(tmp_path, smol_tokenizer)
    calls = _fake_hub(monkeypatch, None, lambda: str(snapshot))
    assert resolve_model_path(REPO) == str(snapshot)
    assert calls == [
        {"local_files_only": True, "allow_patterns": None},
        {"local_files_only": False, "allow_patterns": MODEL_FILES},
    ]


def test_online_cache_hit_makes_no_request(smol_tokenizer, tmp_path, monkeypatch):
    snapshot = _place_in_cache(tmp_path, smol_tokenizer)
    calls = _fake_hub(monkeypatch, snapshot, lambda: pytest.fail("downloaded although cached"))
    assert resolve_model_path(REPO) == str(snapshot)
    assert [call["local_files_only"] for call in calls] == [True]


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def unreachable():
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub.\nmore detail")

    _fake_hub(monkeypatch, None, unreachable)
    with pytest.raises(TunesmithError) as error:
        resolve_model_path("Qwen/Qwen3-0.6B")
    assert str(error.value) == (
        "could not download 'Qwen/Qwen3-0.6B' from the Hugging Face Hub (An error happened while trying to locate "
        "the files on the Hub.); check the id and the network, or copy the model folder here and pass its path"
    )


@pytest.mark.parametrize(
    "name, hub",
    [
        ("Qwen/Qwen3-0.6B", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("google/gemma-3-270m", True),
        ("runs/a/merged", False),
        ("./model", False),
        ("/abs/model", False),
        ("no-slash", False),
    ],
)
def test_what_counts_as_a_hub_id(name, hub):
    assert is_hub_id(name) is hub

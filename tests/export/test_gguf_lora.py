"""The LoRA adapter as a GGUF LoRA: base weights + (alpha / rank) B @ A give the merged weights."""

import gguf
import numpy as np
from safetensors.torch import load_file

from tunesmith.export import export_run
from tunesmith.export.gguf import _to_gguf_layout
from tunesmith.export.gguf_families import FAMILIES, Shape
from tunesmith.models import resolve_model_path


def test_gguf_lora_plus_base_gives_the_merged_model(tiny_run, tiny_model_name, tmp_path):
    from transformers import AutoConfig

    path = export_run(tiny_run, "gguf-lora", "f32", tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    alpha = reader.fields["adapter.lora.alpha"].contents()
    assert alpha == 16.0  # the tiny run's method.alpha, rank 8
    tensors = {t.name: np.array(t.data) for t in reader.tensors}

    base = load_file(f"{resolve_model_path(tiny_model_name)}/model.safetensors")
    merged = load_file(tiny_run / "merged/model.safetensors")
    shape = Shape.of(AutoConfig.from_pretrained(tiny_run / "merged"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape.layers)
    checked = 0
    for hf_name, weight in merged.items():
        target = names.get_name(hf_name, try_suffixes=(".weight",))
        if f"{target}.lora_a" not in tensors:
            assert (weight - base[hf_name]).abs().max() == 0, hf_name  # not adapted: unchanged
            continue
        lora_a, lora_b = tensors[f"{target}.lora_a"], tensors[f"{target}.lora_b"]
        assert lora_a.shape[0] == lora_b.shape[1] == 8
        update = (alpha / 8) * lora_b.astype(np.float64) @ lora_a.astype(np.float64)
        expected = _to_gguf_layout(hf_name, (weight - base[hf_name]).double().numpy(), FAMILIES["llama"], shape)
        np.testing.assert_allclose(update, expected, atol=1e-6)
        checked += 1
    assert checked == 2 * 7  # every linear layer of both blocks

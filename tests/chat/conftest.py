import copy

import pytest

# A small template in the style of Qwen2.5's: tools listed in the system turn, calls as
# <tool_call> JSON lines, results in a tool turn.
QWEN_STYLE = (
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def qwen_style_tokenizer(smol_tokenizer):
    """SmolLM2's tokenizer with a chat template that renders tools itself."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = QWEN_STYLE
    return tokenizer

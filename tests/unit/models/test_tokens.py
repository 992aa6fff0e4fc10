"""Token counts match the o200k_base BPE and OpenAI's chat formula."""

import bpe_openai

from llmflow.services.models.tokens import count_prompt_tokens, count_text_tokens


def test_text_tokens_match_bpe() -> None:
    encoding = bpe_openai.get_encoding("o200k_base")
    text = "The simulator counts real tokens, offline."
    assert count_text_tokens("hello world") == 2
    assert count_text_tokens(text) == len(encoding.encode(text))
    assert count_text_tokens("") == 0


def test_special_token_markers_count_as_text() -> None:
    assert count_text_tokens("<|endoftext|>") > 1


def test_prompt_formula() -> None:
    messages = [
        {"role": "system", "content": "hello world"},
        {"role": "user", "content": "hello world", "name": "ann"},
    ]
    role_tokens = count_text_tokens("system") + count_text_tokens("user")
    expected = 3 + 2 * 3 + role_tokens + 2 * 2 + count_text_tokens("ann") + 1
    assert count_prompt_tokens(messages) == expected


def test_image_parts_cost_85_tokens() -> None:
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
    ]
    messages = [{"role": "user", "content": parts}]
    assert count_prompt_tokens(messages) == 3 + 3 + count_text_tokens("user") + 2 + 2 * 85

"""Prompt masking (labels -100 on everything but completions) and packing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bigmodel_training.dataset import Example
from bigmodel_training.packing import collate, epoch_order, epoch_steps, pack_rows
from bigmodel_training.render import IGNORE_INDEX, Renderer, Tokenized


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _trained_text(tokenizer: Any, tokens: Tokenized) -> str:
    return str(tokenizer.decode([t for t in tokens.labels if t != IGNORE_INDEX]))


def test_chat_labels_cover_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    example = Example(
        1,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Good morning"},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris"},
        ],
    )
    tokens = Renderer(tokenizer).tokenize(example)
    assert len(tokens.input_ids) == len(tokens.labels)
    full = tokenizer.apply_chat_template(example.messages, tokenize=False)
    assert tokenizer.decode(tokens.input_ids) == full  # segment-wise tokenization loses nothing
    trained = _trained_text(tokenizer, tokens)
    assert "Good morning" in trained
    assert "Paris" in trained
    for prompt_text in ("Be brief", "Hello there", "capital", "<|user|>", "<|system|>"):
        assert prompt_text not in trained
    assert tokenizer.eos_token in trained  # the model learns to stop
    assert tokens.labels[0] == IGNORE_INDEX
    # where a label is set, it is the input token at that position
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(tokens.input_ids, tokens.labels, strict=True))


def test_plain_layout_without_a_chat_template(tokenizer: Any) -> None:
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = None
    example = Example(1, messages=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}])
    tokens = Renderer(tokenizer).tokenize(example)
    assert "### User:" in tokenizer.decode(tokens.input_ids)
    assert _trained_text(tokenizer, tokens) == "Hi" + tokenizer.eos_token


def test_completion_format_masks_the_prompt(tokenizer: Any) -> None:
    tokens = Renderer(tokenizer).tokenize(Example(1, prompt="The sea is", completion=" blue"))
    assert _trained_text(tokenizer, tokens) == " blue" + tokenizer.eos_token
    assert tokens.loss_tokens == len(tokenizer(" blue", add_special_tokens=False)["input_ids"]) + 1


def test_best_fit_packing() -> None:
    lengths = [6, 5, 4, 3, 2, 2]
    rows = pack_rows(lengths, range(len(lengths)), max_len=8)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert len(rows) == 3  # 22 tokens in rows of 8
    with pytest.raises(ValueError, match="more than 8"):
        pack_rows([9], [0], max_len=8)


def test_epoch_order_is_deterministic_and_differs_by_epoch() -> None:
    assert epoch_order(50, seed=1, epoch=0) == epoch_order(50, seed=1, epoch=0)
    assert epoch_order(50, seed=1, epoch=0) != epoch_order(50, seed=1, epoch=1)
    steps = epoch_steps([3] * 20, seed=1, epoch=0, max_len=8, batch_size=2, accumulation=2, packing=True)
    assert steps == epoch_steps([3] * 20, seed=1, epoch=0, max_len=8, batch_size=2, accumulation=2, packing=True)
    assert sum(len(row) for step in steps for micro in step for row in micro) == 20


def test_packed_collate_resets_positions_per_example() -> None:
    examples = [
        Tokenized([11, 12, 13], [IGNORE_INDEX, IGNORE_INDEX, 13]),
        Tokenized([21, 22], [IGNORE_INDEX, 22]),
        Tokenized([31, 32, 33, 34], [IGNORE_INDEX, 32, 33, 34]),
    ]
    batch = collate(examples, [[0, 1], [2]], pad_id=0, packing=True, multiple=8)
    assert batch.attention_mask is None  # the block-diagonal mask comes from the position ids
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22, 0, 0, 0], [31, 32, 33, 34, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch.labels.tolist() == [[-100, -100, 13, -100, 22, -100, -100, -100], [-100, 32, 33, 34] + [-100] * 4]
    assert batch.tokens == 9
    assert batch.loss_tokens == 5


def test_unpacked_collate_pads_with_an_attention_mask() -> None:
    examples = [Tokenized([1, 2, 3], [IGNORE_INDEX, 2, 3]), Tokenized([4], [IGNORE_INDEX])]
    batch = collate(examples, [[0], [1]], pad_id=0, packing=False, multiple=4)
    assert batch.attention_mask is not None
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]


# A template that behaves like Qwen3's (written here, not copied): ChatML turns, and an empty think
# block before an assistant answer only when it is the last message and follows the last user turn.
QWEN3_LIKE_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture
def qwen3_like_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = QWEN3_LIKE_TEMPLATE
    return tokenizer


def test_qwen3_style_template_trains_every_turn_not_just_the_last(qwen3_like_tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Blue is a colour"},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green is another"},
    ]
    renderer = Renderer(qwen3_like_tokenizer)
    full = qwen3_like_tokenizer.apply_chat_template(messages, tokenize=False)
    prefix = qwen3_like_tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert not full.startswith(prefix)  # the template really is not prefix-consistent
    tokens = renderer.tokenize(Example(1, messages=messages))
    assert renderer.realigned == 1
    trained = _trained_text(qwen3_like_tokenizer, tokens)
    assert "Blue is a colour" in trained and "Green is another" in trained  # both answers, not only the last
    assert trained.count("<|im_end|>") == 2  # each answer's end-of-turn marker is learned
    for prompt_text in ("Name a colour", "Another one?", "<think>", "assistant"):
        assert prompt_text not in trained
    assert qwen3_like_tokenizer.decode(tokens.input_ids) == full


def test_single_turn_examples_stay_prefix_consistent(qwen3_like_tokenizer: Any) -> None:
    renderer = Renderer(qwen3_like_tokenizer)
    example = Example(1, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    trained = _trained_text(qwen3_like_tokenizer, renderer.tokenize(example))
    assert renderer.realigned == 0
    assert "Hello" in trained


def test_a_template_that_rewrites_answers_is_refused_with_the_line(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from bigmodel_training.data import tokenize_checked
    from bigmodel_training.errors import DatasetError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = QWEN3_LIKE_TEMPLATE.replace("message.content", "message.content | upper")
    messages = [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"},
    ]  # fmt: skip
    with pytest.raises(DatasetError, match="line 7: template"):
        tokenize_checked([Example(7, messages=messages)], tokenizer, 512)

"""Turning validated examples into token ids and labels (loss on completions only).

An example is rendered as a list of text segments, each marked trainable or not, then every
segment is tokenized on its own and the ids concatenated. Labels are the ids of trainable
segments and -100 (ignored by the loss) elsewhere, so the model learns to produce assistant
turns / completions and never the prompt.

- chat and instruction examples use the tokenizer's chat template when it has one. The spans of
  the assistant turns are found by rendering growing prefixes of the conversation: the text
  between `render(messages[:i], add_generation_prompt=True)` and `render(messages[:i+1])` is
  assistant turn i (its content plus the template's end-of-turn marker). Every assistant turn is
  trained.
- a template that is not prefix-consistent renders a turn differently once later turns follow.
  Qwen3's does: it puts an empty `<think>\n\n</think>` block before the *last* assistant answer
  only, so the prefix ending at turn 1 differs from the full conversation. Then every assistant
  turn is located by its content in the full rendering instead, and its content plus the
  template's end-of-turn marker (found by rendering a probe conversation) is trained; the empty
  think block stays in the prompt. `Renderer.realigned` counts such examples. A turn that cannot be
  found (a template that rewrites the content) is refused with `TemplateError`, never silently
  reduced to the last answer.
- without a chat template, a plain "### User:" / "### Assistant:" layout is used, with the EOS
  token after each assistant turn.
- completion examples are `BOS? prompt completion EOS`, with the loss on `completion EOS`.

Segment boundaries sit at template markers, so tokenizing segments separately gives the same ids
as tokenizing the whole text for every template we know of; it also works for slow tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bigmodel_training.dataset import Example

IGNORE_INDEX = -100
_PROBE = "bigmodel-probe-answer"


class TemplateError(ValueError):
    """The chat template renders an example in a way whose assistant turns cannot be located."""


@dataclass
class Tokenized:
    """One example as model input: `labels[i]` is the target at position i, or -100."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        """How many positions contribute to the loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class Renderer:
    """Renders examples with one tokenizer (anything with the transformers tokenizer API)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.bos_id: int | None = tokenizer.bos_token_id
        self.eos_id: int | None = tokenizer.eos_token_id
        probe = tokenizer("a")["input_ids"]
        self.adds_bos = self.bos_id is not None and bool(probe) and probe[0] == self.bos_id
        self.realigned = 0  # examples whose turns were located by content (template not prefix-consistent)
        self._end_marker: str | None = None

    def segments(self, example: Example) -> list[tuple[str, bool]]:
        """The example as (text, trainable) pieces; EOS ids are added in `tokenize`."""
        if example.messages is None:
            return [(example.prompt or "", False), (example.completion or "", True)]
        if self.has_chat_template:
            return self._template_segments(example.messages)
        return self._plain_segments(example.messages)

    def tokenize(self, example: Example) -> Tokenized:
        """Token ids and labels for one example (never truncated; validation refuses long ones)."""
        ids: list[int] = []
        labels: list[int] = []
        uses_template = example.messages is not None and self.has_chat_template
        if not uses_template and self.adds_bos and self.bos_id is not None:
            ids.append(self.bos_id)
            labels.append(IGNORE_INDEX)
        for text, trainable in self.segments(example):
            piece = self._encode(text) if text else []
            if trainable and not uses_template and self.eos_id is not None:
                piece = [*piece, self.eos_id]
            ids.extend(piece)
            labels.extend(piece if trainable else [IGNORE_INDEX] * len(piece))
        if labels:
            labels[0] = IGNORE_INDEX  # nothing predicts the first token of an example
        return Tokenized(ids, labels)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return str(text)

    def _template_segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        full = self._render(messages, False)
        segments: list[tuple[str, bool]] = []
        done = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = self._render(messages[:i], True)
            end = self._render(messages[: i + 1], False)
            if not (full.startswith(end) and end.startswith(start) and len(start) >= done):
                self.realigned += 1
                return self._aligned_segments(messages, full)
            segments.append((full[done : len(start)], False))
            segments.append((full[len(start) : len(end)], True))
            done = len(end)
        segments.append((full[done:], False))
        return [s for s in segments if s[0]]

    def end_marker(self) -> str:
        """What the template writes right after an assistant answer (e.g. `<|im_end|>`), without
        trailing whitespace; found by rendering a probe conversation."""
        if self._end_marker is None:
            probe = self._render([{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}], False)
            at = probe.rfind(_PROBE)
            self._end_marker = probe[at + len(_PROBE) :].rstrip() if at >= 0 else ""
        return self._end_marker

    def _aligned_segments(self, messages: list[dict[str, str]], full: str) -> list[tuple[str, bool]]:
        """Assistant turns located by their content, in order, in the full rendering."""
        marker = self.end_marker()
        segments: list[tuple[str, bool]] = []
        done = cursor = 0  # emitted up to `done`; search from `cursor` (past earlier messages)
        for i, message in enumerate(messages):
            content = message["content"]
            at = full.find(content, cursor)
            if message["role"] != "assistant":
                cursor = at + len(content) if at >= 0 else cursor
                continue
            if at < 0:
                content = content.strip()
                at = full.find(content, cursor)
            if at < 0 or not content:
                raise TemplateError(
                    f"the chat template does not reproduce assistant message {i} verbatim and is not "
                    "prefix-consistent, so its turns cannot be masked; use the completion format"
                )
            stop = at + len(content)
            if marker and full.startswith(marker, stop):
                stop += len(marker)
            segments.append((full[done:at], False))
            segments.append((full[at:stop], True))
            done = cursor = stop
        segments.append((full[done:], False))
        return [s for s in segments if s[0]]

    def _plain_segments(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        segments: list[tuple[str, bool]] = []
        for message in messages:
            role = message["role"]
            if role == "assistant":
                segments.append(("### Assistant:\n", False))
                segments.append((message["content"], True))
                segments.append(("\n\n", False))
            else:
                segments.append((f"### {role.capitalize()}:\n{message['content']}\n\n", False))
        return segments

"""Pretraining the tiny LLM on the toy world's text, before the pipeline ever sees it.

LLaVA starts from Vicuna, which already reads: it continues a text with a summary of it, and it answers a question
about something named earlier in its context. A randomly initialised LLM has neither skill, and LLaVA's two stages
do not teach it within a CPU budget: a toy model finetuned from a random LLM answered "is there a <colour>
<shape>?" at chance and gave the same colour whichever shape a question named (README, eval). So the toy world
gives its LLM what Vicuna has, from text alone. Each example writes a fresh scene as words where the image would
go (" red circle blue square", in random order) and then follows one of the two templates LLaVA trains with:

- `plain`, as in projector pretraining: the scene's words, then a brief caption of the scene (supervised);
- `vicuna_v1` chat, as in finetuning: the scene's words and a short-answer question in the first user turn, more
  questions in later turns, answers supervised.

No image is involved, so reading images is still learned by the pipeline's own stages; what the LLM brings is
copying from its context and matching a question's words to it. Projector pretraining then has something to
align to: the LLM captions a scene from tokens in the image's place, so the projector learns to make image tokens
that read like the scene's words.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.chat_format import IGNORE_INDEX, encode
from pipeline.toy_world import language as lang
from pipeline.toy_world.scenes import Scene, sample_scene

log = logging.getLogger(__name__)

# Below the vision pretraining's ids and the held-out check's, above every id the toy data uses.
SCENE_ID_BASE = 700_000_000
HELD_OUT = 100  # questions per probed kind
HELD_OUT_ID_OFFSET = 50_000_000  # past any training example's id
# Existence four times and colour twice: they are the questions that need the named object matched against the
# scene. With existence 2 in 7, held-out existence was still at chance (0.44) after 800 steps on one seed; with 4 in
# 9 it reached 0.63 at 200 steps and 0.76 at 600 on the same seed.
QUESTIONS: tuple[lang.QAGenerator, ...] = (
    *(lang.exists_qa,) * 4,
    lang.colour_qa,
    lang.colour_qa,
    lang.shape_qa,
    lang.count_qa,
    lang.count_kind_qa,
)
PROBES: dict[str, lang.QAGenerator] = {
    "exists": lang.exists_qa,
    "colour": lang.colour_qa,
    "shape": lang.shape_qa,
}

Example = tuple[list[int], list[int]]  # input_ids, labels


@dataclass(frozen=True)
class LlmPretrainSpec:
    steps: int = 800
    examples: int = 12_000
    batch_size: int = 32
    learning_rate: float = 1e-3
    plain_fraction: float = 0.3
    max_turns: int = 4


def scene_words(scene: Scene, rng: random.Random) -> str:
    """The scene as the words its image tokens should read like: ' red circle blue square', shapes shuffled
    (an image has no reading order). The leading space makes each word the token a question uses for it."""
    return "".join(f" {s.colour} {s.kind}" for s in rng.sample(scene.shapes, len(scene.shapes)))


def plain_example(scene: Scene, rng: random.Random, tokenizer: PreTrainedTokenizerFast) -> Example:
    """`<s>` + scene words (context) + caption + newline (supervised): the `plain` template, words for image."""
    context = tokenizer(scene_words(scene, rng), add_special_tokens=True)["input_ids"]
    caption = tokenizer(lang.brief_caption(scene, rng) + "\n", add_special_tokens=False)["input_ids"]
    return context + caption, [IGNORE_INDEX] * len(context) + caption


def chat_example(
    scene: Scene, rng: random.Random, tokenizer: PreTrainedTokenizerFast, qas: Sequence[lang.QA]
) -> Example:
    """The finetuning format with the scene's words where `<image>` goes: first turn words, question and
    LLaVA's short-answer prompt, later turns the bare question, as in mix665k's VQA records."""
    words = scene_words(scene, rng).strip()
    turns = []
    for i, (question, answer) in enumerate(qas):
        text = f"{words}\n{question}\n{lang.SHORT_ANSWER_PROMPT}" if i == 0 else question
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    encoded = encode(turns, tokenizer)
    return list(encoded.input_ids), list(encoded.labels)


def _examples(spec: LlmPretrainSpec, tokenizer: PreTrainedTokenizerFast, seed: int) -> list[Example]:
    rng = random.Random(f"llm-pretrain/{seed}")
    out = []
    for i in range(min(spec.examples, spec.steps * spec.batch_size)):  # never more than training can draw
        scene = sample_scene(rng, SCENE_ID_BASE + i)
        if rng.random() < spec.plain_fraction:
            out.append(plain_example(scene, rng, tokenizer))
        else:
            qas = lang.ask(scene, rng, QUESTIONS, rng.randint(1, spec.max_turns))
            out.append(chat_example(scene, rng, tokenizer, qas))
    return out


def pad_batch(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `labels` (padding ignored) and `attention_mask` for a causal LM."""
    width = max(len(ids) for ids, _ in examples)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in examples]),
        "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in examples]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples]),
    }


@torch.no_grad()
def probe(llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, seed: int) -> dict[str, float]:
    """Held-out exact-match accuracy on one-question chats about fresh scenes, per question kind. An answer counts
    when every supervised token (the answer and its `</s>`) is the model's top choice: what greedy decoding says."""
    rng = random.Random(f"llm-pretrain/{seed}/held-out")
    llm.eval()
    out, next_id = {}, SCENE_ID_BASE + HELD_OUT_ID_OFFSET
    for name, make in PROBES.items():
        examples: list[Example] = []
        while len(examples) < HELD_OUT:
            next_id += 1
            scene = sample_scene(rng, next_id)
            qa = make(scene, rng)
            if qa is not None:
                examples.append(chat_example(scene, rng, tokenizer, [qa]))
        batch = pad_batch(examples, tokenizer.pad_token_id or 0)
        logits = llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        predicted, target = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
        supervised = target != IGNORE_INDEX
        right = ((predicted == target) | ~supervised).all(-1)
        out[name] = round(right.float().mean().item(), 3)
    return out


def pretrain_llm(
    llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: LlmPretrainSpec, seed: int
) -> dict[str, float]:
    """Train `llm` in place on toy text; returns its held-out accuracies (`probe`)."""
    examples = _examples(spec, tokenizer, seed)
    pad_id = tokenizer.pad_token_id or 0
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    # One cycle: a short warmup, then cosine to zero, so the last steps settle instead of bouncing.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.steps, pct_start=0.05
    )
    rng = random.Random(f"llm-pretrain/{seed}/batches")
    log.info("tiny LLM before pretraining, held-out %s", probe(llm, tokenizer, seed))
    start = time.perf_counter()
    for step in range(1, spec.steps + 1):
        llm.train()
        loss = llm(**pad_batch(rng.sample(examples, spec.batch_size), pad_id)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == spec.steps:
            rate = step * spec.batch_size / (time.perf_counter() - start)
            metrics = probe(llm, tokenizer, seed)
            log.info(
                "tiny LLM step %d/%d (%.0f examples/s): loss %.3f, held-out %s",
                step,
                spec.steps,
                rate,
                loss.item(),
                metrics,
            )
    return metrics

"""Pretraining the tiny LLM on the toy world's text, before the pipeline ever sees it.

LLaVA starts from Vicuna, which already reads: it continues a text with a summary of it, and it answers a question
about something named earlier in its context. A randomly initialised LLM has neither skill, and LLaVA's two stages
do not teach it within a CPU budget: a toy model finetuned from a random LLM did not learn to match a question's
words against the image (docs/experiments.md). So the toy world
gives its LLM what Vicuna has, from text alone, in the two templates LLaVA trains with:

- `plain`, as in projector pretraining: a scene, then a brief caption of it (supervised);
- `vicuna_v1` chat, as in finetuning: a scene and a short-answer question in the first user turn, more questions
  in later turns, answers supervised.

The scene stands where the image goes, written the way image tokens arrive: one position per patch of the
tower's grid, in the same row-major order. A patch that holds a shape's centre is one position whose embedding
is the sum of the shape's colour word and kind word ("red" + "circle"); every other patch is `<unk>`, a token no
text produces. The vision tower's per-patch heads read exactly that off a patch, linearly (`vision_pretrain`), so
projector alignment has a short way to go. After the same finetuning, this layout beat writing the scene as words
(" red circle blue square") on held-out existence (docs/experiments.md).

Binding an answer to the object a question names came with 8 heads (`toy_world.llm.heads`; 32 wide each, as
vLLM requires, so wider together than the model) and more colour and shape questions: "what shape is red?" is
answered from the red shape. Brief captions teach that lookup at the colour word itself: after "red" comes the red
shape's kind. Nothing taught the other direction, and "what color is the circle?" got the colour of whichever
shape; captions that name the kind first ("circle red, square blue": `kind_first_captions`) teach it the same
way, at the kind word (docs/experiments.md section 28).

No image is involved, so reading images is still learned by the pipeline's own stages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedTokenizerFast

from firellava.core.chat_format import IGNORE_INDEX, IMAGE_TOKEN, encode
from firellava.core.instructions import SHORT_ANSWER
from firellava.core.progress import Progress
from firellava.toy import language as lang
from firellava.toy import shared_batches
from firellava.toy.scenes import COLOURS, SHAPES, Scene, sample_scene
from firellava.toy.vision_pretrain import NONE, centre_labels
from firellava.train.loss import predicts_a_label, supervised_cross_entropy, supervised_targets

log = logging.getLogger(__name__)

# Below the vision pretraining's ids and the held-out check's, above every id the toy data uses.
SCENE_ID_BASE = 700_000_000
HELD_OUT = 100  # questions per probed kind
HELD_OUT_ID_OFFSET = 50_000_000  # past any training example's id
# Weighted towards the questions that need the named object matched against the scene: with fewer existence,
# colour and shape questions, existence stayed at chance and shape was not bound to the colour named; without
# the "no"s whose colour and kind are both in the scene on different shapes, the LLM answered "yes" to most of
# those (docs/experiments.md).
QUESTIONS: tuple[lang.QAGenerator, ...] = (
    *(lang.exists_qa,) * 4,
    *(lang.exists_bound_qa,) * 3,
    *(lang.colour_qa,) * 4,
    *(lang.shape_qa,) * 3,
    lang.count_qa,
    lang.count_kind_qa,
)
PROBES: dict[str, lang.QAGenerator] = {
    "exists": lang.exists_qa,
    "exists_bound": lang.exists_bound_qa,
    "colour": lang.colour_qa,
    "shape": lang.shape_qa,
}
NO_WORD = -1  # `SceneExample.added` where nothing is added to a position's embedding

Example = tuple[list[int], list[int]]  # input_ids, labels


@dataclass(frozen=True)
class SceneExample:
    """A tokenized example whose scene positions carry two words: `added[i]` is the id of a word whose embedding
    is added to that of `input_ids[i]` (a shape's colour on its kind), `NO_WORD` elsewhere. `template`: the
    chat template it is written in; examples in one share their first positions (`shared_prefix`)."""

    input_ids: list[int]
    labels: list[int]
    added: list[int]
    template: str

    def tail(self, start: int) -> SceneExample:
        return SceneExample(self.input_ids[start:], self.labels[start:], self.added[start:], self.template)


@dataclass(frozen=True)
class LlmPretrainSpec:
    steps: int = 500
    examples: int = 51_200  # a cap; a run builds only as many as its steps draw, so none is seen twice
    batch_size: int = 32
    # Examples per micro-batch at most (`micro_batches`): a chat example's length varies with its questions, and
    # splitting a batch's chats in two by length cut the padding for less than the extra pass costs.
    micro_batch: int = 16
    # With trainings beside it in another process (the vision tower's, then the teacher's:
    # `tiny_models.build_tiny_models`), the first this many steps leave that process one core; then the LLM waits
    # for it and takes every core. A fixed step, not the moment the others end: the thread count changes the
    # rounding, and a run must compute the same model however fast the machine is.
    steps_beside: int = 0
    learning_rate: float = 1e-3
    plain_fraction: float = 0.3
    # Of the `plain` examples, the fraction captioned kind first ("circle red, square blue": `kind_first_caption`).
    kind_first_captions: float = 0.0
    max_turns: int = 4
    # Processes that compute each batch from step `steps_beside` on (`shared_batches`): with 2, a second process
    # computes half of every batch, and the cores are split between the two.
    processes: int = 1
    # Steps between held-out probes (and one after the last step). A probe costs several training steps, so the
    # run's log keeps a coarse curve; perf/toy_llm_curve.py draws a finer one.
    probe_every: int = 300


def word_id(tokenizer: PreTrainedTokenizerFast, word: str) -> int:
    """The id of ` word`, which must be one token: a scene position holds exactly one colour and one kind."""
    ids = tokenizer.encode(f" {word}", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the toy tokenizer splits {word!r} into {len(ids)} tokens; scene words must be one "
            "(the toy tokenizer makes every scene word one piece: firellava/toy/tiny_models.py)"
        )
    return ids[0]


@functools.lru_cache(maxsize=4)
def _scene_word_ids(tokenizer: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """Ids of every colour and every kind, in `COLOURS` and `SHAPES` order; looked up once per tokenizer, not
    once per example (each lookup tokenizes the word)."""
    return [word_id(tokenizer, c) for c in COLOURS], [word_id(tokenizer, k) for k in SHAPES]


def scene_positions(
    scene: Scene, tokenizer: PreTrainedTokenizerFast, grid: int
) -> tuple[list[int], list[int]]:
    """(input_ids, added) for the `grid * grid` patches of the scene's padded square, in the vision tower's order:
    the kind word plus the colour word at the patch holding a shape's centre, `<unk>` alone elsewhere."""
    colours, kinds = (labels[0].tolist() for labels in centre_labels([scene], grid))
    colour_ids, kind_ids = _scene_word_ids(tokenizer)
    # Read once: each read of a special token's id goes through the tokenizer's lookups.
    unk = tokenizer.unk_token_id
    ids = [unk if k == NONE else kind_ids[k - 1] for k in kinds]
    added = [NO_WORD if c == NONE else colour_ids[c - 1] for c in colours]
    return ids, added


def _with_scene(
    turns: list[dict[str, str]], template: str, scene: Scene, tokenizer: PreTrainedTokenizerFast, grid: int
) -> SceneExample:
    """Encode `turns` with the project's chat format, then put the scene's positions (unsupervised) where
    `<image>` is, as the model splices image tokens there. The toy tokenizer has no `<image>` token (the model
    builder adds it), so the slot is whatever id it maps `<image>` to: `<unk>`, which no text produces."""
    encoded = encode(turns, tokenizer, template=template)
    ids, labels = list(encoded.input_ids), list(encoded.labels)
    slot_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if ids.count(slot_id) != 1:
        raise ValueError(f"expected one image slot in the encoded example, found {ids.count(slot_id)}")
    slot = ids.index(slot_id)
    scene_ids, added = scene_positions(scene, tokenizer, grid)
    return SceneExample(
        input_ids=ids[:slot] + scene_ids + ids[slot + 1 :],
        labels=labels[:slot] + [IGNORE_INDEX] * len(scene_ids) + labels[slot + 1 :],
        added=[NO_WORD] * slot + added + [NO_WORD] * (len(ids) - slot - 1),
        template=template,
    )


def plain_example(
    scene: Scene,
    rng: random.Random,
    tokenizer: PreTrainedTokenizerFast,
    grid: int,
    *,
    kind_first: bool = False,
) -> SceneExample:
    """`<s>` + scene (context) + caption + newline (supervised): the `plain` template of projector pretraining.
    The caption is a brief one, or with `kind_first` the `kind_first_caption`."""
    caption = lang.kind_first_caption(scene) if kind_first else lang.brief_caption(scene, rng)
    turns = [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": caption}]
    return _with_scene(turns, "plain", scene, tokenizer, grid)


def chat_example(
    scene: Scene, tokenizer: PreTrainedTokenizerFast, qas: Sequence[lang.QA], grid: int
) -> SceneExample:
    """The finetuning format with the scene where `<image>` goes: first turn scene, question and LLaVA's
    short-answer prompt, later turns the bare question, as in mix665k's VQA records."""
    if not qas:
        raise ValueError("a chat example needs at least one question")
    turns = []
    for i, (question, answer) in enumerate(qas):
        text = f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER}" if i == 0 else question
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    return _with_scene(turns, "vicuna_v1", scene, tokenizer, grid)


def _examples(
    spec: LlmPretrainSpec, tokenizer: PreTrainedTokenizerFast, seed: int, grid: int
) -> list[SceneExample]:
    rng = random.Random(f"llm-pretrain/{seed}")
    out = []
    for i in range(min(spec.examples, spec.steps * spec.batch_size)):  # never more than training can draw
        scene = sample_scene(rng, SCENE_ID_BASE + i)
        if rng.random() < spec.plain_fraction:
            # No draw when the fraction is 0, so that the examples stay those of a spec without it.
            kind_first = spec.kind_first_captions > 0 and rng.random() < spec.kind_first_captions
            out.append(plain_example(scene, rng, tokenizer, grid, kind_first=kind_first))
        else:
            # Every generator drawn may not apply to this scene; existence and count always do, so this ends.
            qas: list[lang.QA] = []
            while not qas:
                qas = lang.ask(scene, rng, QUESTIONS, rng.randint(1, spec.max_turns))
            out.append(chat_example(scene, tokenizer, qas, grid))
    return out


def pad_batch(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `labels` (padding ignored) and `attention_mask` for a causal LM."""
    width = max(len(ids) for ids, _ in examples)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in examples]),
        "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in examples]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples]),
    }


def _embed(llm: LlamaForCausalLM, ids: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
    """Each position's token embedding plus that of its added word."""
    embed = llm.get_input_embeddings()
    return embed(ids) + embed(added.clamp(min=0)) * (added != NO_WORD).unsqueeze(-1)


def scene_batch(
    llm: LlamaForCausalLM, examples: Sequence[SceneExample], pad_id: int
) -> dict[str, torch.Tensor]:
    """`pad_batch` of the examples with `inputs_embeds` (`_embed`) in place of `input_ids`."""
    batch = pad_batch([(e.input_ids, e.labels) for e in examples], pad_id)
    width = batch["input_ids"].shape[1]
    added = torch.tensor([e.added + [NO_WORD] * (width - len(e.added)) for e in examples])
    return {"inputs_embeds": _embed(llm, batch.pop("input_ids"), added), **batch}


def shared_prefix(examples: Sequence[SceneExample]) -> int:
    """How many leading positions every example has alike (token and added word), none of them supervised nor
    predicting a supervised token, and at least one position left after them in each example."""
    first = examples[0]
    limit = min(len(e.input_ids) for e in examples) - 1
    for i in range(limit):
        if first.labels[i + 1] != IGNORE_INDEX or any(
            (e.input_ids[i], e.added[i], e.labels[i + 1])
            != (first.input_ids[i], first.added[i], IGNORE_INDEX)
            for e in examples
        ):
            return i
    return limit


def supervised_logits(
    llm: LlamaForCausalLM, examples: Sequence[SceneExample], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels): the LM head's logits at the positions that predict a supervised token, in row-major
    order, and the examples' padded labels (`predicts_a_label(labels)` marks those positions).

    The LM head runs on those positions only: most are scene, system prompt or question, which the loss ignores.
    The positions all examples share (`shared_prefix`: every chat starts with the same system prompt) run once,
    and the rest of each example attends to their keys and values, repeated per example; the gradient reaches
    them through the repeat, summed over the examples, as it would through a padded batch.
    """
    shared = shared_prefix(examples)
    cache = None
    if shared:
        head = examples[0]
        cache = DynamicCache(config=llm.config)
        prefix = _embed(llm, torch.tensor([head.input_ids[:shared]]), torch.tensor([head.added[:shared]]))
        llm.model(inputs_embeds=prefix, cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(examples))
    batch = scene_batch(llm, [e.tail(shared) for e in examples], pad_id)
    rows, width = batch["attention_mask"].shape
    hidden = llm.model(
        inputs_embeds=batch["inputs_embeds"],
        attention_mask=torch.cat([torch.ones(rows, shared, dtype=torch.long), batch["attention_mask"]], 1),
        position_ids=torch.arange(shared, shared + width).expand(rows, -1),
        cache=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    return llm.lm_head(hidden[predicts_a_label(batch["labels"])]), batch["labels"]


def supervised_loss(
    llm: LlamaForCausalLM, examples: Sequence[SceneExample], pad_id: int, items: int
) -> torch.Tensor:
    """Next-token cross-entropy summed over the examples' supervised positions and divided by `items`
    (`supervised_logits`)."""
    logits, labels = supervised_logits(llm, examples, pad_id)
    return supervised_cross_entropy({"logits": logits}, labels, items)


def micro_batches(examples: Sequence[SceneExample], size: int) -> list[list[SceneExample]]:
    """The examples in micro-batches of one template each and like length: a template's examples sorted by
    length, in as few equal chunks as hold at most `size` each. A chunk pads to its own longest example, and
    its shared first positions (`shared_prefix`) run once."""
    out = []
    for template in sorted({e.template for e in examples}):
        group = sorted((e for e in examples if e.template == template), key=lambda e: len(e.input_ids))
        chunks = -(-len(group) // size)
        out += [group[i * len(group) // chunks : (i + 1) * len(group) // chunks] for i in range(chunks)]
    return out


def supervised_items(examples: Sequence[SceneExample]) -> int:
    """The supervised tokens of the examples: what a batch's mean loss divides by."""
    return sum(label != IGNORE_INDEX for e in examples for label in e.labels[1:])


def accumulate_batch(
    llm: LlamaForCausalLM,
    examples: Sequence[SceneExample],
    pad_id: int,
    micro_batch: int,
    items: int | None = None,
) -> float:
    """Backpropagate the mean loss over the batch's supervised tokens, computed in `micro_batches` of at most
    `micro_batch` examples (`supervised_loss`). The summed gradient is that of the batch padded as one: the
    batch's draw is random as before (batches grouped by length learned more slowly, docs/experiments.md); what
    each micro-batch computes shrinks. `items`: divide by this many tokens instead (the examples are part of a
    batch: `shared_batches`). Returns the loss."""
    items = supervised_items(examples) if items is None else items
    total = 0.0
    for group in micro_batches(examples, micro_batch):
        loss = supervised_loss(llm, group, pad_id, items)
        loss.backward()
        total += loss.item()
    return total


@functools.lru_cache(maxsize=4)
def held_out_examples(
    tokenizer: PreTrainedTokenizerFast, seed: int, grid: int
) -> dict[str, list[SceneExample]]:
    """`HELD_OUT` one-question chats about fresh scenes per probed kind; the same at every probe of a run."""
    rng = random.Random(f"llm-pretrain/{seed}/held-out")
    out, next_id = {}, SCENE_ID_BASE + HELD_OUT_ID_OFFSET
    for name, make in PROBES.items():
        examples: list[SceneExample] = []
        while len(examples) < HELD_OUT:
            next_id += 1
            scene = sample_scene(rng, next_id)
            qa = make(scene, rng)
            if qa is not None:
                examples.append(chat_example(scene, tokenizer, [qa], grid))
        out[name] = examples
    return out


@torch.no_grad()
def probe(
    llm: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, seed: int, grid: int
) -> dict[str, float]:
    """Held-out exact-match accuracy on one-question chats about fresh scenes, per question kind
    (`held_out_examples`). An answer counts when every supervised token (the answer and its `</s>`) is the
    model's top choice: what greedy decoding says. Computed as the loss is (`supervised_logits`)."""
    llm.eval()
    out = {}
    for name, examples in held_out_examples(tokenizer, seed, grid).items():
        logits, labels = supervised_logits(llm, examples, tokenizer.pad_token_id or 0)
        wrong = torch.zeros_like(labels, dtype=torch.bool)
        wrong[predicts_a_label(labels)] = logits.argmax(-1) != supervised_targets(labels)
        out[name] = round((~wrong.any(-1)).float().mean().item(), 3)
    return out


def pretrain_llm(
    llm: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    spec: LlmPretrainSpec,
    seed: int,
    grid: int,
    beside: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Train `llm` in place on toy text, scenes laid out on a `grid` x `grid` patch grid; returns its held-out
    accuracies (`probe`). `beside`: waits for a process that trains on one core meanwhile; the first
    `spec.steps_beside` steps leave it that core. After them, with `spec.processes` 2, a helper process computes
    half of each batch (`shared_batches`)."""
    cores = torch.get_num_threads()
    if beside is not None:
        torch.set_num_threads(max(1, cores - 1))
    try:
        return _train(llm, tokenizer, spec, seed, grid, beside, cores)
    finally:
        torch.set_num_threads(cores)


def _train(
    llm: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    spec: LlmPretrainSpec,
    seed: int,
    grid: int,
    beside: Callable[[], object] | None,
    cores: int,
) -> dict[str, float]:
    examples = _examples(spec, tokenizer, seed, grid)
    pad_id = tokenizer.pad_token_id or 0
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    # One cycle: a short warmup, then cosine to zero, so the last steps settle instead of bouncing.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.steps, pct_start=0.05
    )
    rng = random.Random(f"llm-pretrain/{seed}/batches")
    progress = Progress("tiny LLM pretraining", spec.steps * spec.batch_size, unit="examples")
    helper: shared_batches.Helper | None = None
    with contextlib.ExitStack() as stack:
        for step in range(1, spec.steps + 1):
            if step == spec.steps_beside + 1:
                if spec.processes > 1 and cores > 1:
                    # Started before the wait below, so that it starts up while the LLM waits.
                    helper = stack.enter_context(
                        shared_batches.helper(llm, cores // 2, pad_id, spec.micro_batch)
                    )
                if beside is not None:
                    beside()
                    beside = None
                torch.set_num_threads(cores - cores // 2 if helper else cores)
            llm.train()
            # Random batches, not batches of like length: grouping by length cut the padding but also made each
            # batch one kind of example, and the probe stayed near chance twice as long (docs/experiments.md).
            optimizer.zero_grad(set_to_none=True)
            loss = _accumulate(llm, rng.sample(examples, spec.batch_size), pad_id, spec.micro_batch, helper)
            optimizer.step()
            schedule.step()
            progress.update(spec.batch_size, extra=f"step {step}/{spec.steps}, loss {loss:.3f}")
            if step % spec.probe_every == 0 or step == spec.steps:
                metrics = probe(llm, tokenizer, seed, grid)
                log.info("tiny LLM step %d/%d: held-out %s", step, spec.steps, metrics)
    progress.close()
    if beside is not None:
        beside()
    return metrics


def _accumulate(
    llm: LlamaForCausalLM,
    batch: Sequence[SceneExample],
    pad_id: int,
    micro_batch: int,
    helper: shared_batches.Helper | None,
) -> float:
    """`accumulate_batch`, with half of the batch computed by `helper` where there is one (`deal`)."""
    if helper is None:
        return accumulate_batch(llm, batch, pad_id, micro_batch)
    items = supervised_items(batch)
    mine, theirs = shared_batches.deal(batch)
    helper.start(theirs, items)
    loss = accumulate_batch(llm, mine, pad_id, micro_batch, items=items)
    return loss + helper.add_gradient(llm)

"""The toy world's teacher: a tiny text-only Llama, trained for a few seconds on toy contexts -> responses in
the toy prompt set's format, so that the real datagen path (prompts, engine, parser, filters) runs end to end
on a CPU. It plays CodeLlama-34B-Instruct's part, with the same Llama-2 chat template.

Training scenes are fresh ones from their own seed, not the COCO images datagen later reads.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from firellava.core.chat_format import IGNORE_INDEX
from firellava.core.progress import Progress
from firellava.datagen.contexts import TYPES, USES_BOXES, ImageContext, Instance, format_context
from firellava.datagen.prefix import prompt_ids
from firellava.datagen.prompts import format_response, prompt_set
from firellava.engines import Prompt
from firellava.toy import language
from firellava.toy.llm_pretrain import NO_WORD, SceneExample, accumulate_batch
from firellava.toy.scenes import Scene, sample_scene
from firellava.toy.tiny_models import LlmSizes, build_llm

log = logging.getLogger(__name__)

# CodeLlama-Instruct / Llama-2-chat: system merged into the first [INST], assistant turns
# ' ' + content + ' ' + eos, the prompt ends with [/INST].
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- set system_message = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- set system_message = '' -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set content = (system_message if loop.index0 == 0 else '') + message['content'] | trim -%}"
    "{{- bos_token + '[INST] ' + content + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + message['content'] | trim + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass(frozen=True)
class ToyTeacherSpec:
    """How the toy teacher is trained (`toy_world.teacher`); 0 steps saves it untrained."""

    prompt_set: str
    scenes: int
    steps: int
    batch_size: int
    learning_rate: float
    llm: LlmSizes


def scene_context(scene: Scene, rng: random.Random) -> ImageContext:
    return ImageContext(
        image_id=scene.image_id,
        file_name=f"{scene.image_id:012d}.jpg",
        width=scene.width,
        height=scene.height,
        captions=tuple(language.captions(scene, rng)),
        instances=tuple(Instance(s.kind, tuple(float(v) for v in s.box)) for s in scene.shapes),
    )


def target(kind: str, scene: Scene, rng: random.Random) -> str:
    if kind == "conversation":
        return format_response(kind, language.conversation(scene, rng))
    if kind == "detail":
        return format_response(kind, language.detailed_description(scene, rng)[1])
    return format_response(kind, [language.complex_reasoning(scene, rng)])


def training_examples(tokenizer: Any, spec: ToyTeacherSpec, seed: int) -> list[SceneExample]:
    """Prompt + response + eos, labels on the response and eos only, one per scene and type. The type is the
    example's `template`: a type's prompts share their system message and instructions, which the training step
    then runs once per micro-batch (`accumulate_batch`). No word is added to any position."""
    prompts = prompt_set(spec.prompt_set)
    rng = random.Random(f"toy-teacher/{seed}")
    out = []
    for n in range(spec.scenes):
        scene = sample_scene(rng, 1_000_000 + n)
        ctx = scene_context(scene, rng)
        for kind in TYPES:
            prompt = Prompt(messages=prompts.messages(kind, format_context(ctx, USES_BOXES[kind])))
            response = tokenizer(" " + target(kind, scene, rng), add_special_tokens=False)["input_ids"]
            context, answer = prompt_ids(tokenizer, prompt), response + [tokenizer.eos_token_id]
            ids = context + answer
            out.append(SceneExample(ids, [IGNORE_INDEX] * len(context) + answer, [NO_WORD] * len(ids), kind))
    return out


def train_toy_teacher(spec: ToyTeacherSpec, tokenizer_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """Train the teacher on the toy world's tokenizer and save it (model + tokenizer with the chat template)."""
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    examples = training_examples(tokenizer, spec, seed) if spec.steps else []
    # Room for the longest training prompt and an answer as long as datagen's max_tokens may ask for.
    longest = max((len(e.input_ids) for e in examples), default=0)
    sizes = replace(spec.llm, max_position_embeddings=max(spec.llm.max_position_embeddings, longest + 512))
    torch.manual_seed(seed)
    model = build_llm(sizes, tokenizer, seed)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optim, max_lr=spec.learning_rate, total_steps=max(1, spec.steps), pct_start=0.1
    )
    rng = random.Random(f"toy-teacher/{seed}/order")
    loss = 0.0
    progress = Progress("toy teacher training", spec.steps * spec.batch_size, unit="examples")
    for step in range(spec.steps):
        batch = rng.sample(examples, spec.batch_size)
        loss = accumulate_batch(
            model, batch, tokenizer.pad_token_id or tokenizer.eos_token_id, spec.batch_size
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        optim.zero_grad()
        progress.update(spec.batch_size, extra=f"step {step + 1}/{spec.steps}, loss {loss:.3f}")
    progress.close()
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    seconds = round(time.perf_counter() - start, 1)
    log.info(
        "toy teacher: %d steps on %d examples in %.1fs, final loss %.3f",
        spec.steps,
        len(examples),
        seconds,
        loss,
    )
    return {
        "dir": str(out_dir),
        "steps": spec.steps,
        "final_loss": round(float(loss), 4) if spec.steps else None,
        "seconds": seconds,
    }

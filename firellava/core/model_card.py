"""The model card that ships with the finetuned checkpoint (README.md of the HF directory).

Its facts are kept beside it as `model_card.json` (written once, with the weights): the base model and its family,
the data's sources with counts and licences from the mix manifest, the training terms and how they were checked,
the decontamination figures, and the training run. The finetune stage writes both; the eval stage renders the card
again with its results. Both call `render_model_card`, so the card is written one way."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firellava.core.io import atomic_path, read_json

CARD_FILE = "README.md"
CARD_DATA_FILE = "model_card.json"
CARD_FORMAT = "firellava-model-card/1"


def card_data(
    model: Mapping[str, Any], manifest: Mapping[str, Any] | None, terms: Mapping[str, Any]
) -> dict[str, Any]:
    """The card's facts from the model spec, the mix manifest (None: the data came without one) and the finetune
    stage's terms check."""
    data: dict[str, Any] = {"manifest": None}
    if manifest is not None:
        data = {
            "manifest": terms.get("manifest"),
            "total": manifest["total"],
            "sources": {
                name: {
                    "license": s["license"],
                    "commercial_use": s["commercial_use"],
                    "records": manifest["by_source"].get(name, 0),
                }
                for name, s in manifest["sources"].items()
                if manifest["by_source"].get(name)
            },
            "commercial_use": manifest["commercial_use"]["statement"],
            "commercially_usable": manifest["commercial_use"]["commercially_usable"],
            "decontamination": _decontamination(manifest.get("decontamination")),
        }
    return {"format": CARD_FORMAT, "model": dict(model), "data": data, "terms": dict(terms)}


def _decontamination(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    return {
        "statement": report["statement"],
        "action": report["action"],
        "records_touching_benchmarks": report["records_touching_benchmarks"],
        "benchmarks": {
            b: {k: e[k] for k in ("eval_images", "training_records", "training_images", "removed")}
            for b, e in report["benchmarks"].items()
        },
        "not_checked": list(report.get("not_checked", {})),
    }


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def _terms_lines(terms: Mapping[str, Any]) -> list[str]:
    lines = ["## Terms on this model", ""]
    applied = terms.get("applied") or []
    if not applied:
        lines += ["No source of the training data limits which models it may train.", ""]
    for t in applied:
        lines.append(
            f"- **{t['name']}** (carried by `{t['source']}`, {t['records']:,} records): {t['statement']} "
            f"Allowed model families: {', '.join(f'`{f}`' for f in t['allowed_families'])}."
        )
    lines += ["", terms["statement"], ""]
    return lines


def _eval_lines(results: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    benches = (results or {}).get("benchmarks")
    if not benches:
        return [*lines, "Not evaluated yet: the eval stage renders this card again with its results.", ""]
    rows = [
        [
            r.get("title", name),
            r.get("split", ""),
            r.get("metric", ""),
            "server-scored" if r.get("score") is None else f"{r['score']:.1f}",
            "" if r.get("published_llava_1_5_13b") is None else r["published_llava_1_5_13b"],
            r.get("questions", ""),
        ]
        for name, r in benches.items()
    ]
    head = ["benchmark", "split", "metric", "score", "LLaVA-1.5-13B (paper)", "questions"]
    return [*lines, f"Model `{results.get('model', '')}`.", "", *_table(head, rows), ""]


def render_model_card(card: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> str:
    """The card in markdown; `results` is the eval stage's results.json when there is one."""
    model, data, terms = card["model"], card["data"], card["terms"]
    training = card.get("training") or {}
    parts = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "---",
        "",
        "# FireLLaVA checkpoint",
        "",
        "A LLaVA-1.5 model (CLIP vision tower, MLP projector, Llama-family LLM) finetuned on the FireLLaVA "
        "instruction mix: the commercially permissive part of LLaVA-1.5's data plus conversations written by an "
        "open teacher model.",
        "",
        "## Model",
        "",
        *_table(
            ["part", "value"],
            [
                ["base LLM", f"`{model.get('llm')}`"],
                ["model family", f"`{model.get('family')}`"],
                ["vision tower", f"`{model.get('vision_tower')}`"],
                ["projector", model.get("projector_type", "")],
            ],
        ),
        "",
        *_terms_lines(terms),
        "## Training data",
        "",
    ]
    if data.get("manifest") is None and "sources" not in data:
        parts += [
            "The training data came without a mix manifest: its sources and licences are not known.",
            "",
        ]
    else:
        rows = [
            [f"`{name}`", s["license"], "yes" if s["commercial_use"] else "**no**", f"{s['records']:,}"]
            for name, s in data["sources"].items()
        ]
        parts += [
            f"{data['total']:,} records (mix manifest `{data['manifest']}`).",
            "",
            *_table(["source", "licence", "commercial use", "records"], rows),
            "",
            data["commercial_use"],
            "",
        ]
        parts += ["## Decontamination", ""]
        dec = data.get("decontamination")
        if dec is None:
            parts += ["The mix was not checked against the evaluation images.", ""]
        else:
            rows = [
                [b, f"{e['eval_images']:,}", f"{e['training_records']:,}", "yes" if e["removed"] else "no"]
                for b, e in dec["benchmarks"].items()
            ]
            parts += [
                dec["statement"],
                "",
                *_table(["benchmark", "eval images", "training records on them", "removed"], rows),
                "",
            ]
            if dec["not_checked"]:
                parts += [f"Not checked (benchmark files missing): {', '.join(dec['not_checked'])}.", ""]
    if training:
        parts += [
            "## Training",
            "",
            f"{training.get('steps')} steps, final loss {training.get('final_loss')}, ZeRO-"
            f"{training.get('zero_stage')}, on {training.get('device')}.",
            "",
        ]
    parts += _eval_lines(results)
    return "\n".join(parts)


def write_model_card(
    directory: Path, card: Mapping[str, Any], results: Mapping[str, Any] | None = None, name: str = CARD_FILE
) -> Path:
    path = Path(directory) / name
    with atomic_path(path) as tmp:
        tmp.write_text(render_model_card(card, results), encoding="utf-8")
    return path


def refresh_model_card(checkpoint: Path, results: Mapping[str, Any], copy_dir: Path) -> Path | None:
    """The card of a checkpoint written by the finetune stage, rendered again with eval results: in the
    checkpoint (README.md; its weights and `model_card.json` are untouched) and a copy in `copy_dir`. None for
    a checkpoint without `model_card.json`."""
    data = Path(checkpoint) / CARD_DATA_FILE
    if not data.is_file():
        return None
    card = read_json(data)
    write_model_card(copy_dir, card, results, name="MODEL_CARD.md")
    return write_model_card(Path(checkpoint), card, results)

"""The datagen stage (`firellava.datagen.stage`): COCO captions and boxes (`contexts`) -> prompts (`prompts`) -> the
teacher on an engine, chunk by chunk (`generate`) -> LLaVA records or rejects (`parse`) -> the stage's files and
data card (`outputs`). The mix that joins these records to LLaVA-1.5's permissive ones is its own stage,
`firellava.mix`."""

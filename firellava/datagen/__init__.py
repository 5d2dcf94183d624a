"""Data: the datagen stage (`data_gen.stage`: COCO contexts -> prompts -> teacher -> parsed LLaVA records) and
the mix stage (`data_gen.mix`: the permissive part of LLaVA-1.5's 665K mix + the generated records, with a
provenance manifest)."""

"""FireLLaVA: a commercially usable LLaVA model, end to end (datagen, mix, pretrain, finetune, eval, serve)."""

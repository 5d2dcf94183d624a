"""Evaluation: the LLaVA-1.5 benchmark suite (`eval.benchmarks`), answers through the engine interface
(`eval.answers`), judge-scored benchmarks (`eval.judge`) and the report (`eval.report`); stage entry `eval.stage`."""

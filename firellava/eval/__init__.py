"""Evaluation: the LLaVA-1.5 benchmark suite (`firellava.eval.benchmarks`), answers through the engine interface
(`firellava.eval.answers`), judge-scored benchmarks (`firellava.eval.judge`) and the report
(`firellava.eval.report`); stage entry `firellava.eval.stage`."""

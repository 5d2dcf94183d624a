"""Training: projector pretraining (ZeRO-2) and visual instruction tuning (ZeRO-3) on HF Trainer + DeepSpeed.

`firellava.train.launch` holds the pipeline stages `pretrain` and `finetune`: each starts the `deepspeed`
launcher, which runs `firellava.train.worker` once per device; the worker builds the data (`firellava.train.data`,
`firellava.train.sampler`), the model and the Trainer (`firellava.train.stage`) and writes the stage's outputs
(`firellava.train.export`) from rank 0.
"""

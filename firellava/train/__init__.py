"""Training: projector pretraining (ZeRO-2) and visual instruction tuning (ZeRO-3) on HF Trainer + DeepSpeed.

`train.launch` holds the pipeline stages `pretrain` and `finetune`: each starts the `deepspeed` launcher, which
runs `train.worker` once per device; the worker builds the data (`train.data`, `train.sampler`), the model and
the Trainer (`train.stage`) and writes the stage's outputs (`train.export`) from rank 0.
"""

"""The trainer: LoRA fine-tuning with DeepSpeed ZeRO, S3 in and out, held-out evaluation."""

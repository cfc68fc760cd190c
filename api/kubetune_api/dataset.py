"""spec.dataset: training and held-out data, record format, sequence length and packing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ._base import Rule, Section
from ._types import DataUri, is_s3, s3_cel

DEFAULT_VALIDATION_SPLIT = 0.05

CLUSTER_DATA_MESSAGE = (
    "a cluster job reads its data from s3://bucket/key or prefix/ (no . or .. segments); local paths are for kubetune run only"
)


class DatasetSpec(Section):
    """Training data, held-out data and how records become token sequences."""

    train: DataUri = Field(
        description="Training records: s3://bucket/key or a path, ending in .jsonl, .json or .parquet, each optionally "
        ".gz or .zst compressed."
    )
    validation: DataUri | None = Field(
        None, description="Held-out records in the same format. Set this or validationSplit, not both."
    )
    validationSplit: StrictFloat | None = Field(
        None,
        gt=0,
        le=0.5,
        description="Fraction of train held out for evaluation, 0 < x <= 0.5, chosen with the seed and never "
        "trained on. Used when validation is not set; defaults to 0.05 when neither is set.",
    )
    format: Literal[
        "prompt-completion", "chat", "text", "alpaca", "sharegpt", "preference", "openai-preference", "shared-prefix"
    ] = Field(
        "prompt-completion",
        description="Record format: prompt-completion (loss on the completion only), chat (the model's chat "
        "template, loss on assistant turns only, none on OpenAI's weight: 0 turns), text (loss on every token), or "
        "alpaca (instruction, optional input, output: the chat template when the model has one, else the Alpaca "
        "prompt; loss on the output only), or sharegpt (conversations of from/value with human, gpt, system, tool: as "
        "chat). Chat messages may give content as a list of text parts (OpenAI); a template that refuses a system "
        "role (Gemma) gets the system text at the start of the first user turn, counted in metrics.json. "
        "Preference pairs (method.type: dpo): preference (TRL's: prompt, chosen, rejected, each a string, or message "
        "lists; or chosen and rejected alone, the prompt being the leading messages, or the prefix, they share), "
        "openai-preference (OpenAI's DPO records: input {messages, tools}, preferred_output, non_preferred_output), "
        "shared-prefix (chosen and rejected full texts, as Anthropic's HH data: the prompt is their common prefix, "
        "ending at the last \\n\\nAssistant: both share in HH's form). "
        "Loss on the responses only; maxSeqLength applies to each of chosen and rejected.",
    )
    promptField: StrictStr = Field(
        "prompt", min_length=1, max_length=128, description="Record field holding the prompt (prompt-completion)."
    )
    completionField: StrictStr = Field(
        "completion", min_length=1, max_length=128, description="Record field holding the completion (prompt-completion)."
    )
    messagesField: StrictStr = Field(
        "messages", min_length=1, max_length=128, description="Record field holding the list of {role, content} messages (chat)."
    )
    textField: StrictStr = Field("text", min_length=1, max_length=128, description="Record field holding the text (text).")
    maxSeqLength: StrictInt = Field(2048, ge=16, le=131072, description="Tokens per sequence, 16 to 131072.")
    packing: StrictBool | None = Field(
        None,
        description="Pack several samples into each sequence, with attention kept inside each sample. "
        "Removes padding; usually the biggest speed-up on variable-length data. Default: on for method sft, off for "
        "dpo (packed preference pairs make fewer, larger steps: a higher held-out loss for the same epochs).",
    )
    overlength: Literal["keep-end", "right", "truncate", "drop"] | None = Field(
        None,
        description="What happens to samples longer than maxSeqLength: keep-end (cut from the start, so the "
        "completion or the latest turns survive), right (cut from the end; truncate is its older name), or drop. "
        "Default: keep-end for prompt-completion, chat and alpaca, right for text. Each outcome is counted in "
        "metrics.json and printed at start.",
    )

    @property
    def overlength_policy(self) -> str:
        """The policy in force: the default for the format when none is set."""
        if self.overlength is None:
            return "right" if self.format == "text" else "keep-end"
        return "right" if self.overlength == "truncate" else self.overlength

    shuffle: StrictBool = Field(True, description="Shuffle training samples every epoch, seeded by training.seed.")

    rules = (
        Rule(
            field="validationSplit",
            message="set either validation or validationSplit, not both",
            cel="!(has(self.validation) && has(self.validationSplit))",
            check=lambda d: not (d.validation is not None and d.validationSplit is not None),
        ),
        Rule(
            field="train",
            message=CLUSTER_DATA_MESSAGE,
            cel=s3_cel("self.train"),
            check=lambda d: is_s3(d.train),
            cluster=True,
        ),
        Rule(
            field="validation",
            message=CLUSTER_DATA_MESSAGE,
            cel=f"!has(self.validation) || ({s3_cel('self.validation')})",
            check=lambda d: d.validation is None or is_s3(d.validation),
            cluster=True,
        ),
    )

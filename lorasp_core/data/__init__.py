"""Datasets: streaming readers and validation, tokenization with loss masks, batching and collation.

Formats: chat JSONL (OpenAI fine-tuning format), preference (DPO) JSONL, prompt/completion JSONL, and
classification as JSONL `{"text", "label"}` or CSV/TSV with a header row (`text,label` or `sentence\\tlabel`).
"""

from lorasp_core.data.batching import collate, length_grouped_batches, packed_rows, padded_batches
from lorasp_core.data.chat_messages import parse_messages
from lorasp_core.data.formats import (
    ChatExample,
    ClassificationExample,
    CompletionExample,
    DatasetError,
    DatasetFormat,
    DatasetProblem,
    DatasetReport,
    Example,
    PreferenceExample,
    UntrainedExampleProblem,
    label_names_for,
)
from lorasp_core.data.preference import (
    TokenizedPair,
    count_pair_tokens,
    parse_preference,
    tokenize_preference,
)
from lorasp_core.data.readers import detect_layout, read_examples
from lorasp_core.data.tokenization import (
    IGNORE_INDEX,
    TokenizedExample,
    count_tokens,
    render_chat,
    tokenize_example,
)
from lorasp_core.data.tool_template import TOOLS_UNSUPPORTED, tool_support_problem
from lorasp_core.data.validate import validate_dataset

__all__ = [
    "IGNORE_INDEX",
    "TOOLS_UNSUPPORTED",
    "ChatExample",
    "ClassificationExample",
    "CompletionExample",
    "DatasetError",
    "DatasetFormat",
    "DatasetProblem",
    "DatasetReport",
    "Example",
    "PreferenceExample",
    "TokenizedExample",
    "TokenizedPair",
    "UntrainedExampleProblem",
    "collate",
    "count_pair_tokens",
    "count_tokens",
    "detect_layout",
    "label_names_for",
    "length_grouped_batches",
    "packed_rows",
    "padded_batches",
    "parse_preference",
    "read_examples",
    "render_chat",
    "tokenize_example",
    "tokenize_preference",
    "parse_messages",
    "tool_support_problem",
    "validate_dataset",
]

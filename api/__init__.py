"""HTTP API of lorasp: OpenAI-compatible files, fine-tuning jobs, models and adapter downloads."""

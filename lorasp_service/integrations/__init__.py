"""What a worker does for a job's `integrations` (OpenAI's field): today, a Weights & Biases run."""

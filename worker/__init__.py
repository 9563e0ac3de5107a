"""Celery worker: runs fine-tuning jobs (`lorasp worker`)."""

"""The ASR serving layer: config, dynamic batching, model slots, REST/OpenAI/admin APIs and metrics."""

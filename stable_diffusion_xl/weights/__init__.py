"""What lies on disk: where the weights live and which files we need (layout), fetching them from the hub
(fetch), LoRA adapter files (lora_files), the tiny random-weight pipelines for tests and the demo (demo), and the
libraries' log lines we drop (library_logs)."""

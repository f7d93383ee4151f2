"""The demo zoo: a corpus, a tokenizer and tiny Qwen2 translation models the project trains itself."""

"""Base models on a worker: loading one (any `AutoModelForCausalLM`, in a dtype or quantised) and its
tokenizer (`loading`), where its files are (`directories`), registering a directory or a hub id
(`registration`), importing a GGUF file (`gguf`), and which attention kernels run (`attention`)."""

"""Raw files -> canonical rows -> tokenised, prompt-masked Arrow datasets."""

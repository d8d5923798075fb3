"""Text in: the dataset registry, corpus files, downloads, word tokenization and the text encoders."""

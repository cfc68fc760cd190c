"""The trainer's data: records read and tokenized into arrays (records, tokens), packed (packing), prepared once per worker (prepared)."""

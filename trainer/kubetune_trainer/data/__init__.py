"""The trainer's data: files read (reading), records rendered and tokenized by format (formats), rows and each rank's
micro-batches (batching) over token arrays (tokens) packed (packing), prepared once per worker (prepared)."""

"""Training: the shared hyper-parameters (`config`), the loop every method trains with (`engine`),
its batches (`batching`), atomic checkpoints (`checkpoints`), optimizer and schedule
(`optimization`), and the recipe a train job runs: load, prepare, train (`recipe`)."""

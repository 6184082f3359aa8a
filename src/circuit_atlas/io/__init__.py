"""The bottom layer: files and values every other part reads or writes the same way.

- `atomic`: crash-safe JSON writes (temp file in the same folder, fsync, rename, fsync folder);
- `checks`: the one rule for graph slugs and for pruning thresholds;
- `dtypes`: dtype names (`"bf16"`, `"torch.float16"`, ...) to torch dtypes;
- `corpus`: text corpora (folder of .txt, .txt, JSONL, in-memory) read document by document;
- `cantor`: the Cantor pairing graph files use for feature ids;
- `distributed`: `torch.distributed` helpers that are no-ops in a single process (ranks, reductions);
- `presets`: short reference names (`demo`, `gemma`, `llama`) and the bundled demo assets.

Nothing here imports another part of the package except `circuit_atlas.errors`, so every layer
may use it (`docs/architecture.md`, "Layers"). Modules are imported one by one (this package
re-exports nothing), so `import circuit_atlas.io.checks` does not load torch.
"""

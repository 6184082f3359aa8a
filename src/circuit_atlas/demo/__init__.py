"""The bundled demo: a small Llama trained on a seeded toy world whose circuits we planted.

- `toyworld`  -- the world's facts, the corpus generator and the held-out evaluation sets;
- `lexicon`   -- the fixed word lists the world is built from;
- `tokenizer` -- the word-level tokenizer (one token per word, one per digit, BOS first);
- `train`     -- the training script (`python -m circuit_atlas.demo.train`);
- `evaluate`  -- accuracy on the evaluation sets;
- `bundle`    -- paths to the shipped model (`demo_model_path()`), transcoders
  (`demo_transcoders_path(kind)`), dashboards (`demo_features_path(kind)`) and evaluation data;
  `resolve_model_ref` / `resolve_transcoders_ref` turn `"demo"` into those paths (through the
  preset table);
- `activations`, `transcoders` -- per-line MLP pairs and training of the demo's transcoders;
- `labels`    -- the automatic labelling rule of the demo's dashboards;
- `build_assets` -- transcoders + dashboards + labels (`python -m circuit_atlas.demo.build_assets`).

The names `demo`, `demo-clt`, `demo-plt` are entries of the preset table every loader reads
(`circuit_atlas.io.presets`). The case studies done with this model (feature codes, the two-hop
swap, addition, multilingual features, their figures) are research, not library: they live in
`examples/case_studies/` with their scripts `examples/case_study_<name>.py`.
"""

"""The bundled demo: a small Llama trained on a seeded toy world whose circuits we planted.

- `toyworld`  -- the world's facts, the corpus generator and the held-out evaluation sets;
- `lexicon`   -- the fixed word lists the world is built from;
- `tokenizer` -- the word-level tokenizer (one token per word, one per digit, BOS first);
- `train`     -- the training script (`python -m circuit_atlas.demo.train`);
- `evaluate`  -- accuracy on the evaluation sets;
- `bundle`    -- paths to the shipped model (`demo_model_path()`) and its evaluation data.
"""

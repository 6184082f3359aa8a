"""The case studies of `docs/case-studies.md`: research done *with* circuit-atlas on its bundled
demo model, kept out of the library.

- `codes`: a concept's feature code (the features active on most of its prompts, per layer and
  position from the end) and the suppress + inject swap between two codes;
- `swap`: the two-hop study (region features of the intermediate hop, swapped between regions);
- `addition`: the lookup-table features of two-digit addition;
- `multilingual`: features shared across english, french and spanish;
- `attention`: which layer-0 head lets the two-hop region feature read the city, why it attends
  there (per-head edges, QK attribution, vocabulary sweeps) and key edits that confirm it;
- `figures`: explorer screenshots and bar charts through headless Chromium (Playwright);
- `cli`: the command line the `examples/case_study_<name>.py` scripts share.

Import it with `examples/` on `sys.path` (the scripts beside this folder run with it there;
`tests/examples/conftest.py` adds it for the tests).
"""

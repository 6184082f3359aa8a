#!/usr/bin/env python
"""Train the bundled demo model (same as `python -m circuit_atlas.demo.train`).

Reproduce the shipped assets (about 25 min on 1 CPU thread):
    nice -n 10 python scripts/train_demo.py --out src/circuit_atlas/demo/assets
CI smoke run (seconds):
    python scripts/train_demo.py --quick --out /tmp/demo-quick
"""

from circuit_atlas.demo.train import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Build the demo's transcoders and feature dashboards (same as
`python -m circuit_atlas.demo.build_assets`).

Reproduce the shipped assets (about 15 min on 1 CPU thread; needs the bundled model):
    nice -n 10 python scripts/build_demo_assets.py
CI smoke run (seconds):
    python scripts/build_demo_assets.py --quick --out /tmp/demo-assets-quick
"""

from circuit_atlas.demo.build_assets import main

if __name__ == "__main__":
    raise SystemExit(main())

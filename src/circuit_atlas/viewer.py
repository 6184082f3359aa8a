"""How `Graph.show()` displays a graph: one replaceable slot.

The explorer lives in the server layer, above the graph layer, so `circuit_atlas.graph` never
imports it. Instead the package façade (`circuit_atlas/__init__.py`, which every import of the
package runs first) installs the explorer here, and `Graph.show` calls whatever is installed.
Another front end (a different notebook widget, a static renderer) can replace it with
`set_viewer`.
"""

from __future__ import annotations

from typing import Any, Callable

# viewer(graph, **options) -> something a notebook can display
GraphViewer = Callable[..., Any]

_viewer: GraphViewer | None = None


def set_viewer(viewer: GraphViewer | None) -> GraphViewer | None:
    """Install `viewer` for `Graph.show` (None removes it); returns the previous one."""
    global _viewer
    previous, _viewer = _viewer, viewer
    return previous


def get_viewer() -> GraphViewer | None:
    """The installed viewer, or None."""
    return _viewer

"""``make bench``: the service and a bare baseline under the same load, side by side."""

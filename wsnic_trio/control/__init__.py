"""The control API (HTTP over h11), its client ctl, metrics, packet capture, forwards."""

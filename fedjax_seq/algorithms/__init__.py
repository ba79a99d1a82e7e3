"""One module per algorithm; `build` maps a config to its constructor."""

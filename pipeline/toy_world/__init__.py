"""The toy world: seeded shape scenes, their text, the data files (and the tiny models) the demo runs on."""

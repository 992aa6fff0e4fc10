"""Trying a candidate topology on real traffic: `replay` runs a range of a live input topic
through it into a shadow topic, `compare` reports how its outputs differ from the live ones."""

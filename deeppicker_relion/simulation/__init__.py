"""Simulated cryo-EM micrographs with exact particle centres, used by the demo, the tests and the
training recipe: ``simulate`` (the simulator) and ``sets`` (random molecules to mix into training)."""

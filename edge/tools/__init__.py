"""Development tools that never ship on the alert path: test rigs, benches, the evaluation,
composed footage and the demo. Firmware packages never import from here."""

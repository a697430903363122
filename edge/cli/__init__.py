"""``edge-lfr``: one module per command group. Commands import what they run when they run, so
``--help`` and the provisioning script's key and config commands start without numpy, OpenCV or
LiteRT."""

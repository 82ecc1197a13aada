"""Ground tool: depacketize and verify the downlink, decode records, write JSON Lines, GeoJSON,
CSV and PNG. A library first (decode.py, outputs.py, render.py); cli.py only wires files to it."""

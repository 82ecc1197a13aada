"""Downlink: per-frame CBOR records (record.py), the crash-safe store-and-forward journal
(journal.py), and CCSDS Space Packets (packets.py). Import the submodule you need: the flight
loop loads only what it uses."""

"""The QEMU arm64 flight-board simulator (make sim): firmware_sim/image.py builds the board, firmware_sim/board.py runs it, firmware_sim/sim.py runs the scenarios."""

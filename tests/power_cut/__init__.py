"""The power-cut harness of tests/test_power_loss.py: an LD_PRELOAD shim (shim.c) and a worker process."""

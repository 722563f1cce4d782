"""Test support: helpers, fakes of GPU libraries, and modules loaded by import path in child processes."""

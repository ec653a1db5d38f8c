//! Helpers for integration tests that drive the real machina binary.

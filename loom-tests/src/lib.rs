//! Loom models of tiermap live in tests/.

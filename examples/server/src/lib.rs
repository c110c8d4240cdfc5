//! An example HTTP server built on `tiermap` (work in progress, issue 8).

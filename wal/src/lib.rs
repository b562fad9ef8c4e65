//! The `file` channel (write-ahead log). Work in progress.
